"""Calibration near x_o without a reference: SBC + TARP on pairs from a truncated prior, draws restricted to it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mfsbi.inference.calibration import BIASED, CALIBRATED, OVER_CONFIDENT
from mfsbi.inference.truncated_coverage import truncated_coverage


class Gaussian:
    """θ ~ N(0, I), x = θ + N(0, I): the posterior is N(x / 2, I / 2); ``scale`` and ``shift`` spoil it."""

    def __init__(self, scale: float = 1.0, shift: float = 0.0):
        self.scale, self.shift = scale, shift

    def sample_batched(self, sample_shape, x, show_progress_bars=False):
        noise = torch.randn(tuple(sample_shape) + tuple(x.shape))
        return x / 2 + self.shift + self.scale * np.sqrt(0.5) * noise


def in_box(theta: torch.Tensor) -> torch.Tensor:
    """The region R: a box around (0.5, 0), narrower than the posterior at one observation."""
    return ((theta[:, 0] - 0.5).abs() < 1.0) & (theta[:, 1].abs() < 1.2)


def truncated_pairs(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(20 * n, 2, generator=generator)
    theta = theta[in_box(theta)][:n]
    return theta, theta + torch.randn(n, 2, generator=generator)


@pytest.mark.parametrize("posterior, verdict", [(Gaussian(), CALIBRATED), (Gaussian(scale=0.4), OVER_CONFIDENT),
                                                (Gaussian(shift=0.4), BIASED)])
def test_the_verdict_on_truncated_pairs_names_the_estimate_s_fault(posterior, verdict):
    theta, x = truncated_pairs(300, seed=0)
    result = truncated_coverage(posterior, in_box, theta, x, num_samples=200, seed=1)
    assert result.verdict == verdict, result.calibration.test
    assert result.pairs == 300 and result.used >= 280 and 0.2 < result.mass_in_region < 1.0


def test_without_restricting_the_draws_the_exact_posterior_looks_miscalibrated():
    # Why the draws are restricted: on pairs from the truncated prior, the unrestricted exact
    # posterior is not the posterior of those pairs.
    theta, x = truncated_pairs(300, seed=0)
    everywhere = truncated_coverage(Gaussian(), lambda t: torch.ones(len(t), dtype=torch.bool), theta, x,
                                    num_samples=200, seed=1)
    assert everywhere.verdict != CALIBRATED and everywhere.mass_in_region == 1.0


def test_false_alarms_on_the_exact_truncated_posterior_stay_near_the_level():
    """20 pair sets of 40 (about a sequential run's rows): the exact restricted posterior is rarely flagged."""
    alarms = 0
    for k in range(20):
        theta, x = truncated_pairs(40, seed=100 + k)
        alarms += truncated_coverage(Gaussian(), in_box, theta, x, num_samples=100, seed=k).verdict != CALIBRATED
    assert alarms <= 4  # the rule's level is 5 % per test (SBC Bonferroni + TARP): 20 sets, expected about 1-2


def test_rows_outside_the_region_and_pairs_short_of_draws_are_left_out_and_counted():
    theta, x = truncated_pairs(30, seed=2)
    theta = torch.cat([theta, torch.tensor([[3.0, 0.0]])])  # outside R: not a draw of the truncated prior
    x = torch.cat([x, torch.tensor([[3.0, 0.0]])])
    far = torch.cat([x[:29], torch.tensor([[40.0, 40.0], [3.0, 0.0]])])  # an x whose posterior misses R
    result = truncated_coverage(Gaussian(), in_box, theta, far, num_samples=50, seed=0)
    assert result.pairs == 31 and 25 <= result.used <= 29  # the row outside R and the far x never count
    state = torch.random.get_rng_state()
    again = truncated_coverage(Gaussian(), in_box, theta, far, num_samples=50, seed=0)
    assert torch.equal(state, torch.random.get_rng_state()) and again.to_dict() == result.to_dict()
    one = truncated_coverage(Gaussian(), in_box, theta[:1], x[:1], num_samples=50)
    assert one.calibration is None and one.verdict is None and one.used == 1
    with pytest.raises(ValueError, match="same n"):
        truncated_coverage(Gaussian(), in_box, theta, x[:3])

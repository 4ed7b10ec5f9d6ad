"""Calibration (SBC + TARP, sbi's diagnostics) on a Gaussian model with an exact posterior."""

import numpy as np
import pytest
import torch

from mfsbi.inference import calibration, calibration_at
from mfsbi.inference.calibration import BIASED, CALIBRATED, OVER_CONFIDENT, UNDER_CONFIDENT


class GaussianPosterior:
    """theta ~ N(0, I), x = theta + N(0, I): the posterior is N(x / 2, I / 2); ``scale`` widens it."""

    def __init__(self, scale: float, shift: float = 0.0):
        self.scale, self.shift = scale, shift

    def sample_batched(self, sample_shape, x, show_progress_bars=False):
        noise = torch.randn(tuple(sample_shape) + tuple(x.shape))
        return x / 2 + self.shift + self.scale * np.sqrt(0.5) * noise


def pairs(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, 2, generator=generator)
    return theta, theta + torch.randn(n, 2, generator=generator)


@pytest.mark.parametrize("scale, verdict", [(1.0, CALIBRATED), (0.5, OVER_CONFIDENT), (2.0, UNDER_CONFIDENT)])
def test_the_verdict_names_the_miscalibration(scale, verdict):
    theta, x = pairs(300, seed=0)
    result = calibration(GaussianPosterior(scale), theta, x, num_posterior_samples=500, seed=1)
    assert result.verdict == verdict, result.test
    assert result.num_pairs == 300 and len(result.sbc_ks_pvalues) == 2
    assert len(result.ranks) == 300 and all(0 <= r <= 500 for row in result.ranks for r in row)
    assert (result.tarp_atc > 0) == (scale > 1) or scale == 1.0
    assert "TARP KS p=" in result.test and "SBC KS min p=" in result.test


def test_a_biased_posterior_is_not_calibrated_and_results_are_seeded():
    theta, x = pairs(300, seed=0)
    biased = calibration(GaussianPosterior(1.0, shift=0.5), theta, x, num_posterior_samples=500, seed=1)
    assert biased.verdict != CALIBRATED and min(biased.sbc_ks_pvalues) < 1e-3
    state = torch.random.get_rng_state()
    again = calibration(GaussianPosterior(1.0, shift=0.5), theta, x, num_posterior_samples=500, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())
    assert again == biased
    other = calibration(GaussianPosterior(1.0, shift=0.5), theta, x, num_posterior_samples=500, seed=2)
    assert other.ranks != biased.ranks
    document = biased.to_dict()
    assert "ranks" not in document and document["verdict"] == biased.verdict
    assert len(biased.to_dict(with_curves=True)["coverage"]) == len(biased.credibility)


def test_bad_pairs_are_refused():
    theta, x = pairs(10, seed=0)
    with pytest.raises(ValueError, match="n >= 2"):
        calibration(GaussianPosterior(1.0), theta, x[:5])
    with pytest.raises(ValueError, match="level"):
        calibration(GaussianPosterior(1.0), theta, x, level=1.5)
    few = calibration(GaussianPosterior(1.0), theta[:3], x[:3], num_posterior_samples=50)
    assert few.num_pairs == 3 and len(few.coverage) == 3


class GaussianAt(GaussianPosterior):
    def sample(self, sample_shape, x, show_progress_bars=False):
        return self.sample_batched(sample_shape, x)[:, 0]


@pytest.mark.parametrize("scale, verdict", [(1.0, CALIBRATED), (0.5, OVER_CONFIDENT), (2.0, UNDER_CONFIDENT)])
def test_calibration_at_one_observation_against_exact_draws(scale, verdict):
    x_o = torch.tensor([0.4, -1.0])
    generator = torch.Generator().manual_seed(3)
    exact = x_o / 2 + np.sqrt(0.5) * torch.randn(300, 2, generator=generator)
    result = calibration_at(GaussianAt(scale), x_o, exact, num_posterior_samples=500, seed=1)
    assert result.verdict == verdict, result.test
    assert result.num_pairs == 300


@pytest.mark.parametrize("ranks, verdict", [
    (lambda rng: rng.uniform(0.2, 1.0, 400), BIASED),            # truths high in the estimate: off-centre
    (lambda rng: rng.beta(0.5, 0.5, 400), OVER_CONFIDENT),       # U-shaped: the estimate too narrow
    (lambda rng: rng.beta(3.0, 3.0, 400), UNDER_CONFIDENT),      # ∩-shaped: the estimate too wide
])
def test_when_only_sbc_rejects_the_rank_histogram_names_the_departure(ranks, verdict):
    from mfsbi.inference.calibration import _verdict

    rng = np.random.default_rng(0)
    u = np.stack([rng.uniform(size=400), ranks(rng)], axis=1)  # parameter 1 departs, parameter 0 does not
    name, test = _verdict(np.array([0.6, 1e-6]), u, atc=0.0, tarp_p=0.9, level=0.05)
    assert name == verdict and test.startswith("SBC rejects for parameter 1"), test

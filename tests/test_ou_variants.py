"""OU2 with a wrong LF on purpose: the shift is the one named, the HF side is OU2's, noise ignores θ."""

from __future__ import annotations

import numpy as np
import pytest

from mfsbi.simulators import get_task
from mfsbi.simulators.ou import OULowFidelity
from mfsbi.simulators.ou_variants import LF_BIAS, ou2_lf_biased


@pytest.mark.parametrize("size", sorted(LF_BIAS))
def test_the_biased_lf_is_ou2s_lf_shifted_by_its_bias(size):
    task, base = get_task(f"ou2-lf-biased-{size}"), get_task("ou2")
    theta = base.sample_prior(200, seed=1)
    shifted = task.low_fidelity(theta, seed=7)
    assert np.allclose(shifted - OULowFidelity(2)(theta, seed=7), LF_BIAS[size])
    # The HF model and the truth are OU2's: the same simulations, the same references.
    assert np.array_equal(task.high_fidelity(theta, seed=3), base.high_fidelity(theta, seed=3))
    assert list(task.references) == list(base.references)
    # The shift is visible in the statistics: the LF mean sits b above mu.
    assert np.mean(shifted - theta[:, :1]) == pytest.approx(LF_BIAS[size], abs=0.02)


def test_the_noise_lf_ignores_theta_and_is_seeded():
    task = get_task("ou2-lf-noise")
    theta = task.sample_prior(50, seed=0)
    a = task.low_fidelity(theta, seed=5)
    assert np.array_equal(a, task.low_fidelity(theta[::-1].copy(), seed=5))
    assert np.array_equal(a, task.low_fidelity(theta, seed=5)) and not np.array_equal(a, task.low_fidelity(theta, 6))
    assert abs(np.corrcoef(a[:, 0], theta[:, 0])[0, 1]) < 0.4 and task.low_fidelity_parameters == ()


def test_an_unknown_bias_size_is_refused_by_name():
    with pytest.raises(ValueError, match="size: 'huge'"):
        ou2_lf_biased("huge")

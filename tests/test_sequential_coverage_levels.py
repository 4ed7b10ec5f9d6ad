"""benchmarks/sequential_coverage.py: how much of an exact posterior an estimate's intervals hold."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from sequential_coverage import marginal_coverage  # noqa: E402


def _ranks(truth: np.ndarray, samples: np.ndarray) -> np.ndarray:
    return (samples[:, :, None] < truth[None, :, :]).sum(0).T  # (n, d): samples below each true value


@pytest.mark.parametrize("level", [0.5, 0.8, 0.95])
def test_an_exact_estimate_holds_each_level_and_a_narrow_or_shifted_one_less(level):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(2, 2000))                       # 2 000 true values of 2 parameters
    exact = rng.normal(size=(400, 2))                        # samples of the same distribution
    narrow = 0.5 * rng.normal(size=(400, 2))
    shifted = rng.normal(size=(400, 2)) + [1.0, 0.0]
    wide = 2.0 * rng.normal(size=(400, 2))
    held = marginal_coverage(_ranks(truth, exact), 400, level)
    np.testing.assert_allclose(held, level, atol=0.04)
    assert np.all(marginal_coverage(_ranks(truth, narrow), 400, level) < level - 0.1)
    shifted_held = marginal_coverage(_ranks(truth, shifted), 400, level)
    assert shifted_held[0] < level - 0.05 and abs(shifted_held[1] - level) < 0.04
    assert np.all(marginal_coverage(_ranks(truth, wide), 400, level) > level + 0.03)

"""benchmarks/sequential_coverage.py: how much of an exact posterior an estimate's intervals hold."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from sequential_coverage import check_against_under_coverage, marginal_coverage, paired_with_tsnpe  # noqa: E402


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


def _row(method, seed, covered):
    return {"task": "t", "method": method, "seed": seed, "observation": seed,
            "marginal_coverage": {"0.95": covered}}


def test_coverage_breaks_only_on_a_clear_loss_against_tsnpe_at_the_same_observations():
    rng = np.random.default_rng(1)
    tsnpe = [_row("tsnpe", s, [0.95, 0.95]) for s in range(6)]
    clear = [_row("mf-tsnpe", s, [0.95 + rng.normal(0, 0.01), 0.80 + rng.normal(0, 0.02)]) for s in range(6)]
    noisy = [_row("a-mf-tsnpe", s, [0.95, 0.95 + (0.15 if s % 2 else -0.15)]) for s in range(6)]
    unpaired = [_row("mf-tsnpe", 99, [0.0, 0.0])]  # no TSNPE run at its observation: left out
    result = paired_with_tsnpe(tsnpe + clear + noisy + unpaired)["t"]
    assert result["mf-tsnpe"]["pairs"] == 6 and result["mf-tsnpe"]["breaks"]
    assert result["mf-tsnpe"]["tsnpe_minus_method"]["mean"][1] == pytest.approx(0.15, abs=0.03)
    assert result["a-mf-tsnpe"]["pairs"] == 6 and not result["a-mf-tsnpe"]["breaks"]


def test_the_check_is_counted_against_material_under_coverage():
    rows = [dict(_row("a-mf-tsnpe", 0, [0.95, 0.70]), check="biased"),          # flags, under-covers
            dict(_row("a-mf-tsnpe", 1, [0.95, 0.70]), check="calibrated"),      # misses
            dict(_row("a-mf-tsnpe", 2, [0.95, 0.90]), check="over-confident"),  # false alarm
            dict(_row("a-mf-tsnpe", 3, [0.95, 0.90]), check="under-confident"), # neither
            dict(_row("tsnpe", 4, [0.5, 0.5]), check=None)]                     # no check: left out
    assert check_against_under_coverage(rows) == {
        "flags_and_under_covers": 1, "flags_only": 1, "under_covers_only": 1, "neither": 1, "runs": 4, "agree": 2,
        "level": "0.95", "floor": 0.85}

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


def _correction_row(seed, chain_sigma, scratch_sigma, disagree, shift_sigma=0.1):
    side = lambda sigma, c2st: {"marginal_coverage": {"0.95": [0.95, sigma]}, "c2st": c2st,  # noqa: E731
                                "marginals": {"median": [0.0, shift_sigma], "sd": [1.0, 1.0]}}
    return {"store": f"s/t-seed{seed}", "run": f"r{seed}", "task": "t", "method": "mf-tsnpe", "seed": seed, "observation": seed,
            "chain": side(chain_sigma, 0.6), "from_scratch": {**side(scratch_sigma, 0.8),
                                                               "marginals": {"median": [0.0, 0.0], "sd": [1.0, 1.0]}},
            "mixture": side((chain_sigma + scratch_sigma) / 2, 0.7),
            "scratch_check": {"shift": [0.0, shift_sigma], "threshold": 1.25, "disagree": disagree}}


def test_the_validation_pairs_each_kept_estimate_with_tsnpe_and_the_rule_keeps_from_scratch_where_it_flagged():
    from scratch_check_validation import validation

    tsnpe = [{"store": f"s/t-seed{s}", "task": "t", "method": "tsnpe", "seed": s, "observation": s, "c2st": {"euler-maruyama": 0.8},
              "marginal_coverage": {"0.95": [0.95, 0.95 + 0.01 * s]}} for s in range(4)]
    rows = [_correction_row(s, 0.5 + 0.02 * s, 0.95, disagree=s == 0) for s in range(4)]
    rows.append({**_correction_row(3, 0.1, 0.1, disagree=True), "store": "s/t-seed3-select"})  # left out
    out = validation(tsnpe, rows)["t"]
    assert out["mf-tsnpe"]["chain"]["against_tsnpe"]["breaks"]            # the chain under-covers sigma
    assert not out["mf-tsnpe"]["from_scratch"]["against_tsnpe"]["breaks"]
    assert out["mf-tsnpe"]["flagged"] == "1 of 4"
    rule = out["mf-tsnpe"]["rule"]                                         # from scratch on seed 0 only
    assert rule["c2st_mean"] == pytest.approx((0.8 + 3 * 0.6) / 4)
    assert rule["coverage_95_mean"][1] == pytest.approx((0.95 + 0.52 + 0.54 + 0.56) / 4, abs=1e-3)
    assert out["tsnpe"]["runs"] == 4


def test_the_rule_grid_reads_the_shift_and_keeps_the_declared_criterion():
    from scratch_check_rule import at_threshold, choose, shift

    rows = [_correction_row(s, 0.5, 0.95, disagree=False, shift_sigma=s) for s in (0.4, 1.1, 2.0)]
    rows += [{**_correction_row(9, 0.96, 0.95, disagree=False, shift_sigma=1.4), "task": "ou2"}]
    assert [round(shift(r), 3) for r in rows] == [0.4, 1.1, 2.0, 1.4]
    low, high = at_threshold(rows, 1.0), at_threshold(rows, 1.5)
    assert (low["flagged"], low["chain_under_covering_flagged"], low["flagged_ou2_in_order"]) == (3, 2, "1 of 1")
    assert (high["flagged"], high["kept_under_covering"]) == (1, 2)
    # Fewest kept under-coverers: 1.0 (one), allowed as it flags at most 2 OU2 runs with the LF in order.
    assert choose([low, high])["threshold"] == 1.0

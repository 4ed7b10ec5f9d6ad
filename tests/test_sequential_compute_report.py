"""benchmarks/sequential_compute_report.py: the NPE budget that matches, and what a sequential run is charged."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from sequential_compute_report import break_even_hf_cost, matching, run_cpu  # noqa: E402

#: NPE's NLTP falls with its budget, except one step up (as docs/pyramidal-table.json's curve does).
CURVE = {50: {"nltp": -2.0, "cpu": 15.0}, 100: {"nltp": -4.0, "cpu": 30.0}, 200: {"nltp": -3.5, "cpu": 60.0},
         1000: {"nltp": -6.0, "cpu": 300.0}}


def test_the_first_crossing_is_interpolated_on_log_budget():
    # -3.0 lies halfway between 50 (-2.0) and 100 (-4.0): the geometric mean of the two budgets.
    assert matching(CURVE, -3.0, "hf") == pytest.approx(np.sqrt(50 * 100))
    assert matching(CURVE, -3.0, "cpu") == pytest.approx(np.sqrt(15.0 * 30.0))
    # -5.0 is first reached after 200's step up: between 200 (-3.5) and 1 000 (-6.0), 3/5 of the way.
    assert matching(CURVE, -5.0, "hf") == pytest.approx(np.exp(np.log(200) + 0.6 * np.log(5)))


def test_below_the_first_point_and_beyond_the_last():
    assert matching(CURVE, -1.0, "hf") == 50 and matching(CURVE, -1.0, "cpu") == 15.0
    assert np.isnan(matching(CURVE, -7.0, "hf"))


def test_a_run_is_charged_the_lf_and_the_pretraining_it_reused():
    document = {"variant": "pyramidal-reduced", "costs": [{"lf_pyramidal-reduced": 0.01}, {"lf_pyramidal-reduced": 0.03}],
                "runs": {}}
    first = {"seed": 0, "lf": 1000, "pretrain_cpu_now": 40.0, "run_own_cpu_seconds": 50.0, "command_cpu_seconds": 5.0}
    reusing = {**first, "pretrain_cpu_now": 0.0, "run_own_cpu_seconds": 30.0}
    other_seed = {**first, "seed": 1, "pretrain_cpu_now": 70.0}
    document["runs"] = {"a": first, "b": reusing, "c": other_seed}
    parts = run_cpu(document, reusing)
    # LF at the median measured cost (0.02), the pretraining its seed's first run recorded, its own part.
    assert parts == {"lf_simulation": pytest.approx(20.0), "pretraining": 40.0, "hf_and_rounds": 30.0,
                     "command": 5.0, "total": pytest.approx(95.0)}
    # NPE uses no LF: nothing charged for it.
    npe = {**first, "lf": 0, "pretrain_cpu_now": 0.0}
    assert run_cpu(document, npe)["total"] == pytest.approx(55.0)


def test_the_hf_cost_at_which_a_run_and_its_matching_npe_cost_the_same():
    # 50 HF at 0.2 s (10 s) + 190 s of the rest, against NPE's 400 HF (80 s) + 20 s of training.
    c = break_even_hf_cost(200.0, 50, 100.0, 400.0, 0.2)
    assert c == pytest.approx((190.0 - 20.0) / 350.0)
    assert 190.0 + 50 * c == pytest.approx(20.0 + 400 * c)  # the same CPU at that cost
    assert np.isnan(break_even_hf_cost(200.0, 500, 100.0, 400.0, 0.2))  # NPE needs fewer HF: no such cost

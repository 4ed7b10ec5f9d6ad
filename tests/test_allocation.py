"""The compute-budget planner (issue 18): learning curves, the next step, and a planned run."""

from __future__ import annotations

import numpy as np
import pytest

from mfsbi.inference import Evaluation, fit_learning_curve, next_step

FIDELITIES = ("lf", "hf")


def _truth(counts) -> float:
    # A known additive power law: HF data matter more per simulation than LF data.
    return -1.0 + 3.0 * counts["hf"] ** -0.5 + 1.0 * counts["lf"] ** -0.3


def _grid() -> list[Evaluation]:
    counts = [{"lf": lf, "hf": hf} for lf in (500, 1000, 2000, 4000, 8000) for hf in (20, 40, 80, 160)]
    return [Evaluation(c, _truth(c)) for c in counts]


def test_the_fit_recovers_a_known_learning_curve():
    curve = fit_learning_curve(_grid(), FIDELITIES, prior_weight=1e-3)
    assert curve.rate["hf"] == pytest.approx(0.5, abs=0.05) and curve.rate["lf"] == pytest.approx(0.3, abs=0.05)
    assert curve.scale["hf"] == pytest.approx(3.0, rel=0.15) and curve.rms_residual < 1e-3
    assert curve.predict({"lf": 16000, "hf": 320}) == pytest.approx(_truth({"lf": 16000, "hf": 320}), abs=0.01)


def test_with_two_points_the_rate_stays_near_its_prior_and_scales_stay_non_negative():
    worse = [Evaluation({"lf": 100, "hf": 10}, 1.0), Evaluation({"lf": 100, "hf": 20}, 1.2)]  # noise: more was worse
    curve = fit_learning_curve(worse, FIDELITIES)
    assert curve.scale["hf"] >= 0 and 0.05 <= curve.rate["hf"] <= 2.0
    assert curve.predict({"lf": 100, "hf": 40}) <= curve.predict({"lf": 100, "hf": 20}) + 1e-9


@pytest.mark.parametrize("hf_cost, expected", [(0.01, "hf"), (1000.0, "lf")])
def test_the_step_with_the_most_gain_per_second_wins(hf_cost, expected):
    curve = fit_learning_curve(_grid(), FIDELITIES, prior_weight=1e-3)
    step = next_step(curve, {"lf": 1000, "hf": 20}, seconds_per_simulation={"lf": 0.01, "hf": hf_cost},
                     retraining_seconds={"lf": 10.0, "hf": 1.0}, remaining_seconds=1e9)
    assert step.fidelity == expected and step.counts[expected] == {"lf": 2000, "hf": 40}[expected]
    assert step.expected_gain > 0 and len(step.options) == 2


def test_it_stops_when_the_budget_or_the_gain_runs_out():
    curve = fit_learning_curve(_grid(), FIDELITIES, prior_weight=1e-3)
    costs = dict(seconds_per_simulation={"lf": 1.0, "hf": 10.0}, retraining_seconds={"lf": 10.0, "hf": 1.0})
    # Doubling HF (20 more at 10 s + 1 s) does not fit in 100 s; the 9 that fit do (>= a quarter of 20).
    rest = next_step(curve, {"lf": 1000, "hf": 20}, remaining_seconds=100.0, **costs)
    assert rest.fidelity == "hf" and rest.counts == {"lf": 1000, "hf": 29} and rest.expected_seconds == 91.0
    assert "the rest of the budget" in rest.reason and rest.expected_seconds <= 100.0
    # 4 HF fit in 50 s: less than a quarter of the full step, so it stops.
    poor = next_step(curve, {"lf": 1000, "hf": 20}, remaining_seconds=50.0, **costs)
    assert poor.fidelity is None and poor.reason.startswith("budget")
    saturated = next_step(curve, {"lf": 1000, "hf": 20}, remaining_seconds=1e9, min_gain=10.0, **costs)
    assert saturated.fidelity is None and saturated.reason.startswith("gain")


def test_bad_evaluations_are_refused():
    with pytest.raises(ValueError, match="evaluations"):
        fit_learning_curve([], FIDELITIES)
    with pytest.raises(ValueError, match="not finite"):
        fit_learning_curve([Evaluation({"lf": 1, "hf": 1}, float("nan"))], FIDELITIES)


def test_a_planned_run_spends_its_budget_and_keeps_the_best_allocation(tmp_path, prefect_server, dask_cluster_client):
    from prefect import flow

    from mfsbi.flows.amortized import run_amortized
    from mfsbi.flows.config import RunConfig
    from mfsbi.runtime.executor import DaskExecutor

    config = RunConfig(task="ou2", method="mf-npe", lf_sims=200, hf_sims=10, compute_budget=60.0,
                       simulation_cost={"lf": 0.001, "hf": 0.2}, planning_pairs=20, store=str(tmp_path / "store"),
                       seed=1, num_test_observations=0, num_nltp_pairs=10, posterior_samples=100, max_num_epochs=3,
                       lf_chunk_size=100, hf_chunk_size=10, transfer_guard="off")

    @flow
    def planned():
        return run_amortized(config, DaskExecutor(dask_cluster_client))

    summary = planned().to_dict()
    planner = summary["planner"]
    evaluations = planner["evaluations"]
    # The start, two probes of each fidelity, all their simulations together, then greedy steps until
    # the budget or the gain ran out; the result is where it ended, holding every simulation paid for.
    scored = [e["counts"] for e in evaluations]
    assert scored[:6] == [{"lf": 200, "hf": 10}, {"lf": 400, "hf": 10}, {"lf": 800, "hf": 10},
                          {"lf": 200, "hf": 20}, {"lf": 200, "hf": 40}, {"lf": 800, "hf": 40}]
    assert planner["decisions"][-1]["fidelity"] is None and planner["stop_reason"] == planner["decisions"][-1]["reason"]
    best = planner["chosen"]
    assert best == {f: max(c[f] for c in scored) for f in ("lf", "hf")} == scored[-1]
    # Declared costs are what is charged: 0.2 s per HF simulation, the 20 planning pairs included.
    ledger = planner["ledger"]
    assert ledger["simulation_seconds"]["hf"] == pytest.approx(0.2 * ledger["simulated"]["hf"])
    assert ledger["simulated"]["hf"] >= 20 + 20
    assert ledger["spent_seconds"] == pytest.approx(sum(ledger["simulation_seconds"].values()) + ledger["training_seconds"],
                                                    abs=0.01)
    assert summary["train"]["simulations"] == best["hf"]
    assert summary["planner_plot"].endswith("learning-curves.png") and np.isfinite(summary["metrics"]["nltp"])


@pytest.mark.parametrize("arguments, message", [
    (["--compute-budget", "abc"], "--compute-budget: 'abc' is not a duration"),
    (["--compute-budget", "-5"], "--compute-budget: Input should be greater than 0"),
    (["--method", "npe", "--compute-budget", "1h"], "--compute-budget: npe takes counts"),
    (["--compute-budget", "1h", "--simulation-cost", "xf=1"], "--simulation-cost: 'xf' is not a fidelity of this run"),
    (["--compute-budget", "1h", "--simulation-cost", "hf=abc"], "--simulation-cost: 'hf=abc' is not fidelity=seconds"),
    (["--compute-budget", "1h", "--ensemble", "3"], "--ensemble: the compute-budget planner trains one estimator"),
])
def test_bad_budgets_are_refused_with_one_line_and_nothing_written(tmp_path, arguments, message):
    from typer.testing import CliRunner

    from mfsbi.app.cli import app

    result = CliRunner().invoke(app, ["run", "--task", "ou2", *arguments, "--store", str(tmp_path / "store")])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "store").exists()


def test_durations_parse():
    from mfsbi.flows.options import parse_duration

    assert [parse_duration(v) for v in ("2h", "90m", "45s", "1.5h", "3600", 7.0)] == [7200, 5400, 45, 5400, 3600, 7.0]

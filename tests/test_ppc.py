"""`mfsbi ppc`: the predictive rule on synthetic draws, and the command end to end on a tiny OU2 run."""

import json

import numpy as np
import pytest
from prefect import flow
from typer.testing import CliRunner

from mfsbi.app.cli import app
from mfsbi.inference.predictive import minimum_draws, predictive_check, predictive_p_values

runner = CliRunner()


# ---- the rule ---------------------------------------------------------------------------------

def test_the_rank_p_value_counts_draws_on_each_side():
    draws = np.arange(10.0)[:, None]
    assert predictive_p_values(draws, np.array([4.5]))[0] == 1.0
    assert predictive_p_values(draws, np.array([-1.0]))[0] == pytest.approx(2 / 11)
    assert predictive_p_values(draws, np.array([9.0]))[0] == pytest.approx(4 / 11)  # a tie counts on both sides
    assert minimum_draws(10) == 399 and minimum_draws(2) == 79


def test_an_observation_among_the_draws_is_typical_and_one_far_out_is_a_misfit_naming_its_statistic():
    rng = np.random.default_rng(0)
    draws = rng.normal(size=(400, 3))
    inside = predictive_check(draws, np.array([0.3, -0.5, 1.0]), names=("a", "b", "c"))
    assert inside.status == "typical" and inside.flagged == ()
    assert inside.verdict.startswith("x_o is typical of the posterior predictive")
    outside = predictive_check(draws, np.array([0.3, 8.0, 1.0]), names=("a", "b", "c"))
    assert outside.misfit and outside.flagged == ("b",)
    assert "statistic b falls outside the 98.3 % predictive interval" in outside.verdict
    assert outside.distance[1] > 5 and outside.p_value[1] == pytest.approx(2 / 401)


def test_too_few_draws_are_inconclusive_not_typical_and_say_how_many_are_needed():
    draws = np.random.default_rng(1).normal(size=(20, 10))
    check = predictive_check(draws, np.full(10, 50.0))
    assert check.status == "inconclusive" and "give -n 399 or more" in check.verdict


def test_nan_draws_are_left_out_per_statistic():
    draws = np.random.default_rng(2).normal(size=(200, 2))
    draws[:50, 0] = np.nan
    check = predictive_check(draws, np.array([0.0, 30.0]), names=("a", "b"))
    assert check.num_draws == 150 and check.flagged == ("b",)


def test_the_false_alarm_rate_on_exchangeable_draws_is_at_most_the_level():
    """x_o drawn like the draws (a calibrated predictive): the verdict may call misfit at most ~5 % of the time."""
    rng = np.random.default_rng(3)
    alarms = [predictive_check(rng.standard_exponential((80, 2)), rng.standard_exponential(2)).misfit
              for _ in range(600)]
    assert np.mean(alarms) <= 0.07  # level 0.05; 600 trials: SD under 0.009


# ---- the command -------------------------------------------------------------------------------

def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@flow
def _tiny_run(store: str):
    from mfsbi.flows.amortized import run_amortized
    from mfsbi.flows.config import RunConfig
    from mfsbi.runtime.executor import SerialExecutor

    config = RunConfig(task="ou2", method="npe", hf_sims=20, store=store, seed=0, num_test_observations=0,
                       num_nltp_pairs=0, max_num_epochs=3, hf_chunk_size=10)
    return run_amortized(config, SerialExecutor()).to_dict()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, prefect_server):
    """A trained NPE run on 20 OU2 HF simulations, and an x_o."""
    from mfsbi.simulators import get_task

    folder = tmp_path_factory.mktemp("ppc")
    summary = _tiny_run(str(folder / "store"))
    x_o = folder / "x_o.npy"
    np.save(x_o, get_task("ou2").high_fidelity(np.array([[1.5, 0.3]]), seed=0)[0])
    return folder / "store", x_o, f"ou2/{summary['run']}"


def _files(store):
    return sorted((str(p.relative_to(store)), p.stat().st_size) for p in store.rglob("*") if p.is_file())


def test_ppc_end_to_end_budget_reuse_and_growth(tiny_run, shared_dask):
    from mfsbi.flows.ppc_plan import observation_tag
    from mfsbi.storage import SimulationStore

    store, x_o, prefix = tiny_run
    before = _files(store)
    refused = _invoke("ppc", "--store", store, "--observation", x_o, "-n", 41, "--budget", 40)
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1, refused.output
    assert "exceed the PPC budget of 40" in refused.output and "--budget" in refused.output
    assert _files(store) == before  # nothing written

    result = _invoke("ppc", "--store", store, "--observation", x_o, "-n", 40)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "ppc: 40 posterior draws" in out and "new now: 40 HF" in out and "measured on ou2/hf" in out
    assert out.index("new now: 40 HF") < out.index("Prefect API")  # the cost before anything is spent
    assert "verdict:" in out and "x0" in out

    tag = observation_tag(np.load(x_o))
    table = f"ou2-ppc.{prefix.split('/')[1]}.{tag}.seed0"
    handle = SimulationStore(str(store), mode="r")
    hf, lf = handle.table(table, "hf"), handle.table(table, "lf")
    assert hf.counts()["ok"] == 40 and hf.num_rows == 40 and lf.counts()["ok"] == 40
    assert hf.budget().total == 40 and hf.budget().reserved == 40
    theta_hf, x_hf = hf.read("ok")
    theta_lf, _ = lf.read("ok")
    assert np.array_equal(theta_hf, theta_lf)  # LF twins of the same draws
    summary = json.loads(handle.read_artifact(f"{prefix}/ppc-{tag}-seed0-n40.json"))
    assert summary["num_draws"] == 40 and summary["budget"] == {"total": 40, "reserved": 40}
    assert summary["simulated_now"] == {"hf": 40, "lf": 40}
    assert summary["tables"] == {"hf": f"{table}/hf", "lf": f"{table}/lf"}
    assert len(summary["statistics"]) == 10 and summary["status"] in ("typical", "misfit", "inconclusive")
    assert all({"p_value", "distance", "interval", "lf"} <= set(s) for s in summary["statistics"])
    assert summary["verdict"] in out
    png = handle.read_artifact(f"{prefix}/ppc-{tag}-seed0-n40.png")
    assert png.startswith(b"\x89PNG")
    _assert_published(f"ppc-{prefix}-{tag}-seed0")

    status = _invoke("status", store)
    assert "ppc (own budget, outside the run's)" in status.output and "ppc (outside the budget)" in status.output

    again = _invoke("ppc", "--json", "--store", store, "--observation", x_o, "-n", 40)
    assert again.exit_code == 0, again.output
    assert "new now: 0 HF" in again.stderr
    repeated = json.loads(again.stdout)
    assert repeated["simulated_now"] == {"hf": 0, "lf": 0}  # same command and seed: nothing spent again
    assert repeated["statistics"] == summary["statistics"]

    grown = _invoke("ppc", "--json", "--store", store, "--observation", x_o, "-n", 50)
    assert grown.exit_code == 0, grown.output
    assert json.loads(grown.stdout)["simulated_now"] == {"hf": 10, "lf": 10}
    theta_now, x_now = SimulationStore(str(store), mode="r").table(table, "hf").read("ok")
    assert np.array_equal(theta_now[:40], theta_hf) and np.array_equal(x_now[:40], x_hf)


def _assert_published(key_start: str) -> None:
    import re

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    key = re.sub(r"[^a-z0-9]+", "-", key_start.lower()).strip("-")[:90]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{key}-plot",
                                                                                                     f"{key}-table"])))
    assert {a.type for a in artifacts} == {"image", "markdown"}


def test_ppc_of_a_store_without_a_run_is_one_line(tmp_path):
    x_o = tmp_path / "x_o.npy"
    np.save(x_o, np.zeros(10))
    result = _invoke("ppc", "--store", tmp_path / "nothing", "--observation", x_o, "-n", 10)
    assert result.exit_code == 2 and result.output.startswith("error: --store")
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "nothing").exists()


# ---- names, plausibility and traces -------------------------------------------------------------

def test_the_tasks_statistics_are_named_and_the_networks_plausible_fraction_is_counted():
    from mfsbi.flows.ppc import _fraction_plausible
    from mfsbi.flows.ppc_plan import plausible_range, statistic_names
    from mfsbi.flows.ppc_traces import has_traces
    from mfsbi.simulators import get_task

    network, cell, ou2 = get_task("plastic-network-tiny"), get_task("pyramidal"), get_task("ou2")
    assert statistic_names(network) == ("rate_E", "rate_I") and plausible_range(network) == (1.0, 50.0)
    assert statistic_names(cell) == ("spike_count", "rest_mean", "rest_std", "stimulus_mean")
    assert statistic_names(ou2)[-1] == "x9" and plausible_range(ou2) is None
    assert has_traces(cell) and has_traces(get_task("pyramidal-reduced")) and not has_traces(network)
    rates = np.array([[5.0, 10.0], [0.5, 10.0], [5.0, 60.0], [np.nan, 3.0]])
    assert _fraction_plausible(rates, (1.0, 50.0)) == pytest.approx(1 / 3)  # a failed row is not counted


def test_a_traces_row_is_placed_in_its_batch_by_its_seed_run_within_its_chunk():
    from mfsbi.flows.ppc_traces import _place_in_batch

    seeds = np.array([7, 7, 7, 7, 9, 9, 9, 9, 9, 5])  # chunk of 4, then a chunk grown twice
    assert [_place_in_batch(seeds, r, 4) for r in (0, 3, 4, 7, 8, 9)] == [0, 3, 0, 3, 0, 0]


def test_the_plot_draws_a_panel_per_statistic_and_the_traces_below():
    from mfsbi.flows.ppc_plot import ppc_png

    rng = np.random.default_rng(4)
    hf = rng.normal(size=(100, 5))
    check = predictive_check(hf, np.zeros(5))
    times = np.linspace(0, 100, 50)
    traces = [(0, "hf", times, np.sin(times), 0.1), (0, "lf", times, np.cos(times), 0.1)]
    plain, with_traces = ppc_png(check, hf, hf + 1, "t"), ppc_png(check, hf, None, "t", traces=traces)
    assert plain.startswith(b"\x89PNG") and with_traces.startswith(b"\x89PNG") and plain != with_traces


def test_the_estimate_counts_pending_and_new_rows_and_refuses_a_table_of_other_draws(tmp_path):
    import dataclasses

    from mfsbi.flows.ppc import _reserve_draws
    from mfsbi.flows.ppc_plan import DrawsMismatchError, PpcPlan, estimate
    from mfsbi.simulators import get_task
    from mfsbi.storage import SimulationStore

    task = get_task("ou2")
    draws = task.sample_prior(30, 0)
    plan = PpcPlan(store=str(tmp_path / "store"), run="ou2/npe-hf20-seed0", task="ou2", x_o=[0.0] * 10,
                   theta=draws[:20].tolist(), budget=20, seed=0, chunk_size=10)
    store = SimulationStore(plan.store)  # a run's store, without the check's table yet
    first = estimate(plan, task)
    assert (first.new_hf, first.new_lf, first.how, first.traces) == (20, 20, "documented", 0)
    _reserve_draws(store, task, plan)  # reserved, not simulated: still to do
    assert estimate(plan, task).new_hf == 20
    grown = dataclasses.replace(plan, theta=draws.tolist(), budget=30)
    assert estimate(grown, task).new_hf == 30 and "PPC budget 30" in estimate(grown, task).line(grown)
    with pytest.raises(DrawsMismatchError, match="holds other posterior draws"):
        estimate(dataclasses.replace(plan, theta=(draws[:20] * 1.01).tolist()), task)

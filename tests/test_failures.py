"""Simulator failures: exceptions, NaN/inf, hangs (the per-simulation timeout), crashes, and jobs run twice."""

import time

import numpy as np
import pytest

from mfsbi.runtime.executor import SerialExecutor
from mfsbi.runtime.isolation import simulate_isolated
from mfsbi.runtime.simulation import SimulationFailureError, ensure_rows, run_pending
from mfsbi.runtime.batches import BatchJob, simulate_batch
from mfsbi.runtime.training_jobs import read_training_data
from mfsbi.runtime.worker_cache import task_for
from mfsbi.simulators import get_task
from mfsbi.simulators.faults import FaultPlan, FaultySimulator
from mfsbi.storage import SimulationStore

SPEC = "mfsbi.simulators.faults:ou2"


@pytest.fixture
def faults(monkeypatch, tmp_path):
    """Sets the fault plan (inherited by isolated child processes); returns the call log's path."""
    log = tmp_path / "calls.log"
    monkeypatch.setenv("MFSBI_FAULTS_LOG", str(log))

    def plan(text: str):
        monkeypatch.setenv("MFSBI_FAULTS", text)
        task_for.cache_clear()  # workers resolve a task once per process; here the plan changes
        return get_task(SPEC)

    plan.log = log
    return plan


def _calls(log) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def _theta_with(task, plan: str, n: int, hangs: int) -> np.ndarray:
    """Prior draws of which exactly ``hangs`` rows hang under the plan."""
    simulator = FaultySimulator(None, "hf", FaultPlan.parse(plan))
    for seed in range(10_000):
        theta = task.sample_prior(n, seed)
        if (simulator.faults(theta) == "hang").sum() == hangs:
            return theta
    raise AssertionError("no such draw")


def test_fault_plan_parses_and_refuses_bad_items():
    assert FaultPlan.parse("hang=0.1,on=lf+hf").on == ("lf", "hf")
    for bad in ("bogus=1", "hang", "hang=2", "nan=0.6,inf=0.6", "on=xf", "hf_delay=-1"):
        with pytest.raises(ValueError, match="MFSBI_FAULTS"):
            FaultPlan.parse(bad)


def test_a_hung_simulation_is_killed_after_the_timeout(faults):
    task = faults("hang=1")
    theta = task.sample_prior(3, 0)
    started = time.perf_counter()
    x, reasons = simulate_isolated(SPEC, "hf", theta, 1, task.x_dim, timeout=1.0)
    assert time.perf_counter() - started < 30  # startup (imports) + 1 s, not the simulator's 10^6 s
    assert np.isnan(x).all()
    assert reasons == ["timeout: no result within 1 s (simulation_timeout)"] * 3


def test_a_crashing_simulator_fails_its_rows_and_not_the_worker(faults):
    task = faults("crash=1")
    x, reasons = simulate_isolated(SPEC, "hf", task.sample_prior(2, 0), 1, task.x_dim, timeout=60)
    assert np.isnan(x).all() and all(r.startswith("simulator process died (signal 11)") for r in reasons)


def test_an_isolated_batch_gives_the_same_values_as_in_process(faults):
    task = faults("")
    theta = task.sample_prior(5, 0)
    x, reasons = simulate_isolated(SPEC, "hf", theta, 7, task.x_dim, timeout=60)
    np.testing.assert_array_equal(x, task.high_fidelity(theta, 7))
    assert reasons == [""] * 5


def test_only_the_hung_row_of_a_batch_fails(faults, tmp_path):
    plan = "hang=0.1"
    task = faults(plan)
    theta = _theta_with(task, plan, 3, hangs=1)
    seed = 11
    store = SimulationStore(tmp_path / "store")
    table = store.require_table(task.name, "hf", theta_dim=2, x_dim=task.x_dim, chunk_size=3,
                                provenance={"simulator": "s", "simulator_version": "1", "config_hash": "h", "prior": "p"})
    table.reserve(theta, np.full(3, seed), round=0)
    result = simulate_batch(BatchJob(store.url, SPEC, task.name, "hf", ((0, 3, seed),), theta, timeout=1.0))
    hung = int(np.flatnonzero(FaultySimulator(None, "hf", FaultPlan.parse(plan)).faults(theta) == "hang")[0])
    assert (result.rows, result.ok, result.failed) == (3, 2, 1)
    assert table.failures() == [(hung, "timeout: no result within 1 s (simulation_timeout)")]
    assert len(_calls(faults.log)) == 1 + 3  # the batch, then each row in its own process


def test_a_job_run_twice_simulates_nothing_the_second_time(faults, tmp_path):
    task = faults("")
    store = SimulationStore(tmp_path / "store")
    table = ensure_rows(store, task, table=task.name, fidelity="hf", num_rows=20, chunk_size=10, seed=0,
                        config_hash="h")
    theta, _ = table.read("pending")
    job = BatchJob(store.url, SPEC, task.name, "hf", tuple((b.rows[0], b.rows[1], b.seed) for b in table.pending_batches()), theta)
    first = simulate_batch(job)
    stored = table.read("ok")[1].copy()
    second = simulate_batch(job)  # what Dask does when the worker died after writing
    assert (first.rows, first.skipped, second.rows, second.skipped) == (20, 0, 0, 20)
    assert len(_calls(faults.log)) == 2
    np.testing.assert_array_equal(table.read("ok")[1], stored)


@pytest.mark.parametrize("plan, reason", [("exception=0.3", "RuntimeError: injected fault"),
                                          ("nan=0.3", "non-finite output"), ("inf=0.3", "non-finite output")])
def test_failed_rows_keep_their_reason_and_never_train(faults, tmp_path, plan, reason):
    task = faults(plan)
    store = SimulationStore(tmp_path / "store")
    table = ensure_rows(store, task, table=task.name, fidelity="hf", num_rows=60, chunk_size=1, seed=0,
                        config_hash="h", budget=60)
    report = run_pending(SerialExecutor(), store.url, SPEC, table, table=task.name, fidelity="hf",
                         max_failure_fraction=1.0)
    simulator = FaultySimulator(None, "hf", FaultPlan.parse(plan))
    theta = np.concatenate([table.theta_rows(row, row + 1)[0] for row in range(60)])
    expected = np.flatnonzero(simulator.faults(theta) != "").tolist()
    assert expected and [row for row, _ in table.failures()] == expected
    assert all(reason in text for _, text in table.failures())
    assert report.failed == len(expected) and table.budget().reserved == 60  # failures spend budget
    theta, x = read_training_data(table, 60)
    assert len(theta) == 60 - len(expected) and np.isfinite(x).all()


def test_a_failure_rate_above_the_limit_stops_before_the_budget_is_spent(faults, tmp_path):
    task = faults("exception=0.5")
    store = SimulationStore(tmp_path / "store")
    table = ensure_rows(store, task, table=task.name, fidelity="hf", num_rows=200, chunk_size=1, seed=0,
                        config_hash="h", budget=200)
    with pytest.raises(SimulationFailureError, match=r"of \d+ HF simulations of 'ou2-faulty' failed \(limit 20%\)"):
        run_pending(SerialExecutor(), store.url, SPEC, table, table=task.name, fidelity="hf",
                    max_failure_fraction=0.2)
    counts = table.counts()
    assert counts["pending"] > 150 and len(_calls(faults.log)) == counts["ok"] + counts["failed"]

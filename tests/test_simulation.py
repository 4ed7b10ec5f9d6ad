"""Planning and simulating rows: determinism across executors, resume without re-simulation."""

import numpy as np
import pytest

from mfsbi.runtime.executor import DaskExecutor, SerialExecutor
from mfsbi.runtime.seeds import derive_seed
from mfsbi.runtime.simulation import SimulationFailureError, ensure_rows, run_pending
from mfsbi.simulators import get_task
from mfsbi.storage import BudgetExceededError, SimulationStore


def _plan(store, task, n, chunk=10, fidelity="hf", seed=1, budget=None, table="ou2"):
    return ensure_rows(store, task, table=table, fidelity=fidelity, num_rows=n, chunk_size=chunk,
                       seed=seed, config_hash=f"h{seed}-{chunk}", budget=budget)


def test_derive_seed_is_deterministic_and_distinct():
    assert derive_seed(1, "a", 2) == derive_seed(1, "a", 2)
    assert len({derive_seed(1, "a", k) for k in range(100)} | {derive_seed(2, "a", 0), derive_seed(1, "b", 0)}) == 102
    assert 0 <= derive_seed(2**62, "x") < 2**63


def test_growing_a_table_gives_the_same_parameters_as_creating_it_at_once(tmp_path):
    task = get_task("ou2")
    once = _plan(SimulationStore(tmp_path / "a"), task, 35)
    grown_store = SimulationStore(tmp_path / "b")
    _plan(grown_store, task, 13)
    grown = _plan(grown_store, task, 35)
    assert np.array_equal(once.read("pending")[0], grown.read("pending")[0])
    assert once.num_rows == grown.num_rows == 35


def test_serial_and_dask_executors_store_identical_simulations(tmp_path, dask_cluster_client):
    task = get_task("ou2")
    results = []
    for name, executor in (("serial", SerialExecutor()), ("dask", DaskExecutor(dask_cluster_client))):
        store = SimulationStore(tmp_path / name)
        table = _plan(store, task, 95, chunk=10, fidelity="lf")
        report = run_pending(executor, store.url, "ou2", table, table="ou2", fidelity="lf")
        assert report.simulated == 95 and report.failed == 0
        results.append(table.read("ok"))
    assert np.array_equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])


def test_rerun_simulates_only_pending_rows(tmp_path):
    task = get_task("ou2")
    store = SimulationStore(tmp_path / "s")
    table = _plan(store, task, 40)
    executor = SerialExecutor()
    # Simulate the first two batches only, as if the process died afterwards.
    first_two = SimulationStore(tmp_path / "s").table("ou2", "hf").pending_batches()[:2]
    from mfsbi.runtime.batches import BatchJob, simulate_batch

    theta, _ = table.read("pending")
    for batch in first_two:
        start, stop = batch.rows
        simulate_batch(BatchJob(store.url, "ou2", "ou2", "hf", ((start, stop, batch.seed),), theta[start:stop]))
    before = table.read("ok")[1].copy()
    report = run_pending(executor, store.url, "ou2", SimulationStore(tmp_path / "s").table("ou2", "hf"),
                         table="ou2", fidelity="hf")
    assert report.simulated == 20
    reopened = SimulationStore(tmp_path / "s").table("ou2", "hf")
    assert reopened.counts()["ok"] == 40 and reopened.counts()["pending"] == 0
    assert np.array_equal(reopened.read("ok")[1][:20], before)
    # Nothing is left: a third pass simulates nothing.
    assert run_pending(executor, store.url, "ou2", reopened, table="ou2", fidelity="hf").simulated == 0


def test_hf_budget_is_a_hard_limit(tmp_path):
    task = get_task("ou2")
    store = SimulationStore(tmp_path / "s")
    table = _plan(store, task, 20, budget=20)
    with pytest.raises(BudgetExceededError):
        table.reserve(np.full((1, 2), 0.5), np.zeros(1, dtype=np.int64))
    assert table.num_rows == 20


class _Broken:
    def __call__(self, theta, seed):
        raise RuntimeError("solver diverged")


def test_failing_simulator_stops_the_run_with_its_reason(tmp_path, monkeypatch):
    import dataclasses

    import mfsbi.runtime.batches as batches

    task = get_task("ou2")
    broken = dataclasses.replace(task, high_fidelity=_Broken())
    monkeypatch.setattr(batches, "task_for", lambda spec: broken)
    store = SimulationStore(tmp_path / "s")
    table = _plan(store, task, 40)
    with pytest.raises(SimulationFailureError, match="solver diverged"):
        run_pending(SerialExecutor(), store.url, "ou2", table, table="ou2", fidelity="hf",
                    max_failure_fraction=0.2)
    counts = SimulationStore(tmp_path / "s").table("ou2", "hf").counts()
    assert counts["failed"] == 20 and counts["ok"] == 0


def test_the_held_out_set_does_not_depend_on_how_many_pairs_are_asked_for(tmp_path, prefect_server):
    from prefect import flow

    from mfsbi.flows.config import RunConfig
    from mfsbi.flows.run import Run

    @flow
    def held_out(store, n):
        return Run.start(RunConfig(task="ou2", store=str(store), hf_chunk_size=10), SerialExecutor(),
                         device="cpu").test_pairs(n)

    theta5, x5 = held_out(tmp_path / "a", 5)
    theta100, x100 = held_out(tmp_path / "b", 100)
    assert len(x5) == 5 and len(x100) == 100
    assert np.array_equal(theta5, theta100[:5]) and np.array_equal(x5, x100[:5])


def test_jobs_are_sized_from_the_cost_of_a_simulation():
    from mfsbi.runtime.simulation import JOB_SECONDS, chunks_per_job

    assert chunks_per_job(None, 1000, 100, 2, 10) == 1  # unknown cost: one chunk per job
    assert chunks_per_job(1.0, 10, 100, 2, 10) == 1  # 1-s simulations: a chunk is 10 s already
    assert chunks_per_job(1e-6, 1000, 100, 2, 10) == 25  # microseconds: bounded by 2 jobs per worker
    assert chunks_per_job(1e-4, 1000, 100, 1, 10) == JOB_SECONDS / (1e-4 * 1000)  # ~JOB_SECONDS per job
    # Jobs of 20 on 2 workers would end with one worker alone on a fifth job: 17 gives 6 jobs, 3 each.
    assert chunks_per_job(1e-4, 1000, 100, 2, 10) == 17
    assert chunks_per_job(0.158, 10, 10, 2, 4) == 1  # 10 HF chunks on 2 workers: 5 jobs of 2 would be 3 + 2
    assert chunks_per_job(0.158, 10, 10, 1, 4) == 2
    assert chunks_per_job(1e-9, 100, 10_000, 1, 2**16) == 256 * 2**20 // (8 * 2**16 * 100)  # memory cap


class Counting(SerialExecutor):
    jobs = 0

    def map_unordered(self, fn, items, resources=None):
        Counting.jobs += len(items)
        return super().map_unordered(fn, items, resources)


def test_cheap_simulations_run_in_few_jobs_with_the_same_results(tmp_path):
    task = get_task("ou2")

    stored = {}
    for name, hint in (("one-chunk-jobs", 10.0), ("adaptive", 1e-6), ("measured", None)):
        store = SimulationStore(tmp_path / name)
        table = _plan(store, task, 400, chunk=10, fidelity="lf")
        Counting.jobs = 0
        report = run_pending(Counting(), store.url, "ou2", table, table="ou2", fidelity="lf", seconds_per_row=hint)
        assert report.simulated == 400
        stored[name] = (Counting.jobs, table.read("ok")[1])
    assert stored["one-chunk-jobs"][0] == 40 and stored["adaptive"][0] == 2
    assert stored["measured"][0] == 1 + 2  # a first wave of one job measures the cost, then 2 jobs
    np.testing.assert_array_equal(stored["adaptive"][1], stored["one-chunk-jobs"][1])
    np.testing.assert_array_equal(stored["measured"][1], stored["one-chunk-jobs"][1])


@pytest.mark.parametrize(("cost", "jobs"), [(1.0, 20), (1e-6, 2)])
def test_hf_jobs_are_sized_like_lf_ones(tmp_path, cost, jobs):
    """Expensive HF simulations go one chunk per job (spread, stopped early); cheap ones are batched."""
    task = get_task("ou2")
    store = SimulationStore(tmp_path / "s")
    table = _plan(store, task, 200, chunk=10, fidelity="hf", budget=200)
    Counting.jobs = 0
    report = run_pending(Counting(), store.url, "ou2", table, table="ou2", fidelity="hf", seconds_per_row=cost)
    assert report.simulated == 200 and Counting.jobs == jobs

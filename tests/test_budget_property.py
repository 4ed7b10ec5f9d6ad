"""Property: over any rounds, budgets, chunk sizes, retries and crashes, the HF budget is never
exceeded and no row is simulated or stored twice."""

import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfsbi.flows.config import RunConfig
from mfsbi.flows.run import Run
from mfsbi.runtime.executor import SerialExecutor
from mfsbi.flows.sequential import reserve_round_once, round_sizes
from mfsbi.runtime.simulation import run_pending
from mfsbi.runtime.batches import BatchJob, simulate_batch
from mfsbi.simulators import get_task
from mfsbi.storage import BudgetExceededError, SimulationStore


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), budget=st.integers(1, 40), rounds=st.integers(1, 6), chunk=st.integers(1, 12))
def test_hf_budget_is_never_exceeded_and_no_row_is_simulated_twice(data, budget, rounds, chunk):
    rounds = min(rounds, budget)
    task = get_task("ou2")
    config = RunConfig(task="ou2", method="tsnpe", hf_sims=budget, rounds=rounds, hf_chunk_size=chunk)
    simulated_rows: list[int] = []

    def counting(job: BatchJob):
        for start, stop, _ in job.batches:
            simulated_rows.extend(range(start, stop))
        return simulate_batch(job)

    class CountingExecutor(SerialExecutor):
        def map_unordered(self, fn, items, resources=None):
            return super().map_unordered(counting, items, resources)

    with tempfile.TemporaryDirectory() as folder:
        store = SimulationStore(folder)
        run = Run(config, config.method_spec, task, store=store)
        table = store.require_table(run.own_table, "hf", theta_dim=2, x_dim=10, chunk_size=chunk,
                                    provenance={"simulator": "s", "simulator_version": "1", "config_hash": "h"})
        table.set_budget(budget)
        for r, size in enumerate(round_sizes(budget, rounds)):
            proposals = {"n": 0}

            def propose(size=size, r=r):
                proposals["n"] += 1
                return task.sample_prior(size, seed=r), {"round": r}

            # A round is attempted several times (retries, restarts): rows are reserved once.
            for _ in range(1 + data.draw(st.integers(0, 3), label=f"retries of round {r}")):
                reserve_round_once(run, table, r, propose)
            assert proposals["n"] == 1
            # A crash after some batches: the pending ones are simulated by the rerun, once.
            batches = table.pending_batches()
            done_before_crash = data.draw(st.integers(0, len(batches)), label=f"batches before crash {r}")
            theta_pending, _ = table.read("pending")
            offset = 0
            for batch in batches[:done_before_crash]:
                start, stop = batch.rows
                simulated_rows.extend(range(start, stop))
                simulate_batch(BatchJob(store.url, "ou2", run.own_table, "hf", ((start, stop, batch.seed),),
                                        theta_pending[offset: offset + stop - start]))
                offset += stop - start
            for _ in range(1 + data.draw(st.integers(0, 2), label=f"reruns of round {r}")):
                run_pending(CountingExecutor(), store.url, "ou2", table, table=run.own_table, fidelity="hf")
        # Spending beyond the budget is refused and writes nothing.
        try:
            table.reserve(task.sample_prior(1, seed=99), np.zeros(1, dtype=np.int64), round=rounds)
            raise AssertionError("a reservation beyond the budget was accepted")
        except BudgetExceededError:
            pass
        counts = table.counts()
        assert table.num_rows == counts["ok"] == budget
        assert table.budget().reserved == budget
        assert sorted(simulated_rows) == list(range(budget))  # every row simulated exactly once

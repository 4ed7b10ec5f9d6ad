"""What a run simulates: rows into its tables on the executor, its own HF table, the held-out test pairs.

:class:`RunSimulation` is the part of a :class:`~mfsbi.flows.run.Run` that simulates. The Prefect
task :func:`simulate_table` takes only what a simulation needs (executor, store, settings, task),
never the run.

Caching is off: the store is the cache. Rows already stored are never simulated again whatever
Prefect remembers, and Prefect's own caching mis-handles killed Dask workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NONE as NO_CACHE

from mfsbi.flows.config import RunConfig
from mfsbi.flows.plan import RunPlan
from mfsbi.runtime import progress
from mfsbi.runtime.executor import BatchExecutor
from mfsbi.runtime.simulation import SimulationReport, ensure_rows, provenance, run_pending
from mfsbi.simulators import Task
from mfsbi.storage import SimulationStore

__all__ = ["RunSimulation", "simulate_pending", "simulate_table"]


def simulate_pending(executor: BatchExecutor, store: SimulationStore, config: RunConfig, task: Task, sim_table, *,
                     table: str, fidelity: str) -> SimulationReport:
    """Simulates a table's pending rows on the executor, in jobs of whole chunks.

    Arguments:
        config: the run's settings (task name, failure tolerance, timeout); task: its simulators' task.
    Returns:
        What was simulated now and what the table holds.
    """
    step = f"simulate {fidelity.upper()} ({table})"
    report = run_pending(
        executor, store.url, config.task, sim_table, table=table, fidelity=fidelity,
        max_failure_fraction=config.max_failure_fraction, timeout=config.simulation_timeout,
        seconds_per_row=task.cost_seconds.get(fidelity),
        progress=lambda done, total: progress.report(step, done, total),
    )
    get_run_logger().info("%s/%s: simulated %d now (%d failed), %d ok in the store", table, fidelity,
                          report.simulated, report.failed, report.stored_ok)
    return report


# Internal objects (the executor, store and task) are passed through: no validation of them.
@task(name="simulate", cache_policy=NO_CACHE, task_run_name="simulate {fidelity} ×{num_rows} ({table})")
def simulate_table(executor: BatchExecutor, store: SimulationStore, config: RunConfig, task: Task, *, table: str,
                   fidelity: str, num_rows: int, chunk_size: int, seed: int, config_hash: str,
                   budget: int | None) -> SimulationReport:
    """Reserves rows drawn from the prior until the table holds ``num_rows``, then simulates the pending ones."""
    sim_table = ensure_rows(store, task, table=table, fidelity=fidelity, num_rows=num_rows, chunk_size=chunk_size,
                            seed=seed, config_hash=config_hash, budget=budget)
    return simulate_pending(executor, store, config, task, sim_table, table=table, fidelity=fidelity)


@dataclass
class RunSimulation:
    """The simulations of one run: its tables (named by its plan) in its store, simulated on its executor.

    Arguments:
        plan: the run's names, tables and seeds; store: the simulation store; executor: where jobs run.
    """

    plan: RunPlan
    store: SimulationStore
    executor: BatchExecutor

    def simulate(self, *, table: str, fidelity: str, num_rows: int, seed: int,
                 budget: int | None) -> SimulationReport:
        """Reserves prior draws until ``table`` holds ``num_rows``, then simulates the pending ones."""
        plan = self.plan
        chunk_size = plan.config.chunk_rows(fidelity, plan.task)
        return simulate_table(self.executor, self.store, plan.config, plan.task, table=table, fidelity=fidelity,
                              num_rows=num_rows, chunk_size=chunk_size, seed=seed,
                              config_hash=plan.config_hash(fidelity, chunk_size, seed), budget=budget)

    def simulate_pending(self, sim_table, *, table: str, fidelity: str) -> SimulationReport:
        """Simulates a table's pending rows on the executor, in jobs of whole chunks."""
        return simulate_pending(self.executor, self.store, self.plan.config, self.plan.task, sim_table,
                                table=table, fidelity=fidelity)

    def require_own_table(self):
        """The run's own HF table (runs at one observation), created with the run's HF budget."""
        plan = self.plan
        chunk = plan.config.chunk_rows("hf", plan.task)
        sim_table = self.store.require_table(
            plan.own_table, "hf", theta_dim=plan.task.theta_dim, x_dim=plan.task.x_dim, chunk_size=chunk,
            provenance=provenance(plan.task, "hf", plan.config_hash("hf", chunk, plan.config.seed)),
            parameter_names=plan.task.parameter_names,
        )
        if sim_table.budget() is None:
            sim_table.set_budget(plan.config.hf_sims)
        return sim_table

    def test_pairs(self, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The held-out HF test pairs (fixed by ``test_seed``, shared by every run; not part of any budget)."""
        plan, task = self.plan, self.plan.task
        if num_rows <= 0:
            return np.zeros((0, task.theta_dim)), np.zeros((0, task.x_dim))
        chunk = plan.config.chunk_rows("hf", task)
        # Whole chunks: a batch's random stream depends on its rows, so a half-filled chunk would give
        # other observations than a full one, and the held-out set would depend on its requested size.
        requested = -(-num_rows // chunk) * chunk
        self._announce_evaluation(requested)
        self.simulate(table=plan.test_table, fidelity="hf", num_rows=requested, seed=plan.config.test_seed,
                      budget=None)
        sim_table = self.store.table(plan.test_table, "hf")
        rows = sim_table.rows("ok")
        theta, x = sim_table.read("ok")
        keep = rows < num_rows
        return theta[keep], x[keep]

    def _announce_evaluation(self, requested: int) -> None:
        """Says, before any is simulated, how many HF simulations evaluation spends outside the budget and
        what they are expected to cost (the median measured HF simulation, else the task's documented cost)."""
        plan = self.plan
        existing = self.store.table(plan.test_table, "hf")
        missing = max(0, requested - (existing.num_rows if existing is not None else 0))
        if missing == 0:
            return
        measured = [t.seconds_per_row() for t in (existing, self.store.table(plan.hf_table, "hf")) if t is not None]
        measured = [s for s in measured if s is not None]
        if measured:
            each, how = measured[0], "measured"
        else:
            each, how = (getattr(plan.task, "cost_seconds", None) or {}).get("hf"), "documented"
        cost = "cost unknown" if each is None else f"about {missing * each:.0f} s of HF simulation ({each:.3g} s each, {how})"
        get_run_logger().warning("evaluation: simulating %d held-out HF test pairs outside the HF budget, %s; "
                                 "--test-pairs 0 skips them", missing, cost)

    def target_observation(self) -> tuple[np.ndarray, np.ndarray | None]:
        """x_o of a run at one observation and, for a held-out test observation, its true θ."""
        config = self.plan.config
        if config.observation is not None:
            return np.asarray(config.observation, dtype=np.float64), None
        theta, x = self.test_pairs(config.observation_index + 1)
        if len(x) <= config.observation_index:
            raise RuntimeError(f"held-out observation {config.observation_index} failed to simulate; pick another index")
        return x[config.observation_index], theta[config.observation_index]

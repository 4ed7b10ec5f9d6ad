"""A posterior predictive check, planned before anything is spent (no Prefect, no writes).

A :class:`PpcPlan` fixes the check: the run, x_o, the posterior draws (seeded, chunk by chunk), the
table ``<task>-ppc.<run>.<x_o tag>.seed<s>`` and the hard HF budget. :func:`estimate` says what
running it will simulate and cost, from the HF seconds per simulation the store has measured.
:mod:`mfsbi.flows.ppc` runs it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from mfsbi.flows.ppc_traces import TRACE_DRAWS, has_traces
from mfsbi.runtime.seeds import derive_seed
from mfsbi.runtime.simulation import theta_and_seeds
from mfsbi.simulators import Task
from mfsbi.simulators.network_model import PLAUSIBLE_RATES
from mfsbi.simulators.pyramidal import statistic_names as pyramidal_names
from mfsbi.storage import SimulationStore

__all__ = ["PPC_MARK", "DrawsMismatchError", "PpcEstimate", "PpcPlan", "check_draws", "draw_theta", "estimate",
           "is_ppc_table", "observation_tag", "plausible_range", "statistic_names"]

# In a PPC table's name (``<task>-ppc.<run>.<x_o tag>.seed<s>``): `mfsbi status` names its role from it.
PPC_MARK = "-ppc."


def is_ppc_table(name: str) -> bool:
    """Whether a table holds a predictive check's simulations."""
    return PPC_MARK in name


def observation_tag(x_o: np.ndarray) -> str:
    """``x`` and 8 hex digits of x_o's hash: which observation a check's table and files belong to."""
    values = [float(v) for v in np.asarray(x_o, dtype=np.float64).reshape(-1)]
    return "x" + hashlib.sha256(json.dumps(values).encode()).hexdigest()[:8]


def statistic_names(task: Task) -> tuple[str, ...]:
    """The names of x's entries where the task says them (pyramidal, network), else ``x0``, ``x1``, ..."""
    simulator = task.high_fidelity
    if task.name.startswith("plastic-network"):
        return ("rate_E", "rate_I")
    if hasattr(simulator, "statistics") and hasattr(simulator, "voltage"):  # the pyramidal cell's
        return pyramidal_names(simulator.statistics)
    return tuple(f"x{j}" for j in range(task.x_dim))


def plausible_range(task: Task) -> tuple[float, float] | None:
    """The network's plausible rates (both in 1-50 Hz, PAPER.md); None for other tasks."""
    if not task.name.startswith("plastic-network"):
        return None
    return PLAUSIBLE_RATES


def draw_theta(posterior, x_o: np.ndarray, num_draws: int, chunk_size: int, seed: int) -> np.ndarray:
    """Posterior draws at x_o, chunk by chunk (chunk c from a seed of ``(seed, c)``): a larger ``num_draws``
    begins with the rows of a smaller one, so a check grown later keeps the rows it has."""
    # deferred: flows.evaluation brings sbi, 2.2 s; `mfsbi ppc` imports this module before checking -n and --budget
    from mfsbi.flows.evaluation import sample_posterior

    chunks = [sample_posterior(posterior, x_o, chunk_size, derive_seed(seed, "ppc/theta", c))
              for c in range(-(-num_draws // chunk_size))]
    return np.concatenate(chunks)[:num_draws]


@dataclass(frozen=True)
class PpcPlan:
    """One predictive check, fixed before anything is spent.

    Arguments:
        store: the store; run: ``TASK/RUN``; task: the task (name or ``module:attribute``).
        x_o: the observation; theta: the posterior draws, shape ``(num_draws, d)`` as lists.
        budget: the hard HF budget of the check's table; seed: the check's seed.
        chunk_size: HF rows per chunk (the run's); max_failure_fraction, simulation_timeout: the run's.
        dask_address, n_workers, cluster: where to simulate, as for ``mfsbi run``.
    """

    store: str
    run: str
    task: str
    x_o: list[float]
    theta: list[list[float]]
    budget: int
    seed: int
    chunk_size: int
    max_failure_fraction: float = 0.2
    simulation_timeout: float | None = None
    dask_address: str | None = None
    n_workers: int | None = None
    cluster: str | None = None
    run_hf_table: str | None = None  # where the run measured its HF cost

    @property
    def num_draws(self) -> int:
        return len(self.theta)

    @property
    def tag(self) -> str:
        return observation_tag(np.asarray(self.x_o))

    @property
    def table(self) -> str:
        task_name, run_name = self.run.split("/", 1)
        return f"{task_name}{PPC_MARK}{run_name}.{self.tag}.seed{self.seed}"

    @property
    def stem(self) -> str:
        """The check's files beside the run: ``artifacts/<run>/<stem>.json`` and ``.png``."""
        return f"ppc-{self.tag}-seed{self.seed}-n{self.num_draws}"

    def config_hash(self, task: Task, fidelity: str) -> str:
        payload = {"task": self.task, "version": task.version, "fidelity": fidelity, "run": self.run,
                   "x_o": self.tag, "seed": self.seed, "chunk_size": self.chunk_size}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PpcEstimate:
    """What a check will simulate now, and its expected cost (``None``: unknown)."""

    new_hf: int
    new_lf: int
    hf_seconds_each: float | None
    lf_seconds_each: float | None
    how: str  # where the HF cost comes from
    traces: int = 0  # draws re-simulated at HF and LF for their raw traces (not stored)

    def line(self, plan: PpcPlan) -> str:
        """The line printed before anything is spent."""
        def cost(count: int, each: float | None) -> str:
            return "cost unknown" if each is None else f"about {count * each:.3g} s ({each:.3g} s each)"

        return (f"ppc: {plan.num_draws} posterior draws simulated at HF and LF in table {plan.table}, outside the "
                f"run's budget; PPC budget {plan.budget} HF simulations; new now: {self.new_hf} HF, "
                f"{cost(self.new_hf, self.hf_seconds_each)} of HF simulation ({self.how}), {self.new_lf} LF, "
                f"{cost(self.new_lf, self.lf_seconds_each)}"
                + (f"; and {self.traces} HF and {self.traces} LF re-simulated for their raw traces (not stored)"
                   if self.traces else ""))


def _to_simulate(sim_table, num_rows: int) -> int:
    if sim_table is None:
        return num_rows
    return sim_table.counts()["pending"] + max(0, num_rows - sim_table.num_rows)


class DrawsMismatchError(ValueError):
    """The check's table holds other posterior draws than the run's posterior gives now."""


def check_draws(plan: PpcPlan, sim_table) -> None:
    """Refuses a table whose stored draws are not the plan's first ones (the run was trained again).

    Raises:
        DrawsMismatchError: one line naming the table and the fix.
    """
    theta = np.asarray(plan.theta, dtype=np.float64)
    stored = theta_and_seeds(sim_table, min(sim_table.num_rows, len(theta)))[0]
    if not np.array_equal(stored, theta[:len(stored)]):
        raise DrawsMismatchError(f"--store: table {plan.table!r} holds other posterior draws than run {plan.run!r} "
                                 "gives now (was it trained again?); use another --seed or another --store")


def estimate(plan: PpcPlan, task: Task) -> PpcEstimate:
    """What :func:`run_ppc` will simulate, and what it will cost: the median HF seconds measured in the
    store (the check's table, else the run's HF table), else the task's documented cost.

    Raises:
        DrawsMismatchError: the check's table holds other draws (:func:`check_draws`).
    """
    store = SimulationStore(plan.store, mode="r")
    hf, lf = store.table(plan.table, "hf"), store.table(plan.table, "lf")
    if hf is not None:
        check_draws(plan, hf)
    measured = [(t.seconds_per_row(), name) for t, name in
                ((hf, plan.table), (store.table(plan.run_hf_table, "hf") if plan.run_hf_table else None,
                                    plan.run_hf_table)) if t is not None]
    measured = [(s, name) for s, name in measured if s is not None]
    documented = getattr(task, "cost_seconds", None) or {}
    if measured:
        hf_each, how = measured[0][0], f"measured on {measured[0][1]}/hf"
    else:
        hf_each, how = documented.get("hf"), "documented"
    lf_each = (lf.seconds_per_row() if lf is not None else None) or documented.get("lf")
    traces = min(TRACE_DRAWS, plan.num_draws) if has_traces(task) else 0
    return PpcEstimate(_to_simulate(hf, plan.num_draws), _to_simulate(lf, plan.num_draws), hf_each, lf_each, how,
                       traces)

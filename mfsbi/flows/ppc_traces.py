"""Raw traces for the predictive check's plot: the pyramidal cell's somatic voltage at a few posterior draws.

The store keeps statistics, not traces. Where the task's simulators can give the raw trace of one
row (``voltage(theta, seed, row)``, the pyramidal cell's), the first :data:`TRACE_DRAWS` draws that
simulated ok are simulated again at HF and LF, with their stored θ, batch seed and place in the
batch: the noise is the stored row's, so the trace is the one its statistics were computed from.
These few simulations are not stored and not in the PPC budget; the estimate line says them first.
The network's raw output is its rates, which are its statistics: nothing more to draw.
"""

from __future__ import annotations

import time

import numpy as np

from mfsbi.runtime.executor import BatchExecutor
from mfsbi.runtime.simulation import theta_and_seeds
from mfsbi.runtime.worker_cache import task_for
from mfsbi.simulators import Task

__all__ = ["TRACE_DRAWS", "Trace", "has_traces", "simulate_trace", "traces_of"]

# Draws whose traces are plotted: enough to see HF and LF apart, few enough to cost nothing.
TRACE_DRAWS = 3

Trace = tuple[int, str, np.ndarray, np.ndarray, float]  # row, fidelity, times (ms), voltage (mV), seconds


def has_traces(task: Task) -> bool:
    """Whether both the task's HF and LF simulators give a row's raw voltage trace."""
    return all(callable(getattr(task.simulator(f), "voltage", None)) for f in ("hf", "lf"))


def _place_in_batch(seeds: np.ndarray, row: int, chunk_size: int) -> int:
    """Row's index in the batch it was simulated in: a batch is a run of one seed within one chunk."""
    first = row
    while first > (row // chunk_size) * chunk_size and seeds[first - 1] == seeds[row]:
        first -= 1
    return row - first


def simulate_trace(item: tuple[str, str, int, np.ndarray, int, int]) -> Trace:
    """One row's trace, on a worker: ``(task spec, fidelity, row, θ, batch seed, place in batch)``."""
    spec, fidelity, row, theta, seed, place = item
    simulator = task_for(spec).simulator(fidelity)
    started = time.perf_counter()
    voltage = np.asarray(simulator.voltage(theta, seed, place), dtype=np.float64)
    return row, fidelity, simulator.dt * np.arange(voltage.size), voltage, time.perf_counter() - started


def traces_of(executor: BatchExecutor, spec: str, task: Task, hf_table, ok_rows: np.ndarray) -> list[Trace]:
    """The HF and LF traces of the first :data:`TRACE_DRAWS` rows in ``ok_rows`` (none for other tasks).

    Returns:
        One :data:`Trace` per row and fidelity, by row then fidelity (HF first).
    """
    rows = [int(r) for r in np.sort(ok_rows)[:TRACE_DRAWS]] if has_traces(task) else []
    if not rows:
        return []
    theta, seeds = theta_and_seeds(hf_table, max(rows) + 1)
    items = [(spec, fidelity, r, theta[r], int(seeds[r]), _place_in_batch(seeds, r, hf_table.chunk_size))
             for r in rows for fidelity in ("hf", "lf")]
    done = list(executor.map_unordered(simulate_trace, items))
    return sorted(done, key=lambda trace: (trace[0], trace[1] != "hf"))

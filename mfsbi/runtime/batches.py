"""Simulating a job of whole chunks on a Dask worker and storing it in one write.

No Prefect here: workers never talk to the Prefect API, so a local cluster needs no server of its own.
A job reopens the store by URL (cached per process) and writes its own result there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mfsbi.runtime.isolation import simulate_isolated
from mfsbi.runtime.seeds import derive_seed
from mfsbi.runtime.simulator_calls import call_simulator
from mfsbi.runtime.worker_cache import store_for, task_for
from mfsbi.simulators import Task
from mfsbi.storage import BatchOutput

__all__ = ["ISOLATION_FAILURES", "BatchJob", "BatchResult", "simulate_batch"]


# Reasons of a batch that took its whole process down: worth finding the guilty rows one by one.
ISOLATION_FAILURES = ("timeout:", "simulator process died", "simulator process did not start")


@dataclass(frozen=True)
class BatchJob:
    """Whole chunks of one table: every pending batch ``(start, stop, seed)`` of those chunks.

    A chunk is never split between two jobs, so two concurrent jobs never write the same chunk
    (zarr loses rows silently when they do: STACK.md). ``theta`` holds the batches' rows in order.
    """

    store_url: str
    task_spec: str
    table: str
    fidelity: str
    batches: tuple[tuple[int, int, int], ...]
    theta: np.ndarray
    # Seconds one simulation may take; None runs batches in the worker itself (no isolation cost).
    timeout: float | None = None

    @property
    def num_rows(self) -> int:
        return sum(stop - start for start, stop, _ in self.batches)


@dataclass(frozen=True)
class BatchResult:
    rows: int
    ok: int
    failed: int
    seconds: float
    first_reason: str | None
    # Rows found already stored (a re-run of this job after its worker died): not simulated again.
    skipped: int = 0


def _isolated(job: BatchJob, task: Task, theta: np.ndarray, seed: int) -> tuple[np.ndarray, list[str]]:
    """Simulates in a child process under the job's timeout (``n`` simulations: ``n`` × timeout).

    When the batch hangs or crashes its process, its rows are simulated again one per process, so
    that only the guilty rows fail. Those rows take seeds derived per row: deterministic, but not the
    values the undisturbed batch would have given (docs/decisions.md, failure policy).
    """
    n = len(theta)
    x, reasons = simulate_isolated(job.task_spec, job.fidelity, theta, seed, task.x_dim, job.timeout * n)
    if n == 1 or not any(r.startswith(ISOLATION_FAILURES) for r in reasons):
        return x, reasons
    for i in range(n):
        x[i: i + 1], (reasons[i],) = simulate_isolated(job.task_spec, job.fidelity, theta[i: i + 1],
                                                        derive_seed(seed, "row", i), task.x_dim, job.timeout)
    return x, reasons


def _pending(table, batches: tuple[tuple[int, int, int], ...]) -> list[bool]:
    """Whether each batch still has a pending row: one status read per run of adjacent batches."""
    flags: list[bool] = []
    i = 0
    while i < len(batches):
        j = i + 1
        while j < len(batches) and batches[j][0] == batches[j - 1][1]:
            j += 1
        start, stop = batches[i][0], batches[j - 1][1]
        mask = table.is_pending(start, stop)
        flags += [bool(mask[a - start: b - start].any()) for a, b, _ in batches[i:j]]
        i = j
    return flags


def simulate_batch(job: BatchJob) -> BatchResult:
    """Simulates a job's pending batches one after another, then stores them in one write.

    One write of a whole job is a few large zarr writes instead of four small ones per chunk
    (docs/performance.md); a job is about two seconds of simulation (``chunks_per_job``), which is
    what a worker killed mid-job loses. Batches already stored are skipped: Dask re-runs the jobs of
    a worker that died, including ones that had finished, and a stored simulation must never be paid
    for twice.
    """
    task = task_for(job.task_spec)
    table = store_for(job.store_url).table(job.table, job.fidelity)
    outputs: list[BatchOutput] = []
    ok = skipped = 0
    seconds = 0.0
    first_reason: str | None = None
    offset = 0
    for (start, stop, seed), pending in zip(job.batches, _pending(table, job.batches)):
        theta = job.theta[offset: offset + stop - start]
        offset += stop - start
        if not pending:
            skipped += stop - start
            continue
        started = time.perf_counter()
        if job.timeout is None:
            x, reasons = call_simulator(task, job.fidelity, theta, seed)
        else:
            x, reasons = _isolated(job, task, theta, seed)
        elapsed = time.perf_counter() - started
        seconds += elapsed
        outputs.append(BatchOutput(start, stop, x, reasons=reasons, elapsed=elapsed))
        good = np.isfinite(x).all(axis=1)
        batch_ok = int(good.sum())
        ok += batch_ok
        if first_reason is None and batch_ok < stop - start:
            first_reason = (reasons[int(np.argmin(good))] if reasons else "") or "non-finite output"
    table.write_batches(outputs)
    simulated = job.num_rows - skipped
    return BatchResult(simulated, ok, simulated - ok, seconds, first_reason, skipped)

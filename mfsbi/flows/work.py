"""Plain functions that run on the Dask workers: simulate one batch, train one estimator.

No Prefect here: workers never talk to the Prefect API, so a local cluster needs no server of its own.
Each function reopens the store by URL (cached per process) and writes its own result there.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np

from mfsbi.flows.isolation import simulate_isolated
from mfsbi.flows.seeds import derive_seed
from mfsbi.simulators import Task, get_task
from mfsbi.storage import BatchOutput, SimulationStore

__all__ = ["BatchJob", "BatchResult", "TrainJob", "TrainResult", "simulate_batch", "train_estimator"]


# Reasons of a batch that took its whole process down: worth finding the guilty rows one by one.
ISOLATION_FAILURES = ("timeout:", "simulator process died", "simulator process did not start")


@functools.lru_cache(maxsize=8)
def _task(spec: str) -> Task:
    return get_task(spec)


@functools.lru_cache(maxsize=8)
def _store(url: str) -> SimulationStore:
    return SimulationStore(url)


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


def _simulate(task: Task, fidelity: str, theta: np.ndarray, seed: int) -> tuple[np.ndarray, list[str] | None]:
    n = len(theta)
    try:
        output = task.simulator(fidelity)(theta, seed)
        reasons = None
        if isinstance(output, tuple):
            output, reasons = output
        x = np.asarray(output, dtype=np.float64)
        if x.shape != (n, task.x_dim):
            raise ValueError(f"simulator returned shape {x.shape}, expected {(n, task.x_dim)}")
        if reasons is not None:
            if len(reasons) != n:
                raise ValueError(f"simulator returned {len(reasons)} reasons for {n} rows")
            # A row with a reason is failed whatever its values; the store keys failure on non-finite x.
            x[[i for i, r in enumerate(reasons) if r]] = np.nan
            reasons = [r or "" for r in reasons]
        return x, reasons
    except Exception as error:  # noqa: BLE001 -- recorded per row, counted, and stops the run past a threshold
        return np.full((n, task.x_dim), np.nan), [f"{type(error).__name__}: {error}"[:120]] * n


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
    task = _task(job.task_spec)
    table = _store(job.store_url).table(job.table, job.fidelity)
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
            x, reasons = _simulate(task, job.fidelity, theta, seed)
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


@dataclass(frozen=True)
class TrainJob:
    """Train (``pretrained is None``) or fine-tune an estimator on the first ``limit`` rows of a table."""

    store_url: str
    task_spec: str
    table: str
    fidelity: str
    limit: int
    estimator: dict
    training: dict
    pretrained: bytes | None
    device: str
    threads: int = 1
    # Refit the x z-scoring on this data when fine-tuning: yes from LF to HF (PAPER.md); no between
    # sequential rounds, whose truncated data would shift the inputs the weights were trained on.
    refit_x_zscore: bool = True


@dataclass(frozen=True)
class TrainResult:
    checkpoint: bytes
    epochs: int
    best_validation_loss: float
    seconds: float
    num_simulations: int
    device: str
    worker: str = ""
    # The vector instruction set torch's CPU kernels used (AVX2, AVX512, ...): the same seed trains
    # slightly different networks on machines with different ones (docs/decisions.md).
    cpu_capability: str = ""

    def record(self) -> dict:
        """What a run summary keeps of a training (everything but the checkpoint)."""
        return {"epochs": self.epochs, "seconds": self.seconds, "simulations": self.num_simulations,
                "device": self.device, "worker": self.worker, "cpu_capability": self.cpu_capability}


def read_training_data(table: object, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The ok rows among the first ``limit`` rows of a table (failed rows never train)."""
    rows = table.rows("ok")
    theta, x = table.read("ok")
    keep = rows < limit
    return theta[keep], x[keep]


def train_estimator(job: TrainJob) -> TrainResult:
    """Trains or fine-tunes on a worker; returns the checkpoint as bytes."""
    import torch

    from mfsbi.inference import (
        EstimatorConfig, TrainingConfig, estimator_from_bytes, estimator_to_bytes, fine_tune, train_npe,
    )

    torch.set_num_threads(job.threads)
    task = _task(job.task_spec)
    theta, x = read_training_data(_store(job.store_url).table(job.table, job.fidelity), job.limit)
    theta_t = torch.as_tensor(theta, dtype=torch.float32)
    x_t = torch.as_tensor(x, dtype=torch.float32)
    training = TrainingConfig.from_dict(job.training)
    if job.pretrained is None:
        trained = train_npe(task.prior, theta_t, x_t, estimator=EstimatorConfig.from_dict(job.estimator),
                            training=training, device=job.device)
    else:
        pretrained = estimator_from_bytes(job.pretrained, task.prior, device=job.device)
        trained = fine_tune(pretrained, theta_t, x_t, training=training, device=job.device,
                            refit_x_zscore=job.refit_x_zscore)
    return TrainResult(estimator_to_bytes(trained), trained.epochs, float(trained.best_validation_loss),
                       trained.seconds, len(theta), job.device, _worker_name(),
                       torch.backends.cpu.get_cpu_capability())


def _worker_name(_: object = None) -> str:
    """The Dask worker running this, or ``"flow process"`` outside Dask (recorded with each training)."""
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return "flow process"

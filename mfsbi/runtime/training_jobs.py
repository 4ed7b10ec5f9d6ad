"""Training one estimator on a Dask worker: the job, its result, and the function that runs it.

No Prefect here. The job names its data (store URL, table, rows) instead of carrying it, so that a
job is small to send and the worker reads the rows where they are stored. Rows that would take more
than the job's memory budget in memory are streamed from the store chunk by chunk instead
(:mod:`mfsbi.inference.streaming`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from distributed import get_worker

from mfsbi.inference import (
    EstimatorConfig, TrainingConfig, estimator_from_bytes, estimator_to_bytes, fine_tune, fine_tune_streaming, train_npe,
    train_npe_streaming,
)
from mfsbi.inference.chunk_stream import StreamingConfig
from mfsbi.runtime import progress
from mfsbi.runtime.worker_cache import store_for, task_for

__all__ = [
    "IN_MEMORY_FACTOR", "TableChunks", "TrainJob", "TrainResult", "default_training_memory", "epoch_sink", "in_memory_bytes",
    "read_training_data", "streams", "train_estimator", "worker_name",
]

logger = logging.getLogger(__name__)

# Bytes an in-memory training holds per byte of its data as float32: the float64 rows read from the
# store, their float32 copies, and sbi's copies of them. Measured 9.3 (peak RSS over the baseline,
# 1e5 rows of 515 values, docs/performance.md "Training beyond memory").
IN_MEMORY_FACTOR = 10

# The share of a worker's memory a training's data may take by default; the rest is the network,
# the optimiser, the Dask worker itself and what else runs on the machine.
DEFAULT_MEMORY_FRACTION = 0.5


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
    # What progress displays call this training, and which ensemble member it is.
    label: str = ""
    member: int = 0
    # Bytes of training data this training may hold; more is streamed. None: half the worker's memory.
    training_memory: int | None = None
    # Rows (store row indices) left out: a cross-validation fold trains on the others.
    exclude_rows: tuple[int, ...] = ()
    # Stop early on the left-out rows (the fold's own) instead of a random share of the training rows.
    validate_on_excluded: bool = False


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
    # Validation loss of every epoch (for the loss curves; not part of the summary).
    validation_losses: tuple[float, ...] = ()
    # Whether the rows were streamed from the store chunk by chunk (they exceeded the memory budget).
    streamed: bool = False
    # CPU seconds of the training process (time.process_time): unlike ``seconds`` (wall clock), what
    # the training itself cost on a machine shared with other work; compute budgets charge it.
    cpu_seconds: float = 0.0

    def record(self) -> dict:
        """What a run summary keeps of a training (everything but the checkpoint)."""
        return {"epochs": self.epochs, "seconds": self.seconds, "cpu_seconds": round(self.cpu_seconds, 3),
                "simulations": self.num_simulations, "device": self.device, "worker": self.worker,
                "cpu_capability": self.cpu_capability, "streamed": self.streamed}


def read_training_data(table: object, limit: int, exclude: tuple[int, ...] = (),
                       only: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ok rows among the first ``limit`` rows of a table but ``exclude`` (failed rows never train),
    or, with ``only``, those of these rows."""
    rows = table.rows("ok")
    theta, x = table.read("ok")
    keep = (rows < limit) & ~np.isin(rows, np.asarray(exclude, dtype=np.int64))
    if only is not None:
        keep &= np.isin(rows, np.asarray(only, dtype=np.int64))
    return theta[keep], x[keep]


class TableChunks:
    """The first ``limit`` rows of a table as a :class:`~mfsbi.inference.chunk_stream.ChunkSource`.

    The number of chunks is fixed when it is made: rows reserved later (beyond ``limit``) never
    join, and rows of these chunks still pending are left out until they are stored ok.
    """

    def __init__(self, table: object, limit: int):
        self._table, self._limit = table, int(limit)
        self.num_chunks = -(-min(self._limit, table.num_rows) // table.chunk_size)

    def read_chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        return self._table.read_chunk(chunk, stop=self._limit)


def default_training_memory() -> int:
    """Half the memory of the Dask worker running this, or of the machine outside Dask."""
    try:
        limit = get_worker().memory_manager.memory_limit
    except ValueError:  # not on a Dask worker
        limit = None
    if not limit:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # the machine's memory (POSIX)
    return int(DEFAULT_MEMORY_FRACTION * limit)


def _budget(job: TrainJob) -> int:
    return job.training_memory if job.training_memory is not None else default_training_memory()


def in_memory_bytes(rows: int, theta_dim: int, x_dim: int) -> int:
    """What training on ``rows`` rows in memory holds, as estimated by :data:`IN_MEMORY_FACTOR`."""
    return IN_MEMORY_FACTOR * 4 * rows * (theta_dim + x_dim)


def streams(job: TrainJob, table: object) -> bool:
    """Whether a job's rows exceed its memory budget (and span the 2 chunks streaming needs)."""
    rows = min(job.limit, table.num_rows)
    budget = _budget(job)
    if in_memory_bytes(rows, table.theta_dim, table.x_dim) <= budget:
        return False
    if -(-rows // table.chunk_size) < 2:
        # Streaming validates on whole chunks; one chunk is read whole anyway.
        logger.warning("training on %d rows of '%s' in memory although they exceed the training memory "
                       "(%d bytes): they lie in one chunk of %d rows", rows, table.key, budget, table.chunk_size)
        return False
    return True


def _streaming_config(job: TrainJob, table: object):
    return StreamingConfig.for_memory(_budget(job), 8 * table.chunk_size * (table.theta_dim + table.x_dim))


def epoch_sink(job) -> object:
    """Where a training's epochs go: a Dask event from a worker, else this process's listeners.

    Arguments:
        job: a training job (its ``label`` and ``member`` name the training in progress displays).
    """
    try:
        worker = get_worker()
    except ValueError:  # not on a Dask worker
        worker = None

    def sink(report) -> None:
        event = {"label": job.label, "member": job.member, **dataclasses.asdict(report)}
        if worker is not None:
            worker.log_event(progress.TRAINING_TOPIC, event)
        else:
            progress.report_epoch(event)

    return sink


def train_estimator(job: TrainJob) -> TrainResult:
    """Trains or fine-tunes on a worker, reporting every epoch; returns the checkpoint as bytes."""
    started = time.process_time()
    result = _train(job)
    return dataclasses.replace(result, cpu_seconds=time.process_time() - started)


def _train(job: TrainJob) -> TrainResult:
    torch.set_num_threads(job.threads)
    task = task_for(job.task_spec)
    table = store_for(job.store_url).table(job.table, job.fidelity)
    if streams(job, table):
        if job.exclude_rows:
            raise ValueError(f"cross-validating on '{table.key}' needs its rows in memory: raise --training-memory "
                             "or choose with --transfer-guard off")
        return _train_streaming(job, task, table)
    theta, x = read_training_data(table, job.limit, job.exclude_rows)
    theta_t = torch.as_tensor(theta, dtype=torch.float32)
    x_t = torch.as_tensor(x, dtype=torch.float32)
    validation = None
    if job.validate_on_excluded:
        held_theta, held_x = read_training_data(table, job.limit, only=job.exclude_rows)
        validation = (torch.as_tensor(held_theta, dtype=torch.float32), torch.as_tensor(held_x, dtype=torch.float32))
    training = TrainingConfig.from_dict(job.training)
    if job.pretrained is None:
        trained = train_npe(task.prior, theta_t, x_t, estimator=EstimatorConfig.from_dict(job.estimator),
                            training=training, device=job.device, on_epoch=epoch_sink(job), validation=validation)
    else:
        pretrained = estimator_from_bytes(job.pretrained, task.prior, device=job.device)
        trained = fine_tune(pretrained, theta_t, x_t, training=training, device=job.device,
                            refit_x_zscore=job.refit_x_zscore, on_epoch=epoch_sink(job), validation=validation)
    return TrainResult(estimator_to_bytes(trained), trained.epochs, float(trained.best_validation_loss),
                       trained.seconds, len(theta), job.device, worker_name(),
                       torch.backends.cpu.get_cpu_capability(), tuple(trained.validation_losses))


def _train_streaming(job: TrainJob, task: object, table: object) -> TrainResult:
    source = TableChunks(table, job.limit)
    training = TrainingConfig.from_dict(job.training)
    streaming = _streaming_config(job, table)
    if job.pretrained is None:
        trained = train_npe_streaming(task.prior, source, estimator=EstimatorConfig.from_dict(job.estimator),
                                      training=training, streaming=streaming, device=job.device,
                                      on_epoch=epoch_sink(job))
    else:
        pretrained = estimator_from_bytes(job.pretrained, task.prior, device=job.device)
        trained = fine_tune_streaming(pretrained, source, training=training, streaming=streaming,
                                      refit_x_zscore=job.refit_x_zscore, device=job.device,
                                      on_epoch=epoch_sink(job))
    return TrainResult(estimator_to_bytes(trained), trained.epochs, float(trained.best_validation_loss),
                       trained.seconds, trained.num_simulations, job.device, worker_name(),
                       torch.backends.cpu.get_cpu_capability(), tuple(trained.validation_losses), streamed=True)


def worker_name(_: object = None) -> str:
    """The Dask worker running this, or ``"flow process"`` outside Dask (recorded with each training)."""
    try:
        return str(get_worker().name)
    except ValueError:  # not on a Dask worker
        return "flow process"

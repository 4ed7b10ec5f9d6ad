"""Training one estimator on a Dask worker: the job, its result, and the function that runs it.

No Prefect here. The job names its data (store URL, table, rows) instead of carrying it, so that a
job is small to send and the worker reads the rows where they are stored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mfsbi.runtime import progress
from mfsbi.runtime.worker_cache import store_for, task_for

__all__ = ["TrainJob", "TrainResult", "read_training_data", "train_estimator", "worker_name"]


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


def _epoch_sink(job: TrainJob):
    """Where a training's epochs go: a Dask event from a worker, else this process's listeners."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
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
    import torch

    from mfsbi.inference import (
        EstimatorConfig, TrainingConfig, estimator_from_bytes, estimator_to_bytes, fine_tune, train_npe,
    )

    torch.set_num_threads(job.threads)
    task = task_for(job.task_spec)
    theta, x = read_training_data(store_for(job.store_url).table(job.table, job.fidelity), job.limit)
    theta_t = torch.as_tensor(theta, dtype=torch.float32)
    x_t = torch.as_tensor(x, dtype=torch.float32)
    training = TrainingConfig.from_dict(job.training)
    if job.pretrained is None:
        trained = train_npe(task.prior, theta_t, x_t, estimator=EstimatorConfig.from_dict(job.estimator),
                            training=training, device=job.device, on_epoch=_epoch_sink(job))
    else:
        pretrained = estimator_from_bytes(job.pretrained, task.prior, device=job.device)
        trained = fine_tune(pretrained, theta_t, x_t, training=training, device=job.device,
                            refit_x_zscore=job.refit_x_zscore, on_epoch=_epoch_sink(job))
    return TrainResult(estimator_to_bytes(trained), trained.epochs, float(trained.best_validation_loss),
                       trained.seconds, len(theta), job.device, worker_name(),
                       torch.backends.cpu.get_cpu_capability(), tuple(trained.validation_losses))


def worker_name(_: object = None) -> str:
    """The Dask worker running this, or ``"flow process"`` outside Dask (recorded with each training)."""
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return "flow process"

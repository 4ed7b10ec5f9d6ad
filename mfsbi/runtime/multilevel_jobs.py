"""Training multilevel NPE on a Dask worker: the job names its levels' tables, the worker reads them.

A level is the first ``limit`` rows of a table, and for every level above the cheapest, the rows of a
*twin* table at the level below: row ``i`` of the twin was simulated at row ``i``'s θ with row
``i``'s seed (:func:`~mfsbi.runtime.simulation.reserve_twins`), so the pair shares its noise when the
task's simulators are coupled. A pair with a failed or pending member is left out, both members
together (:func:`mfsbi.inference.coupled_levels`). No Prefect here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from mfsbi.inference import EstimatorConfig, TrainingConfig, estimator_to_bytes, train_ml_npe
from mfsbi.runtime.simulation import theta_and_seeds
from mfsbi.runtime.training_jobs import TrainResult, epoch_sink, worker_name
from mfsbi.runtime.worker_cache import store_for, task_for

__all__ = ["CoupledRows", "MultilevelJob", "train_multilevel"]


@dataclass(frozen=True)
class CoupledRows:
    """The first ``limit`` rows of ``table`` at ``fidelity``, with their twins one level below (if any)."""

    table: str
    fidelity: str
    limit: int
    twin_table: str | None = None
    twin_fidelity: str | None = None


@dataclass(frozen=True)
class MultilevelJob:
    """Train ML-NPE on ``levels``, cheapest first (level 0 has no twins)."""

    store_url: str
    task_spec: str
    levels: tuple[CoupledRows, ...]
    estimator: dict
    training: dict
    device: str
    threads: int = 1
    label: str = ""
    member: int = 0


def _rows(table: object, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """θ of the first ``limit`` rows, and x with NaN where a row is not stored ok."""
    n = min(limit, table.num_rows)
    theta, _ = theta_and_seeds(table, n)
    x = np.full((n, table.x_dim), np.nan)
    ok = table.rows("ok")
    keep = ok < n
    x[ok[keep]] = table.read("ok")[1][keep]
    return np.asarray(theta, dtype=np.float64), x


def read_levels(store: object, levels: tuple[CoupledRows, ...]) -> list[tuple]:
    """The levels' arrays as :func:`mfsbi.inference.train_ml_npe` takes them."""
    data = []
    for level in levels:
        theta, x = _rows(store.table(level.table, level.fidelity), level.limit)
        if level.twin_table is None:
            data.append((theta, x))
            continue
        twin_theta, twin_x = _rows(store.table(level.twin_table, level.twin_fidelity), level.limit)
        if twin_theta.shape != theta.shape or not np.array_equal(twin_theta, theta):
            raise RuntimeError(f"table {level.twin_table!r} does not hold the θ of {level.table!r}/{level.fidelity} "
                               "row for row: its twins were not simulated (or the store was changed by hand)")
        data.append((theta, x, twin_x))
    return data


def train_multilevel(job: MultilevelJob) -> TrainResult:
    """Trains ML-NPE on a worker, reporting every epoch; returns the checkpoint as bytes."""
    started = time.process_time()
    torch.set_num_threads(job.threads)
    task = task_for(job.task_spec)
    data = read_levels(store_for(job.store_url), job.levels)
    trained = train_ml_npe(task.prior, data, estimator=EstimatorConfig.from_dict(job.estimator),
                           training=TrainingConfig.from_dict(job.training), device=job.device,
                           on_epoch=epoch_sink(job))
    return TrainResult(estimator_to_bytes(trained), trained.epochs, float(trained.best_validation_loss),
                       trained.seconds, trained.num_simulations, job.device, worker_name(),
                       torch.backends.cpu.get_cpu_capability(), tuple(trained.validation_losses),
                       cpu_seconds=time.process_time() - started)

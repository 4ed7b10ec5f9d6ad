r"""The training loop of every NPE training here: in memory and streamed from chunks alike.

sbi's rules (``sbi.inference.NPE.train``): Adam, gradient-norm clipping, the validation loss after
every epoch, early stopping after ``stop_after_epochs`` epochs without improvement, and the
best-validation weights at the end; the loss is the network's own ``loss`` (-log q(theta | x)), as
sbi's first-round NPE. Written here rather than calling sbi's loop for two reasons: sbi 0.27's
trainers index an in-memory ``TensorDataset`` (so they cannot stream), and their per-batch Python
(a DataLoader collating 200 single-row samples, an unfused optimizer step) cost about a sixth of
an epoch of the paper's flow on CPU (docs/performance.md, "Fast training"). Batches come from a
:class:`Batches` source: :class:`RowBatches` for rows held in memory (on the training device),
:class:`~mfsbi.inference.chunk_stream.ChunkLoader` for chunks read as training goes. What a batch
makes of the gradient, and how the held-out data are scored, is an :class:`Objective`:
:class:`NPELoss` by default; ML-NPE's (:mod:`mfsbi.inference.multilevel`) combines one gradient
per term of its loss, so every estimator here trains in this one loop.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from .config import TrainingConfig

__all__ = ["VALIDATION_BATCH_SIZE", "Batches", "EpochCallback", "EpochReport", "Fitted", "NPELoss", "Objective",
           "RowBatches", "fit"]

#: Rows per validation forward pass: without gradients, larger passes cost less per row.
VALIDATION_BATCH_SIZE = 2000


@dataclass(frozen=True)
class EpochReport:
    r"""Where a training stands after one epoch.

    Arguments:
        epoch: epochs done (1 after the first).
        training_loss, validation_loss: this epoch's mean -log q(theta | x).
        best_validation_loss, best_epoch: the best so far (the weights training will keep).
        stop_after_epochs: the early-stopping patience (training ends at ``best_epoch`` plus it).
    """

    epoch: int
    training_loss: float
    validation_loss: float
    best_validation_loss: float
    best_epoch: int
    stop_after_epochs: int


EpochCallback = Callable[[EpochReport], None]


class Batches(Protocol):
    """Minibatches on the training device, one pass over the data per epoch.

    A batch is ``(theta, x)`` for :class:`NPELoss`; another :class:`Objective` defines its own.
    """

    def epoch(self, epoch: int) -> Iterator[Any]:
        """The batches of epoch ``epoch`` (1, 2, ...); the order may depend on it."""
        ...


class Objective(Protocol):
    """What :func:`fit` minimises: the gradient of one batch, and the loss of the held-out data.

    Attributes:
        name: the estimator's name in error messages (``"NPE"``).
    """

    name: str

    def backward(self, network: nn.Module, parameters: list[nn.Parameter], batch: Any) -> tuple[Tensor, int]:
        """Sets ``p.grad`` of ``parameters`` for one batch (they arrive ``None``).

        Returns:
            The batch's loss summed (detached, on the device) and what the epoch's training loss
            divides it by (the batch's rows for NPE).
        """
        ...

    def validation_loss(self, network: nn.Module, validation: Batches, epoch: int) -> tuple[float, int]:
        """The held-out loss of ``network`` (called without gradients) and the rows it scored."""
        ...


class RowBatches:
    r"""Rows held in memory, moved once to ``device``, in a new random order every epoch.

    Arguments:
        theta, x: the rows, shapes ``(n, d)`` and ``(n, k)`` (all valid).
        batch_size: rows per batch (the last batch of an epoch may be smaller).
        seed: the seed of the row orders, one per ``(seed, epoch)``; ``None`` keeps the rows in
            order (validation).
        device: where batches are.
    """

    def __init__(self, theta: Tensor, x: Tensor, batch_size: int, seed: Optional[int] = None,
                 device: str = "cpu"):
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        self.theta = theta.to(device)
        self.x = x.to(device)
        self.batch_size = int(batch_size)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.theta)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.theta)
        if self.seed is None:
            for start in range(0, n, self.batch_size):
                yield self.theta[start:start + self.batch_size], self.x[start:start + self.batch_size]
            return
        order = np.random.default_rng([self.seed, int(epoch)]).permutation(n)
        order = torch.from_numpy(order).to(self.theta.device)
        for start in range(0, n, self.batch_size):
            rows = order[start:start + self.batch_size]
            yield self.theta[rows], self.x[rows]


@dataclass(frozen=True)
class Fitted:
    """What :func:`fit` leaves: the network with its best weights, and the losses on the way."""

    network: nn.Module
    validation_losses: tuple[float, ...]
    best_epoch: int
    training_rows: int
    validation_rows: int

    @property
    def epochs(self) -> int:
        # Without validation every epoch up to the fixed count ran, and the last is kept.
        return len(self.validation_losses) or self.best_epoch

    @property
    def best_validation_loss(self) -> float:
        return min(self.validation_losses) if self.validation_losses else math.nan


class NPELoss:
    r"""NPE's objective: the mean -log q(theta | x) of a batch, plus an optional penalty.

    Arguments:
        penalty: a term added to every batch's mean loss (a fine-tuning's pull toward the
            pretrained weights); the reported and validation losses leave it out.
    """

    name = "NPE"

    def __init__(self, penalty: Optional[Callable[[], Tensor]] = None):
        self.penalty = penalty

    def backward(self, network: nn.Module, parameters: list[nn.Parameter],
                 batch: tuple[Tensor, Tensor]) -> tuple[Tensor, int]:
        theta, x = batch
        loss = network.loss(theta, x)
        (loss.mean() + self.penalty() if self.penalty is not None else loss.mean()).backward()
        return loss.detach().sum(), len(theta)

    def validation_loss(self, network: nn.Module, validation: Batches, epoch: int) -> tuple[float, int]:
        total, count = 0.0, 0
        for theta, x in validation.epoch(epoch):
            total += float(network.loss(theta, x).sum())
            count += len(theta)
        if count == 0:
            raise ValueError("the validation set holds no valid rows")
        return total / count, count


def fit(network: nn.Module, train: Batches, validation: Optional[Batches], training: TrainingConfig,
        device: str = "cpu", on_epoch: Optional[EpochCallback] = None,
        penalty: Optional[Callable[[], Tensor]] = None, objective: Optional[Objective] = None) -> Fitted:
    r"""Trains ``network`` in place until early stopping, and loads its best-validation weights.

    Deterministic for the same network, batches and config on the same machine (no random draw
    of its own: the batch order is the sources').

    Arguments:
        network: an sbi density estimator (its ``loss(theta, x)`` is -log q per row).
        train: the training batches.
        validation: the validation batches; ``None`` trains exactly ``training.max_num_epochs``
            epochs and keeps the last weights (a number of epochs chosen elsewhere, e.g. by
            cross-validation, with no row held back).
        training: learning rate, clipping, patience and the epoch cap.
        device: where the network trains (the batches must be there).
        on_epoch: called with an :class:`EpochReport` after every epoch.
        penalty: a term added to every batch's mean loss (a fine-tuning's pull toward the
            pretrained weights); the reported and validation losses leave it out.
        objective: what a batch's gradient and the validation loss are; default
            ``NPELoss(penalty)`` (give the penalty to an objective of your own instead).

    Returns:
        The trained network (in eval mode) with its validation losses, one per epoch.

    Raises:
        FloatingPointError: the training loss of an epoch was not finite.
        ValueError: both ``penalty`` and ``objective`` were given.
    """
    if objective is None:
        objective = NPELoss(penalty)
    elif penalty is not None:
        raise ValueError("penalty: give it to the objective (NPELoss(penalty)), not beside one")
    network.to(device)
    parameters = [p for p in network.parameters() if p.requires_grad]
    # fused: one kernel for the whole step instead of several per parameter; torch has it for CPU
    # and CUDA. Same update as sbi's Adam, up to floating-point rounding.
    optimizer = torch.optim.Adam(parameters, lr=training.learning_rate, fused=True)
    best, best_epoch, best_state = math.inf, 0, None
    losses: list[float] = []
    rows = validation_rows = 0
    for epoch in range(1, training.max_num_epochs + 1):
        network.train()
        total, rows = torch.zeros((), device=device), 0
        for batch in train.epoch(epoch):
            optimizer.zero_grad(set_to_none=True)
            loss, count = objective.backward(network, parameters, batch)
            if training.clip_max_norm is not None:
                nn.utils.clip_grad_norm_(parameters, max_norm=training.clip_max_norm)
            optimizer.step()
            total += loss  # checked once per epoch: no device sync per batch
            rows += count
        if rows == 0:
            raise ValueError("the training set holds no valid rows")
        training_loss = float(total) / rows
        if not math.isfinite(training_loss):
            raise FloatingPointError(f"{objective.name} training loss is not finite in epoch {epoch}")
        network.eval()
        if validation is None:
            if on_epoch is not None:
                on_epoch(EpochReport(epoch, training_loss, math.nan, math.nan, epoch, training.stop_after_epochs))
            continue
        with torch.no_grad():
            validation_loss, validation_rows = objective.validation_loss(network, validation, epoch)
        losses.append(validation_loss)
        if validation_loss < best:
            best, best_epoch, best_state = validation_loss, epoch, copy.deepcopy(network.state_dict())
        if on_epoch is not None:
            on_epoch(EpochReport(epoch, training_loss, validation_loss, best, best_epoch, training.stop_after_epochs))
        if epoch - best_epoch >= training.stop_after_epochs:
            break
    if validation is None:
        network.zero_grad(set_to_none=True)
        return Fitted(network, (), training.max_num_epochs, rows, 0)
    if best_state is None:  # every validation loss was NaN
        raise FloatingPointError(f"{objective.name} validation loss was never finite")
    network.load_state_dict(best_state)
    network.zero_grad(set_to_none=True)
    network.eval()
    return Fitted(network, tuple(losses), best_epoch, rows, validation_rows)

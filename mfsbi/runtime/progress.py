"""Progress of long steps, reported to whoever listens (the CLI draws rich progress bars).

Two kinds of events: a step's ``(done, total)`` (rows simulated, estimators trained) and a
training's epochs (epoch, losses, best epoch). Epochs happen on Dask workers: a worker publishes
them as Dask events on :data:`TRAINING_TOPIC` and the flow process forwards them here
(:func:`mfsbi.flows.run_training.train_jobs`); in a serial run they arrive here directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["EpochListener", "ProgressListener", "TRAINING_TOPIC", "listen", "listen_epochs", "report",
           "report_epoch"]

ProgressListener = Callable[[str, int, int], None]
# Called with an epoch event: label, member, epoch, training_loss, validation_loss,
# best_validation_loss, best_epoch, stop_after_epochs.
EpochListener = Callable[[dict[str, Any]], None]

TRAINING_TOPIC = "mfsbi-training-epoch"

# Plain module globals, not context variables: Prefect may run a sync flow in another thread, and
# Dask delivers events on its client's event-loop thread.
_listener: ProgressListener | None = None
_epoch_listeners: list[EpochListener] = []


def listen(listener: ProgressListener | None) -> None:
    """Sets the listener called with ``(step, done, total)``; ``None`` removes it."""
    global _listener
    _listener = listener


def report(step: str, done: int, total: int) -> None:
    """Reports progress of ``step``; a no-op without a listener."""
    if _listener is not None:
        _listener(step, done, total)


def listen_epochs(listener: EpochListener, on: bool = True) -> None:
    """Adds (``on``) or removes a listener of training epochs."""
    if on:
        _epoch_listeners.append(listener)
    elif listener in _epoch_listeners:
        _epoch_listeners.remove(listener)


def report_epoch(event: dict[str, Any]) -> None:
    """Tells every epoch listener about one epoch of one training."""
    for listener in list(_epoch_listeners):
        listener(event)

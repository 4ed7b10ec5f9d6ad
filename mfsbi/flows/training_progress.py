"""A training's epochs, while it runs: forwarded from the Dask workers, and shown in the Prefect UI.

Workers publish one Dask event per epoch (:data:`mfsbi.runtime.progress.TRAINING_TOPIC`); while a
training step runs, the flow process subscribes to them, hands them to the progress listeners (the
CLI's bars) and keeps a Prefect progress artifact on the flow run up to date, so that the UI shows
where a long training is. Early stopping decides the number of epochs, so the fraction shown is
``epoch / (best epoch + patience)``: the least the training can still take.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Iterator
from typing import Any

from mfsbi.runtime import progress
from mfsbi.runtime.executor import BatchExecutor, DaskExecutor

__all__ = ["describe_epoch", "epoch_progress"]

# Seconds between updates of the Prefect artifact (one API call each).
PUBLISH_EVERY = 2.0


def describe_epoch(event: dict[str, Any]) -> str:
    """``epoch 12 · val 1.234 (best 1.200 @ 9)``."""
    return (f"epoch {event['epoch']} · train {event['training_loss']:.3f} · val {event['validation_loss']:.3f} "
            f"(best {event['best_validation_loss']:.3f} @ {event['best_epoch']})")


def _fraction(events: dict[int, dict[str, Any]], members: int) -> float:
    done = [min(1.0, e["epoch"] / (e["best_epoch"] + e["stop_after_epochs"])) for e in events.values()]
    return sum(done) / max(members, 1)


@contextlib.contextmanager
def epoch_progress(executor: BatchExecutor, label: str, members: int) -> Iterator[None]:
    """While open: epochs of the trainings called ``label`` reach the listeners and the Prefect UI."""
    # deferred: app.progress_display loads this module before the CLI sets PREFECT_API_URL and the logging level,
    # which Prefect reads at import (and Prefect costs 1.2 s)
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    latest: dict[int, dict[str, Any]] = {}

    def remember(event: dict[str, Any]) -> None:
        if event.get("label") == label:
            latest[int(event.get("member", 0))] = event

    def forward(event: tuple[float, dict[str, Any]]) -> None:
        progress.report_epoch(event[1])  # Dask events are (timestamp, message)

    progress.listen_epochs(remember)
    dask = isinstance(executor, DaskExecutor)
    if dask:
        executor.client.subscribe_topic(progress.TRAINING_TOPIC, forward)
    artifact = create_progress_artifact(0.0, description=f"{label}: starting")
    stop = threading.Event()

    def publish() -> None:
        shown = None
        while not stop.wait(PUBLISH_EVERY):
            if not latest:
                continue
            newest = max(latest.values(), key=lambda e: e["epoch"])
            text = f"{label}: {describe_epoch(newest)}"
            if text != shown:
                try:
                    update_progress_artifact(artifact, 100 * _fraction(latest, members), description=text)
                except Exception as error:  # noqa: BLE001 -- the UI's progress must never fail a training
                    logging.getLogger(__name__).warning("progress artifact not updated: %s", error)
                shown = text

    # Prefect's settings (the API URL of `temporary_settings`) and run context live in context
    # variables, which a new thread does not inherit: without the copy, the updates went to the
    # profile's server (seen: 404 from another server while the benchmark's flow ran on its own).
    thread = threading.Thread(target=contextvars.copy_context().run, args=(publish,),
                              name="mfsbi-training-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if dask:
            executor.client.unsubscribe_topic(progress.TRAINING_TOPIC)
        progress.listen_epochs(remember, on=False)
        epochs = ", ".join(str(latest[m]["epoch"]) for m in sorted(latest)) or "-"
        update_progress_artifact(artifact, 100.0, description=f"{label}: done after {epochs} epochs")

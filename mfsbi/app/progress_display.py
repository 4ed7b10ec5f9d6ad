"""The CLI's view of a run's progress: rich bars on a terminal, plain log lines everywhere else.

A batch job's log (SLURM, nohup, CI) is not a terminal: there rich draws its bars once, at the end,
and a 30-minute run left one line in its log. So when the console is not a terminal each step that
is under way gets one plain line every :data:`INTERVAL_VARIABLE` seconds (default
:data:`DEFAULT_INTERVAL`), and one line when it ends, formatted like the log lines Prefect prints::

    12:03:04.567 | INFO    | mfsbi.progress - train on 40 HF: 0/1 · epoch 12 · train 1.17 · ... · elapsed 0:00:31 · left ≥0:00:20

The time left of a simulation is the rows still to do at the rate seen so far. A training's is a
lower bound: its epochs still to do at the pace seen since its first epoch (the start-up before it,
loading data, is not an epoch's), with early stopping ending it at the best epoch plus the
patience, which moves on while the validation loss improves, or at ``--max-num-epochs`` if that
comes first; members of an ensemble not started yet are not counted.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mfsbi.app.console import fail
from mfsbi.flows.training_progress import describe_epoch
from mfsbi.runtime import progress as progress_events

__all__ = ["DEFAULT_INTERVAL", "INTERVAL_VARIABLE", "LOGGER_NAME", "PlainProgress", "progress_display",
           "progress_interval"]

INTERVAL_VARIABLE = "MFSBI_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0
LOGGER_NAME = "mfsbi.progress"

# Prefect's "standard" console format (prefect/logging/logging.yml), so that these lines read like
# the flow's own log lines around them.
PREFECT_FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s"
PREFECT_DATE_FORMAT = "%H:%M:%S"


def progress_interval() -> float:
    """Seconds between plain progress lines: ``$MFSBI_PROGRESS_INTERVAL``, else 30; bad values end the command."""
    given = os.environ.get(INTERVAL_VARIABLE, "").strip()
    if not given:
        return DEFAULT_INTERVAL
    try:
        seconds = float(given)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        fail(f"{INTERVAL_VARIABLE}: {given!r} is not a positive number of seconds; give e.g. 30 (or unset it)")
    return seconds


def _clock(seconds: float) -> str:
    """``0:01:02``, as rich's elapsed column shows it."""
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


@dataclass
class _Training:
    """One member's training: its latest epoch, and when its first and latest epochs seen arrived."""

    first_epoch: int
    first_seen: float
    latest_seen: float
    latest: dict[str, Any]

    def seconds_left(self, max_epochs: int | None) -> float | None:
        """Its epochs still to do at least, at its pace so far; None after one epoch seen."""
        epochs = self.latest["epoch"] - self.first_epoch
        if epochs <= 0:
            return None
        end = self.latest["best_epoch"] + self.latest["stop_after_epochs"]
        end = end if max_epochs is None else min(end, max_epochs)
        return max(end - self.latest["epoch"], 0) * (self.latest_seen - self.first_seen) / epochs


@dataclass
class _Step:
    """Where one step stands: its counts, when it started, and its trainings (by member)."""

    started: float
    first_done: int
    done: int = 0
    total: int = 0
    finished: bool = False
    trainings: dict[int, _Training] = field(default_factory=dict)


class PlainProgress:
    """Progress as plain log lines: each unfinished step at every tick, and each step once when it ends.

    Arguments:
        write: where a line goes (a logger's ``info``).
        max_epochs: the run's cap on training epochs, if any (for the time left of a training).
        clock: seconds, monotonic (a test passes its own).
    """

    def __init__(self, write: Callable[[str], None], max_epochs: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write = write
        self.max_epochs = max_epochs
        self.clock = clock
        self.steps: dict[str, _Step] = {}
        # Steps arrive from the flow's thread, epochs from Dask's event loop, ticks from a timer.
        self.lock = threading.Lock()

    def step(self, name: str, done: int, total: int) -> None:
        """A :data:`mfsbi.runtime.progress.ProgressListener`: a line when the step ends."""
        with self.lock:
            state = self.steps.get(name)
            if state is None or (state.finished and done < total):  # a step run again starts over
                state = self.steps[name] = _Step(started=self.clock(), first_done=done)
            state.done, state.total = done, total
            if done >= total and not state.finished:
                state.finished = True
                self.write(self.describe(name, state))

    def epoch(self, event: dict[str, Any]) -> None:
        """A :data:`mfsbi.runtime.progress.EpochListener`: remembered for the step of its label."""
        with self.lock:
            state = self.steps.get(event.get("label", ""))
            if state is None or state.finished:
                return
            now, member = self.clock(), int(event.get("member", 0))
            training = state.trainings.get(member)
            if training is None:
                state.trainings[member] = _Training(event["epoch"], now, now, event)
            else:
                training.latest_seen, training.latest = now, event

    def tick(self) -> None:
        """One line for each step under way."""
        with self.lock:
            for name, state in self.steps.items():
                if not state.finished:
                    self.write(self.describe(name, state))

    def describe(self, name: str, state: _Step) -> str:
        """``simulate HF (ou2): 400/1000 (40 %) · elapsed 0:00:12 · left ~0:00:18``."""
        elapsed = self.clock() - state.started
        # A training's share is of its ensemble's members: epochs tell more (and come next).
        share = f" ({100 * state.done / state.total:.0f} %)" if state.total and not state.trainings else ""
        parts = [f"{name}: {state.done}/{state.total}{share}"]
        if state.trainings:
            newest = max((t.latest for t in state.trainings.values()), key=lambda event: event["epoch"])
            parts.append(describe_epoch(newest))
        if state.finished:
            return " · ".join([*parts, f"done in {_clock(elapsed)}"])
        parts.append(f"elapsed {_clock(elapsed)}")
        left = self.time_left(state, elapsed)
        if left is not None:
            parts.append(left)
        return " · ".join(parts)

    def time_left(self, state: _Step, elapsed: float) -> str | None:
        """The estimate of the time left, or None before anything was done to judge the rate by."""
        if state.trainings:  # a training: the least its epochs can still take (module docstring)
            running = [t.seconds_left(self.max_epochs) for t in state.trainings.values()]
            known = [seconds for seconds in running if seconds is not None]
            return f"left ≥{_clock(max(known))}" if known else None
        done_now = state.done - state.first_done
        if done_now <= 0:
            return None
        return f"left ~{_clock(elapsed * (state.total - state.done) / done_now)}"


def _prefect_style_logger(out: Console) -> logging.Logger:
    """A logger of its own that writes to ``out``'s file in Prefect's format (not through the root's handlers)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # Prefect's console handler on the root would print every line again, on stderr
    handler = logging.StreamHandler(out.file)
    handler.setFormatter(logging.Formatter(PREFECT_FORMAT, datefmt=PREFECT_DATE_FORMAT))
    logger.handlers = [handler]
    return logger


@contextlib.contextmanager
def _listening(on_step: progress_events.ProgressListener, on_epoch: progress_events.EpochListener) -> Iterator[None]:
    progress_events.listen(on_step)
    progress_events.listen_epochs(on_epoch)
    try:
        yield
    finally:
        progress_events.listen(None)
        progress_events.listen_epochs(on_epoch, on=False)


@contextlib.contextmanager
def _plain(out: Console, interval: float, max_epochs: int | None) -> Iterator[None]:
    logger = _prefect_style_logger(out)
    plain = PlainProgress(logger.info, max_epochs)
    stop = threading.Event()

    def ticks() -> None:
        while not stop.wait(interval):
            plain.tick()

    timer = threading.Thread(target=ticks, name="mfsbi-plain-progress", daemon=True)
    timer.start()
    try:
        with _listening(plain.step, plain.epoch):
            yield
    finally:
        stop.set()
        timer.join()
        logger.handlers = []


@contextlib.contextmanager
def _bars(out: Console) -> Iterator[None]:
    with Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[detail]}"), console=out, transient=False) as bars:
        ids: dict[str, Any] = {}

        def step(name: str, done: int, total: int) -> None:
            if name not in ids:
                ids[name] = bars.add_task(name, total=total, detail="")
            bars.update(ids[name], completed=done, total=total)

        def epoch(event: dict[str, Any]) -> None:  # a training's epoch: shown beside its bar
            if event.get("label") in ids:
                bars.update(ids[event["label"]], detail=describe_epoch(event))

        with _listening(step, epoch):
            yield


@contextlib.contextmanager
def progress_display(out: Console, interval: float | None = None, max_epochs: int | None = None) -> Iterator[None]:
    """While open, the run's progress reaches ``out``: bars on a terminal, else plain lines.

    Arguments:
        out: the console (its ``is_terminal`` decides).
        interval: seconds between plain lines (default: :func:`progress_interval`).
        max_epochs: the run's cap on training epochs (``--max-num-epochs``), for the time left.
    """
    if out.is_terminal:
        with _bars(out):
            yield
        return
    with _plain(out, progress_interval() if interval is None else interval, max_epochs):
        yield

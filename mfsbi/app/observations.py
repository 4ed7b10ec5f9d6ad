"""A folder of observations for ``mfsbi infer``: which files, their stable ids, and their statistics.

A folder holds ``.npy`` files (a task's statistics, as ``--observation`` takes) and ``.nwb`` files
(a recorded current-clamp trace, turned into the task's statistics as ``mfsbi observe`` does). An
observation's id is its file name and 12 hex digits of the SHA-256 of its name and bytes: the same
file is the same observation on every night, a file changed or renamed is a new one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mfsbi.app.inputs import UsageError, load_observation
from mfsbi.app.observe import read_current_clamp

__all__ = ["KINDS", "ObservationError", "ObservationFile", "observation_files", "read_statistics"]

# The files a folder's observations are read from; others (notes, sidecars, partial copies) are left alone.
KINDS = (".npy", ".nwb")


class ObservationError(ValueError):
    """One observation cannot be used; its message is one line naming the file."""


@dataclass(frozen=True)
class ObservationFile:
    """One file of the folder.

    Arguments:
        path: the file.
        id: ``<name>-<12 hex digits>``: stable while the file's name and bytes are (a store key).
    """

    path: Path
    id: str


def _id(path: Path) -> str:
    digest = hashlib.sha256(path.name.encode())
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._")[:60] or "x"
    return f"{stem}-{path.suffix.lstrip('.')}-{digest.hexdigest()[:12]}"


def observation_files(folder: Path) -> tuple[list[ObservationFile], list[tuple[Path, str]]]:
    """The folder's observation files (sorted by name), and those that could not be read (path, one line).

    Hidden files (``.name``, e.g. a copy still being written) are skipped.

    Raises:
        UsageError: the folder does not exist or holds no ``.npy`` or ``.nwb`` file.
    """
    if not folder.is_dir():
        raise UsageError(f"--observations: {str(folder)!r} is not a folder")
    paths = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in KINDS and not p.name.startswith(".") and not p.is_dir())
    if not paths:
        raise UsageError(f"--observations: {str(folder)!r} holds no {' or '.join(KINDS)} file; put the "
                         "observations there (mfsbi observe writes a recording's .npy)")
    files, unreadable = [], []
    for path in paths:
        try:
            files.append(ObservationFile(path, _id(path)))
        except OSError as error:
            unreadable.append((path, f"{path.name}: cannot be read ({error.strerror or error})"))
    return files, unreadable


def read_statistics(path: Path, task, series: str | None = None) -> np.ndarray:  # noqa: ANN001 -- a Task
    """The task's statistics of one observation file.

    Arguments:
        path: a ``.npy`` of the task's ``x_dim`` statistics, or an ``.nwb`` recording.
        task: the run's task (its ``x_dim``; its ``recording`` for NWB).
        series: the NWB current-clamp series (None: the file's only one).

    Raises:
        ObservationError: one line naming the file.
    """
    if path.suffix.lower() == ".npy":
        try:
            return np.asarray(load_observation(path, task.x_dim, label=path.name), dtype=np.float64)
        except UsageError as error:
            raise ObservationError(str(error)) from None
    from mfsbi.simulators import RecordingError  # deferred: torch, 1.5 s on mfsbi runs/submit (app.deployments -> infer_plan)

    if task.recording is None:
        raise ObservationError(f"{path.name}: task {task.name!r} says no way to turn a recording into its "
                               "statistics (Task.recording); give its statistics as a .npy")
    try:
        trace, rate = read_current_clamp(path, series)
        x = np.asarray(task.statistics_of_recording(trace, rate), dtype=np.float64)
    except (RecordingError, ValueError) as error:
        message = re.sub(r"^--(nwb|series): ", "", str(error))
        raise ObservationError(f"{path.name}: {message}") from None
    if not np.all(np.isfinite(x)):
        raise ObservationError(f"{path.name}: the recording's statistics are not all finite ({x.tolist()})")
    return x

"""``mfsbi observe``: a recorded current-clamp trace in an NWB file becomes a task's observation ``x_o``.

The series is read with pynwb (the field's reader of NWB, the format recordings are shared in), in
SI units (``get_data_in_units``: volts after the file's conversion and offset) at its sampling rate,
and handed to the task's :class:`~mfsbi.simulators.recording.Recording`, which resamples it and
computes the statistics the task's simulators output. The result is written as the ``.npy`` that
``mfsbi run --observation`` and ``mfsbi sample --observation`` take.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from mfsbi.app.console import console, fail

__all__ = ["observe", "read_current_clamp", "write_observation"]

# Relative spread of a series' sampling intervals still taken as one rate (timestamps stored as float64 seconds).
UNIFORM_TOLERANCE = 1e-6


def _current_clamp_names(nwbfile: Any, series_type: type) -> list[str]:
    return sorted(name for name, item in nwbfile.acquisition.items() if isinstance(item, series_type))


def _rate(series: Any) -> float:
    """The series' sampling rate, Hz: its ``rate``, else its timestamps' if they are evenly spaced."""
    if series.rate is not None:
        return float(series.rate)
    steps = np.diff(np.asarray(series.get_timestamps(), dtype=np.float64))
    if steps.size == 0 or not np.all(steps > 0):
        raise ValueError("its timestamps do not increase")
    if np.ptp(steps) > UNIFORM_TOLERANCE * np.mean(steps):
        raise ValueError("its timestamps are not evenly spaced; resample it to one rate first")
    return float(1.0 / np.mean(steps))


def read_current_clamp(path: Path, name: str | None) -> tuple[np.ndarray, float]:
    """One current-clamp series of an NWB file's acquisition, in volts, and its sampling rate.

    Arguments:
        path: the NWB (HDF5) file.
        name: the series' name in the file's acquisition; None: the file's only current-clamp series
            (``mfsbi infer`` reads a folder of files without naming each one's series).

    Returns:
        The samples (volts, float64, shape ``(n,)``) and the rate (Hz).

    Raises:
        ValueError: a one-line message naming the option at fault (``--nwb`` or ``--series``).
    """
    try:  # deferred: optional, only this command reads NWB (pyproject's `recording` extra)
        from pynwb import NWBHDF5IO
        from pynwb.icephys import CurrentClampSeries
    except ImportError:
        raise ValueError("--nwb: reading NWB needs pynwb: pip install 'mfsbi[recording]'") from None
    if not path.is_file():
        raise ValueError(f"--nwb: {str(path)!r} is not a file")
    try:
        io = NWBHDF5IO(str(path), "r")
        nwbfile = io.read()
    except Exception as error:  # noqa: BLE001 -- h5py, hdmf and pynwb each raise their own kind
        raise ValueError(f"--nwb: {str(path)!r} is not a readable NWB file ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    try:
        if name is None:
            found = _current_clamp_names(nwbfile, CurrentClampSeries)
            if len(found) != 1:
                raise ValueError(f"--series: {str(path)!r} holds {len(found)} current-clamp series "
                                 f"({', '.join(found) if found else 'none'}); name one with --series")
            name = found[0]
        series = nwbfile.acquisition.get(name)
        if not isinstance(series, CurrentClampSeries):
            found = _current_clamp_names(nwbfile, CurrentClampSeries)
            what = f"is a {type(series).__name__}, not a CurrentClampSeries" if series is not None else "is not there"
            raise ValueError(f"--series: {name!r} in the acquisition of {str(path)!r} {what}; its current-clamp "
                             f"series: {', '.join(found) if found else 'none'}")
        trace = np.asarray(series.get_data_in_units(), dtype=np.float64)
        if trace.ndim != 1:
            raise ValueError(f"--series: {name!r} holds data of shape {trace.shape}, not one trace")
        try:
            rate = _rate(series)
        except ValueError as error:
            raise ValueError(f"--series: {name!r}: {error}") from None
    finally:
        io.close()
    return trace, rate


def write_observation(x: np.ndarray, out: Path) -> None:
    """Writes ``x`` to ``out`` (.npy) whole or not at all: a temporary file beside it, then a rename."""
    descriptor, part = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.save(handle, x, allow_pickle=False)
        os.replace(part, out)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise


def observe(
    task: Annotated[str, typer.Option(help="task name (see `mfsbi tasks`) or package.module:attribute")],
    nwb: Annotated[Path, typer.Option(help="the NWB file holding the recording")],
    series: Annotated[str, typer.Option(help="the CurrentClampSeries' name in the file's acquisition")],
    out: Annotated[Path, typer.Option(help="where to write x_o (.npy)")] = Path("x_o.npy"),
) -> None:
    """Turn a recorded current-clamp trace (NWB) into the task's statistics: x_o for `--observation`.

    The trace is resampled to the task's rate if it differs; its first sample is the protocol's
    t = 0 (see the task's documentation for what it must have recorded).
    """
    from mfsbi.simulators import RecordingError, TaskNotFoundError, get_task  # deferred: torch, 1.5 s at every CLI start

    if out.suffix != ".npy":
        fail(f"--out: {str(out)!r} must end in .npy")
    if not out.parent.is_dir():
        fail(f"--out: folder {str(out.parent)!r} does not exist")
    try:
        task_obj = get_task(task)
    except TaskNotFoundError as error:
        fail(f"--task: {error}")
    except Exception as error:  # noqa: BLE001 -- a user's module or factory that fails is bad input too
        fail(f"--task: {task!r} could not be loaded ({type(error).__name__}: {error})")
    if task_obj.recording is None:
        fail(f"--task: task {task!r} says no way to turn a recording into its statistics (Task.recording); "
             "give its statistics as a .npy instead")
    try:
        trace, rate = read_current_clamp(nwb, series)
        x = task_obj.statistics_of_recording(trace, rate)
    except RecordingError as error:
        fail(f"--series: {error}")
    except ValueError as error:
        fail(str(error))
    if not np.all(np.isfinite(x)):
        fail(f"--series: the statistics of {series!r} are not all finite ({x.tolist()})", code=1)
    write_observation(x, out)
    resampled = "" if rate == task_obj.recording.rate else f", resampled to {task_obj.recording.rate:g} Hz"
    console.print(f"wrote x_o of {task_obj.name} ({x.size} statistics) from {series!r} ({trace.size} samples at "
                  f"{rate:g} Hz{resampled}) to {out}: {np.array2string(x, precision=4)}", highlight=False, soft_wrap=True)

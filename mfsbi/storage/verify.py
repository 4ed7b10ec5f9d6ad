r"""``verify``: checks a store's consistency without changing anything.

The store is opened read-only (a read-only zarr ``LocalStore`` for a folder) and only read.
Checked, per table ``<task>/<fidelity>``:

* the required attributes are present (task, fidelity, simulator, simulator_version,
  config_hash, mfsbi_version, created_at, chunk_size);
* every array exists, has exactly as many rows as ``status`` (the row count), a first-axis chunk
  size equal to the table's ``chunk_size`` (a multiple of it for ``theta``, ``seed`` and
  ``round``, which only the reservation writes), and ``theta`` / ``x`` the stored widths;
* statuses are 0, 1 or 2; ok rows have finite ``x``; failed rows a non-empty reason; pending rows
  NaN ``x``; every reserved row a finite ``theta``, a written ``seed`` (not the fill value -1) and a
  round >= 0;
* the budget of an HF or intermediate-level table, when set: ``reserved`` equals the number of
  rows and neither exceeds ``total``;
* every chunk of every array decodes (the rows' chunks, up to the row count): a chunk that does not,
  because its ``crc32c`` checksum (tables of layout 3) or its compressor refuses it, is one problem
  naming the array, the chunk and its rows, and those rows are left out of the checks above.
  :func:`~mfsbi.storage.repair.repair_store` makes the rows of such chunks pending again.

For the store: every ``latest.json`` artifact names a run whose ``posterior.pt`` (or an ensemble's
``posterior-member-0.pt``) exists, and a lock
file (:mod:`mfsbi.storage.lock`) is reported, live or stale.

Severity: ``"error"`` for states the library never produces, even when killed; ``"warning"`` for
states an interrupted run leaves and the next run repairs (arrays longer than ``status`` after a
killed reservation, pending rows whose ``x`` was written before the kill, a budget attribute not
yet updated, a lock). Both are problems.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from .errors import StoreError
from .lock import read_lock
from .names import ARTIFACTS, check_artifact_name, check_fidelity, fidelity_order, is_budgeted
from .store import SimulationStore
from .layout import ARRAYS, RESERVED_ARRAYS, WRITTEN_ARRAYS, Status

__all__ = ["REPAIRABLE_ARRAYS", "Problem", "VerifyReport", "verify_store"]

# Arrays whose corrupt chunks a re-simulation restores: the workers' outputs (their θ and seed
# are intact). θ, seed and round come from the run's proposals, which the store alone cannot redraw.
REPAIRABLE_ARRAYS = WRITTEN_ARRAYS

REQUIRED_ATTRS = (
    "task",
    "fidelity",
    "simulator",
    "simulator_version",
    "config_hash",
    "mfsbi_version",
    "created_at",
    "chunk_size",
)

# Rows read at once, at most (a multiple of the chunk size is used).
_BLOCK_ROWS = 65_536


@dataclass(frozen=True)
class Problem:
    r"""One inconsistency found by :func:`verify_store`.

    Arguments:
        table: ``"task/fidelity"``, ``"artifacts"`` or ``"store"``.
        field: the array, attribute or file concerned.
        message: what is wrong, one line.
        severity: ``"error"`` or ``"warning"`` (see the module).
        chunk: for a chunk that does not decode, its index in the array ``field``.
        rows: for such a chunk, its rows ``(start, stop)`` (cut at the table's row count).
    """

    table: str
    field: str
    message: str
    severity: str = "error"
    chunk: int | None = None
    rows: tuple[int, int] | None = None

    @property
    def corrupt_chunk(self) -> bool:
        """Whether this is a chunk that does not decode (:func:`repair_store` acts on those)."""

        return self.chunk is not None


class VerifyReport(list):
    """The problems found (a list of :class:`Problem`), with ``tables`` and ``rows`` checked."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = 0
        self.rows = 0
        # Tables written before chunk checksums (layout < 3): a corrupt chunk there may decode.
        self.without_checksums: list[str] = []

    @property
    def ok(self) -> bool:
        return len(self) == 0


def _rows(rows: np.ndarray, limit: int = 10) -> str:
    head = ", ".join(str(int(r)) for r in rows[:limit])
    more = f", ... ({rows.size} rows)" if rows.size > limit else ""
    return f"[{head}{more}]"


def _is_fidelity(name: str) -> bool:
    try:
        check_fidelity(name)
    except StoreError:
        return False
    return True


def verify_store(store: str | os.PathLike) -> VerifyReport:
    """Checks a store's consistency, changing nothing.

    Arguments:
        store: a store folder or URL.

    Returns:
        The problems found, empty when the store is consistent.

    Raises:
        StoreError: the location is not an mfsbi store.
    """

    handle = SimulationStore(store, mode="r")
    report = VerifyReport()
    root = handle.root

    with warnings.catch_warnings():
        # zarr warns about the lock file, a non-zarr file at the root; it is reported below.
        warnings.filterwarnings("ignore", message=r"Object at \.mfsbi\.lock")
        task_names = sorted(root.group_keys())

    for task in task_names:
        if task == ARTIFACTS:
            continue
        task_group = root[task]
        members = set(task_group.group_keys()) | set(task_group.array_keys())
        # Every fidelity of the chain the task's folder holds: lf, intermediate levels, hf.
        for fidelity in sorted((m for m in members if _is_fidelity(m)), key=fidelity_order):
            try:
                group = task_group[fidelity]
            except KeyError:
                continue
            key = f"{task}/{fidelity}"
            if not isinstance(group, zarr.Group):
                report.append(Problem(key, fidelity, "a zarr array where a table group belongs"))
                continue
            report.tables += 1
            _verify_table(key, group, report)

    _verify_artifacts(handle, report)

    lock = read_lock(store)
    if lock is not None:
        report.append(
            Problem("store", lock.path.name, f"{lock.state} lock of {lock.describe()}: {lock.reason}", "warning")
        )

    return report


def _verify_table(key: str, group: zarr.Group, report: VerifyReport) -> None:
    attrs = group.attrs.asdict()
    add = report.append

    if "mfsbi_table" not in attrs:
        add(Problem(key, "mfsbi_table", "missing attribute 'mfsbi_table' (not marked as a table)"))
    for name in REQUIRED_ATTRS:
        if name not in attrs:
            add(Problem(key, name, f"missing attribute {name!r}"))

    try:
        chunk_size = int(attrs["chunk_size"])
    except (KeyError, TypeError, ValueError):
        chunk_size = None

    arrays: dict[str, zarr.Array] = {}
    present = set(group.array_keys())
    for name in ARRAYS:
        if name not in present:
            add(Problem(key, name, "missing array"))
        else:
            arrays[name] = group[name]

    if "status" not in arrays:
        return
    if any(not any(isinstance(codec, Crc32cCodec) for codec in a.metadata.codecs) for a in arrays.values()):
        report.without_checksums.append(key)
    n = int(arrays["status"].shape[0])
    report.rows += n

    for name, array in arrays.items():
        length = int(array.shape[0])
        if length < n:
            add(Problem(key, name, f"{length} rows but status has {n}: rows {length}..{n - 1} have no {name}"))
        elif length > n:
            add(Problem(key, name, f"{length} rows but status has {n} (left by an interrupted "
                        "reservation; the next reservation trims it)", "warning"))
        if chunk_size is None or chunk_size < 1:
            continue
        rows = int(array.chunks[0])
        # Workers write these chunk by chunk; reserve alone writes the others (layout.py).
        if name in RESERVED_ARRAYS and rows % chunk_size:
            add(Problem(key, name, f"chunk size {rows} is not a multiple of the table's chunk_size {chunk_size}"))
        elif name not in RESERVED_ARRAYS and rows != chunk_size:
            add(Problem(key, name, f"chunk size {rows} != the table's chunk_size {chunk_size}"))
    for name, attr in (("theta", "theta_dim"), ("x", "x_dim")):
        if name in arrays and attr in attrs and (arrays[name].ndim != 2 or arrays[name].shape[1] != attrs[attr]):
            add(Problem(key, name, f"shape {arrays[name].shape} does not match {attr}={attrs[attr]}"))

    _verify_budget(key, attrs, n, add)

    if n == 0 or chunk_size is None or chunk_size < 1:
        return
    _verify_rows(key, arrays, n, chunk_size, add)


def _verify_budget(key: str, attrs: dict[str, Any], n: int, add) -> None:
    budget = attrs.get("budget")
    if budget is None:
        return
    if not is_budgeted(key.rsplit("/", 1)[-1]):
        add(Problem(key, "budget", "a budget on an LF table (only hf and intermediate levels have one)"))
    try:
        total = int(budget["total"])
        reserved = int(budget["reserved"])
    except (KeyError, TypeError, ValueError):
        add(Problem(key, "budget", f"malformed budget attribute {budget!r}"))
        return
    if reserved > total:
        add(Problem(key, "budget", f"reserved {reserved} exceeds the total {total}"))
    if n > total:
        add(Problem(key, "budget", f"{n} rows exceed the budget total {total}"))
    if reserved != n:
        # reserve grows status, then updates the attribute: a kill in between leaves it behind.
        severity = "warning" if reserved < n <= total else "error"
        add(Problem(key, "budget", f"budget reserved={reserved} but the table has {n} rows", severity))


def _verify_rows(key: str, arrays: dict[str, zarr.Array], n: int, chunk_size: int, add) -> None:
    block = max(chunk_size, (_BLOCK_ROWS // chunk_size) * chunk_size)
    bad: dict[str, list[np.ndarray]] = {
        name: [] for name in ("status", "ok_x", "failed_reason", "pending_x", "theta", "seed", "round")
    }
    reported: set[tuple[str, int]] = set()  # a reservation chunk may span two blocks

    for start in range(0, n, block):
        stop = min(start + block, n)
        # Every chunk of every array is decoded; rows of a corrupt chunk (in any array) are reported
        # once, by their chunk, and left out of the row checks below.
        values: dict[str, np.ndarray] = {}
        corrupt = np.zeros(stop - start, dtype=bool)
        for name, array in arrays.items():
            if array.shape[0] >= stop:
                values[name], broken = _decode(key, name, array, start, stop, n, reported, add)
                corrupt |= broken
        rows = np.arange(start, stop)
        sound = ~corrupt
        if "status" not in values:
            continue
        status = values["status"]
        bad["status"].append(rows[sound & ~np.isin(status, [int(s) for s in Status])])

        if "x" in values:
            x = np.asarray(values["x"], dtype=np.float64).reshape(stop - start, -1)
            ok = sound & (status == Status.OK)
            pending = sound & (status == Status.PENDING)
            bad["ok_x"].append(rows[ok & ~np.isfinite(x).all(axis=1)])
            bad["pending_x"].append(rows[pending & ~np.isnan(x).all(axis=1)])

        failed = np.flatnonzero(sound & (status == Status.FAILED))
        if failed.size and "reason" in values:
            reasons = values["reason"]
            empty = np.array([not str(reasons[i]).strip() for i in failed], dtype=bool)
            bad["failed_reason"].append(rows[failed[empty]])

        if "theta" in values:
            theta = np.asarray(values["theta"], dtype=np.float64).reshape(stop - start, -1)
            bad["theta"].append(rows[sound & ~np.isfinite(theta).all(axis=1)])
        if "seed" in values:
            bad["seed"].append(rows[sound & (values["seed"] == -1)])
        if "round" in values:
            bad["round"].append(rows[sound & (values["round"] < 0)])

    messages = {
        "status": ("status", "status not in {0 pending, 1 ok, 2 failed} in rows", "error"),
        "ok_x": ("x", "ok rows with a non-finite x:", "error"),
        "failed_reason": ("reason", "failed rows without a reason:", "error"),
        "pending_x": ("x", "pending rows with x stored (a kill before the status commit; "
                      "the next run re-simulates them):", "warning"),
        "theta": ("theta", "reserved rows with a non-finite theta:", "error"),
        "seed": ("seed", "reserved rows without a seed (fill value -1):", "error"),
        "round": ("round", "reserved rows without a round (negative):", "error"),
    }
    for name, parts in bad.items():
        found = np.concatenate(parts) if parts else np.array([], dtype=np.int64)
        if found.size:
            field, text, severity = messages[name]
            add(Problem(key, field, f"{text} {_rows(found)}", severity))


def _decode(key: str, name: str, array: zarr.Array, start: int, stop: int, n: int,
            reported: set[tuple[str, int]], add) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[start, stop)`` of an array, and which of them lie in a chunk that does not decode.

    One read of the whole block when every chunk decodes (the usual case); else chunk by chunk, each
    corrupt chunk reported once as a :class:`Problem` with its chunk and rows, its rows given the
    fill value.
    """

    try:
        return np.asarray(array[start:stop]), np.zeros(stop - start, dtype=bool)
    except Exception:  # noqa: BLE001 -- whatever a corrupt chunk raises, it is found chunk by chunk below
        pass
    per_chunk = int(array.chunks[0])
    pieces, broken = [], np.zeros(stop - start, dtype=bool)
    for chunk in range(start // per_chunk, (stop - 1) // per_chunk + 1):
        first, last = max(start, chunk * per_chunk), min(stop, (chunk + 1) * per_chunk)
        try:
            pieces.append(np.asarray(array[first:last], dtype=object))
            continue
        except Exception as error:  # noqa: BLE001 -- any decoding failure is the corruption reported
            broken[first - start: last - start] = True
            pieces.append(np.full((last - first, *array.shape[1:]), array.fill_value, dtype=object))
            if (name, chunk) in reported:
                continue
            reported.add((name, chunk))
            rows = (chunk * per_chunk, min((chunk + 1) * per_chunk, n))
            add(Problem(key, name, _corrupt_message(name, chunk, rows, error), chunk=chunk, rows=rows))
    values = np.concatenate(pieces)
    if name != "reason":  # numbers again (the pieces went through object to hold any fill value)
        values = values.astype(np.dtype(array.dtype))
    return values, broken


def _corrupt_message(name: str, chunk: int, rows: tuple[int, int], error: Exception) -> str:
    cause = "checksum mismatch" if "checksum" in str(error) else f"{type(error).__name__}: {error}"
    if name in REPAIRABLE_ARRAYS:
        fix = "`mfsbi verify --repair` makes its rows pending, to be simulated again"
    else:
        fix = "the rows' parameters are lost: restore the store from a copy or use another --store"
    return f"corrupt chunk {chunk} (rows {rows[0]}..{rows[1] - 1}): {cause[:120]}; {fix}"


def _verify_artifacts(handle: SimulationStore, report: VerifyReport) -> None:
    names = handle.artifacts()
    present = set(names)
    for name in names:
        if name != "latest.json" and not name.endswith("/latest.json"):
            continue
        try:
            latest = json.loads(handle.read_artifact(name))
            run = latest["run"]
            posterior = check_artifact_name(f"{run}/posterior.pt")
            # An ensemble's posterior is its members' files (MF-NPE's fold-stopped ensemble, --ensemble N).
            first_member = check_artifact_name(f"{run}/posterior-member-0.pt")
        except Exception as error:  # noqa: BLE001 -- any unreadable content is the problem reported
            report.append(Problem("artifacts", name, f"unreadable: {type(error).__name__}: {error}"))
            continue
        if posterior not in present and first_member not in present:
            report.append(Problem("artifacts", name, f"points at run {run!r} but artifacts/{posterior} does not exist"))

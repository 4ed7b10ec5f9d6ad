r"""One table of simulations: a zarr group per task and fidelity.

Arrays run along the sample axis and share one chunk size, so that a chunk of rows is the unit of
work and of concurrency:

* ``reserve`` is the single-writer append (the flow process only). It writes ``theta``, ``seed``
  and ``round`` and grows ``status`` last: the length of ``status`` is the number of rows, so a
  crash in the middle of a reservation leaves no half-reserved rows.
* ``write_batch`` is called from many worker processes at once, each on rows of one chunk. It
  writes ``x``, ``reason`` and ``elapsed`` first and ``status`` last, so a row is never counted
  ``ok`` without its ``x``; readers read ``status`` first for the same reason.
* Rows are never overwritten: a row that is no longer pending can only be re-written with the same
  values (a re-run of a finished task is a no-op), anything else raises :class:`StoreError`.

Concurrency rule (zarr 3 rewrites whole chunk files, so two writers of one chunk lose rows
silently): nothing but ``write_batch`` writes ``x``, ``reason``, ``elapsed`` or ``status``, and
two batches of the **same chunk** must not be written at the same time.
:meth:`SimulationTable.pending_batches` never returns a batch that spans two chunks, but it returns
several batches for one chunk when a reservation ended inside it or seeds differ inside it.
For a local folder, ``write_batch`` holds an exclusive per-chunk file lock (``flock``, under the
system temporary folder) so such batches are serialised between processes and threads of one
machine; for other stores (or several machines) the caller must serialise them, e.g. by grouping
batches by ``batch.start // table.chunk_size``. Reserving whole chunks with one seed per chunk
gives exactly one batch per chunk.

High-fidelity budget policy: the budget counts *reserved* rows (pending, ok and failed alike), not
successful ones. A reserved row is committed budget, so a failed or crashed simulation does not
give its budget back, and retries and restarts (which re-run pending rows, never reserve new
ones) can neither spend a row twice nor overrun the total. The check happens before anything is
written. The total can only be raised, never below what is already reserved.
"""

from __future__ import annotations

import enum
import hashlib
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from zarr.storage import LocalStore

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

from ._util import mfsbi_version, utc_now
from .errors import BudgetExceededError, StoreError

__all__ = [
    "Batch",
    "HighFidelityBudget",
    "SimulationTable",
    "Status",
]

StatusName = Literal["pending", "ok", "failed", "all"]


class Status(enum.IntEnum):
    """The status of a row, as stored in the ``status`` array (int8)."""

    PENDING = 0
    OK = 1
    FAILED = 2


@dataclass(frozen=True)
class Batch:
    r"""A run of pending rows in one chunk that share a seed: one simulator call.

    Arguments:
        rows: the half-open row range ``(start, stop)``.
        seed: the seed of these rows.
    """

    rows: tuple[int, int]
    seed: int

    @property
    def start(self) -> int:
        return self.rows[0]

    @property
    def stop(self) -> int:
        return self.rows[1]

    def __len__(self) -> int:
        return self.rows[1] - self.rows[0]


@dataclass(frozen=True)
class HighFidelityBudget:
    r"""The high-fidelity simulation budget of a table.

    Arguments:
        total: the number of rows that may ever be reserved.
        reserved: the number of rows reserved so far (pending, ok and failed).
    """

    total: int
    reserved: int

    @property
    def remaining(self) -> int:
        """The number of rows that may still be reserved."""

        return max(self.total - self.reserved, 0)


# name: (dtype, fill value, has a second axis)
_ARRAYS: dict[str, tuple[Any, Any, bool]] = {
    "theta": ("float64", np.nan, True),
    "x": ("float64", np.nan, True),
    "seed": ("int64", -1, False),
    "round": ("int32", -1, False),
    # The fill value is what makes a new row pending: reserve never writes status chunks, which
    # workers may be writing at the same time.
    "status": ("int8", int(Status.PENDING), False),
    # zarr 3's variable-length UTF-8 string ("string" + vlen-utf8 codec): no length limit, no
    # unstable-spec warning (unlike fixed-width "<U"), and numpy StringDType round trip.
    "reason": (str, "", False),
    "elapsed": ("float64", np.nan, False),
}

# Reserve grows these before status, which is grown last and thereby commits the rows.
_ROW_ARRAYS = ("theta", "x", "seed", "round", "reason", "elapsed")


def _create_arrays(group: zarr.Group, theta_dim: int, x_dim: int, chunk_size: int) -> None:
    """Creates the missing arrays of a table, empty (a table left half-created is completed)."""

    dims = {"theta": theta_dim, "x": x_dim}
    existing = set(group.array_keys())

    for name, (dtype, fill, wide) in _ARRAYS.items():
        if name in existing:
            continue

        shape = (0, dims[name]) if wide else (0,)
        chunks = (chunk_size, dims[name]) if wide else (chunk_size,)

        group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill)


class SimulationTable:
    r"""The simulations of one task at one fidelity.

    Not created directly: use :meth:`SimulationStore.table` or
    :meth:`SimulationStore.require_table`.

    Arguments:
        group: the table's zarr group.
        read_only: whether writes are refused.
    """

    def __init__(self, group: zarr.Group, read_only: bool = False):
        self._group = group
        self._read_only = read_only

        attrs = group.attrs.asdict()

        self.task: str = attrs["task"]
        self.fidelity: str = attrs["fidelity"]
        self._chunk_size = int(attrs["chunk_size"])

    def __repr__(self) -> str:
        return f"SimulationTable({self.key!r}, rows={self.num_rows}, chunk_size={self.chunk_size})"

    # Metadata

    @property
    def key(self) -> str:
        """The table's key, ``"task/fidelity"``."""

        return f"{self.task}/{self.fidelity}"

    @property
    def attrs(self) -> dict[str, Any]:
        """The table's attributes, read from the store now."""

        return self._fresh_group().attrs.asdict()

    @property
    def chunk_size(self) -> int:
        """The number of rows per chunk."""

        return self._chunk_size

    @property
    def theta_dim(self) -> int:
        """The number of parameters per row."""

        return int(self._array("theta").shape[1])

    @property
    def x_dim(self) -> int:
        """The number of outputs per row."""

        return int(self._array("x").shape[1])

    @property
    def num_rows(self) -> int:
        """The number of reserved rows (the length of ``status``)."""

        return int(self._array("status").shape[0])

    def _fresh_group(self) -> zarr.Group:
        # A Group caches its attributes at open time; another process may have changed them.
        return zarr.open_group(store=self._group.store, path=self._group.path, mode="r")

    def _array(self, name: str) -> zarr.Array:
        # Indexing a group reads the array's metadata now: a handle with a stale (shorter) shape
        # would treat the last chunk as complete and overwrite its newer rows with fill values.
        return self._group[name]

    @contextmanager
    def _chunk_lock(self, chunk: int) -> Iterator[None]:
        """Holds an exclusive lock on one chunk of this table (local folders on POSIX only)."""

        store = self._group.store

        if fcntl is None or not isinstance(store, LocalStore):
            yield
            return

        # Outside the store: a foreign file in the hierarchy makes zarr warn when listing it.
        where = f"{Path(store.root).resolve()}/{self._group.path}"
        folder = Path(tempfile.gettempdir()) / "mfsbi-locks" / hashlib.sha1(where.encode()).hexdigest()[:20]
        folder.mkdir(parents=True, exist_ok=True)

        # flock locks belong to the open file, so threads of one process exclude each other too.
        with open(folder / f"{chunk}.lock", "a+b") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)

    def _writable(self) -> None:
        if self._read_only:
            raise StoreError(f"table '{self.key}' is open read-only")

    # Budget

    def budget(self) -> HighFidelityBudget | None:
        """Returns the high-fidelity budget, or None if none was set.

        Returns:
            The budget; ``reserved`` is the number of rows, the source of truth.
        """

        total = self._fresh_group().attrs.get("budget", {}).get("total")

        if total is None:
            return None

        return HighFidelityBudget(total=int(total), reserved=self.num_rows)

    def set_budget(self, total: int) -> HighFidelityBudget:
        """Sets or raises the high-fidelity budget.

        Arguments:
            total: the new total; not below the current total nor the reserved rows.

        Returns:
            The new budget.
        """

        self._writable()

        if self.fidelity != "hf":
            raise ValueError(f"budget: only the hf table has a budget, not '{self.key}'")
        if isinstance(total, bool) or int(total) != total:
            raise ValueError(f"budget: total must be an integer, got {total!r}")

        total = int(total)
        current = self.budget()
        reserved = self.num_rows

        if total < reserved:
            raise ValueError(f"budget: total {total} is below the {reserved} rows already reserved")
        if current is not None and total < current.total:
            raise ValueError(f"budget: total can only be raised, {total} < {current.total}")

        self._group.attrs.update(
            {"budget": {"total": total, "reserved": reserved}, "updated_at": utc_now()}
        )

        return HighFidelityBudget(total=total, reserved=reserved)

    # Single writer: reserve

    def reserve(
        self,
        theta: np.ndarray,
        seed: np.ndarray,
        round: int = 0,  # noqa: A002
    ) -> np.ndarray:
        r"""Appends pending rows; the flow process only (single writer).

        Arguments:
            theta: parameters, shape :math:`(n, d)`, finite.
            seed: the seed of each row, shape :math:`(n,)`, integers.
            round: the inference round the rows belong to.

        Returns:
            The indices of the new rows.
        """

        self._writable()

        theta = np.asarray(theta)
        seed = np.asarray(seed)
        d = self.theta_dim

        if theta.ndim != 2 or theta.shape[1] != d:
            raise ValueError(f"theta: expected shape (n, {d}), got {theta.shape}")
        if not np.issubdtype(theta.dtype, np.number) or np.iscomplexobj(theta):
            raise ValueError(f"theta: expected real numbers, got dtype {theta.dtype}")

        theta = theta.astype(np.float64)
        n = theta.shape[0]

        if not np.isfinite(theta).all():
            bad = np.flatnonzero(~np.isfinite(theta).all(axis=1))
            raise ValueError(f"theta: non-finite values in rows {bad[:10].tolist()}")
        if seed.shape != (n,):
            raise ValueError(f"seed: expected shape ({n},), got {seed.shape}")
        if n > 0 and not np.issubdtype(seed.dtype, np.integer):
            raise ValueError(f"seed: expected integers, got dtype {seed.dtype}")
        if isinstance(round, bool) or not isinstance(round, (int, np.integer)) or round < 0:
            raise ValueError(f"round: expected a non-negative integer, got {round!r}")

        status = self._array("status")
        start = int(status.shape[0])
        stop = start + n

        # The budget is checked before anything is written.
        budget = self.budget() if self.fidelity == "hf" else None

        if budget is not None and n > budget.remaining:
            raise BudgetExceededError(requested=n, remaining=budget.remaining)

        if n == 0:
            return np.arange(start, start, dtype=np.int64)

        arrays = {name: self._array(name) for name in _ROW_ARRAYS}

        # Other arrays may be longer than status after a crashed reservation: resize to exactly
        # stop (their rows past status were never committed) and write every new row.
        for array in arrays.values():
            array.resize((stop, *array.shape[1:]))

        arrays["theta"][start:stop] = theta
        arrays["seed"][start:stop] = seed.astype(np.int64)
        arrays["round"][start:stop] = np.full(n, round, dtype=np.int32)

        # Commit point: the new rows exist once status covers them (pending by fill value).
        status.resize((stop,))

        update: dict[str, Any] = {"updated_at": utc_now()}

        if budget is not None:
            update["budget"] = {"total": budget.total, "reserved": stop}

        self._group.attrs.update(update)

        return np.arange(start, stop, dtype=np.int64)

    # Many writers: pending batches and write_batch

    def pending_batches(self) -> list[Batch]:
        r"""Returns the unfinished work: runs of pending rows in one chunk with one seed.

        Returns:
            The batches, ordered by row; together they cover exactly the pending rows and none
            spans two chunks.
        """

        status = self._array("status")[:]
        rows = np.flatnonzero(status == Status.PENDING)

        if rows.size == 0:
            return []

        seeds = self._array("seed")[: status.shape[0]][rows]
        chunks = rows // self.chunk_size

        cut = (np.diff(rows) != 1) | (np.diff(chunks) != 0) | (np.diff(seeds) != 0)
        cut = np.flatnonzero(cut) + 1
        firsts = np.concatenate(([0], cut))
        lasts = np.concatenate((cut, [rows.size])) - 1

        return [
            Batch(rows=(int(rows[i]), int(rows[j]) + 1), seed=int(seeds[i]))
            for i, j in zip(firsts, lasts)
        ]

    def theta_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Reads the parameters and seeds of rows ``[start, stop)`` (what a worker simulates).

        Returns:
            ``theta`` of shape :math:`(m, d)` and ``seed`` of shape :math:`(m,)`.
        """

        self._check_range(start, stop)

        return self._array("theta")[start:stop], self._array("seed")[start:stop]

    def is_pending(self, start: int, stop: int) -> np.ndarray:
        """Whether each of rows ``[start, stop)`` still waits for its simulation.

        Workers ask before simulating: a job that Dask runs a second time (its worker died after
        writing) finds its rows stored and simulates nothing again.
        """

        self._check_range(start, stop)

        return self._array("status")[start:stop] == Status.PENDING

    def _check_range(self, start: int, stop: int) -> None:
        n = self.num_rows

        if not (0 <= start < stop <= n):
            raise ValueError(f"rows: expected 0 <= start < stop <= {n}, got [{start}, {stop})")
        if start // self.chunk_size != (stop - 1) // self.chunk_size:
            raise ValueError(
                f"rows: [{start}, {stop}) spans two chunks of {self.chunk_size} rows; "
                "a batch must lie in one chunk"
            )

    def write_batch(
        self,
        start: int,
        stop: int,
        x: np.ndarray,
        ok: np.ndarray | None = None,
        reasons: Sequence[str] | None = None,
        elapsed: float = 0.0,
    ) -> None:
        r"""Stores the outputs of rows ``[start, stop)``, which must lie in one chunk.

        Safe from several processes at once on distinct chunks. Idempotent: re-writing rows that
        were already stored with the same values does nothing.

        Arguments:
            start: the first row.
            stop: one past the last row.
            x: outputs, shape :math:`(m, k)`; rows with a non-finite value are stored failed.
            ok: whether each row succeeded, shape :math:`(m,)`; all by default.
            reasons: a failure reason per row; defaults to ``"non-finite output"`` or
                ``"simulator reported failure"`` for failed rows.
            elapsed: the simulator time of the whole batch in seconds, split evenly over rows.
        """

        self._writable()
        self._check_range(start, stop)

        m = stop - start
        k = self.x_dim
        x = np.asarray(x)

        if x.shape != (m, k):
            raise ValueError(f"x: expected shape ({m}, {k}), got {x.shape}")
        if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
            raise ValueError(f"x: expected real numbers, got dtype {x.dtype}")

        x = x.astype(np.float64)

        if ok is None:
            ok = np.ones(m, dtype=bool)
        else:
            ok = np.asarray(ok)
            if ok.shape != (m,) or ok.dtype != bool:
                raise ValueError(f"ok: expected booleans of shape ({m},), got {ok.dtype} {ok.shape}")
        if reasons is not None:
            reasons = list(reasons)
            if len(reasons) != m or not all(isinstance(r, str) for r in reasons):
                raise ValueError(f"reasons: expected {m} strings")
        if not np.isfinite(elapsed) or elapsed < 0:
            raise ValueError(f"elapsed: expected a finite non-negative number, got {elapsed!r}")

        finite = np.isfinite(x).all(axis=1)
        good = ok & finite
        new_status = np.where(good, Status.OK, Status.FAILED).astype(np.int8)
        new_reason = []

        for i in range(m):
            if reasons is not None and reasons[i]:
                new_reason.append(reasons[i])
            elif good[i]:
                new_reason.append("")
            elif not finite[i]:
                new_reason.append("non-finite output")
            else:
                new_reason.append("simulator reported failure")

        new_reason = np.array(new_reason, dtype=np.dtypes.StringDType())
        new_elapsed = np.full(m, elapsed / m, dtype=np.float64)

        with self._chunk_lock(start // self.chunk_size):
            self._write(start, stop, x, new_status, new_reason, new_elapsed)

    def _write(
        self,
        start: int,
        stop: int,
        x: np.ndarray,
        new_status: np.ndarray,
        new_reason: np.ndarray,
        new_elapsed: np.ndarray,
    ) -> None:
        # Fresh handles under the lock: their shapes include every reserved row.
        arrays = {name: self._array(name) for name in ("x", "reason", "elapsed", "status")}
        stored = arrays["status"][start:stop]
        done = stored != Status.PENDING

        if done.any():
            # Never overwrite a stored simulation; an identical re-write (a task re-run by Dask)
            # is accepted as a no-op for the rows already stored.
            same = (
                np.array_equal(arrays["x"][start:stop][done], x[done], equal_nan=True)
                and np.array_equal(stored[done], new_status[done])
                and np.array_equal(arrays["reason"][start:stop][done], new_reason[done])
            )

            if not same:
                rows = (np.flatnonzero(done) + start)[:10].tolist()
                raise StoreError(
                    f"table '{self.key}': rows {rows} are already stored with other values; "
                    "a stored simulation is never overwritten"
                )
            if done.all():
                return

            new_elapsed[done] = arrays["elapsed"][start:stop][done]

        # The payload first, the status last: a crash in between leaves the rows pending.
        arrays["x"][start:stop] = x
        arrays["reason"][start:stop] = new_reason
        arrays["elapsed"][start:stop] = new_elapsed

        self._commit_status(arrays["status"], start, stop, new_status)

    def _commit_status(self, status: zarr.Array, start: int, stop: int, values: np.ndarray) -> None:
        # A separate method so that tests can simulate a crash before the commit.
        status[start:stop] = values

    # Reading

    def _mask(self, status: np.ndarray, which: StatusName | None) -> np.ndarray:
        if which in (None, "all"):
            return np.ones(status.shape, dtype=bool)

        try:
            code = Status[which.upper()]
        except (KeyError, AttributeError):
            raise ValueError(
                f"status: expected 'pending', 'ok', 'failed' or 'all', got {which!r}"
            ) from None

        return status == code

    def rows(self, status: StatusName | None = "ok") -> np.ndarray:
        """Returns the indices of the rows with a status (``"all"`` for every row)."""

        status_ = self._array("status")[:]

        return np.flatnonzero(self._mask(status_, status))

    def read(
        self,
        status: StatusName | None = "ok",
        rounds: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        r"""Reads the rows with a status, optionally of some rounds only.

        Arguments:
            status: ``"ok"``, ``"failed"``, ``"pending"`` or ``"all"``.
            rounds: the rounds to keep; all by default.

        Returns:
            ``theta`` of shape :math:`(n, d)` and ``x`` of shape :math:`(n, k)`, float64.
        """

        # Status first: it is written last, so a row seen ok already has its x.
        status_ = self._array("status")[:]
        n = status_.shape[0]
        mask = self._mask(status_, status)

        if rounds is not None:
            mask &= np.isin(self._array("round")[:n], np.asarray(list(rounds), dtype=np.int64))

        rows = np.flatnonzero(mask)
        theta = self._array("theta")[:n][rows]
        x = self._array("x")[:n][rows]

        return theta.astype(np.float64), x.astype(np.float64)

    def read_theta(self, status: StatusName | None = "pending") -> np.ndarray:
        """Reads the parameters of the rows with a status (without their x, which may be large).

        Returns:
            ``theta`` of shape :math:`(n, d)`, float64.
        """

        status_ = self._array("status")[:]
        rows = np.flatnonzero(self._mask(status_, status))

        return self._array("theta")[: status_.shape[0]][rows].astype(np.float64)

    def counts(self) -> dict[str, int]:
        """Returns the number of rows by status, and the total."""

        status = self._array("status")[:]

        return {
            "pending": int((status == Status.PENDING).sum()),
            "ok": int((status == Status.OK).sum()),
            "failed": int((status == Status.FAILED).sum()),
            "total": int(status.shape[0]),
        }

    def seconds_per_row(self) -> float | None:
        """The median simulator seconds of a row stored ok, or None before there is one."""

        status = self._array("status")[:]
        stored = status == Status.OK

        if not stored.any():
            return None

        elapsed = self._array("elapsed")[: status.shape[0]][stored]
        elapsed = elapsed[np.isfinite(elapsed)]

        return float(np.median(elapsed)) if elapsed.size else None

    def failures(self) -> list[tuple[int, str]]:
        """Returns the failed rows and their reasons."""

        status = self._array("status")[:]
        rows = np.flatnonzero(status == Status.FAILED)

        if rows.size == 0:
            return []

        reasons = self._array("reason")[: status.shape[0]][rows]

        return [(int(r), str(s)) for r, s in zip(rows, reasons)]


def table_attrs(
    task: str,
    fidelity: str,
    theta_dim: int,
    x_dim: int,
    chunk_size: int,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Returns the attributes of a new table."""

    now = utc_now()
    extra = {
        k: v
        for k, v in provenance.items()
        if k not in ("simulator", "simulator_version", "config_hash", "prior")
    }

    attrs = {
        "mfsbi_table": 1,
        "task": task,
        "fidelity": fidelity,
        "simulator": str(provenance["simulator"]),
        "simulator_version": str(provenance["simulator_version"]),
        "config_hash": str(provenance["config_hash"]),
        "prior": str(provenance.get("prior", "")),
        "theta_dim": theta_dim,
        "x_dim": x_dim,
        "chunk_size": chunk_size,
        "mfsbi_version": mfsbi_version(),
        "created_at": now,
        "updated_at": now,
        "status_codes": {s.name.lower(): int(s) for s in Status},
    }

    if extra:
        attrs["provenance"] = extra

    return attrs


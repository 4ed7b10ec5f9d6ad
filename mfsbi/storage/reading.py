r"""The reading side of a simulation table: its metadata, its rows by status, and its pending work.

Readers read ``status`` first: it is written last (:mod:`mfsbi.storage.table`), so a row seen ok
already has its ``x``, and a row seen reserved already has its ``theta`` and ``seed``. Arrays may be
longer than ``status`` after a crashed reservation; every read is cut at the length of ``status``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import zarr

from .layout import Batch, HighFidelityBudget, Status

__all__ = ["StatusName", "TableReader"]

StatusName = Literal["pending", "ok", "failed", "all"]


class TableReader:
    r"""What can be read from the simulations of one task at one fidelity.

    The base of :class:`~mfsbi.storage.table.SimulationTable`, which adds the writes; not
    created directly.

    Arguments:
        group: the table's zarr group.
    """

    def __init__(self, group: zarr.Group):
        self._group = group

        attrs = group.attrs.asdict()

        self.task: str = attrs["task"]
        self.fidelity: str = attrs["fidelity"]
        self._chunk_size = int(attrs["chunk_size"])
        # Array widths never change; the row count only grows. Both are cached so that a worker
        # writing many chunks does not re-read metadata for every one (~1 ms per array opened).
        self._widths: dict[str, int] = {}
        self._rows_seen = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r}, rows={self.num_rows}, chunk_size={self.chunk_size})"

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

        return self._width("theta")

    @property
    def x_dim(self) -> int:
        """The number of outputs per row."""

        return self._width("x")

    @property
    def num_rows(self) -> int:
        """The number of reserved rows (the length of ``status``)."""

        return int(self._array("status").shape[0])

    def _width(self, name: str) -> int:
        if name not in self._widths:
            self._widths[name] = int(self._array(name).shape[1])
        return self._widths[name]

    def _fresh_group(self) -> zarr.Group:
        # A Group caches its attributes at open time; another process may have changed them.
        return zarr.open_group(store=self._group.store, path=self._group.path, mode="r")

    def _array(self, name: str) -> zarr.Array:
        # Indexing a group reads the array's metadata now: a handle with a stale (shorter) shape
        # would treat the last chunk as complete and overwrite its newer rows with fill values.
        return self._group[name]

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

    # Pending work

    def pending_batches(self) -> list[Batch]:
        r"""Returns the unfinished work: runs of pending rows in one chunk with one seed.

        Returns:
            The batches, ordered by row; together they cover exactly the pending rows and none
            spans two chunks.
        """

        return self.pending_work(with_theta=False)[0]

    def pending_work(self, with_theta: bool = True) -> tuple[list[Batch], np.ndarray]:
        r"""Returns the pending batches and the parameters of their rows, from one status read.

        Arguments:
            with_theta: whether to read the parameters (else an empty array is returned).

        Returns:
            The batches as :meth:`pending_batches`, and ``theta`` of their rows in the same order,
            shape :math:`(n, d)`.
        """

        status = self._array("status")[:]
        n = status.shape[0]
        rows = np.flatnonzero(status == Status.PENDING)
        theta = np.zeros((0, self.theta_dim))

        if rows.size == 0:
            return [], theta

        seeds = self._array("seed")[:n][rows]
        if with_theta:
            theta = self._array("theta")[:n][rows].astype(np.float64)
        chunks = rows // self.chunk_size

        cut = (np.diff(rows) != 1) | (np.diff(chunks) != 0) | (np.diff(seeds) != 0)
        cut = np.flatnonzero(cut) + 1
        firsts = np.concatenate(([0], cut))
        lasts = np.concatenate((cut, [rows.size])) - 1

        batches = [
            Batch(rows=(int(rows[i]), int(rows[j]) + 1), seed=int(seeds[i]))
            for i, j in zip(firsts, lasts)
        ]

        return batches, theta

    def theta_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Reads the parameters and seeds of rows ``[start, stop)`` (what a worker simulates).

        Returns:
            ``theta`` of shape :math:`(m, d)` and ``seed`` of shape :math:`(m,)`.
        """

        self._check_range(start, stop)

        return self._array("theta")[start:stop], self._array("seed")[start:stop]

    def _check_rows(self, start: int, stop: int) -> None:
        if stop > self._rows_seen:  # rows are never removed: a count once seen stays a lower bound
            self._rows_seen = self.num_rows
        n = self._rows_seen

        if not (0 <= start < stop <= n):
            raise ValueError(f"rows: expected 0 <= start < stop <= {n}, got [{start}, {stop})")

    def _check_range(self, start: int, stop: int) -> None:
        self._check_rows(start, stop)

        if start // self.chunk_size != (stop - 1) // self.chunk_size:
            raise ValueError(
                f"rows: [{start}, {stop}) spans two chunks of {self.chunk_size} rows; "
                "a batch must lie in one chunk"
            )

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

    @property
    def num_chunks(self) -> int:
        """The number of chunks the reserved rows span (the last one may be partly reserved)."""

        return -(-self.num_rows // self.chunk_size)

    def read_chunk(self, chunk: int, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        r"""Reads the ok rows of one chunk (below row ``stop``): the unit of out-of-core training.

        Reads only that chunk's rows of ``status``, ``theta`` and ``x``, status first, so that a
        reader never holds more than one chunk and a chunk being written meanwhile gives its
        pending rows as absent, never half-written.

        Arguments:
            chunk: the chunk, ``0 <= chunk < num_chunks``.
            stop: rows at or after it are left out (a training's first ``limit`` rows).

        Returns:
            ``theta`` of shape :math:`(m, d)` and ``x`` of shape :math:`(m, k)`, float64.
        """

        start = chunk * self.chunk_size
        end = min((chunk + 1) * self.chunk_size, self.num_rows if stop is None else stop)
        if chunk < 0 or (start >= end and chunk >= self.num_chunks):
            raise ValueError(f"chunk: expected 0 <= chunk < {self.num_chunks}, got {chunk}")

        status = self._array("status")[start:end]
        rows = np.flatnonzero(status == Status.OK)
        if rows.size == 0:
            return np.zeros((0, self.theta_dim)), np.zeros((0, self.x_dim))

        # Only the span of ok rows is read: a partly filled chunk reads no more than it holds.
        first, last = start + int(rows[0]), start + int(rows[-1]) + 1
        keep = rows - int(rows[0])
        theta = self._array("theta")[first:last][keep]
        x = self._array("x")[first:last][keep]

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

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
For a local folder, ``write_batch`` holds an exclusive per-chunk file lock (``flock``, in a folder
beside the store) so such batches are serialised between processes and threads, and between
machines where the file system's ``flock`` reaches across them (docs/deploy.md, "Shared machines
and file systems"); for other stores the caller must serialise them, e.g. by grouping
batches by ``batch.start // table.chunk_size``. Reserving whole chunks with one seed per chunk
gives exactly one batch per chunk.

High-fidelity budget policy: the budget counts *reserved* rows (pending, ok and failed alike), not
successful ones. A reserved row is committed budget, so a failed or crashed simulation does not
give its budget back, and retries and restarts (which re-run pending rows, never reserve new
ones) can neither spend a row twice nor overrun the total. The check happens before anything is
written. The total can only be raised, never below what is already reserved.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from .errors import BudgetExceededError, StoreError, StoreFullError
from .layout import (
    ROW_ARRAYS,
    WRITTEN_ARRAYS,
    Batch,
    BatchOutput,
    HighFidelityBudget,
    Status,
    batch_values,
)
from .names import is_budgeted
from .payload import adjacent, chunk_lock, joined, write_payload
from .reading import StatusName, TableReader
from .space import store_space
from .stamps import utc_now

__all__ = [
    "Batch",
    "HighFidelityBudget",
    "SimulationTable",
    "Status",
    "StatusName",
]

# Chunks one write locks and writes together, at most: each lock is an open file.
CHUNKS_PER_WRITE = 64


class SimulationTable(TableReader):
    r"""The simulations of one task at one fidelity: the reads of :class:`TableReader`, and the writes.

    Not created directly: use :meth:`SimulationStore.table` or
    :meth:`SimulationStore.require_table`.

    Arguments:
        group: the table's zarr group.
        read_only: whether writes are refused.
    """

    def __init__(self, group: zarr.Group, read_only: bool = False):
        super().__init__(group)
        self._read_only = read_only
        self._writers: dict[str, zarr.Array] = {}

    # Write handles and locks

    def _chunk_arrays(self, chunk: int) -> dict[str, zarr.Array]:
        """Handles on the arrays that ``write_batch`` writes, safe for reading and writing ``chunk``.

        A handle whose shape is stale (rows reserved since it was opened) is still exact for any
        chunk that lies wholly inside that shape: zarr sees the same complete chunk either way.
        Only a chunk reaching past the shape needs fresh handles, so they are reopened then and
        reused otherwise.

        ``write_empty_chunks``: zarr otherwise compares every chunk it writes with the fill value,
        to delete the chunk instead, and for an x chunk of NaN fill that comparison cost a third of
        the write (docs/performance.md). Rows written are never all fill anyway (status is never
        written pending); an all-NaN x chunk of failed rows is simply stored.
        """

        end = (chunk + 1) * self._chunk_size
        writers = self._writers

        if len(writers) != len(WRITTEN_ARRAYS) or min(a.shape[0] for a in writers.values()) < end:
            writers = {
                name: self._array(name).with_config({"write_empty_chunks": True})
                for name in WRITTEN_ARRAYS
            }
            self._writers = writers

        return writers

    @contextmanager
    def _chunk_lock(self, chunk: int) -> Iterator[None]:
        """Holds an exclusive lock on one chunk of this table (local folders on POSIX only)."""

        with chunk_lock(self._group.store, self._group.path, chunk):
            yield

    def _writable(self) -> None:
        if self._read_only:
            raise StoreError(f"table '{self.key}' is open read-only")

    # Budget (reading it is in TableReader.budget)

    def set_budget(self, total: int) -> HighFidelityBudget:
        """Sets or raises the high-fidelity budget.

        Arguments:
            total: the new total; not below the current total nor the reserved rows.

        Returns:
            The new budget.
        """

        self._writable()

        if not is_budgeted(self.fidelity):
            raise ValueError(f"budget: only tables above LF (hf, intermediate levels) have a budget, not '{self.key}'")
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
        budget = self.budget() if is_budgeted(self.fidelity) else None

        if budget is not None and n > budget.remaining:
            raise BudgetExceededError(requested=n, remaining=budget.remaining)

        if n == 0:
            return np.arange(start, start, dtype=np.int64)

        arrays = {name: self._array(name) for name in ROW_ARRAYS}
        what = f"a reservation of table '{self.key}' rows {start}..{stop - 1}"
        try:
            with store_space(self._group.store, what, theta.nbytes + 13 * n):
                self._reserve(arrays, status, start, stop, theta, seed, round, budget)
        except StoreFullError:
            # Nothing was committed (status is grown last); trim what grew, best effort, so that
            # `mfsbi verify` finds the table as it was (else it warns, and the next reservation trims).
            for array in arrays.values():
                try:
                    array.resize((int(status.shape[0]), *array.shape[1:]))
                except OSError:
                    break
            raise

        return np.arange(start, stop, dtype=np.int64)

    def _reserve(self, arrays: dict[str, zarr.Array], status: zarr.Array, start: int, stop: int,
                 theta: np.ndarray, seed: np.ndarray, round: int, budget: HighFidelityBudget | None) -> None:  # noqa: A002
        n = stop - start

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

    # Many writers: is_pending and write_batch

    def is_pending(self, start: int, stop: int) -> np.ndarray:
        """Whether each of rows ``[start, stop)`` (any number of chunks) still waits for its simulation.

        Workers ask before simulating: a job that Dask runs a second time (its worker died after
        writing) finds its rows stored and simulates nothing again.
        """

        self._check_rows(start, stop)
        status = self._chunk_arrays((stop - 1) // self._chunk_size)["status"]

        return status[start:stop] == Status.PENDING

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

        self.write_batches([BatchOutput(start, stop, x, ok, reasons, elapsed)])

    def write_batches(self, outputs: Sequence[BatchOutput]) -> None:
        r"""Stores several batches, each in one chunk, none overlapping: a worker's whole job.

        The same rules as :meth:`write_batch`, in fewer zarr writes: the small arrays of adjacent
        batches are written as one run of rows, whose chunks zarr writes concurrently. Up to
        :data:`CHUNKS_PER_WRITE` chunks are locked and written together, payload first and
        statuses last, so a crash leaves each of their rows pending or stored, never half.

        Arguments:
            outputs: the batches, in any order.
        """

        self._writable()
        outputs = sorted(outputs, key=lambda o: o.start)

        for before, after in zip(outputs, outputs[1:]):
            if after.start < before.stop:
                raise ValueError(
                    f"rows: batches [{before.start}, {before.stop}) and [{after.start}, {after.stop}) overlap"
                )

        # Every batch is checked before anything is locked or written.
        batches: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for output in outputs:
            self._check_range(output.start, output.stop)
            values = batch_values(output.x, output.stop - output.start, self.x_dim, output.ok,
                                  output.reasons, output.elapsed)
            batches.append((output.start, output.stop, *values))

        size = self._chunk_size
        first = 0
        while first < len(batches):
            # The batches of at most CHUNKS_PER_WRITE chunks: each holds a lock file open.
            limit = batches[first][0] // size + CHUNKS_PER_WRITE
            last = first
            while last < len(batches) and batches[last][0] // size < limit:
                last += 1
            group = batches[first:last]
            chunks = sorted({batch[0] // size for batch in group})

            with ExitStack() as locks:
                for chunk in chunks:  # ascending: two writers of overlapping chunks cannot deadlock
                    locks.enter_context(self._chunk_lock(chunk))
                self._write(chunks[-1], group)
            first = last

    def _write(self, last_chunk: int, batches: list[tuple]) -> None:
        # Under the locks: no other writer of these chunks runs until their statuses are committed.
        arrays = self._chunk_arrays(last_chunk)
        runs = []

        for run in adjacent(batches):
            start, stop = run[0][0], run[-1][1]
            new_status, new_reason, new_elapsed = (joined(run, i) for i in (3, 4, 5))
            stored = arrays["status"][start:stop]
            done = stored != Status.PENDING

            if done.any():
                # Never overwrite a stored simulation; an identical re-write (a task re-run by
                # Dask) is accepted as a no-op for the rows already stored.
                same = (
                    np.array_equal(arrays["x"][start:stop][done], joined(run, 2)[done], equal_nan=True)
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
                    continue

                new_elapsed[done] = arrays["elapsed"][start:stop][done]

            runs.append((run, start, stop, new_status, new_reason, new_elapsed))

        if not runs:
            return
        # x, plus per row a status, an elapsed time and a short reason.
        needed = sum(sum(b[2].nbytes for b in batches) + 17 * (stop - start) for batches, start, stop, *_ in runs)
        what = f"table '{self.key}' rows {runs[0][1]}..{runs[-1][2] - 1}"
        try:
            with store_space(self._group.store, what, needed):
                # The payload first, the statuses last: a crash in between leaves the rows pending.
                sync(write_payload(arrays, runs, self._chunk_size))

                for _, start, stop, new_status, _, _ in runs:
                    self._commit_status(arrays["status"], start, stop, new_status)
        except StoreFullError:
            size = self._chunk_size
            self._undo_payload(arrays, sorted({chunk for _, start, stop, *_ in runs
                                               for chunk in range(start // size, (stop - 1) // size + 1)}))
            raise

    def _undo_payload(self, arrays: dict[str, zarr.Array], chunks: list[int]) -> None:
        """After a failed write: deletes the payload of each chunk whose rows are all still pending.

        Deleting frees space where writing could not, and leaves such a chunk exactly as reserved
        (``mfsbi verify`` finds no pending row with an ``x``). A chunk with a row committed, now or
        before, keeps its payload: its stored rows need it, and its pending rows are re-written by the
        next run. Under the chunks' locks (``write_batches``).
        """

        size = self._chunk_size
        for chunk in chunks:  # only these: other chunks may be another writer's, mid-write
            status = arrays["status"][chunk * size: (chunk + 1) * size]
            if (status != Status.PENDING).any():
                continue
            for name in ("x", "reason", "elapsed"):
                array = arrays[name]
                key = array.metadata.encode_chunk_key((chunk,) + (0,) * (array.ndim - 1))
                sync((array.async_array.store_path / key).delete())

    def _commit_status(self, status: zarr.Array, start: int, stop: int, values: np.ndarray) -> None:
        # A separate method so that tests can simulate a crash before the commit.
        status[start:stop] = values

"""How a worker's writes reach the files: the per-chunk lock and the concurrent payload write.

Hand-written because zarr leaves both to its user: zarr 3 rewrites whole chunk files, so two
writers of one chunk lose rows silently (STACK.md), and its synchronous API writes one array
region at a time, a millisecond of thread hand-offs each (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from .errors import StoreError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = ["adjacent", "chunk_lock", "joined", "write_payload"]


@contextmanager
def chunk_lock(store: Any, path: str, chunk: int) -> Iterator[None]:
    """Holds an exclusive lock on one chunk of the table at ``path`` (local folders on POSIX only).

    Arguments:
        store: the table's zarr store; other stores than a ``LocalStore`` are not locked.
        path: the table's group path in it.
        chunk: the chunk index.
    """

    if fcntl is None or not isinstance(store, LocalStore):
        yield
        return

    # Beside the store, not in it (a foreign file in the hierarchy makes zarr warn when listing it)
    # and not in the system temp folder, whose predictable names other users of a shared login node
    # could take first: only who can write next to the store can create or hold these locks.
    root = Path(store.root).resolve()
    folder = root.parent / f".{root.name}.mfsbi-locks" / hashlib.sha1(path.encode()).hexdigest()[:20]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    # flock locks belong to the open file, so threads of one process exclude each other too.
    with open(folder / f"{chunk}.lock", "a+b") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX)
        except OSError as error:  # e.g. Lustre without `-o flock`: writing unlocked would lose rows
            raise StoreError(
                f"cannot lock {file.name} ({error.strerror}): the store's file system must support flock "
                "(docs/deploy.md, 'Shared machines and file systems'); or use a store on a local disk"
            ) from error
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


async def write_payload(arrays: dict[str, zarr.Array], runs: list[tuple], chunk_size: int) -> None:
    """Writes x, reason and elapsed of the runs, all at once (statuses are written after).

    Arguments:
        arrays: handles on ``x``, ``reason`` and ``elapsed`` (see ``SimulationTable._chunk_arrays``).
        runs: ``(batches, start, stop, status, reason, elapsed)`` per run of adjacent batches, each
            batch ``(start, stop, x, ...)``.
        chunk_size: the table's rows per chunk.

    Concurrently, because one write at a time each zarr write costs about a millisecond of thread
    hand-offs and file creation, as much as the write itself (docs/performance.md); only the
    batches of one chunk go one after another, as concurrent writers of one chunk lose rows. x is
    written batch by batch, not run by run: a batch that fills its chunk is stored without a
    copy, while a write of several chunks at once is first copied into new chunk buffers.
    """

    x = arrays["x"].async_array
    by_chunk: dict[int, list[tuple]] = {}
    for run in runs:
        for batch in run[0]:
            by_chunk.setdefault(batch[0] // chunk_size, []).append(batch)

    async def chunk(items: list[tuple]) -> None:
        for start, stop, values, *_ in items:
            await x.setitem(slice(start, stop), values)

    async def column(name: str, field: int) -> None:
        # Run after run: two runs can share a chunk (a stored row between them).
        array = arrays[name].async_array
        for run in runs:
            await array.setitem(slice(run[1], run[2]), run[field])

    # Every write finishes (or fails) before this returns: after a failure (a full disk) the caller
    # undoes what was written, which must not race a write still under way.
    results = await asyncio.gather(*(chunk(items) for items in by_chunk.values()), column("reason", 4),
                                   column("elapsed", 5), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def adjacent(batches: list[tuple]) -> list[list[tuple]]:
    """Splits batches ``(start, stop, ...)``, sorted by row, into runs without gaps."""

    runs: list[list[tuple]] = []

    for batch in batches:
        if runs and runs[-1][-1][1] == batch[0]:
            runs[-1].append(batch)
        else:
            runs.append([batch])

    return runs


def joined(run: list[tuple], field: int) -> np.ndarray:
    """One field of a run's batches as one array (no copy for a run of one batch)."""

    if len(run) == 1:
        return run[0][field]

    return np.concatenate([batch[field] for batch in run])

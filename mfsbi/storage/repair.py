r"""``repair``: makes the rows of corrupt chunks pending again, so that the next run simulates them.

A chunk of ``x``, ``reason``, ``elapsed`` or ``status`` that does not decode (its ``crc32c`` checksum
fails, :mod:`mfsbi.storage.verify`) holds the outputs of rows whose parameters and seeds are intact
in ``theta`` and ``seed``. Repairing deletes that chunk of all four arrays, ``status`` first: the
rows read pending, with ``x`` NaN, exactly as when they were reserved. The next run with the same
command finds them pending and simulates them again with their stored ``theta`` and seed, in the
same batches (a batch is a run of one seed within a chunk), so a deterministic simulator stores the
same numbers again.

The high-fidelity budget counts reserved rows (:mod:`mfsbi.storage.table`); a repaired row stays
reserved, so repair neither gives budget back nor spends any: the re-simulation reserves nothing
new. What it costs is the simulator time of those rows once more, which the repair reports
(docs/decisions.md, "Chunk checksums and repair").

Chunks of ``theta``, ``seed`` or ``round`` are not repaired: they come from the run's prior or
proposals, which the store alone cannot draw again; they are reported as not repairable.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field

import zarr
from zarr.core.sync import sync

from .layout import WRITTEN_ARRAYS
from .lock import LOCK_NAME, StoreLock
from .store import SimulationStore
from .verify import REPAIRABLE_ARRAYS, Problem, VerifyReport, verify_store

__all__ = ["RepairedChunk", "RepairReport", "repair_store"]

# status first: once it is gone the rows are pending, whatever else is left (module docstring).
_DELETE_ORDER = ("status", *(name for name in WRITTEN_ARRAYS if name != "status"))


@dataclass(frozen=True)
class RepairedChunk:
    r"""A chunk whose rows were made pending again.

    Arguments:
        table: ``"task/fidelity"``.
        chunk: the chunk's index (of the table's chunk size).
        rows: ``(start, stop)``.
        budgeted: whether the table has an HF budget (its rows stay reserved: no budget is spent).
        seconds: the simulator time the rows will cost again, estimated from the table's stored
            rows (None if it stores none).
    """

    table: str
    chunk: int
    rows: tuple[int, int]
    budgeted: bool
    seconds: float | None

    @property
    def num_rows(self) -> int:
        return self.rows[1] - self.rows[0]


@dataclass
class RepairReport:
    r"""What :func:`repair_store` did.

    Arguments:
        repaired: the chunks whose rows are pending again.
        not_repaired: corrupt chunks of ``theta``, ``seed`` or ``round``.
        before: the verify report the repair acted on.
    """

    repaired: list[RepairedChunk] = field(default_factory=list)
    not_repaired: list[Problem] = field(default_factory=list)
    before: VerifyReport = field(default_factory=VerifyReport)


def _delete_chunk(array: zarr.Array, chunk: int) -> None:
    """Deletes every chunk file of row-chunk ``chunk`` (all chunks along the other axes)."""

    others = [range(math.ceil(size / rows)) for size, rows in zip(array.shape[1:], array.chunks[1:])]
    store_path = array.async_array.store_path
    for rest in itertools.product(*others):
        key = array.metadata.encode_chunk_key((chunk, *rest))
        sync((store_path / key).delete())


def repair_store(store: str | os.PathLike) -> RepairReport:
    """Makes the rows of every corrupt chunk of ``x``, ``reason``, ``elapsed`` or ``status`` pending.

    Holds the store's run lock (:class:`~mfsbi.storage.lock.StoreLock`) throughout, so that no run
    writes while chunks are deleted; verifies under it and acts only on chunks that do not decode.

    Arguments:
        store: a store folder or URL.

    Returns:
        The chunks repaired, those that cannot be, and the verify report acted on.

    Raises:
        StoreError: not a store; StoreLockedError: a run holds the store.
    """

    with StoreLock(store, owner="mfsbi verify --repair"):
        before = verify_store(store)
        # Our own lock is no problem of the store's.
        before[:] = [p for p in before if not (p.table == "store" and p.field == LOCK_NAME)]
        report = RepairReport(before=before)
        handle = SimulationStore(store, mode="a")
        done: set[tuple[str, int]] = set()
        repaired: list[Problem] = []
        for problem in before:
            if not problem.corrupt_chunk:
                continue
            if problem.field not in REPAIRABLE_ARRAYS:
                report.not_repaired.append(problem)
                continue
            if (problem.table, problem.chunk) in done:  # x and status of one chunk: one repair
                continue
            done.add((problem.table, problem.chunk))
            group = handle.root[problem.table]
            for name in _DELETE_ORDER:
                _delete_chunk(group[name], problem.chunk)
            repaired.append(problem)
        # Estimated once the chunks are gone: a corrupt elapsed or status chunk no longer fails it.
        for problem in repaired:
            table = handle.table(*problem.table.rsplit("/", 1))
            try:
                seconds_per_row = table.seconds_per_row()
            except Exception:  # noqa: BLE001 -- another corrupt chunk (not repairable): no estimate
                seconds_per_row = None
            rows = problem.rows
            report.repaired.append(RepairedChunk(
                problem.table, problem.chunk, rows, table.budget() is not None,
                None if seconds_per_row is None else seconds_per_row * (rows[1] - rows[0])))
    return report

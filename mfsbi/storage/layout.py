r"""What a table holds on disk: its arrays, row statuses, batches, budget and attributes.

The arrays run along the sample axis and share one chunk size, so that a chunk of rows is the unit
of work and of concurrency (see :mod:`mfsbi.storage.table` for who writes what, and when).

Two choices make writes cheap (docs/performance.md); tables made before them (``mfsbi_table`` 1)
keep their layout, which zarr reads from the metadata, and work the same:

* ``x`` is compressed with :data:`X_CODEC`, Blosc LZ4 without shuffle, not zarr's default zstd:
  on GaussianBlob images it keeps 0.36 of the bytes at 1.4 GB/s where zstd keeps 0.14 at
  0.31 GB/s (8 % of a 20-ms simulation per image), and it passes incompressible outputs (OU2:
  zstd keeps 0.96) at 3.6 GB/s (measured, docs/decisions.md).
* ``theta``, ``seed`` and ``round``, which only ``reserve`` writes (one writer), have chunks of
  :func:`reservation_chunk_rows` rows, a multiple of the table's chunk size: one zarr chunk is one
  file, and a file write costs about a millisecond here whatever its size, so 10-row HF chunks of
  three small arrays made a reservation of 1 000 rows cost 300 file writes.

Tables of layout 3 (``mfsbi_table`` 3) also end every array's codecs with zarr's ``crc32c`` codec
(:data:`CHECKSUM`): a chunk cut short, zeroed or with a flipped bit no longer decodes into other
numbers, it raises, and ``mfsbi verify`` reports it (docs/decisions.md, "Chunk checksums").
Tables made before keep their codecs and still read and verify; corruption there is found only
where the compressor itself fails to decode.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from .stamps import mfsbi_version, utc_now

__all__ = [
    "ARRAYS",
    "Batch",
    "BatchOutput",
    "CHECKSUM",
    "DEFAULT_CODEC",
    "HighFidelityBudget",
    "LAYOUT_VERSION",
    "RESERVED_ARRAYS",
    "ROW_ARRAYS",
    "Status",
    "WRITTEN_ARRAYS",
    "X_CODEC",
    "batch_values",
    "PARAMETER_COORDINATE",
    "create_arrays",
    "write_parameter_names",
    "reservation_chunk_rows",
    "table_attrs",
]


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


@dataclass(frozen=True, eq=False)
class BatchOutput:
    r"""What one simulator call returned for rows ``[start, stop)`` of one chunk.

    Arguments:
        start: the first row; stop: one past the last row.
        x: outputs, shape :math:`(m, k)`; rows with a non-finite value are stored failed.
        ok: whether each row succeeded, shape :math:`(m,)`; all by default.
        reasons: a failure reason per row (see :func:`batch_values`).
        elapsed: the simulator time of the whole batch in seconds, split evenly over rows.
    """

    start: int
    stop: int
    x: np.ndarray
    ok: np.ndarray | None = None
    reasons: Sequence[str] | None = None
    elapsed: float = 0.0


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


# The codec of x in new tables (see the module).
X_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")
# zarr's default compressor for the other arrays, named because the checksum follows it.
DEFAULT_CODEC = ZstdCodec(level=0, checksum=False)
# Last of every array's codecs: 4 bytes per chunk file, checked on every read (see the module).
CHECKSUM = Crc32cCodec()
# ``mfsbi_table`` of new tables: 1 small reservation chunks, 2 large ones, 3 chunk checksums.
LAYOUT_VERSION = 3

# name: (dtype, fill value, has a second axis, zarr's default codecs (else X_CODEC))
ARRAYS: dict[str, tuple[Any, Any, bool, bool]] = {
    "theta": ("float64", np.nan, True, True),
    "x": ("float64", np.nan, True, False),
    "seed": ("int64", -1, False, True),
    "round": ("int32", -1, False, True),
    # The fill value is what makes a new row pending: reserve never writes status chunks, which
    # workers may be writing at the same time.
    "status": ("int8", int(Status.PENDING), False, True),
    # zarr 3's variable-length UTF-8 string ("string" + vlen-utf8 codec): no length limit, no
    # unstable-spec warning (unlike fixed-width "<U"), and numpy StringDType round trip.
    "reason": (str, "", False, True),
    "elapsed": ("float64", np.nan, False, True),
}

# Reserve grows these before status, which is grown last and thereby commits the rows.
ROW_ARRAYS = ("theta", "x", "seed", "round", "reason", "elapsed")

# What write_batch writes, status last: chunks of exactly the table's chunk size (one writer each).
WRITTEN_ARRAYS = ("x", "reason", "elapsed", "status")

# What only reserve writes: larger chunks (see the module).
RESERVED_ARRAYS = ("theta", "seed", "round")

# Rows and bytes of a chunk of theta at most, when the table's chunks are smaller.
_RESERVATION_ROWS = 65_536
_RESERVATION_BYTES = 4 * 2**20


def reservation_chunk_rows(chunk_size: int, theta_dim: int) -> int:
    """Rows per chunk of ``theta``, ``seed`` and ``round``: a multiple of ``chunk_size``."""

    rows = min(_RESERVATION_ROWS, _RESERVATION_BYTES // (8 * max(theta_dim, 1)))

    return max(1, rows // chunk_size) * chunk_size


# xarray's conventions: every array names its dimensions (zarr 3 ``dimension_names``), so that
# ``xr.open_zarr(store, group="ou2/lf")`` gives a Dataset; the parameter names are the coordinate
# ``theta_dim`` (written by :func:`write_parameter_names`).
PARAMETER_COORDINATE = "theta_dim"


def create_arrays(group: zarr.Group, theta_dim: int, x_dim: int, chunk_size: int) -> None:
    """Creates the missing arrays of a table, empty (a table left half-created is completed)."""

    dims = {"theta": theta_dim, "x": x_dim}
    existing = set(group.array_keys())
    reserved_rows = reservation_chunk_rows(chunk_size, theta_dim)

    for name, (dtype, fill, wide, default_codecs) in ARRAYS.items():
        if name in existing:
            continue

        rows = reserved_rows if name in RESERVED_ARRAYS else chunk_size
        shape = (0, dims[name]) if wide else (0,)
        chunks = (rows, dims[name]) if wide else (rows,)
        codecs = (DEFAULT_CODEC if default_codecs else X_CODEC, CHECKSUM)

        dimensions = ("row", f"{name}_dim") if wide else ("row",)
        group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill,
                           dimension_names=dimensions, compressors=codecs)


def write_parameter_names(group: zarr.Group, names: Sequence[str]) -> None:
    """Stores the parameter names as the ``theta_dim`` coordinate, once (the first writer's stay)."""
    if PARAMETER_COORDINATE in set(group.array_keys()):
        return
    coordinate = group.create_array(PARAMETER_COORDINATE, shape=(len(names),), chunks=(max(len(names), 1),),
                                    dtype=str, fill_value="", dimension_names=(PARAMETER_COORDINATE,),
                                    compressors=(DEFAULT_CODEC, CHECKSUM))
    coordinate[:] = np.array(list(names), dtype=object)


def batch_values(
    x: np.ndarray,
    rows: int,
    x_dim: int,
    ok: np.ndarray | None,
    reasons: Sequence[str] | None,
    elapsed: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""Checks a batch's outputs and returns what is stored for its rows.

    Arguments:
        x: outputs, shape :math:`(m, k)`; rows with a non-finite value are failed.
        rows: the batch's :math:`m`; x_dim: the table's :math:`k`.
        ok: whether each row succeeded, shape :math:`(m,)`; all by default.
        reasons: a failure reason per row; defaults to ``"non-finite output"`` or
            ``"simulator reported failure"`` for failed rows.
        elapsed: the simulator time of the whole batch in seconds, split evenly over rows.

    Returns:
        ``x`` (float64), ``status`` (int8), ``reason`` (strings) and ``elapsed`` per row.
    """

    x = np.asarray(x)
    m = rows

    if x.shape != (m, x_dim):
        raise ValueError(f"x: expected shape ({m}, {x_dim}), got {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise ValueError(f"x: expected real numbers, got dtype {x.dtype}")

    # No copy when the simulator already returned float64: x can be hundreds of MB.
    x = np.asarray(x, dtype=np.float64)

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
    status = np.where(good, Status.OK, Status.FAILED).astype(np.int8)

    # Vectorised: an LF chunk can hold 10^5 rows.
    reason = np.full(m, "", dtype=np.dtypes.StringDType())
    reason[~finite] = "non-finite output"
    reason[finite & ~ok] = "simulator reported failure"

    if reasons is not None:
        given = np.array(reasons, dtype=np.dtypes.StringDType())
        reason = np.where(given != "", given, reason)

    return x, status, reason, np.full(m, elapsed / m, dtype=np.float64)


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
        "mfsbi_table": LAYOUT_VERSION,
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

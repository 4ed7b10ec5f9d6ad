r"""The simulation store: simulations and artifacts in one zarr 3 hierarchy.

No Prefect and no other mfsbi subpackage: a plain ``zarr.open_group(DIR)`` reads everything.

Layout (a local folder by default; any zarr store URL works)::

    DIR/
      zarr.json                 group; attrs: format="mfsbi-store", format_version=1, mfsbi_version
      artifacts/                group; plain files under it (checkpoints, plots, JSON), not zarr
        zarr.json
        <name>                  e.g. posteriors/round-1.pt, plots/c2st.png
      <task>/                   group, one per task
        lf/ | hf/               group, one table per fidelity; attrs: task, fidelity, simulator,
                                simulator_version, prior, config_hash, theta_dim, x_dim,
                                chunk_size, mfsbi_version, created_at, updated_at (ISO 8601 UTC),
                                status_codes, budget={"total", "reserved"} (hf, once set),
                                mfsbi_table (layout version: 3; 2 before chunk checksums, 1 before large reservation chunks)
          theta    float64 (n, d)  parameters                 chunks (R, d)
          x        float64 (n, k)  outputs, NaN until stored  chunks (chunk_size, k), Blosc LZ4
          seed     int64   (n,)    seed of the row's batch    chunks (R,)
          round    int32   (n,)    inference round            chunks (R,)
          status   int8    (n,)    0 pending, 1 ok, 2 failed
          reason   string  (n,)    failure reason ("" if none), variable-length UTF-8
          elapsed  float64 (n,)    simulator seconds per row (batch time / rows), NaN until stored

Every array of layout 3 ends its codecs with zarr's ``crc32c``: a corrupt chunk raises when read,
and ``mfsbi verify`` decodes every chunk to find them (``--repair`` makes their rows pending again).

The number of rows ``n`` is the length of ``status``; after a crash during a reservation other
arrays may be longer, and their extra rows mean nothing. Read ``status`` before ``x``: it is
written last. No consolidated metadata (it goes stale on resize) and no sharding (concurrent
writers lose rows): each chunk is one file, written by one worker at a time (for a local folder
``write_batch`` takes a per-chunk ``flock`` in a folder beside the store to ensure it).
``R`` is a multiple of ``chunk_size`` (up to 65 536 rows or 4 MiB of theta,
:func:`~mfsbi.storage.layout.reservation_chunk_rows`): those arrays are written only by
``reserve`` in the flow process; tables of layout 1 have ``R = chunk_size``.

Example:
    >>> store = SimulationStore("runs/gaussian")
    >>> table = store.require_table("gaussian", "lf", theta_dim=2, x_dim=3, chunk_size=100,
    ...     provenance={"simulator": "gaussian.lf", "simulator_version": "1", "config_hash": "ab"})
    >>> rows = table.reserve(theta, seed=np.repeat(7, len(theta)))
    >>> for batch in table.pending_batches():
    ...     table.write_batch(*batch.rows, x=simulate(theta[slice(*batch.rows)], batch.seed))
    >>> theta, x = table.read()

Integrity: a run holds ``DIR/.mfsbi.lock`` (:class:`StoreLock`, local folders only) and
:func:`verify_store` checks a store read-only (``mfsbi verify DIR``).
"""

from .errors import BudgetExceededError, StoreError, StoreFullError, StoreMismatchError
from .store import FORMAT, FORMAT_VERSION, SimulationStore
from .layout import Batch, BatchOutput, HighFidelityBudget, Status
from .table import SimulationTable
from .lock import StoreLock, StoreLockedError, check_unlocked
from .verify import Problem, verify_store
from .repair import RepairReport, repair_store
from .names import check_artifact_name, check_task

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Batch",
    "BatchOutput",
    "BudgetExceededError",
    "HighFidelityBudget",
    "Problem",
    "RepairReport",
    "SimulationStore",
    "SimulationTable",
    "Status",
    "StoreError",
    "StoreFullError",
    "StoreLock",
    "StoreLockedError",
    "StoreMismatchError",
    "check_artifact_name",
    "check_task",
    "check_unlocked",
    "repair_store",
    "verify_store",
]

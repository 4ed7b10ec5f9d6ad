"""Preloaded by every Dask worker (``dask worker --preload mfsbi.runtime.worker_setup``).

Brian2 must be imported in a process's main thread, and Dask runs jobs in a worker thread
(STACK.md). Everything else here is what the first job of a fresh worker would otherwise pay for
(docs/performance.md): importing every simulator module, torch and sbi (a task's prior is an sbi
distribution: 2.6 s per worker, profiled), and zarr's first use (its I/O thread and codecs). All of
it happens at worker start instead, while the flow starts its services and reserves rows.
"""

import logging

import numpy as np
import sbi.utils  # noqa: F401 -- imported by every task's prior at its first get_task
import zarr
from zarr.storage import MemoryStore

from mfsbi.runtime import batches, training_jobs  # noqa: F401 -- the job functions and their imports
from mfsbi.simulators import import_task_modules
from mfsbi.simulators.plastic_network import dask_setup, preload

__all__ = ["dask_setup", "preload"]

import_task_modules()  # imports every registered task's simulator module now


def _warm_zarr() -> None:
    """One write and read through zarr, in memory: starts its event loop thread, loads the codecs."""
    array = zarr.create_array(MemoryStore(), shape=(4, 2), chunks=(2, 2), dtype="float64", compressors=None)
    array[:] = np.ones((4, 2))
    array[:]


_warm_zarr()


def _not_a_full_disk(record: logging.LogRecord) -> bool:
    """Drops the worker's "Compute Failed" log of a full store: the run stops with that error's one line
    (the CLI prints it), and a traceback above it would bury it (issue 31)."""
    return "StoreFullError(" not in record.getMessage()


logging.getLogger("distributed.worker").addFilter(_not_a_full_disk)

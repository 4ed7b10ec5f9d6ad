"""Preloaded by every Dask worker (``dask worker --preload mfsbi.flows.worker_setup``).

Brian2 must be imported in a process's main thread, and Dask runs jobs in a worker thread
(STACK.md); and the first job of a fresh worker would otherwise pay for importing every simulator
module and sbi (1-2.5 s measured, docs/performance.md). Both happen here, at worker start.
"""

from mfsbi.flows import work  # noqa: F401 -- the job functions and their imports
from mfsbi.simulators import available_tasks
from mfsbi.simulators.plastic_network import dask_setup, preload

__all__ = ["dask_setup", "preload"]

available_tasks()  # imports the built-in simulator modules (and sbi) now

"""What a worker process resolves once and reuses: tasks by spec and stores by URL.

Jobs carry a task spec and a store URL, not the objects (they must pickle cheaply and a task's
simulators may hold a NEURON model or compiled Brian2 code); each worker process resolves them on
its first job and keeps them for the next ones.
"""

from __future__ import annotations

import functools

from mfsbi.simulators import Task, get_task
from mfsbi.storage import SimulationStore

__all__ = ["store_for", "task_for"]


@functools.lru_cache(maxsize=8)
def task_for(spec: str) -> Task:
    """The task of ``spec`` (registry name or ``module:attribute``), resolved once per process."""
    return get_task(spec)


@functools.lru_cache(maxsize=8)
def store_for(url: str) -> SimulationStore:
    """The store at ``url``, opened once per process."""
    return SimulationStore(url)

"""Where batches run: one small interface, one implementation per execution backend.

The flow hands plain, picklable functions to an executor; Prefect tasks stay coarse and in the flow
process (a Prefect task submitted through Dask costs ~150 ms, a plain Dask task ~2 ms: STACK.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

from mfsbi.runtime.cluster import planned_workers

__all__ = ["BatchExecutor", "DaskExecutor", "SerialExecutor"]

T = TypeVar("T")
R = TypeVar("R")


@runtime_checkable
class BatchExecutor(Protocol):
    """Runs ``fn`` over ``items`` and yields the results as they complete (any order)."""

    def gpu_workers(self) -> list[str]: ...

    def num_workers(self) -> int: ...

    def map_unordered(
        self, fn: Callable[[T], R], items: Sequence[T], resources: dict[str, float] | None = None
    ) -> Iterator[R]: ...


class SerialExecutor:
    """Runs every item in this process, in order: for notebooks, debugging and tiny runs."""

    def gpu_workers(self) -> list[str]:
        """This process is the only worker; it counts as a GPU worker when torch sees one."""
        return ["local"] if torch.cuda.is_available() else []

    def num_workers(self) -> int:
        return 1

    def map_unordered(
        self, fn: Callable[[T], R], items: Sequence[T], resources: dict[str, float] | None = None
    ) -> Iterator[R]:
        for item in items:
            yield fn(item)


class DaskExecutor:
    """Runs items as plain Dask tasks on a ``distributed.Client``.

    Arguments:
        client: a connected ``distributed.Client``.
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def _workers(self) -> tuple[list, list]:
        """Names of the workers advertising a ``GPU`` resource, and of the others."""
        gpu, cpu = [], []
        for info in self.client.scheduler_info(n_workers=-1)["workers"].values():
            # As Dask reports them: LocalCluster names its workers 0, 1, ... (ints), and a
            # restriction to "0" would match no worker.
            (gpu if info.get("resources", {}).get("GPU", 0) > 0 else cpu).append(info["name"])
        return gpu, cpu

    def gpu_workers(self) -> list:
        """Names of the workers started with ``--resources GPU=1``."""
        return self._workers()[0]

    def num_workers(self) -> int:
        """Workers that take simulations: the CPU workers when GPU workers are kept for training."""
        gpu, cpu = self._workers()
        running = len(cpu) if cpu and gpu else len(gpu) + len(cpu)
        return max(1, running, planned_workers(self.client))

    def map_unordered(
        self, fn: Callable[[T], R], items: Sequence[T], resources: dict[str, float] | None = None
    ) -> Iterator[R]:
        from distributed import as_completed  # deferred: 0.3 s; app.preflight loads this module to check `mfsbi run`

        if not items:
            return
        placement: dict[str, Any] = {"resources": resources} if resources else {}
        if not resources:
            gpu, cpu = self._workers()
            if gpu and cpu:
                # Unannotated tasks may land anywhere (STACK.md): keep CPU work off the GPU workers.
                # Names, not addresses: a worker restarted by its nanny keeps its name.
                placement["workers"] = cpu
        # pure=False: a batch is a side effect (it writes the store); Dask must not deduplicate it.
        futures = self.client.map(fn, list(items), pure=False, **placement)
        waiting = set(futures)
        try:
            for future in as_completed(futures):
                result = future.result()
                waiting.discard(future)
                # Dask recomputes a finished task whose result died with its worker while a future
                # still wants it; a result already taken is not wanted any more.
                future.release()
                yield result
        finally:
            # Only what is still queued: a consumer that stopped early must not leave work behind.
            pending = [future for future in waiting if not future.done()]
            if pending:
                self.client.cancel(pending)

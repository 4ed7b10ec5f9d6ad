"""Where batches run: one small interface, one implementation per execution backend.

The flow hands plain, picklable functions to an executor; Prefect tasks stay coarse and in the flow
process (a Prefect task submitted through Dask costs ~150 ms, a plain Dask task ~2 ms: STACK.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["BatchExecutor", "DaskExecutor", "SerialExecutor"]

T = TypeVar("T")
R = TypeVar("R")


@runtime_checkable
class BatchExecutor(Protocol):
    """Runs ``fn`` over ``items`` and yields the results as they complete (any order)."""

    def map_unordered(
        self, fn: Callable[[T], R], items: Sequence[T], resources: dict[str, float] | None = None
    ) -> Iterator[R]: ...


class SerialExecutor:
    """Runs every item in this process, in order: for notebooks, debugging and tiny runs."""

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

    def map_unordered(
        self, fn: Callable[[T], R], items: Sequence[T], resources: dict[str, float] | None = None
    ) -> Iterator[R]:
        from distributed import as_completed

        if not items:
            return
        # pure=False: a batch is a side effect (it writes the store); Dask must not deduplicate it.
        futures = self.client.map(fn, list(items), pure=False, resources=resources)
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            # Only what is still queued: a consumer that stopped early must not leave work behind.
            pending = [future for future in futures if not future.done()]
            if pending:
                self.client.cancel(pending)

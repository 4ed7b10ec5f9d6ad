"""Errors raised by the simulation store."""

from __future__ import annotations

from typing import Any

__all__ = [
    "BudgetExceededError",
    "StoreError",
    "StoreFullError",
    "StoreMismatchError",
]


class StoreError(Exception):
    """The store cannot do what was asked: not a store, a bad name, a stored row, read-only."""


class StoreMismatchError(StoreError):
    r"""An existing table was made with another configuration than the one requested.

    Arguments:
        table: the table's key, ``"task/fidelity"``.
        field: the mismatching field.
        stored: the stored value.
        requested: the requested value.
    """

    def __init__(self, table: str, field: str, stored: Any, requested: Any):
        self.table = table
        self.field = field
        self.stored = stored
        self.requested = requested

        super().__init__(
            f"table '{table}' was created with {field}={stored!r} but {field}={requested!r} "
            "was requested; use another store or the same configuration"
        )


class BudgetExceededError(StoreError):
    r"""A reservation would overrun the high-fidelity budget; nothing was written.

    Arguments:
        requested: the number of rows asked for.
        remaining: the number of rows the budget still allows.
    """

    def __init__(self, requested: int, remaining: int):
        self.requested = requested
        self.remaining = remaining

        super().__init__(
            f"high-fidelity budget exceeded: {requested} rows requested, {remaining} remaining"
        )


def _size(num_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} GiB"  # pragma: no cover - the loop returns


class StoreFullError(StoreError):
    r"""The store's file system is full (``ENOSPC``): a write failed and was undone.

    Arguments:
        store: the store's location.
        what: what was being written, e.g. ``"table 'ou2/lf' rows 100..199"``.
        needed: the bytes of that write (before compression, so at least what it needed).
        free: the bytes free on the store's file system afterwards (None: not a local folder).
    """

    def __init__(self, store: str, what: str, needed: int, free: int | None):
        self.store = store
        self.what = what
        self.needed = needed
        self.free = free
        free_text = "" if free is None else f", {_size(free)} free"
        super().__init__(
            f"store {store} is full (no space left on device): writing {what} needed about {_size(needed)}"
            f"{free_text}; free space (or use another --store) and run the same command again: "
            "what is stored is kept"
        )

    def __reduce__(self):
        # Raised on Dask workers and re-raised in the flow: pickled by its fields, not its message.
        return (type(self), (self.store, self.what, self.needed, self.free))

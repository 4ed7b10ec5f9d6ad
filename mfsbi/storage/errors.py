"""Errors raised by the simulation store."""

from __future__ import annotations

from typing import Any

__all__ = [
    "BudgetExceededError",
    "StoreError",
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

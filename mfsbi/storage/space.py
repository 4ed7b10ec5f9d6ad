r"""A full disk: an ``ENOSPC`` (or quota) error while writing becomes a :class:`StoreFullError`.

zarr's local store writes each file to a temporary name and renames it into place (zarr >= 3.1.3),
and removes the temporary file when the write fails; so a write that runs out of space leaves the
file it replaces as it was. What a failed write of a table leaves behind is undone by the table
(:meth:`~mfsbi.storage.table.SimulationTable.write_batches`); this module names the failure: the
store, what was written, the bytes it needed and the bytes free.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from zarr.storage import LocalStore

from .errors import StoreFullError

__all__ = ["NO_SPACE", "is_no_space", "store_space"]

# The errors of a full file system: no space left, or the user's quota exhausted.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_no_space(error: BaseException) -> bool:
    """Whether ``error`` is a full file system (``ENOSPC`` or ``EDQUOT``)."""

    return isinstance(error, OSError) and error.errno in NO_SPACE


def _where(store: Any) -> tuple[str, Any]:
    if isinstance(store, LocalStore):
        return str(store.root), store.root
    return str(store), None


@contextmanager
def store_space(store: Any, what: str, needed: int) -> Iterator[None]:
    """Turns a full file system inside the block into a :class:`StoreFullError`.

    Arguments:
        store: the zarr store written (a ``LocalStore`` also reports the bytes free).
        what: what the block writes, for the message.
        needed: the bytes the block writes, about.
    """

    try:
        yield
    except OSError as error:
        if not is_no_space(error):
            raise
        location, root = _where(store)
        free = shutil.disk_usage(root).free if root is not None else None
        raise StoreFullError(location, what, int(needed), free) from None

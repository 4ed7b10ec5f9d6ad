"""Progress of long steps, reported to whoever listens (the CLI draws rich progress bars)."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ProgressListener", "listen", "report"]

ProgressListener = Callable[[str, int, int], None]

# A plain module global, not a context variable: Prefect may run a sync flow in another thread.
_listener: ProgressListener | None = None


def listen(listener: ProgressListener | None) -> None:
    """Sets the listener called with ``(step, done, total)``; ``None`` removes it."""
    global _listener
    _listener = listener


def report(step: str, done: int, total: int) -> None:
    """Reports progress of ``step``; a no-op without a listener."""
    if _listener is not None:
        _listener(step, done, total)

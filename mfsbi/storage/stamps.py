"""The stamps a store writes into its attributes: the mfsbi version and the time, UTC."""

from __future__ import annotations

from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

__all__ = ["mfsbi_version", "utc_now"]


def mfsbi_version() -> str:
    """Returns the installed mfsbi version, or ``"unknown"``."""

    try:
        return version("mfsbi")
    except PackageNotFoundError:
        return "unknown"


def utc_now() -> str:
    """Returns the current time in ISO 8601, UTC, to the second."""

    return datetime.now(timezone.utc).isoformat(timespec="seconds")

"""Small helpers shared by the store modules: names, version, time."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

from .errors import StoreError

__all__ = [
    "ARTIFACTS",
    "FIDELITIES",
    "check_artifact_name",
    "check_fidelity",
    "check_task",
    "mfsbi_version",
    "utc_now",
]

ARTIFACTS = "artifacts"
FIDELITIES = ("lf", "hf")

# A task name is one path component: it starts with a letter or digit, so "." and ".." and
# hidden names are impossible, and "/" or "\" cannot occur.
_TASK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Names that zarr itself reads as metadata: an artifact with one of them would corrupt the hierarchy.
_ZARR_NAMES = {"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"}


def mfsbi_version() -> str:
    """Returns the installed mfsbi version, or ``"unknown"``."""

    try:
        return version("mfsbi")
    except PackageNotFoundError:
        return "unknown"


def utc_now() -> str:
    """Returns the current time in ISO 8601, UTC, to the second."""

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_task(task: str) -> str:
    """Validates a task name (one safe path component)."""

    if not isinstance(task, str) or not _TASK.match(task):
        raise StoreError(
            f"invalid task name {task!r}: expected letters, digits, '_', '.', '-' "
            "starting with a letter or digit"
        )
    if task == ARTIFACTS:
        raise StoreError(f"invalid task name {task!r}: reserved for artifacts")

    return task


def check_fidelity(fidelity: str) -> str:
    """Validates a fidelity, ``"lf"`` or ``"hf"``."""

    if fidelity not in FIDELITIES:
        raise StoreError(f"invalid fidelity {fidelity!r}: expected one of {FIDELITIES}")

    return fidelity


def check_artifact_name(name: str) -> str:
    """Validates an artifact name: a relative POSIX path that stays under ``artifacts/``."""

    if not isinstance(name, str) or not name:
        raise StoreError(f"invalid artifact name {name!r}: expected a non-empty relative path")
    if "\\" in name or "\x00" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise StoreError(f"invalid artifact name {name!r}: expected a relative POSIX path")

    parts = name.split("/")

    if any(part in ("", ".", "..") for part in parts):
        raise StoreError(f"invalid artifact name {name!r}: empty, '.' or '..' path component")
    if any(part in _ZARR_NAMES for part in parts):
        raise StoreError(f"invalid artifact name {name!r}: reserved by zarr")

    return name

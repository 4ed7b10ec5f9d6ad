"""Names in a store: tasks, fidelities and artifacts, and the checks that keep them safe path components."""

from __future__ import annotations

import re
import unicodedata

from .errors import StoreError

__all__ = [
    "ARTIFACTS",
    "FIDELITIES",
    "MAX_ARTIFACT_BYTES",
    "MAX_NAME_BYTES",
    "check_artifact_name",
    "check_fidelity",
    "check_task",
    "fidelity_order",
    "is_budgeted",
]

ARTIFACTS = "artifacts"
# The two ends of every task's chain of fidelities. Intermediate levels ("mf", ...) are any other
# short lowercase word; they sort between the two (:func:`fidelity_order`).
FIDELITIES = ("lf", "hf")
# The same rule as mfsbi.simulators.base.LEVEL_NAME: the store does not import the simulators.
_FIDELITY = re.compile(r"[a-z][a-z0-9]{0,15}")

# A task name is one path component: it starts with a letter or digit, so "." and ".." and
# hidden names are impossible, and "/" or "\" cannot occur. Matched with fullmatch: "$" would
# also accept a trailing newline.
_TASK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# Names that zarr itself reads as metadata: an artifact with one of them would corrupt the hierarchy.
_ZARR_NAMES = {"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"}

# Bytes of one path component. File systems allow 255, and zarr's atomic write adds a
# ".<32 hex>.partial" suffix to the temporary file: a longer name would fail as an OSError mid-run.
MAX_NAME_BYTES = 200
# Bytes of a whole artifact name, well under PATH_MAX with the store folder in front.
MAX_ARTIFACT_BYTES = 1024


# Case-folded: on a case-insensitive file system (macOS, Windows) "ZARR.JSON" is "zarr.json".
_ZARR_FOLDED = frozenset(n.casefold() for n in _ZARR_NAMES)


def _reserved(part: str) -> bool:
    return part.casefold() in _ZARR_FOLDED


def check_task(task: str) -> str:
    """Validates a task name (one safe path component)."""

    if not isinstance(task, str) or not _TASK.fullmatch(task):
        raise StoreError(
            f"invalid task name {task!r}: expected letters, digits, '_', '.', '-' "
            "starting with a letter or digit"
        )
    if len(task) > MAX_NAME_BYTES:
        raise StoreError(f"invalid task name {task[:20]!r}...: {len(task)} characters, at most {MAX_NAME_BYTES}")
    if task.casefold() == ARTIFACTS:
        raise StoreError(f"invalid task name {task!r}: reserved for artifacts")
    if _reserved(task):
        raise StoreError(f"invalid task name {task!r}: reserved by zarr")

    return task


def check_fidelity(fidelity: str) -> str:
    """Validates a fidelity: ``"lf"``, ``"hf"`` or an intermediate level's short lowercase name."""

    if not isinstance(fidelity, str) or not _FIDELITY.fullmatch(fidelity) or _reserved(fidelity):
        raise StoreError(f"invalid fidelity {fidelity!r}: expected 'lf', 'hf' or an intermediate level's name "
                         "(lowercase letters and digits, starting with a letter, at most 16)")

    return fidelity


def is_budgeted(fidelity: str) -> bool:
    """Whether a table of this fidelity may hold a budget: every level above LF (the HF budget rules)."""

    return check_fidelity(fidelity) != "lf"


def fidelity_order(fidelity: str) -> tuple[int, str]:
    """A sort key: ``"lf"`` first, intermediate levels by name, ``"hf"`` last."""

    return ({"lf": 0, "hf": 2}.get(fidelity, 1), fidelity)


def check_artifact_name(name: str) -> str:
    """Validates an artifact name: a relative POSIX path that stays under ``artifacts/``."""

    if not isinstance(name, str) or not name:
        raise StoreError(f"invalid artifact name {name!r}: expected a non-empty relative path")
    if "\\" in name or "\x00" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise StoreError(f"invalid artifact name {name!r}: expected a relative POSIX path")
    # Control, format and unassigned characters (newlines, terminal escapes, bidi overrides, lone
    # surrogates) make file names that listings misreport or that no file system can encode.
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise StoreError(f"invalid artifact name {name!r}: control or invisible characters are not allowed")
    size = len(name.encode("utf-8"))
    if size > MAX_ARTIFACT_BYTES:
        raise StoreError(f"invalid artifact name {name[:40]!r}...: {size} bytes, at most {MAX_ARTIFACT_BYTES}")

    parts = name.split("/")

    if any(part in ("", ".", "..") for part in parts):
        raise StoreError(f"invalid artifact name {name!r}: empty, '.' or '..' path component")
    if any(_reserved(part) for part in parts):
        raise StoreError(f"invalid artifact name {name!r}: reserved by zarr")
    if any(len(part.encode("utf-8")) > MAX_NAME_BYTES for part in parts):
        raise StoreError(f"invalid artifact name {name[:40]!r}...: a path component is over {MAX_NAME_BYTES} bytes")

    return name

"""A small file system to fill up: tmpfs, else a loop device, else the exact reason there is none.

Shared by the full-disk drills (benchmarks/disk_full_drill.py) and tests/test_full_disk.py. Mounting
needs root (CI runs as root); a container may refuse both kinds, and then callers skip with
:func:`small_filesystem`'s reason.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["NoSmallFilesystem", "fill", "free_bytes", "small_filesystem"]


class NoSmallFilesystem(RuntimeError):
    """Neither a tmpfs nor a loop device could be mounted here; the message says why."""


def _run(command: list[str]) -> str | None:
    """Runs a command; returns None on success, else its error (one line)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{command[0]}: {error}"
    if done.returncode:
        return f"`{' '.join(command)}` exited {done.returncode}: {(done.stderr or done.stdout).strip()[:200]}"
    return None


@contextmanager
def small_filesystem(folder: Path, size_mib: int) -> Iterator[str]:
    """Mounts a file system of ``size_mib`` MiB at ``folder`` (created); yields its kind.

    Raises:
        NoSmallFilesystem: not root, or both a tmpfs and a loop device were refused (the reasons).
    """
    if os.geteuid() != 0:
        raise NoSmallFilesystem(f"mounting a small file system needs root (euid {os.geteuid()})")
    folder.mkdir(parents=True, exist_ok=True)
    tmpfs = _run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}M", "tmpfs", str(folder)])
    kind, image = "tmpfs", None
    if tmpfs is not None:
        image = folder.with_name(folder.name + ".img")
        with open(image, "wb") as file:
            file.truncate(size_mib * 2**20)
        loop = (_run(["mkfs.ext4", "-q", "-F", str(image)])
                or _run(["mount", "-o", "loop", str(image), str(folder)]))
        if loop is not None:
            image.unlink()
            raise NoSmallFilesystem(f"tmpfs refused ({tmpfs}); loop device refused ({loop})")
        kind = "loop"
    try:
        yield kind
    finally:
        error = _run(["umount", str(folder)])
        if error is not None:  # something still holds a file there: lazily, so the next run can mount
            _run(["umount", "-l", str(folder)])
        if image is not None:
            image.unlink(missing_ok=True)


def fill(folder: Path, name: str = "filler") -> int:
    """Fills the file system of ``folder`` to the last byte with one file; returns its size."""
    path = folder / name
    written = 0
    block = 1 << 20
    with open(path, "ab", buffering=0) as file:
        while block >= 512:
            try:
                written += file.write(b"\0" * block)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                block //= 2
    return written


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free

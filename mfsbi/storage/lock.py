r"""The run lock of a store: one run at a time writes a store.

A run holds ``DIR/.mfsbi.lock``, a small JSON file ``{pid, hostname, owner, started_at, token}``
created atomically (``O_CREAT | O_EXCL``), for as long as it runs; a second run on the same store
is refused with :class:`StoreLockedError`. The lock file survives the death of its process, so
whether it is still held is decided from its content:

* same host, the process is alive (``os.kill(pid, 0)``) and started when the lock's process did
  (its start time since boot, from ``/proc/PID/stat``, and the boot's id): held, the new run is
  refused; a pid reused by an unrelated process since (another start time, or another boot) is
  recognised and the lock is stale;
* same host, the process is gone: **stale**, the next run recovers it (a warning is logged) by
  writing its own lock to a temporary file and ``os.replace``-ing the stale one, then re-reading
  it to check that it won;
* another host: the pid cannot be checked from here, so the lock counts as held unless it is older
  than ``stale_after`` (24 hours by default); a run on a shared file system that lasts longer than
  that on another machine is not protected.

Limits: only local folders (a path or a ``file://`` URL) are locked; for other zarr stores (object
stores, ``memory://``) :class:`StoreLock` does nothing, as there is no portable atomic create
there. Where ``/proc`` is missing (not Linux), a pid reused by an unrelated process after a crash
makes a stale lock look held: remove the file by hand then (the message names it). Stale-lock recovery is serialised between processes of
one machine with ``flock`` on the store folder; between machines only the ``O_EXCL`` create is
atomic (and only on file systems where it is, which excludes some NFS versions).

Example:
    >>> with StoreLock("runs/gaussian", owner="npe-hf100"):
    ...     run(...)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import StoreError
from .stamps import utc_now
from .store import SimulationStore, local_path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = [
    "LOCK_NAME",
    "LockInfo",
    "StoreLock",
    "StoreLockedError",
    "check_unlocked",
    "read_lock",
]

LOCK_NAME = ".mfsbi.lock"
STALE_AFTER = 24 * 3600.0

logger = logging.getLogger(__name__)


class StoreLockedError(StoreError):
    """Another live run holds the store's lock."""


@dataclass(frozen=True)
class LockInfo:
    r"""The content of a lock file and what it means here.

    Arguments:
        path: the lock file.
        data: its JSON content (empty if unreadable).
        state: ``"live"`` (held), ``"stale"`` (its holder is gone) or ``"corrupt"`` (unreadable).
        reason: why the state was decided, one phrase.
    """

    path: Path
    data: dict[str, Any]
    state: str
    reason: str

    def describe(self) -> str:
        d = self.data
        return (
            f"run {d.get('owner', '?')!r} (pid {d.get('pid', '?')} on {d.get('hostname', '?')}, "
            f"since {d.get('started_at', '?')})"
        )


def _lock_path(store: str | os.PathLike) -> Path | None:
    folder = local_path(store)
    return None if folder is None else folder / LOCK_NAME


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except (OverflowError, ValueError):
        return False
    return True


def process_start(pid: int) -> str | None:
    """``BOOT_ID:START_TICKS`` of a live process (Linux ``/proc``), else None.

    Hand-written (psutil would do it, at the cost of a compiled dependency for two file reads): a
    pid names a process only together with when it started.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            return f"{boot.read().strip()}:{fields[19]}"  # field 22 of stat: starttime
    except (OSError, IndexError):
        return None


def _age_seconds(data: dict[str, Any], path: Path) -> float:
    try:
        started = datetime.fromisoformat(str(data["started_at"]))
        if started.tzinfo is None:
            started = started.replace(tzinfo=timezone.utc)
        return (datetime.now(timezone.utc) - started).total_seconds()
    except (KeyError, ValueError, TypeError):
        try:
            return time.time() - path.stat().st_mtime
        except OSError:
            return 0.0


def read_lock(store: str | os.PathLike, stale_after: float = STALE_AFTER) -> LockInfo | None:
    """Reads and classifies a store's lock file, changing nothing.

    Returns:
        The lock, or None if there is none (or the store is not a local folder).
    """

    path = _lock_path(store)
    if path is None:
        return None
    return _classify(path, stale_after)


def _classify(path: Path, stale_after: float) -> LockInfo | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        return LockInfo(path, {}, "corrupt", f"unreadable ({error})")

    try:
        data = json.loads(text)
        pid = int(data["pid"])
        hostname = str(data["hostname"])
    except (ValueError, KeyError, TypeError):
        # A lock being written right now is briefly empty: young corrupt files count as held.
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return None
        if age < 10:
            return LockInfo(path, {}, "live", "being written")
        return LockInfo(path, {}, "corrupt", "not a valid lock file")

    if hostname == socket.gethostname():
        if not _pid_alive(pid):
            return LockInfo(path, data, "stale", "its process is gone")
        recorded, now = data.get("process_start"), process_start(pid)
        if recorded and now and recorded != now:
            return LockInfo(path, data, "stale", f"its pid {pid} now belongs to another process")
        return LockInfo(path, data, "live", "its process is alive")

    age = _age_seconds(data, path)
    if age > stale_after:
        return LockInfo(path, data, "stale", f"from another host and older than {stale_after:.0f} s")
    return LockInfo(path, data, "live", "from another host, not older than stale_after")


def _locked_message(store: Any, info: LockInfo) -> str:
    return (
        f"store {str(store)!r} is in use by {info.describe()}; "
        f"wait for it, or use another --store (lock file {info.path})"
    )


def check_unlocked(
    store: str | os.PathLike,
    stale_after: float = STALE_AFTER,
    error: type[Exception] = StoreLockedError,
) -> None:
    """Raises ``error`` with one line if a live run holds the store; writes nothing.

    A stale lock passes (the run recovers it); a non-local store always passes.

    Arguments:
        store: the store folder or URL.
        stale_after: seconds after which a lock from another host counts as stale.
        error: the exception class to raise (the CLI passes its ``UsageError``).
    """

    info = read_lock(store, stale_after)
    if info is not None and info.state == "live":
        raise error(_locked_message(store, info))


@contextlib.contextmanager
def _folder_mutex(folder: Path):
    """Serialises lock recovery and release between processes of this machine."""

    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


class StoreLock:
    r"""An exclusive run lock on a store folder; a context manager.

    Arguments:
        store: the store folder, ``file://`` URL or any zarr store URL (not locked: see the module).
        owner: who holds it, shown to a refused run (the run name).
        stale_after: seconds after which a lock from another host counts as stale.

    Raises:
        StoreLockedError: on enter, if a live run holds the store.
    """

    def __init__(self, store: str | os.PathLike, owner: str, stale_after: float = STALE_AFTER):
        self.store = store
        self.owner = str(owner)
        self.stale_after = float(stale_after)
        self.path = _lock_path(store)
        self._data: dict[str, Any] | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""

        return self._data is not None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _new_data(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "process_start": process_start(os.getpid()),
            "hostname": socket.gethostname(),
            "owner": self.owner,
            "started_at": utc_now(),
            "token": uuid.uuid4().hex,
        }

    def _owns_file(self) -> bool:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and data.get("token") == self._data["token"]

    def acquire(self) -> None:
        """Takes the lock, recovering a stale one; see the class."""

        if self.path is None or self.held:
            return

        folder = self.path.parent
        if not (folder / "zarr.json").exists():
            # Initialise the store first: SimulationStore refuses a non-empty folder without
            # zarr.json, which the lock file alone would make (also raises for a non-store folder).
            SimulationStore(folder, mode="a")

        for _ in range(5):
            data = self._new_data()
            payload = json.dumps(data).encode()
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pass
            else:
                try:
                    os.write(fd, payload)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self._data = data
                return

            info = _classify(self.path, self.stale_after)
            if info is None:
                continue  # released meanwhile: try again
            if info.state == "live":
                raise StoreLockedError(_locked_message(self.store, info))

            with _folder_mutex(folder):
                # Re-read under the mutex: another process may have recovered it already.
                again = _classify(self.path, self.stale_after)
                if again is None or again.state == "live":
                    continue
                logger.warning(
                    "store %s: recovering a stale lock of %s: %s",
                    self.store, again.describe(), again.reason,
                )
                temporary = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.{data['token']}.tmp")
                try:
                    temporary.write_bytes(payload)
                    os.replace(temporary, self.path)
                finally:
                    temporary.unlink(missing_ok=True)
                self._data = data
                if self._owns_file():
                    return
                self._data = None

        raise StoreLockedError(f"store {str(self.store)!r}: could not take the lock {self.path}; try again")

    def release(self) -> None:
        """Deletes the lock file if this object holds it; never a lock it does not own."""

        if self.path is None or not self.held:
            return
        try:
            with _folder_mutex(self.path.parent):
                if self._owns_file():
                    self.path.unlink(missing_ok=True)
                else:
                    logger.warning("store %s: the lock is no longer ours; left in place", self.store)
        except FileNotFoundError:
            pass
        finally:
            self._data = None

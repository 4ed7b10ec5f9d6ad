r"""The run lock of a store: one run at a time writes a store.

A run holds ``DIR/.mfsbi.lock``, a small JSON file ``{pid, hostname, owner, started_at, token,
stale_after}`` created atomically (``O_CREAT | O_EXCL``), for as long as it runs; a second run on
the same store is refused with :class:`StoreLockedError`. While it holds the lock, a background
thread of the holder touches the file (its modification time) every ``stale_after / 5`` seconds:
the **heartbeat**. The lock file survives the death of its process, so whether it is still held is
decided from it:

* on any host, a lock whose heartbeat is older than ``stale_after`` (the larger of the reader's
  and the one the holder wrote; 300 s by default, ``MFSBI_LOCK_STALE_AFTER`` in seconds) is
  **stale**: its holder is gone, frozen or cut off. A live holder keeps it fresh however long it
  runs;
* on the same host (same hostname and pid namespace), it is stale at once when its process is
  gone (``os.kill(pid, 0)``) or its pid now names another process (the start time since boot,
  from ``/proc/PID/stat``, and the boot's id differ);
* otherwise it is held, and the new run is refused.

A stale lock is recovered by the next run (a warning is logged): it writes its own lock to a
temporary file, ``os.replace``-s the stale one, then re-reads it to check that it won. A holder
whose heartbeat finds the file gone or someone else's logs an error and stops claiming it
(:attr:`StoreLock.lost`). Recovery and release are serialised with ``flock`` on a file beside the
store (never on a directory, which NFS cannot lock); where ``flock`` fails, a warning is logged and
they go on unserialised, guarded only by the token check.

The heartbeat is judged by the reader's clock against the file's modification time (the file
server's clock on NFS): the clocks of the machines sharing a store must agree to well within
``stale_after`` (NTP). docs/deploy.md ("Shared machines and file systems") says what the file
system must provide.

Limits: only local folders (a path or a ``file://`` URL) are locked; for other zarr stores (object
stores, ``memory://``) :class:`StoreLock` does nothing, as there is no portable atomic create
there. Between machines the ``O_EXCL`` create is atomic only on file systems where it is (NFSv3
and later, Lustre, GPFS).

Example:
    >>> with StoreLock("runs/gaussian", owner="npe-hf100"):
    ...     run(...)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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
    "STALE_AFTER",
    "STALE_AFTER_ENV",
    "LockInfo",
    "StoreLock",
    "StoreLockedError",
    "check_unlocked",
    "read_lock",
    "stale_after_seconds",
]

LOCK_NAME = ".mfsbi.lock"
STALE_AFTER = 300.0
STALE_AFTER_ENV = "MFSBI_LOCK_STALE_AFTER"
HEARTBEATS_PER_STALE = 5  # a lock goes stale only after this many missed heartbeats

logger = logging.getLogger(__name__)


class StoreLockedError(StoreError):
    """Another live run holds the store's lock."""


def stale_after_seconds(value: float | None = None) -> float:
    """The time without heartbeat after which a lock is stale: ``value``, else the environment's.

    Arguments:
        value: seconds, or None for ``MFSBI_LOCK_STALE_AFTER`` (default 300).

    Raises:
        StoreError: the value is not a number of seconds > 0.
    """

    source = "stale_after"
    if value is None:
        source, value = STALE_AFTER_ENV, os.environ.get(STALE_AFTER_ENV, STALE_AFTER)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise StoreError(f"{source}={value!r} is not a number of seconds > 0; use e.g. {source}=300")
    return seconds


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


def _pid_namespace() -> str | None:
    """This process's pid namespace (Linux): two containers may share a hostname, never one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _same_machine(data: dict[str, Any]) -> bool:
    """Whether the lock's pid can be checked from here."""
    if str(data.get("hostname")) != socket.gethostname():
        return False
    recorded = data.get("pid_namespace")
    return recorded is None or recorded == _pid_namespace()


def read_lock(store: str | os.PathLike, stale_after: float | None = None) -> LockInfo | None:
    """Reads and classifies a store's lock file, changing nothing.

    Arguments:
        store: the store folder or URL.
        stale_after: seconds without heartbeat after which a lock is stale (None: the default).

    Returns:
        The lock, or None if there is none (or the store is not a local folder).
    """

    path = _lock_path(store)
    if path is None:
        return None
    return _classify(path, stale_after_seconds(stale_after))


def _classify(path: Path, stale_after: float) -> LockInfo | None:
    try:
        with open(path, "rb") as file:
            text = file.read().decode("utf-8", errors="replace")
            # fstat after open: NFS revalidates the attributes on open, a bare stat may be cached.
            beat = os.fstat(file.fileno()).st_mtime
    except FileNotFoundError:
        return None
    except OSError as error:
        return LockInfo(path, {}, "corrupt", f"unreadable ({error})")
    silent = time.time() - beat

    try:
        data = json.loads(text)
        pid = int(data["pid"])
        if not isinstance(data["hostname"], str):
            raise TypeError("hostname")
        limit = max(stale_after, float(data.get("stale_after") or 0.0))
    except (ValueError, KeyError, TypeError):
        # A lock being written right now is briefly empty: young corrupt files count as held.
        if silent < 10:
            return LockInfo(path, {}, "live", "being written")
        return LockInfo(path, {}, "corrupt", "not a valid lock file")

    if _same_machine(data):
        if not _pid_alive(pid):
            return LockInfo(path, data, "stale", "its process is gone")
        recorded, now = data.get("process_start"), process_start(pid)
        if recorded and now and recorded != now:
            return LockInfo(path, data, "stale", f"its pid {pid} now belongs to another process")

    if silent > limit:
        return LockInfo(path, data, "stale", f"no heartbeat for {silent:.0f} s (stale after {limit:.0f} s)")
    return LockInfo(path, data, "live", f"heartbeat {silent:.0f} s ago (stale after {limit:.0f} s)")


def _locked_message(store: Any, info: LockInfo) -> str:
    return (
        f"store {str(store)!r} is in use by {info.describe()}; "
        f"wait for it, or use another --store (lock file {info.path})"
    )


def check_unlocked(
    store: str | os.PathLike,
    stale_after: float | None = None,
    error: type[Exception] = StoreLockedError,
) -> None:
    """Raises ``error`` with one line if a live run holds the store; writes nothing.

    A stale lock passes (the run recovers it); a non-local store always passes.

    Arguments:
        store: the store folder or URL.
        stale_after: seconds without heartbeat after which a lock is stale (None: the default).
        error: the exception class to raise (the CLI passes its ``UsageError``).
    """

    info = read_lock(store, stale_after)
    if info is not None and info.state == "live":
        raise error(_locked_message(store, info))


@contextlib.contextmanager
def _store_mutex(folder: Path) -> Iterator[None]:
    """Serialises lock recovery and release between processes (between machines where the file
    system's ``flock`` reaches them, docs/deploy.md).

    The ``flock`` is taken on a file beside the store, where the chunk locks live: NFS cannot lock
    a directory (it opens read-only, and NFS's ``flock`` needs a file open for writing). Where no
    ``flock`` can be had, a warning says so and the caller goes on unserialised.
    """

    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    root = folder.resolve()
    mutex = root.parent / f".{root.name}.mfsbi-locks" / "run-lock.mutex"
    file = None
    try:
        mutex.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        file = open(mutex, "a+b")
        fcntl.flock(file, fcntl.LOCK_EX)
    except OSError as error:
        logger.warning(
            "store %s: no flock on %s (%s): taking over or releasing the run lock is not serialised "
            "between processes here (docs/deploy.md, 'Shared machines and file systems')",
            folder, mutex, error,
        )
    try:
        yield
    finally:
        if file is not None:
            file.close()  # closing releases the flock


class StoreLock:
    r"""An exclusive run lock on a store folder, kept alive by a heartbeat; a context manager.

    Arguments:
        store: the store folder, ``file://`` URL or any zarr store URL (not locked: see the module).
        owner: who holds it, shown to a refused run (the run name).
        stale_after: seconds without heartbeat after which a lock counts as stale; None reads
            ``MFSBI_LOCK_STALE_AFTER`` (default 300). The heartbeat beats every ``stale_after / 5``.

    Raises:
        StoreLockedError: on enter, if a live run holds the store.
        StoreError: ``stale_after`` (or the environment variable) is not a number of seconds > 0.
    """

    def __init__(self, store: str | os.PathLike, owner: str, stale_after: float | None = None):
        self.store = store
        self.owner = str(owner)
        self.stale_after = stale_after_seconds(stale_after)
        self.path = _lock_path(store)
        self._data: dict[str, Any] | None = None
        self._lost = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""

        return self._data is not None and not self._lost

    @property
    def lost(self) -> bool:
        """Whether the heartbeat found the lock taken over (or removed) while this object held it."""

        return self._lost

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _new_data(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "process_start": process_start(os.getpid()),
            "pid_namespace": _pid_namespace(),
            "hostname": socket.gethostname(),
            "owner": self.owner,
            "started_at": utc_now(),
            "stale_after": self.stale_after,
            "token": uuid.uuid4().hex,
        }

    def _owns_file(self) -> bool:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and data.get("token") == self._data["token"]

    def _took(self, data: dict[str, Any]) -> None:
        """Records the lock as ours and starts its heartbeat."""

        self._data, self._lost = data, False
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(
            target=self._beat, args=(self._stop, self.stale_after / HEARTBEATS_PER_STALE),
            name=f"mfsbi-lock-heartbeat-{self.owner}", daemon=True,
        )
        self._heartbeat.start()

    def _beat(self, stop: threading.Event, every: float) -> None:
        """The heartbeat: touches the lock file while it is ours; says so once it is not."""

        while not stop.wait(every):
            if not self._owns_file():
                if stop.is_set():
                    return  # released meanwhile
                self._lost = True
                logger.error(
                    "store %s: run %r lost its lock %s (removed, or taken over as stale after more than "
                    "%.0f s without heartbeat); another run may now write this store",
                    self.store, self.owner, self.path, self.stale_after,
                )
                return
            try:
                os.utime(self.path)
            except OSError as error:  # a passing file-system error: the next beat tries again
                logger.warning("store %s: the lock's heartbeat failed (%s); retrying", self.store, error)

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join()
        self._heartbeat = None

    def acquire(self) -> None:
        """Takes the lock, recovering a stale one, and starts the heartbeat; see the class."""

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
                self._took(data)
                return

            info = _classify(self.path, self.stale_after)
            if info is None:
                continue  # released meanwhile: try again
            if info.state == "live":
                raise StoreLockedError(_locked_message(self.store, info))

            with _store_mutex(folder):
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
                    self._took(data)
                    return
                self._data = None

        raise StoreLockedError(f"store {str(self.store)!r}: could not take the lock {self.path}; try again")

    def release(self) -> None:
        """Stops the heartbeat and deletes the lock file if this object holds it; never a lock it
        does not own."""

        if self.path is None or self._data is None:
            return
        self._stop_heartbeat()
        try:
            with _store_mutex(self.path.parent):
                if self._owns_file():
                    self.path.unlink(missing_ok=True)
                else:
                    logger.warning("store %s: the lock is no longer ours; left in place", self.store)
        finally:
            self._data = None

"""Where mfsbi keeps its own state on a machine, ``$MFSBI_HOME`` (default ``~/.mfsbi``), kept private.

The home holds the Prefect database (whose flow runs ``mfsbi serve``'s worker executes), the
Prefect auth string, the Dask TLS key and the services' logs: another user who can read or write
any of it can run code as its owner. So the home is mode 700 (which alone shuts every other user
out of all below it), what mfsbi makes there is 700 / 600 too, and a file holding a secret is
checked for owner, mode and content before it is used.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

__all__ = ["PRIVATE_UMASK", "PrivateStateError", "create_private_once", "mfsbi_home", "open_private_log",
           "private_folder", "private_home", "read_secret", "write_private"]

# The umask of the processes that only ever write into the home (the embedded Prefect server:
# its SQLite database and write-ahead files).
PRIVATE_UMASK = 0o077


class PrivateStateError(RuntimeError):
    """A file or folder of ``$MFSBI_HOME`` that is not private, or a secret that is not one; one line."""


def mfsbi_home() -> Path:
    """Where embedded services and SLURM clusters keep their state (``MFSBI_HOME``, default ``~/.mfsbi``)."""
    return Path(os.environ.get("MFSBI_HOME", Path.home() / ".mfsbi"))


def private_folder(path: Path) -> Path:
    """``path`` as a folder of this user's, mode 700: made if missing, tightened if more open.

    Arguments:
        path: the folder; its missing parents are made with the default mode (they are not mfsbi's).

    Returns:
        ``path``.

    Raises:
        PrivateStateError: ``path`` belongs to another user, or is not a folder.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)  # never open, not even between mkdir and chmod
    except FileExistsError:
        pass
    info = path.stat()  # a home linked elsewhere (e.g. to scratch) is checked where it leads
    if not stat.S_ISDIR(info.st_mode):
        raise PrivateStateError(f"{path} is not a folder; move it away (mfsbi keeps its state there)")
    if info.st_uid != os.geteuid():
        raise PrivateStateError(f"{path} belongs to uid {info.st_uid}, not to you (uid {os.geteuid()}); "
                                f"set MFSBI_HOME to a folder of your own")
    if stat.S_IMODE(info.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def private_home() -> Path:
    """``$MFSBI_HOME``, made if missing and mode 700 (:func:`private_folder`)."""
    return private_folder(mfsbi_home().expanduser())


def write_private(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` (replacing it) as mode 600, never readable by others, even briefly."""
    descriptor, part = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 600
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(part, path)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise


def create_private_once(path: Path, text: str) -> bool:
    """Creates ``path`` (mode 600) holding ``text`` unless it exists; True when this call created it.

    Complete or absent, never empty: the content is written to a temporary file first, then linked
    to ``path`` (a link never replaces an existing file, so of two first uses only one wins).
    """
    descriptor, part = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(part, path)
        return True
    except FileExistsError:
        return False
    finally:
        Path(part).unlink(missing_ok=True)


def read_secret(path: Path, what: str) -> str:
    """The stripped content of a secret file, after checking it is this user's, mode 600 or stricter and not empty.

    Arguments:
        path: the file.
        what: what it holds, for the message (e.g. "the Prefect auth string").

    Raises:
        PrivateStateError: one line naming the file, what is wrong and the fix.
    """
    try:
        # O_NOFOLLOW: a link planted in its place by someone else is refused, not followed.
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise PrivateStateError(f"{what}: cannot open {path} ({error.strerror}); delete it and mfsbi makes "
                                f"a new one") from None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PrivateStateError(f"{what}: {path} is not a regular file; delete it and mfsbi makes a new one")
        if info.st_uid != os.geteuid():
            raise PrivateStateError(f"{what}: {path} belongs to uid {info.st_uid}, not to you (uid "
                                    f"{os.geteuid()}); delete it, or set MFSBI_HOME to a folder of your own")
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise PrivateStateError(f"{what}: {path} is readable or writable by others (mode "
                                    f"{stat.S_IMODE(info.st_mode):o}); run `chmod 600 {path}`, or delete it and "
                                    f"mfsbi makes a new one (others may have read it)")
        text = handle.read().decode("utf-8", errors="replace").strip()
    if not text:
        raise PrivateStateError(f"{what}: {path} is empty (an interrupted first start?); delete it and mfsbi "
                                f"makes a new one")
    return text


def open_private_log(path: Path) -> BinaryIO:
    """``path`` opened for appending, mode 600 (also when an older mfsbi made it more open)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(descriptor, 0o600)
    return os.fdopen(descriptor, "ab")

"""The embedded Prefect API of a run: a local Prefect server, started and torn down per run.

Prefect's ephemeral mode is not enough here (../shared/STACK.md): every process that talks to the
API without a server starts a temporary one of its own. So unless ``PREFECT_API_URL`` points at a
real server, :func:`prefect_api` starts ``prefect server start`` on 127.0.0.1 with its database in
``MFSBI_HOME`` (default ``~/.mfsbi``), so that every run stays visible afterwards in the UI
(``mfsbi serve``; a bare ``prefect server start`` on the same ``PREFECT_HOME`` needs
``PREFECT_SERVER_API_AUTH_STRING`` set to the string, or it opens the database to every local user).

That server requires the same auth string as ``mfsbi serve``'s (:func:`serve_auth_string`): 127.0.0.1
is shared by every user of a login node, and a flow run queued in the shared database is run by
serve's worker as its owner. The string is given to this process and its children through
``PREFECT_API_AUTH_STRING``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

from mfsbi.runtime.home import (PRIVATE_UMASK, PrivateStateError, create_private_once, mfsbi_home, open_private_log,
                                private_folder, private_home, read_secret)
from mfsbi.runtime.processes import die_with_parent

__all__ = ["OFFLINE_SETTINGS", "ServiceError", "client_auth_string", "healthy", "mfsbi_home", "prefect_api",
           "private_child", "quiet_prefect_environment", "serve_auth_string"]

OFFLINE_SETTINGS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
}


class ServiceError(RuntimeError):
    """An embedded service did not come up."""


AUTH_FILE = "prefect-auth-string"
_AUTH_WHAT = "the Prefect auth string"


def serve_auth_string() -> str:
    """The credentials the Prefect servers of `mfsbi serve` and `mfsbi run` require (``PREFECT_SERVER_API_AUTH_STRING``).

    From the environment if set, else generated once into ``$MFSBI_HOME/prefect-auth-string``
    (mode 600, in the mode-700 home), where this user's clients (``mfsbi deploy``, ``submit``,
    ``runs``, the UI's login) read it. Another user on the machine cannot read it, so cannot use
    the API. One string for both servers: they share one database.

    Raises:
        ServiceError: the file is not this user's, is readable by others, or is empty (one line).
    """
    given = os.environ.get("PREFECT_SERVER_API_AUTH_STRING")
    if given:
        return given
    try:
        path = private_home() / AUTH_FILE
        create_private_once(path, f"mfsbi:{secrets.token_urlsafe(32)}\n")
        return read_secret(path, _AUTH_WHAT)
    except PrivateStateError as error:
        raise ServiceError(str(error)) from None


def client_auth_string() -> str | None:
    """``PREFECT_API_AUTH_STRING`` if set, else the one `mfsbi serve` generated, else None.

    Raises:
        ServiceError: the file is not this user's, is readable by others, or is empty (one line).
    """
    given = os.environ.get("PREFECT_API_AUTH_STRING")
    if given:
        return given
    path = mfsbi_home().expanduser() / AUTH_FILE
    if not path.exists():
        return None
    try:
        return read_secret(path, _AUTH_WHAT)
    except PrivateStateError as error:
        raise ServiceError(str(error)) from None


def private_child() -> None:
    """``preexec_fn`` of a service that writes only into ``$MFSBI_HOME``: umask 077, and it dies with its parent."""
    os.umask(PRIVATE_UMASK)
    die_with_parent()


def quiet_prefect_environment() -> None:
    """Offline, no telemetry: set before Prefect is imported (it reads settings at import)."""
    for key, value in OFFLINE_SETTINGS.items():
        os.environ.setdefault(key, value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def prefect_api(timeout: float = 90.0) -> Iterator[str]:
    """Yields a Prefect API URL: ``PREFECT_API_URL`` if set, else a local server started for the run.

    Arguments:
        timeout: seconds to wait for the local server to report healthy.

    Returns:
        The API URL; ``PREFECT_API_URL`` and ``PREFECT_API_AUTH_STRING`` are set to it and its auth
        string in this process (environment and, if Prefect is imported, its settings) while the
        context is open.

    Raises:
        ServiceError: the server did not come up, or ``$MFSBI_HOME`` or its auth string is not private.
    """
    quiet_prefect_environment()
    existing = os.environ.get("PREFECT_API_URL")
    if existing:
        yield existing
        return
    try:
        home = private_folder(private_home() / "prefect")
    except PrivateStateError as error:
        raise ServiceError(str(error)) from None
    auth = serve_auth_string()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    # The UI is told where its API is: without it, it calls the default port 4200 and shows nothing
    # (seen with headless Chromium, benchmarks/ui_screenshot.py).
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_API_HOST": "127.0.0.1",
           "PREFECT_SERVER_API_PORT": str(port), "PREFECT_UI_API_URL": url, "PREFECT_SERVER_API_AUTH_STRING": auth}
    log_path = home / "server.log"
    with open_private_log(log_path) as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port), "--no-services"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=private_child,  # a SIGKILLed run must not leave its server behind
        )
    previous_auth = os.environ.get("PREFECT_API_AUTH_STRING")
    settings = contextlib.ExitStack()
    try:
        deadline = time.monotonic() + timeout
        while not healthy(url):
            if server.poll() is not None:
                raise ServiceError(f"the local Prefect server exited with {server.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise ServiceError(f"the local Prefect server was not healthy after {timeout:.0f} s; see {log_path}")
            time.sleep(0.25)
        os.environ["PREFECT_API_URL"] = url
        os.environ["PREFECT_API_AUTH_STRING"] = auth  # read by Prefect at import, and by child processes
        if "prefect" in sys.modules:  # imported already: its settings were read, override them
            # deferred: only in this case; Prefect costs 1.2 s and must read the settings above when imported
            from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

            settings.enter_context(temporary_settings(updates={PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth}))
        yield url
    finally:
        settings.close()
        os.environ.pop("PREFECT_API_URL", None)
        if previous_auth is None:
            os.environ.pop("PREFECT_API_AUTH_STRING", None)
        else:
            os.environ["PREFECT_API_AUTH_STRING"] = previous_auth
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

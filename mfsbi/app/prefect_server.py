"""The embedded Prefect API of a run: a local Prefect server, started and torn down per run.

Prefect's ephemeral mode is not enough here (../shared/STACK.md): every process that talks to the
API without a server starts a temporary one of its own. So unless ``PREFECT_API_URL`` points at a
real server, :func:`prefect_api` starts ``prefect server start`` on 127.0.0.1 with its database in
``MFSBI_HOME`` (default ``~/.mfsbi``), so that every run stays visible afterwards in the UI
(``mfsbi serve`` or ``prefect server start`` with the same ``PREFECT_HOME``).
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

from mfsbi.runtime.home import mfsbi_home
from mfsbi.runtime.processes import die_with_parent

__all__ = ["OFFLINE_SETTINGS", "ServiceError", "client_auth_string", "healthy", "mfsbi_home", "prefect_api",
           "quiet_prefect_environment", "serve_auth_string"]

OFFLINE_SETTINGS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
}


class ServiceError(RuntimeError):
    """An embedded service did not come up."""


AUTH_FILE = "prefect-auth-string"


def serve_auth_string() -> str:
    """The credentials `mfsbi serve`'s Prefect server requires (Prefect's ``PREFECT_SERVER_API_AUTH_STRING``).

    From the environment if set, else generated once into ``$MFSBI_HOME/prefect-auth-string``
    (mode 600), where this user's clients (``mfsbi deploy``, ``submit``, ``runs``, the UI's login)
    read it. Another user on the machine cannot read it, so cannot use the API.
    """
    given = os.environ.get("PREFECT_SERVER_API_AUTH_STRING")
    if given:
        return given
    path = mfsbi_home() / AUTH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as handle:
        handle.write(f"mfsbi:{secrets.token_urlsafe(32)}\n")
    return path.read_text().strip()


def client_auth_string() -> str | None:
    """``PREFECT_API_AUTH_STRING`` if set, else the one `mfsbi serve` generated, else None."""
    given = os.environ.get("PREFECT_API_AUTH_STRING")
    if given:
        return given
    path = mfsbi_home() / AUTH_FILE
    return path.read_text().strip() if path.exists() else None


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
        The API URL; ``PREFECT_API_URL`` is set to it in this process while the context is open.
    """
    quiet_prefect_environment()
    existing = os.environ.get("PREFECT_API_URL")
    if existing:
        yield existing
        return
    home = mfsbi_home() / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    # The UI is told where its API is: without it, it calls the default port 4200 and shows nothing
    # (seen with headless Chromium, benchmarks/ui_screenshot.py).
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_API_HOST": "127.0.0.1",
           "PREFECT_SERVER_API_PORT": str(port), "PREFECT_UI_API_URL": url}
    log_path = home / "server.log"
    with open(log_path, "ab") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port), "--no-services"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent,  # a SIGKILLed run must not leave its server behind
        )
    try:
        deadline = time.monotonic() + timeout
        while not healthy(url):
            if server.poll() is not None:
                raise ServiceError(f"the local Prefect server exited with {server.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise ServiceError(f"the local Prefect server was not healthy after {timeout:.0f} s; see {log_path}")
            time.sleep(0.25)
        os.environ["PREFECT_API_URL"] = url
        yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

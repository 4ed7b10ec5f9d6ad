"""The embedded defaults: a local Prefect API and a local Dask cluster, started and torn down per run.

Prefect's ephemeral mode is not enough here (../shared/STACK.md): every process that talks to the
API without a server starts a temporary one of its own. So unless ``PREFECT_API_URL`` points at a
real server, :func:`prefect_api` starts ``prefect server start`` on 127.0.0.1 with its database in
``MFSBI_HOME`` (default ``~/.mfsbi``), so that every run stays visible afterwards in the UI
(``mfsbi serve`` or ``prefect server start`` with the same ``PREFECT_HOME``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from mfsbi.flows.isolation import die_with_parent

__all__ = ["ServiceError", "dask_client", "mfsbi_home", "prefect_api", "quiet_prefect_environment"]

OFFLINE_SETTINGS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
}


class ServiceError(RuntimeError):
    """An embedded service did not come up."""


def mfsbi_home() -> Path:
    """Where embedded services keep their state (``MFSBI_HOME``, default ``~/.mfsbi``)."""
    return Path(os.environ.get("MFSBI_HOME", Path.home() / ".mfsbi"))


def quiet_prefect_environment() -> None:
    """Offline, no telemetry: set before Prefect is imported (it reads settings at import)."""
    for key, value in OFFLINE_SETTINGS.items():
        os.environ.setdefault(key, value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
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
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_API_HOST": "127.0.0.1"}
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
        while not _healthy(url):
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


@contextlib.contextmanager
def dask_client(address: str | None = None, n_workers: int | None = None) -> Iterator["object"]:
    """Yields a ``distributed.Client``: to ``address`` (or ``$MFSBI_DASK_ADDRESS``), else to a local cluster.

    The local cluster runs one single-threaded worker process per core: NEURON and torch each want
    one thread per process, and a simulation batch is the unit of parallelism.

    Arguments:
        address: an existing scheduler, e.g. ``tcp://10.0.0.5:8786``.
        n_workers: local workers; default one per core.
    """
    from distributed import Client, LocalCluster

    # `mfsbi serve` and docker-compose give their Prefect workers the scheduler's address.
    address = address or os.environ.get("MFSBI_DASK_ADDRESS") or None
    if address:
        with Client(address, timeout="30s") as client:
            yield client
        return
    workers = n_workers or max(1, os.cpu_count() or 1)
    # Prefect's logging setup lets the in-process scheduler's INFO chatter through; keep warnings.
    quiet = max(logging.WARNING, logging.getLogger("distributed").getEffectiveLevel())
    logging.getLogger("distributed").setLevel(quiet)
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address="127.0.0.1:0", silence_logs=40,
        # brian2 cannot be imported outside a process's main thread, and Dask runs tasks in a
        # worker thread: import it at worker start (STACK.md). External workers need the same
        # `--preload mfsbi.flows.worker_setup`.
        preload=["mfsbi.flows.worker_setup"],
    )
    try:
        with Client(cluster) as client:
            logging.getLogger("distributed").setLevel(quiet)
            yield client
    finally:
        _close_cluster(cluster)


# Seen here: after a worker was SIGKILLed and restarted by its nanny, LocalCluster.close() waited
# forever on one worker (about one run in two of the fault drills). A finished run must still exit.
CLUSTER_CLOSE_TIMEOUT = 60.0


def _close_cluster(cluster: object) -> None:
    """Closes a local cluster; kills its worker processes if they do not stop in time."""
    pids = [nanny.pid for nanny in list(getattr(cluster, "workers", {}).values()) if getattr(nanny, "pid", None)]
    try:
        cluster.close(timeout=CLUSTER_CLOSE_TIMEOUT)
    except Exception as error:  # noqa: BLE001 -- logged; the processes are then killed below
        logging.getLogger("mfsbi").warning("local Dask cluster did not close (%s); killing its workers %s",
                                           type(error).__name__, pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

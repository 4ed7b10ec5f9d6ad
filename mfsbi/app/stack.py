"""``mfsbi serve``: the single-machine stack as local processes, and where running services are.

``serve`` starts, on 127.0.0.1, the same services as ``docker-compose.yml`` for users without
Docker: a Prefect server (SQLite under ``$MFSBI_HOME/prefect``, or PostgreSQL when
``PREFECT_API_DATABASE_CONNECTION_URL`` is set), a Dask scheduler, N single-threaded Dask workers,
the process work pool ``mfsbi-process`` and a Prefect worker on it. Its addresses go to
``$MFSBI_HOME/serve.json`` so that ``deploy``, ``submit``, ``runs`` and ``status`` find them without
flags (:func:`resolve_api_url`, :func:`resolve_dask_address`).

Prefect is imported lazily and only after ``PREFECT_API_URL`` is set: Prefect reads its settings
at import.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mfsbi.app.prefect_server import (OFFLINE_SETTINGS, ServiceError, client_auth_string, healthy, mfsbi_home,
                                      private_child, serve_auth_string)
from mfsbi.runtime.cluster import WORKER_PRELOAD
from mfsbi.runtime.home import PrivateStateError, open_private_log, private_folder, private_home, write_private
from mfsbi.runtime.processes import die_with_parent
from mfsbi.runtime.slurm import client_tls_environment, load_slurm_settings, slurm_cluster
from mfsbi.runtime.tls import certificates, client_environment, client_security, dask_cli_arguments

__all__ = [
    "WORK_POOL", "ServeError", "Stack", "ensure_work_pool", "read_serve_file", "resolve_api_url",
    "resolve_dask_address", "run_until_stopped", "serve_file", "start_stack", "ui_url", "use_api",
]

WORK_POOL = "mfsbi-process"


class ServeError(RuntimeError):
    """A service did not come up, or no service is known; the message is one line."""


# --------------------------------------------------------------------------------------------
# Where the services are
# --------------------------------------------------------------------------------------------

def serve_file() -> Path:
    return mfsbi_home() / "serve.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_serve_file() -> dict | None:
    """The addresses a running ``mfsbi serve`` wrote, or None (no file, or its process is gone)."""
    path = serve_file()
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not _alive(int(info.get("pid", -1))):
        return None
    return info


def _from_environment_or_serve(variable: str, key: str) -> str | None:
    """The environment variable if set, else ``key`` of a running ``mfsbi serve``'s serve.json."""
    value = os.environ.get(variable)
    if value:
        return value
    info = read_serve_file()
    return info[key] if info else None


def resolve_api_url() -> str | None:
    """``PREFECT_API_URL`` if set, else the API of a running ``mfsbi serve``."""
    return _from_environment_or_serve("PREFECT_API_URL", "prefect_api_url")


def resolve_dask_address() -> str | None:
    """``MFSBI_DASK_ADDRESS`` if set, else the scheduler of a running ``mfsbi serve``."""
    return _from_environment_or_serve("MFSBI_DASK_ADDRESS", "dask_address")


def ui_url(api_url: str) -> str:
    return api_url[: -len("/api")] if api_url.rstrip("/").endswith("/api") else api_url


_API_OVERRIDES: list = []


def use_api(api_url: str) -> None:
    """Points this process at ``api_url``; call before Prefect is imported."""
    for key, value in OFFLINE_SETTINGS.items():
        os.environ.setdefault(key, value)
    os.environ["PREFECT_API_URL"] = api_url
    auth = client_auth_string()  # `mfsbi serve`'s server refuses clients without it
    if auth:
        os.environ["PREFECT_API_AUTH_STRING"] = auth
    if "prefect" in sys.modules:  # already imported: override the settings it read at import
        # deferred: only in this case (as in prefect_server.prefect_api)
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        updates = {PREFECT_API_URL: api_url, **({PREFECT_API_AUTH_STRING: auth} if auth else {})}
        override = temporary_settings(updates=updates)
        override.__enter__()
        # Kept: a context manager collected while open runs its exit, and the override is gone
        # (seen: `mfsbi deploy` registered on a temporary server of its own, not on `mfsbi serve`'s).
        _API_OVERRIDES.append(override)


# --------------------------------------------------------------------------------------------
# serve
# --------------------------------------------------------------------------------------------

def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port(port: int, what: str) -> int:
    if port == 0:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    if not _port_free(port):
        raise ServeError(f"--{what}-port: 127.0.0.1:{port} is in use; pick another (0: any free port)")
    return port


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log: Path


@dataclass
class Stack:
    """The processes of ``mfsbi serve`` and their addresses."""

    home: Path
    prefect_api_url: str = ""
    dask_address: str = ""
    dashboard: str = ""
    services: list[Service] = field(default_factory=list)
    # `--cluster`: the SLURM cluster this process holds (closed, every job with it, by stop()).
    cluster: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def ui(self) -> str:
        return ui_url(self.prefect_api_url)

    def start(self, name: str, command: list[str], env: dict[str, str], private: bool = False) -> Service:
        """Starts a service logging to ``logs/NAME.log`` (mode 600); ``private``: with umask 077 too."""
        log = private_folder(self.home / "logs") / f"{name}.log"
        with open_private_log(log) as handle:
            process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       preexec_fn=private_child if private else die_with_parent)
        service = Service(name, process, log)
        self.services.append(service)
        return service

    def check(self) -> None:
        """Raises ServeError naming the first service that exited."""
        for service in self.services:
            if service.process.poll() is not None:
                raise ServeError(f"{service.name} exited with {service.process.returncode}; see {service.log}")

    def stop(self, grace: float = 15.0) -> None:
        """Stops every service, newest first: SIGTERM, again after ``grace`` s, then SIGKILL."""
        for service in reversed(self.services):
            _stop(service.process, grace)
        self.services.clear()
        self.cluster.close()
        with _suppress():
            info = json.loads(serve_file().read_text())
            if info.get("pid") == os.getpid():
                serve_file().unlink()

    def write_serve_file(self) -> None:
        info = {"pid": os.getpid(), "prefect_api_url": self.prefect_api_url, "ui_url": self.ui,
                "dask_address": self.dask_address, "dask_dashboard": self.dashboard,
                "work_pool": WORK_POOL, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "processes": {s.name: s.process.pid for s in self.services}, "logs": str(self.home / "logs")}
        private_home()
        write_private(serve_file(), json.dumps(info, indent=2))


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], (OSError, ValueError))


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the service leads its own session: reach its children too
    except (ProcessLookupError, PermissionError):
        with _suppress():
            process.send_signal(sig)


def _stop(process: subprocess.Popen, grace: float) -> None:
    if process.poll() is None:
        # A Prefect worker can need a second SIGTERM (STACK.md): ask twice, then kill.
        for _ in range(2):
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=grace / 2)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            _signal_group(process, signal.SIGKILL)
            process.wait()
    # Children the leader left behind (a Dask nanny's worker, a flow-run process).
    with _suppress():
        os.killpg(process.pid, signal.SIGKILL)


def _wait(predicate, timeout: float, stack: Stack, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        stack.check()
        if time.monotonic() > deadline:
            raise ServeError(f"{what} was not ready after {timeout:.0f} s; see {log}")
        time.sleep(0.25)


def _python_tool(tool: str) -> list[str]:
    """``prefect``/``dask`` of this interpreter's environment (a venv need not be on PATH)."""
    return [sys.executable, "-m", tool]


def start_stack(workers: int, prefect_port: int = 4200, dask_port: int = 8786, dashboard_port: int = 8787,
                timeout: float = 120.0, say=print, cluster: str | None = None, tls: bool = True) -> Stack:
    """Starts the services, waits until each is healthy and writes ``serve.json``.

    With ``cluster`` (``slurm`` or a YAML file) the Dask workers are SLURM jobs of an adaptive
    cluster held by this process, instead of a local scheduler and ``workers`` local workers.
    With ``tls`` the local scheduler, its workers and its clients use mutual TLS with the
    certificates of ``$MFSBI_HOME/tls`` (:mod:`mfsbi.runtime.tls`; a SLURM cluster's TLS is its
    config's ``tls``).

    On any failure the processes already started are stopped before ServeError is raised.
    """
    running = read_serve_file()
    if running:
        raise ServeError(f"mfsbi serve is already running (pid {running['pid']}, UI {running['ui_url']}); "
                         f"stop it first or set MFSBI_HOME")
    try:
        home = private_home()
        prefect_home = private_folder(home / "prefect")
        auth = serve_auth_string()
    except (PrivateStateError, ServiceError) as error:
        raise ServeError(str(error)) from None
    stack = Stack(home=home)
    try:
        prefect_port = _pick_port(prefect_port, "prefect")
        dask_port = _pick_port(dask_port, "dask")
        dashboard_port = _pick_port(dashboard_port, "dashboard")
        stack.prefect_api_url = f"http://127.0.0.1:{prefect_port}/api"
        stack.dask_address = f"{'tls' if tls and not cluster else 'tcp'}://127.0.0.1:{dask_port}"
        stack.dashboard = f"http://127.0.0.1:{dashboard_port}/status"
        base = {**os.environ, **{k: os.environ.get(k, v) for k, v in OFFLINE_SETTINGS.items()},
                "PREFECT_HOME": str(prefect_home), "PREFECT_API_AUTH_STRING": auth}
        base.pop("PREFECT_API_URL", None)

        database = "PostgreSQL" if os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") else \
            f"SQLite in {prefect_home}"
        say(f"starting the Prefect server ({database})")
        server = stack.start("prefect-server",
                             [*_python_tool("prefect"), "server", "start", "--host", "127.0.0.1",
                              "--port", str(prefect_port)],
                             {**base, "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_AUTH_STRING": auth,
                              "PREFECT_SERVER_API_PORT": str(prefect_port),
                              "PREFECT_UI_API_URL": stack.prefect_api_url},
                             private=True)  # writes only its database and log: umask 077
        client_env: dict[str, str] = {}
        if cluster:
            say(f"starting the Dask scheduler and SLURM worker jobs ({cluster})")
            client_env = _start_slurm(stack, cluster)
        else:
            say(f"starting the Dask scheduler and {workers} worker(s){' over TLS' if tls else ''}")
            client_env = _start_local_dask(stack, base, workers, dask_port, dashboard_port, timeout, tls)
        _wait(lambda: healthy(stack.prefect_api_url), timeout, stack, "the Prefect server", server.log)
        os.environ["PREFECT_API_AUTH_STRING"] = auth  # this process is a client of its server too
        use_api(stack.prefect_api_url)
        ensure_work_pool()
        say(f"starting a Prefect worker on the work pool {WORK_POOL!r}")
        worker = stack.start("prefect-worker",
                             [*_python_tool("prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process",
                              "--name", f"mfsbi-serve-{os.getpid()}"],
                             {**base, **client_env, "PREFECT_API_URL": stack.prefect_api_url,
                              "MFSBI_DASK_ADDRESS": stack.dask_address})
        if not cluster:  # a SLURM cluster has its first worker already, and scales by itself
            _wait(lambda: _dask_workers(stack.dask_address) >= workers, timeout, stack,
                  f"{workers} Dask worker(s)", stack.home / "logs")
        _wait(lambda: _worker_online(WORK_POOL), timeout, stack, "the Prefect worker", worker.log)
        stack.write_serve_file()
    except BaseException:
        stack.stop(grace=6)
        raise
    return stack


def _start_local_dask(stack: Stack, base: dict[str, str], workers: int, dask_port: int, dashboard_port: int,
                      timeout: float, tls: bool) -> dict[str, str]:
    """A scheduler and ``workers`` workers on 127.0.0.1; returns what their clients need in their environment."""
    tls_args: list[str] = []
    client_env: dict[str, str] = {}
    if tls:
        files = certificates(stack.home / "tls")
        tls_args = [*dask_cli_arguments(files), "--protocol", "tls"]
        client_env = client_environment(str(files.ca_file), str(files.cert), str(files.key))
    scheduler = stack.start("dask-scheduler",
                            [*_python_tool("dask"), "scheduler", "--host", "127.0.0.1", "--port", str(dask_port),
                             "--dashboard-address", f"127.0.0.1:{dashboard_port}", *tls_args], base)
    _wait(lambda: _port_open(dask_port), timeout, stack, "the Dask scheduler", scheduler.log)
    worker_env = {**base, "OMP_NUM_THREADS": base.get("OMP_NUM_THREADS", "1"),
                  "NEURON_MODULE_OPTIONS": base.get("NEURON_MODULE_OPTIONS", "-nogui")}
    for index in range(workers):
        stack.start(f"dask-worker-{index}",
                    [*_python_tool("dask"), "worker", stack.dask_address, "--host", "127.0.0.1",
                     "--nthreads", "1", "--no-dashboard", "--name", f"mfsbi-worker-{index}",
                     "--local-directory", str(stack.home / "dask-worker-space"), "--preload", WORKER_PRELOAD,
                     *tls_args],
                    worker_env)
    return client_env


def _start_slurm(stack: Stack, cluster: str) -> dict[str, str]:
    """An adaptive SLURM cluster held by this process; returns what its clients need in their environment."""
    settings = load_slurm_settings(cluster)
    jobs = stack.cluster.enter_context(slurm_cluster(settings))
    folder = stack.home / "slurm-tls" / "clients"
    stack.cluster.callback(shutil.rmtree, folder, ignore_errors=True)
    stack.dask_address = jobs.scheduler_address
    stack.dashboard = jobs.dashboard_link if settings.dashboard else ""  # off: only /health is served
    return client_tls_environment(jobs, folder)


def _dask_workers(address: str) -> int:
    from distributed import Client  # deferred: 0.3 s on mfsbi status/submit/runs, which load this module

    try:
        with Client(address, timeout="5s", security=client_security(address, mfsbi_home() / "tls")) as client:
            return len(client.scheduler_info().get("workers", {}))
    except OSError:
        return 0


def _worker_online(pool: str) -> bool:
    from prefect.client.orchestration import get_client  # deferred: Prefect costs 1.2 s on mfsbi status, which loads this module

    try:
        with get_client(sync_client=True) as client:
            return any(w.status.value == "ONLINE" for w in client.read_workers_for_work_pool(pool))
    except Exception:  # noqa: BLE001 -- not yet
        return False


def ensure_work_pool(name: str = WORK_POOL) -> bool:
    """Creates the process work pool if it is missing; True when it was created."""
    # deferred: as in _worker_online
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        client.create_work_pool(WorkPoolCreate(
            name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template(),
            description="mfsbi flow runs as local processes (the project is pip-installed where the worker runs)"))
        return True


def run_until_stopped(stack: Stack, say=print) -> int:
    """Blocks until SIGINT/SIGTERM (exit 0) or until a service dies (exit 1), then stops everything."""
    stop = {"signal": None}

    def handler(signum, frame):  # noqa: ARG001
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        while stop["signal"] is None:
            try:
                stack.check()
            except ServeError as error:
                say(f"error: {error}")
                code = 1
                break
            time.sleep(0.5)
    finally:
        say("stopping the services")
        stack.stop()
        for sig, old in previous.items():
            signal.signal(sig, old)
    return code

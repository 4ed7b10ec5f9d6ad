import os

# Keep every test offline and quiet, and one torch thread per process (no oversubscription on 2 cores).
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY", "false")
os.environ.setdefault("NEURON_MODULE_OPTIONS", "-nogui")

import pytest


_SHARED_HOME = "mfsbi_prefect_home"  # a key of xdist's workerinput: the MFSBI_HOME of the controller's server
_SERVER_READY = "test-prefect-server.json"  # written there once the server is healthy: its URL and auth string
# Runs `prefect_api` (what `mfsbi run` does) in a process of its own, so that the controller's environment,
# which its test processes inherit, never holds the server's address; stops it when stdin closes.
_SERVER_PROCESS = f"""
import json, os, sys
from mfsbi.app.prefect_server import prefect_api
with prefect_api() as url:
    ready = os.path.join(os.environ["MFSBI_HOME"], "{_SERVER_READY}")
    with open(ready + ".part", "w") as file:
        json.dump({{"url": url, "auth": os.environ["PREFECT_API_AUTH_STRING"]}}, file)
    os.replace(ready + ".part", ready)
    sys.stdin.read()
"""


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist, in the controller: one Prefect server for every test process.

    Each test process used to start its own (about 14 CPU seconds each on this machine). The controller
    starts one with the first test process, without waiting: the server comes up while the test
    processes collect, and the first test that needs it waits for it (:func:`prefect_server`). Its
    address goes through the ``MFSBI_HOME`` handed over in ``workerinput``, never the environment: a
    test that starts a server of its own (tests/test_private_state.py) must not find one. The test
    processes share that home, as one process did (tests/test_shared_machine.py reads the server's
    files there). Stopped in :func:`pytest_unconfigure`.
    """
    config = node.config
    if not hasattr(config, "_mfsbi_prefect"):
        import subprocess
        import sys
        import tempfile

        home = tempfile.mkdtemp(prefix="mfsbi-test-home-")  # mode 700
        env = {key: value for key, value in os.environ.items()
               if key not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
        server = subprocess.Popen([sys.executable, "-c", _SERVER_PROCESS], env={**env, "MFSBI_HOME": home},
                                  stdin=subprocess.PIPE)
        config._mfsbi_prefect = (server, home)
    node.workerinput[_SHARED_HOME] = config._mfsbi_prefect[1]


def pytest_unconfigure(config):
    if hasattr(config, "_mfsbi_prefect"):
        import shutil

        server, home = config._mfsbi_prefect
        server.stdin.close()
        server.wait(timeout=120)
        shutil.rmtree(home, ignore_errors=True)


def _shared_server(home: str) -> tuple[str, str]:
    """The (URL, auth string) of the controller's server in ``home``, once it is up."""
    import json
    import time
    from pathlib import Path

    ready, deadline = Path(home) / _SERVER_READY, time.monotonic() + 180
    while not ready.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test session's Prefect server did not come up; see {home}/prefect/server.log")
        time.sleep(0.2)
    info = json.loads(ready.read_text())
    return info["url"], info["auth"]


@pytest.fixture(scope="session")
def prefect_server(request, tmp_path_factory):
    """One real local Prefect API for the whole session (started as `mfsbi run` does), torn down after.

    Under pytest-xdist it is the controller's (:func:`pytest_configure_node`), shared by the test processes."""
    os.environ.pop("PREFECT_API_URL", None)
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    home = getattr(request.config, "workerinput", {}).get(_SHARED_HOME)
    if home is not None:
        url, auth = _shared_server(home)
        # In the environment too: for the `mfsbi` processes the tests start.
        os.environ.update(PREFECT_API_URL=url, PREFECT_API_AUTH_STRING=auth, MFSBI_HOME=home)
        try:
            with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth}):
                yield url
        finally:
            os.environ.pop("PREFECT_API_URL", None)
            os.environ.pop("PREFECT_API_AUTH_STRING", None)
        return
    from mfsbi.app.prefect_server import prefect_api

    os.environ["MFSBI_HOME"] = str(tmp_path_factory.mktemp("mfsbi-home"))
    with prefect_api() as url, temporary_settings(updates={PREFECT_API_URL: url}):
        # temporary_settings too: a module that imported prefect before this fixture ran would
        # otherwise keep its settings and start a temporary server of its own.
        yield url


@pytest.fixture(scope="session")
def dask_cluster_client():
    """A local Dask cluster of two single-threaded worker processes, shared by the flow tests."""
    from mfsbi.runtime.cluster import dask_client

    with dask_client(None, n_workers=2) as client:
        yield client


@pytest.fixture
def shared_dask(dask_cluster_client, monkeypatch):
    """Runs in the test (a flow, `mfsbi run`) connect to the session's Dask cluster through $MFSBI_DASK_ADDRESS,
    as a run under `mfsbi serve` does, instead of starting a local cluster each: every start spawns workers that
    preload torch, sbi, NEURON and Brian2. The CLI's end-to-end test (tests/test_cli.py) and the kill
    drill (tests/test_fault_injection.py) still start their own, as `mfsbi run` does."""
    import dask

    monkeypatch.setenv("MFSBI_DASK_ADDRESS", dask_cluster_client.scheduler.address)
    # The session cluster speaks mutual TLS with certificates held in memory (mfsbi.runtime.cluster):
    # a run in this process reaches it through Dask's TLS settings, as a worker of `mfsbi serve` does.
    security = dask_cluster_client.security
    for name, value in (("CA_FILE", security.tls_ca_file), ("CLIENT__CERT", security.tls_client_cert),
                        ("CLIENT__KEY", security.tls_client_key)):
        monkeypatch.setenv(f"DASK_DISTRIBUTED__COMM__TLS__{name}", value)  # `mfsbi` started as a process
    with dask.config.set({"distributed.comm.tls.ca-file": security.tls_ca_file,
                          "distributed.comm.tls.client.cert": security.tls_client_cert,
                          "distributed.comm.tls.client.key": security.tls_client_key}):
        yield dask_cluster_client


# The longest files first (--durations of the full suite): pytest-xdist hands whole files to its test
# processes in collection order, and a long file handed out last leaves the other processes idle.
LONGEST_FIRST = ("test_deploy_path.py", "test_fault_injection.py", "test_sequential_flow.py", "test_flow.py",
                 "test_cli.py", "test_inference.py", "test_fidelity_chain.py", "test_methods.py",
                 "test_transfer_check.py", "test_streaming.py", "test_multilevel.py", "test_failures.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept

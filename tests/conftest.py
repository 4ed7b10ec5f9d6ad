import os

# Keep every test offline and quiet, and one torch thread per process (no oversubscription on 2 cores).
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY", "false")
os.environ.setdefault("NEURON_MODULE_OPTIONS", "-nogui")

import pytest


_SHARED_API = "mfsbi_prefect_api"  # a key of xdist's workerinput: (URL, auth string, MFSBI_HOME) of the controller's server


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist, in the controller: start one Prefect server for every test process and hand it over.

    Each test process used to start its own (about 14 CPU seconds each on this machine); the controller
    only waits on its workers, so the server runs there, started on the first worker's configuration
    and stopped in :func:`pytest_unconfigure`. The address goes through ``workerinput``, not the
    environment: a test that starts a server of its own (tests/test_private_state.py) must not find one.
    The test processes share the server's ``MFSBI_HOME`` too, as one process did (tests/test_shared_machine.py
    reads the server's files there).
    """
    config = node.config
    if not hasattr(config, "_mfsbi_prefect"):
        import contextlib
        import shutil
        import tempfile

        from mfsbi.app.prefect_server import prefect_api

        home = tempfile.mkdtemp(prefix="mfsbi-test-home-")
        stack = contextlib.ExitStack()
        stack.callback(shutil.rmtree, home, ignore_errors=True)
        previous = {key: os.environ.get(key) for key in ("MFSBI_HOME", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
        os.environ["MFSBI_HOME"] = home
        os.environ.pop("PREFECT_API_URL", None)
        try:
            url = stack.enter_context(prefect_api())
            auth = os.environ["PREFECT_API_AUTH_STRING"]
        finally:
            # The environment the test processes inherit is left as it was.
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        config._mfsbi_prefect = (stack, url, auth, home)
    node.workerinput[_SHARED_API] = config._mfsbi_prefect[1:]


def pytest_unconfigure(config):
    if hasattr(config, "_mfsbi_prefect"):
        config._mfsbi_prefect[0].close()


@pytest.fixture(scope="session")
def prefect_server(request, tmp_path_factory):
    """One real local Prefect API for the whole session (started as `mfsbi run` does), torn down after.

    Under pytest-xdist it is the controller's (:func:`pytest_configure_node`), shared by the test processes."""
    os.environ.pop("PREFECT_API_URL", None)
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    shared = getattr(request.config, "workerinput", {}).get(_SHARED_API)
    if shared is not None:
        url, auth, home = shared
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
    preload torch, sbi, NEURON and Brian2. tests/test_flow.py::test_mf_npe_flow_end_to_end and the CLI's
    end-to-end test still start their own."""
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

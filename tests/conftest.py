import os

# Keep every test offline and quiet, and one torch thread per process (no oversubscription on 2 cores).
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY", "false")
os.environ.setdefault("NEURON_MODULE_OPTIONS", "-nogui")

import pytest


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real local Prefect API for the whole session (started as `mfsbi run` does), torn down after."""
    os.environ["MFSBI_HOME"] = str(tmp_path_factory.mktemp("mfsbi-home"))
    os.environ.pop("PREFECT_API_URL", None)
    from mfsbi.app.prefect_server import prefect_api

    from prefect.settings import PREFECT_API_URL, temporary_settings

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

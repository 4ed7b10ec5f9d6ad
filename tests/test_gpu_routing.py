"""GPU routing: training jobs land on the worker advertising a GPU resource, simulations never do."""

import subprocess
import sys
import time

import pytest

from mfsbi.flows.run import resolve_device, training_resources
from mfsbi.runtime.executor import DaskExecutor
# From the installed package: an external worker process cannot import this test module.
from mfsbi.runtime.training_jobs import worker_name


@pytest.fixture
def cluster_with_a_gpu_worker():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        # A real worker process started as docker-compose starts the GPU worker.
        gpu = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
                                "--name", "gpu", "--resources", "GPU=1", "--nthreads", "1", "--no-dashboard"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(2, timeout=60)
            yield client
        finally:
            gpu.terminate()
            gpu.wait(timeout=30)


def test_training_goes_to_the_gpu_worker_and_simulations_stay_off_it(cluster_with_a_gpu_worker):
    executor = DaskExecutor(cluster_with_a_gpu_worker)
    assert executor.gpu_workers() == ["gpu"]
    assert resolve_device("auto", executor) == "cuda"
    resources = training_resources("cuda", executor)
    assert resources == {"GPU": 1}
    trained_on = list(executor.map_unordered(worker_name, range(6), resources))
    assert set(trained_on) == {"gpu"}
    simulated_on = list(executor.map_unordered(worker_name, range(40)))
    assert "gpu" not in simulated_on and len(simulated_on) == 40


def test_without_a_gpu_worker_auto_trains_on_cpu_with_no_resource_request(dask_cluster_client, prefect_server):
    from prefect import flow

    executor = DaskExecutor(dask_cluster_client)

    @flow
    def resolve():
        return resolve_device("auto", executor)

    assert executor.gpu_workers() == []
    assert resolve() == "cpu"
    assert training_resources("cpu", executor) is None
    # CUDA asked for on a cluster without GPU workers: no resource request that could never be met.
    assert training_resources("cuda", executor) is None

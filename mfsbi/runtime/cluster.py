"""The Dask cluster a flow runs its jobs on: an existing scheduler, or a local cluster per run.

The local cluster is the embedded default (nothing for the user to start; mutual TLS with
certificates made for the run, no dashboard); ``--dask-address`` or
``$MFSBI_DASK_ADDRESS`` (set by ``mfsbi serve`` and docker-compose for their Prefect workers) point at
an existing scheduler instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator

from mfsbi.runtime.home import mfsbi_home
from mfsbi.runtime.slurm import load_slurm_settings, slurm_cluster
from mfsbi.runtime.tls import client_security, scheduler_http_closed

__all__ = ["CLUSTER_CLOSE_TIMEOUT", "WORKER_PRELOAD", "close_cluster", "dask_client", "planned_workers"]

# Workers an adaptive cluster may grow to, by client id: work is split for them, not for the few
# jobs that happen to be running when a batch starts.
_PLANNED: dict[str, int] = {}


def planned_workers(client: object) -> int:
    """Workers the cluster behind ``client`` is expected to reach (0 when it is not adaptive)."""
    return _PLANNED.get(getattr(client, "id", ""), 0)


# Every Dask worker imports this at start (brian2 in its main thread, simulators, torch, sbi).
WORKER_PRELOAD = "mfsbi.runtime.worker_setup"


@contextlib.contextmanager
def dask_client(address: str | None = None, n_workers: int | None = None,
                cluster: str | None = None) -> Iterator["object"]:
    """Yields a ``distributed.Client``: to ``address`` (or ``$MFSBI_DASK_ADDRESS``), to SLURM jobs, or local.

    The local cluster runs one single-threaded worker process per core: NEURON and torch each want
    one thread per process, and a simulation batch is the unit of parallelism.

    Arguments:
        address: an existing scheduler, e.g. ``tcp://10.0.0.5:8786``.
        n_workers: local workers; default one per core.
        cluster: ``slurm`` or a YAML file (:mod:`mfsbi.runtime.slurm`): workers are SLURM jobs,
            scaled with the work, all closed at the end.
    """
    # deferred: distributed costs 0.3 s; `mfsbi status/serve/submit/runs` load this module through app.stack
    from distributed import Client, LocalCluster

    if cluster:
        settings = load_slurm_settings(cluster)
        with slurm_cluster(settings) as jobs, Client(jobs) as client:
            _PLANNED[client.id] = settings.maximum_jobs * int(settings.jobqueue.get("processes") or 1)
            try:
                yield client
            finally:
                _PLANNED.pop(client.id, None)
        return

    # `mfsbi serve` and docker-compose give their Prefect workers the scheduler's address.
    address = address or os.environ.get("MFSBI_DASK_ADDRESS") or None
    if address:
        # A `tls://` scheduler of `mfsbi serve`: its certificates are in MFSBI_HOME (mfsbi.runtime.tls).
        security = client_security(address, mfsbi_home() / "tls")
        with Client(address, timeout="30s", security=security) as client:
            yield client
        return
    workers = n_workers or max(1, os.cpu_count() or 1)
    # Prefect's logging setup lets the in-process scheduler's INFO chatter through; keep warnings.
    quiet = max(logging.WARNING, logging.getLogger("distributed").getEffectiveLevel())
    logging.getLogger("distributed").setLevel(quiet)
    with scheduler_http_closed():
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            # Mutual TLS with certificates made for this run, in memory (workers get them through
            # their nanny's pipe): 127.0.0.1 is shared by every user of a login node, and a Dask
            # scheduler runs what any connected client sends.
            security=True, protocol="tls://",
            # No dashboard: nothing of `mfsbi run` shows it, and it has no authentication.
            dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False}, silence_logs=40,
            # brian2 cannot be imported outside a process's main thread, and Dask runs tasks in a
            # worker thread: import it at worker start (STACK.md). External workers need the same
            # `--preload mfsbi.runtime.worker_setup`.
            preload=[WORKER_PRELOAD],
        )
    try:
        with Client(cluster) as client:
            logging.getLogger("distributed").setLevel(quiet)
            yield client
    finally:
        close_cluster(cluster)


# Seen here: after a worker was SIGKILLed and restarted by its nanny, LocalCluster.close() waited
# forever on one worker (about one run in two of the fault drills). A finished run must still exit.
CLUSTER_CLOSE_TIMEOUT = 60.0


def close_cluster(cluster: object) -> None:
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

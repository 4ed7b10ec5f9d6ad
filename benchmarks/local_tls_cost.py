"""What TLS costs `mfsbi run`'s local Dask cluster: the same ``dask_client(None)`` with TLS and with plain TCP.

Per round, once with each (the order alternates between rounds, so that a busy machine burdens
both alike), with 2 single-threaded workers as the test fixtures use:

* start: seconds from entering ``mfsbi.runtime.cluster.dask_client`` to both workers joined (the
  worker preload, which imports torch, sbi, NEURON and brian2, is in it for both);
* dispatch: wall milliseconds per no-op task, M tasks through ``DaskExecutor.map_unordered``;
* transfer: MB/s of float64 arrays computed on a worker and gathered by the client (simulation
  batches and trained networks travel this way).

Each also as CPU time (user + system, this process and its worker processes, psutil), which a
busy machine slows less than wall time: CPU ms per task and per MB.

    python benchmarks/local_tls_cost.py --out docs/local-tls-cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import distributed
import numpy as np
import psutil

from mfsbi.runtime import cluster as cluster_module
from mfsbi.runtime.executor import DaskExecutor

TLS_CLUSTER = distributed.LocalCluster


def _plain_tcp_cluster(**options):
    """The same local cluster without TLS (what `mfsbi run` used before issue 31)."""
    return TLS_CLUSTER(**{**options, "security": None, "protocol": "tcp://"})


def _noop(i: int) -> int:
    return i


def _array(megabytes: int) -> np.ndarray:
    return np.random.default_rng(0).random(megabytes * 2**20 // 8)


def _cpu_seconds() -> float:
    """CPU seconds of this process and every process under it (the nannies and their workers)."""
    total = 0.0
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def measure(tls: bool, tasks: int, arrays: int, megabytes: int) -> dict:
    # dask_client imports LocalCluster when called: swapping the attribute swaps the cluster it makes.
    distributed.LocalCluster = TLS_CLUSTER if tls else _plain_tcp_cluster
    try:
        started = time.perf_counter()
        with cluster_module.dask_client(None, n_workers=2) as client:
            client.wait_for_workers(2, timeout=300)
            start = time.perf_counter() - started
            assert client.scheduler.address.startswith("tls://" if tls else "tcp://")
            executor = DaskExecutor(client)
            list(executor.map_unordered(_noop, list(range(20))))  # warm: connections, function pickling
            started, cpu = time.perf_counter(), _cpu_seconds()
            list(executor.map_unordered(_noop, list(range(tasks))))
            dispatch, dispatch_cpu = (time.perf_counter() - started) / tasks, (_cpu_seconds() - cpu) / tasks
            client.gather(client.map(_array, [1, 1], pure=False))  # warm
            started, cpu = time.perf_counter(), _cpu_seconds()
            client.gather(client.map(_array, [megabytes] * arrays, pure=False))
            moved = arrays * megabytes
            transfer, transfer_cpu = moved / (time.perf_counter() - started), (_cpu_seconds() - cpu) / moved
    finally:
        distributed.LocalCluster = TLS_CLUSTER
    return {"start_s": round(start, 2), "dispatch_ms_per_task": round(1e3 * dispatch, 2),
            "dispatch_cpu_ms_per_task": round(1e3 * dispatch_cpu, 2), "transfer_mb_per_s": round(transfer, 1),
            "transfer_cpu_ms_per_mb": round(1e3 * transfer_cpu, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--arrays", type=int, default=10)
    parser.add_argument("--megabytes", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"tcp": [], "tls": []}
    load_before = os.getloadavg()[0]
    for round_ in range(args.rounds):
        for tls in ((False, True) if round_ % 2 == 0 else (True, False)):
            result = measure(tls, args.tasks, args.arrays, args.megabytes)
            runs["tls" if tls else "tcp"].append(result)
            print(f"round {round_} {'tls' if tls else 'tcp'}: {result}", flush=True)
    medians = {mode: {key: statistics.median(r[key] for r in results) for key in results[0]}
               for mode, results in runs.items()}
    report = {"command": f"python benchmarks/local_tls_cost.py --rounds {args.rounds} --tasks {args.tasks} "
                         f"--arrays {args.arrays} --megabytes {args.megabytes}",
              "workers": 2, "cpus": os.cpu_count(), "load_average_1min": [load_before, os.getloadavg()[0]],
              "medians": medians, "runs": runs}
    print(json.dumps(medians, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

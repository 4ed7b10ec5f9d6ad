"""SLURM against LocalCluster, measured in one run: job start latency, dispatch overhead, HF parallel efficiency.

Starts a single-node SLURM (tests/local_slurm.py; needs slurm-wlm, munge and root) unless
``SLURM_CONF`` points at one, then, with 2 single-core workers on each backend:

* job start latency: seconds from ``mfsbi.runtime.slurm.slurm_cluster`` asking for a job to its
  worker joining the scheduler (the worker preload imports torch, sbi, NEURON and brian2), N times;
* dispatch overhead: wall seconds per task of M no-op tasks through ``DaskExecutor.map_unordered``;
* pyramidal HF parallel efficiency: K batches of B pyramidal-cell HF simulations (NEURON), serial
  seconds (the sum of the batches' own durations) / (2 workers × wall seconds).

    python benchmarks/slurm_overheads.py --out docs/slurm-overheads.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLUSTER_FILE = {"jobqueue": {"slurm": {"memory": "2GiB", "walltime": "00:30:00"}},
                "mfsbi": {"slurm": {"minimum-jobs": 2, "maximum-jobs": 2, "start-timeout": 300}}}


def _noop(i: int) -> int:
    return i


def _pyramidal_batch(seed: int) -> float:
    """One batch of pyramidal HF simulations on a worker; returns its own duration."""
    from mfsbi.simulators import get_task

    task = get_task("pyramidal")
    theta = np.asarray(task.prior.sample((BATCH,)).numpy(), dtype=float)
    started = time.perf_counter()
    task.high_fidelity(theta, seed)
    return time.perf_counter() - started


BATCH = 4


def measure(executor, tasks: int, batches: int) -> dict:
    list(executor.map_unordered(_noop, list(range(20))))  # warm: connections, function pickling
    started = time.perf_counter()
    list(executor.map_unordered(_noop, list(range(tasks))))
    dispatch = (time.perf_counter() - started) / tasks
    list(executor.map_unordered(_pyramidal_batch, [10_000, 10_001]))  # NEURON loaded on both workers
    started = time.perf_counter()
    own = list(executor.map_unordered(_pyramidal_batch, list(range(batches))))
    wall = time.perf_counter() - started
    return {"dispatch_ms_per_task": round(1e3 * dispatch, 2), "hf_batches": batches, "hf_per_batch": BATCH,
            "hf_wall_s": round(wall, 2), "hf_serial_s": round(sum(own), 2),
            "parallel_efficiency": round(sum(own) / (2 * wall), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=3, help="job start latencies to measure")
    parser.add_argument("--tasks", type=int, default=200, help="no-op tasks for the dispatch overhead")
    parser.add_argument("--batches", type=int, default=16, help="pyramidal HF batches")
    parser.add_argument("--out", type=Path, default=Path("docs/slurm-overheads.json"))
    args = parser.parse_args()

    from distributed import Client

    from mfsbi.runtime.cluster import dask_client
    from mfsbi.runtime.executor import DaskExecutor
    from mfsbi.runtime.slurm import load_slurm_settings, slurm_cluster

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from local_slurm import LocalSlurm

    result: dict = {"machine": f"{os.cpu_count()} cores", "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory() as tmp:
        slurm = None
        if not os.environ.get("SLURM_CONF"):
            slurm = LocalSlurm(Path(tmp) / "slurm").start()
            os.environ.update(slurm.environ)
        os.environ.setdefault("MFSBI_HOME", str(Path(tmp) / "home"))
        try:
            path = Path(tmp) / "cluster.yaml"
            path.write_text(json.dumps(CLUSTER_FILE))
            single = json.loads(json.dumps(CLUSTER_FILE))
            single["mfsbi"]["slurm"].update({"minimum-jobs": 1, "maximum-jobs": 1})
            one = Path(tmp) / "one.yaml"
            one.write_text(json.dumps(single))
            latencies = []
            for _ in range(args.starts):
                started = time.perf_counter()
                with slurm_cluster(load_slurm_settings(str(one))):
                    latencies.append(round(time.perf_counter() - started, 2))
            result["job_start_s"] = latencies
            print(f"job start latency: {latencies} s")
            with slurm_cluster(load_slurm_settings(str(path))) as cluster, Client(cluster) as client:
                client.wait_for_workers(2, timeout=300)
                result["slurm"] = measure(DaskExecutor(client), args.tasks, args.batches)
            print(f"SLURM (2 jobs):        {result['slurm']}")
            with dask_client(None, 2) as client:
                result["local"] = measure(DaskExecutor(client), args.tasks, args.batches)
            print(f"LocalCluster (2 proc): {result['local']}")
        finally:
            if slurm is not None:
                slurm.stop()
    result["ratios_slurm_over_local"] = {
        "dispatch": round(result["slurm"]["dispatch_ms_per_task"] / result["local"]["dispatch_ms_per_task"], 2),
        "hf_wall": round(result["slurm"]["hf_wall_s"] / result["local"]["hf_wall_s"], 3)}
    print(f"ratios SLURM / local: {result['ratios_slurm_over_local']}")
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

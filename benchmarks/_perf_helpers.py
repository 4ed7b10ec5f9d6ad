"""Helpers of benchmarks/performance.py: clusters, one pipeline run, the bare-process limit, timings.

The pipeline is driven exactly as the flows drive it (``ensure_rows`` then ``run_pending`` on a
``DaskExecutor`` over ``mfsbi.runtime.cluster.dask_client``); only timers and Dask's task stream are
added around it, so the numbers include everything a run pays from the moment the cluster is up.
"""

from __future__ import annotations

import contextlib
import cProfile
import hashlib
import inspect
import os
import platform
import pstats
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from _runner import ROOT, code_state


def _spin(_: int) -> float:
    started, total = time.perf_counter(), 0
    for i in range(5_000_000):
        total += i
    return time.perf_counter() - started


def machine() -> dict:
    """The machine, and how well its cores scale: a pure-Python loop in 1 and in N processes at once."""
    n = os.cpu_count() or 1
    with ProcessPoolExecutor(n, mp_context=get_context("spawn")) as pool:
        list(pool.map(_spin, range(n)))  # start the processes
        one = min(pool.submit(_spin, 0).result() for _ in range(3))
        many = float(np.median(list(pool.map(_spin, range(n)))))
    return {"cpu_count": n, "platform": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version(), "load_average_at_start": list(os.getloadavg()),
            # 1.0: N processes run as fast as one alone (N usable cores); 1/N: they share one core
            "cpu_scaling_1_vs_n_processes": round(one / many, 3)}


def versions() -> dict:
    import dask
    import torch
    import zarr

    import mfsbi

    return {"torch": torch.__version__, "dask": dask.__version__, "zarr": zarr.__version__,
            "numpy": np.__version__, "mfsbi": mfsbi.__version__, **code_state()}


@contextlib.contextmanager
def environment(**values: str):
    """Sets environment variables (inherited by workers spawned inside) and restores them after."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def cluster(n_workers: int | None = None, **env: str):
    """A local cluster as the flows start it; yields ``(client, startup seconds)``. Closed on exit."""
    from mfsbi.runtime.cluster import dask_client

    n = n_workers or os.cpu_count() or 1
    saved = dict(os.environ)
    try:
        with environment(**env):
            started = time.perf_counter()
            with dask_client(None, n) as client:
                client.wait_for_workers(n)
                yield client, time.perf_counter() - started
    finally:
        # The nanny leaves its pre-spawn-environ (OMP_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_, ...) in
        # this process's environment: restore it, so that no measurement inherits another's settings.
        os.environ.clear()
        os.environ.update(saved)
    # LocalCluster.__exit__ waits for its processes: the next measurement starts on idle cores.


def worker_environment() -> dict[str, str]:
    """What Dask's nanny sets in every worker's environment (``distributed.nanny.pre-spawn-environ``)."""
    import dask
    import distributed  # noqa: F401 -- registers distributed's config defaults

    return {k: str(v) for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()}


class _Profiled:
    """Wraps a worker function in cProfile; stats go to ``folder/<pid>-<uuid>.prof``."""

    def __init__(self, fn, folder: str) -> None:
        self.fn, self.folder = fn, folder

    def __call__(self, item):
        profile = cProfile.Profile()
        try:
            return profile.runcall(self.fn, item)
        finally:
            profile.dump_stats(f"{self.folder}/{os.getpid()}-{uuid.uuid4().hex}.prof")


def profiled_executor(client, folder: Path):
    """A DaskExecutor whose jobs are profiled on the workers (only with --profile: it slows them)."""
    from mfsbi.runtime.executor import DaskExecutor

    class ProfilingExecutor(DaskExecutor):
        def map_unordered(self, fn, items, resources=None):
            return super().map_unordered(_Profiled(fn, str(folder)), items, resources)

    folder.mkdir(parents=True, exist_ok=True)
    return ProfilingExecutor(client)


def top_functions(stats_files: list[str], limit: int = 15) -> list[dict]:
    """The functions with the most cumulative time over a set of cProfile dumps."""
    if not stats_files:
        return []
    stats = pstats.Stats(*stats_files)
    rows = []
    for (file, line, name), (_, calls, own, cumulative, _) in stats.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}:{name}", "calls": calls,
                     "own_s": round(own, 4), "cumulative_s": round(cumulative, 4)})
    return sorted(rows, key=lambda r: -r["cumulative_s"])[:limit]


def task_stream_breakdown(records: list[dict], n_workers: int, t0: float, t_reserved: float, t1: float,
                          simulator_s: float) -> dict:
    """Where the time of ``n_workers × wall`` went (wall clock; Dask's task stream, the store's elapsed)."""
    compute = transfer = 0.0
    first = last = None
    for record in records:
        for part in record.get("startstops", ()):
            if part["action"] == "compute":
                compute += part["stop"] - part["start"]
                first = part["start"] if first is None else min(first, part["start"])
                last = part["stop"] if last is None else max(last, part["stop"])
            else:
                transfer += part["stop"] - part["start"]
    first, last = first or t1, last or t1
    return {"tasks": len(records), "reserve_s": round(t_reserved - t0, 3),
            # run_pending's reads of the table (pending rows, θ, batches) and Dask's dispatch of the first job
            "plan_until_first_task_s": round(first - t_reserved, 3),
            "after_last_task_s": round(t1 - last, 3), "task_compute_s": round(compute, 3),
            "in_simulator_s": round(simulator_s, 3),
            # job unpickling, task import, store open, is_pending, write_batch: compute outside the simulator
            "in_task_not_simulator_s": round(compute - simulator_s, 3),
            "transfer_s": round(transfer, 3), "worker_idle_s": round(n_workers * (t1 - t0) - compute, 3)}


def pipeline(client, spec: str, fidelity: str, num_rows: int, chunk_size: int, folder: Path,
             seed: int = 0, profile: Path | None = None) -> dict:
    """One simulation step as the flows run it, timed: ``ensure_rows`` + ``run_pending`` into a new store."""
    from distributed import get_task_stream

    from mfsbi.runtime.executor import DaskExecutor
    from mfsbi.runtime.simulation import ensure_rows, run_pending
    from mfsbi.simulators import get_task
    from mfsbi.storage import SimulationStore

    task = get_task(spec)
    store = SimulationStore(str(folder))
    executor = profiled_executor(client, profile / "workers") if profile else DaskExecutor(client)
    flow_profile = cProfile.Profile() if profile else None
    n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
    # As mfsbi.flows.run.Run.simulate_pending calls it: the task's documented cost sizes LF jobs.
    hints = ({"seconds_per_row": getattr(task, "cost_seconds", {}).get(fidelity)}
             if "seconds_per_row" in inspect.signature(run_pending).parameters else {})
    with get_task_stream(client) as stream:
        wall0, started = time.time(), time.perf_counter()
        if flow_profile:
            flow_profile.enable()
        table = ensure_rows(store, task, table=task.name, fidelity=fidelity, num_rows=num_rows,
                            chunk_size=chunk_size, seed=seed, config_hash="benchmark")
        wall_reserved, reserved = time.time(), time.perf_counter()
        report = run_pending(executor, store.url, spec, table, table=task.name, fidelity=fidelity, **hints)
        finished, wall1 = time.perf_counter(), time.time()
        if flow_profile:
            flow_profile.disable()
            flow_profile.dump_stats(str(profile / "flow.prof"))
    in_store = float(np.nansum(table._array("elapsed")[:]))
    wall = finished - started
    result = {
        "rows": num_rows, "chunk_size": chunk_size, "workers": n_workers, "run_pending_hints": hints,
        "simulated": report.simulated,
        "failed": report.failed, "reserve_s": round(reserved - started, 4), "run_pending_s": round(finished - reserved, 4),
        "wall_s": round(wall, 4), "sims_per_s": round(num_rows / wall, 2),
        "simulator_s_report": round(report.simulator_seconds, 4), "simulator_s_store": round(in_store, 4),
        "breakdown": task_stream_breakdown(stream.data, n_workers, wall0, wall_reserved, wall1, in_store),
    }
    if profile:
        result["profile_flow_top"] = top_functions([str(profile / "flow.prof")])
        result["profile_workers_top"] = top_functions([str(p) for p in (profile / "workers").glob("*.prof")])
    return result


def stored_batches(folder: Path, table: str, fidelity: str) -> tuple[np.ndarray, list[tuple[int, int, int]], list[str]]:
    """θ, the batches ``(start, stop, seed)`` (rows of one chunk sharing a seed) and the digest of each batch's x."""
    from mfsbi.storage import SimulationStore

    sim = SimulationStore(str(folder), mode="r").table(table, fidelity)
    theta, seeds, x = sim._array("theta")[:], sim._array("seed")[:], sim._array("x")
    chunks = np.arange(len(seeds)) // sim.chunk_size
    cuts = np.flatnonzero((np.diff(chunks) != 0) | (np.diff(seeds) != 0)) + 1
    batches = [(int(a), int(b), int(seeds[a])) for a, b in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(seeds)])))]
    return theta, batches, [digest(x[a:b]) for a, b, _ in batches]


def digest(x: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(x, dtype=np.float64).tobytes()).hexdigest()


_BARE: dict = {}


def _bare_init(spec: str, fidelity: str) -> None:
    from mfsbi.simulators import get_task

    task = get_task(spec)
    _BARE["simulator"] = task.simulator(fidelity)
    _BARE["simulator"](task.sample_prior(1, seed=0), 0)  # warm: imports done, model built (NEURON cell)


def _bare_batch(job: tuple[np.ndarray, int]) -> tuple[str, float]:
    started = time.perf_counter()
    output = _BARE["simulator"](*job)
    x = np.asarray(output[0] if isinstance(output, tuple) else output, dtype=np.float64)
    if isinstance(output, tuple):  # rows with a reason are stored NaN, as work._simulate does
        x[[i for i, r in enumerate(output[1]) if r]] = np.nan
    return digest(x), time.perf_counter() - started


def _ready(_: int) -> int:
    time.sleep(0.2)  # keeps this process busy so that every process of the pool gets one
    return os.getpid()


def bare(spec: str, fidelity: str, theta: np.ndarray, batches: list[tuple[int, int, int]], processes: int,
         expected: list[str] | None = None, env: dict | None = None) -> dict:
    """The limit: the simulator called directly in ``processes`` warm processes, same θ and batches, no storage.

    The processes get the same environment as Dask's workers (``worker_environment()``: it makes NEURON
    ~10 % faster in a main thread here) plus ``env``; the simulator runs in their main thread.
    """
    started = time.perf_counter()
    with environment(**worker_environment(), **(env or {})), ProcessPoolExecutor(
            processes, mp_context=get_context("spawn"), initializer=_bare_init, initargs=(spec, fidelity)) as pool:
        pids = set(pool.map(_ready, range(4 * processes)))
        ready = time.perf_counter()
        out = list(pool.map(_bare_batch, [(theta[a:b], s) for a, b, s in batches], chunksize=1))
        finished = time.perf_counter()
    return {"processes": processes, "warm_processes": len(pids), "pool_startup_s": round(ready - started, 3),
            "wall_s": round(finished - ready, 4), "sims_per_s": round(len(theta) / (finished - ready), 2),
            "simulator_s": round(sum(s for _, s in out), 4),
            "same_x_as_store": None if expected is None else [d for d, _ in out] == expected}

"""The zarr measurement of benchmarks/performance.py: the store's writes against ``numpy.save``.

Each repetition writes the same θ and x three ways, one after the other, each into a new folder
after ``os.sync()`` and removed after (the order rotates between repetitions):

  store      what a run does: ``require_table``, ``reserve(θ)``, then ``write_batches`` of
             ``job_chunks`` chunks at a time (as a worker stores one job)
  numpy      ``np.save(theta.npy)`` and ``np.save(x.npy)``
  files      x as one plain file per chunk (``os.write``), no zarr: what any store of one file per
             chunk pays on this file system (a diagnostic, not a target)

Guest memory is touched first (``warm_memory``): on this VM the first write into never-used memory
runs at ~0.5 GB/s and a rewrite at ~9 GB/s (measured), so whichever writer came first would lose.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np


def warm_memory(megabytes: int) -> float:
    """Touches ``megabytes`` of memory and frees it; returns the seconds it took."""
    started = time.perf_counter()
    block = np.ones(megabytes * 2**20 // 8)
    block[::512] = 2.0
    del block
    return time.perf_counter() - started


def _fsync_tree(folder: Path) -> None:
    for directory, _, files in os.walk(folder):
        for path in [os.path.join(directory, f) for f in files] + [directory]:
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)


def _store(folder: Path, theta: np.ndarray, x: np.ndarray, chunk: int, job_chunks: int) -> dict:
    from mfsbi.storage import BatchOutput, SimulationStore

    n = len(theta)
    started = time.perf_counter()
    table = SimulationStore(str(folder)).require_table(
        "bench", "lf", theta_dim=theta.shape[1], x_dim=x.shape[1], chunk_size=chunk,
        provenance={"simulator": "bench", "simulator_version": "1", "config_hash": "bench"})
    created = time.perf_counter()
    table.reserve(theta, np.arange(n) // chunk)
    reserved = time.perf_counter()
    step = chunk * job_chunks
    for first in range(0, n, step):
        table.write_batches([BatchOutput(s, min(n, s + chunk), x[s: s + chunk])
                             for s in range(first, min(n, first + step), chunk)])
    written = time.perf_counter()
    return {"create_s": created - started, "reserve_s": reserved - created, "write_s": written - reserved}


def _numpy(folder: Path, theta: np.ndarray, x: np.ndarray) -> None:
    folder.mkdir()
    np.save(folder / "theta.npy", theta)
    np.save(folder / "x.npy", x)


def _files(folder: Path, x: np.ndarray, chunk: int) -> None:
    folder.mkdir()
    for i, start in enumerate(range(0, len(x), chunk)):
        fd = os.open(folder / f"c{i}", os.O_WRONLY | os.O_CREAT)
        os.write(fd, np.ascontiguousarray(x[start: start + chunk]).data)
        os.close(fd)


def measure(tmp: Path, n: int, k: int, chunk: int, job_chunks: int, reps: int, fsync: bool) -> dict:
    """Times the three writers ``reps`` times; returns raw seconds and medians."""
    rng = np.random.default_rng(0)
    theta, x = rng.random((n, 2)), rng.standard_normal((n, k))
    times: dict[str, list[float]] = {"store": [], "numpy": [], "files": []}
    parts: list[dict] = []
    writers = {
        "store": lambda f: parts.append(_store(f, theta, x, chunk, job_chunks)),
        "numpy": lambda f: _numpy(f, theta, x),
        "files": lambda f: _files(f, x, chunk),
    }
    names = list(writers)
    for rep in range(reps):
        for name in names[rep % 3:] + names[: rep % 3]:
            folder = tmp / f"zarr-{name}-{rep}"
            os.sync()
            started = time.perf_counter()
            writers[name](folder)
            if fsync:
                _fsync_tree(folder)
            times[name].append(time.perf_counter() - started)
            shutil.rmtree(folder)
    median = {name: float(np.median(values)) for name, values in times.items()}
    return {
        "megabytes": (theta.nbytes + x.nbytes) / 1e6, "x_megabytes": x.nbytes / 1e6,
        "seconds": {name: [round(t, 4) for t in values] for name, values in times.items()},
        "median_s": {name: round(t, 4) for name, t in median.items()},
        "store_parts_median_s": {key: round(float(np.median([p[key] for p in parts])), 4) for key in parts[0]},
    }

"""Planning rows in the store and running the pending ones on an executor.

Rows are *reserved* first (parameters, seeds, status pending) by the flow process, the store's only
appender, and simulated afterwards by workers that each write whole batches inside one chunk. A rerun
therefore simulates exactly the rows still pending: nothing stored is simulated twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mfsbi import __version__
from mfsbi.runtime.batches import BatchJob, simulate_batch
from mfsbi.runtime.executor import BatchExecutor
from mfsbi.runtime.seeds import derive_seed
from mfsbi.simulators import Task

__all__ = [
    "SimulationFailureError", "SimulationReport", "chunks_per_job", "ensure_rows", "provenance", "reserve_twins",
    "run_pending", "theta_and_seeds",
]

ProgressCallback = Callable[[int, int], None]


class SimulationFailureError(RuntimeError):
    """Too many simulations failed: the run stops instead of burning the budget."""


@dataclass(frozen=True)
class SimulationReport:
    table: str
    fidelity: str
    simulated: int
    failed: int
    simulator_seconds: float
    stored_ok: int


def provenance(task: Task, fidelity: str, config_hash: str) -> dict[str, str]:
    simulator = task.simulator(fidelity)
    return {
        "simulator": f"{type(simulator).__module__}.{type(simulator).__qualname__}",
        "simulator_version": task.version,
        "config_hash": config_hash,
        "prior": repr(task.prior),
        "mfsbi_version": __version__,
    }


def ensure_rows(store, task: Task, *, table: str, fidelity: str, num_rows: int, chunk_size: int,
                seed: int, config_hash: str, budget: int | None = None):
    """Opens (or creates) a table and reserves rows until it holds ``num_rows``.

    The parameters of chunk ``c`` are drawn with a seed derived from ``(seed, table, c)`` and its
    simulator seed from ``(seed, table, c, first row)``: a table grown later in several steps holds
    the same rows as one created at once.

    Arguments:
        store: the :class:`~mfsbi.storage.SimulationStore`.
        task: the task whose prior draws the parameters.
        table: the table's name in the store (the task name, or ``<task>-test``).
        fidelity: ``"lf"`` or ``"hf"``.
        num_rows: how many rows the table must hold.
        chunk_size: rows per chunk (fixed when the table is created).
        seed: the seed the rows derive from.
        config_hash: provenance; a table made with other settings is refused.
        budget: the HF budget to record (raised if the table holds a smaller one).

    Returns:
        The table.
    """
    sim_table = store.require_table(
        table, fidelity, theta_dim=task.theta_dim, x_dim=task.x_dim, chunk_size=chunk_size,
        provenance=provenance(task, fidelity, config_hash), parameter_names=task.parameter_names,
    )
    if budget is not None:
        current = sim_table.budget()
        if current is None or current.total < budget:
            sim_table.set_budget(budget)
    have = sim_table.num_rows
    if have >= num_rows:
        return sim_table
    thetas, seeds = [], []
    for chunk in range(have // chunk_size, -(-num_rows // chunk_size)):
        first = max(have, chunk * chunk_size)
        last = min(num_rows, (chunk + 1) * chunk_size)
        chunk_theta = task.sample_prior(chunk_size, derive_seed(seed, f"theta/{table}/{fidelity}", chunk))
        thetas.append(chunk_theta[first - chunk * chunk_size: last - chunk * chunk_size])
        seeds.append(np.full(last - first, derive_seed(seed, f"sim/{table}/{fidelity}", chunk, first), dtype=np.int64))
    sim_table.reserve(np.concatenate(thetas), np.concatenate(seeds), round=0)
    return sim_table


def reserve_twins(store, task: Task, *, source_table: str, source_fidelity: str, table: str, fidelity: str,
                  config_hash: str):
    """Mirrors a table at another fidelity: row ``i`` gets the source's θ and seed of row ``i``.

    Every row the source has reserved is mirrored, in one reservation, into a table with the
    source's chunk size: the twin's pending batches (runs of one seed within one chunk) are then the
    source's batches, so a simulator whose noise depends on the batch seed and the row's place in
    its batch draws the same noise at both fidelities (``Task.coupled``). Twins are simulated by
    :func:`run_pending` like any table.

    Arguments:
        store: the :class:`~mfsbi.storage.SimulationStore`.
        task: the task.
        source_table, source_fidelity: the table to mirror.
        table, fidelity: the twin table (created if missing) and the fidelity it simulates.
        config_hash: provenance; a twin table made with other settings is refused.

    Returns:
        The twin table.
    """
    source = store.table(source_table, source_fidelity)
    twin = store.require_table(
        table, fidelity, theta_dim=task.theta_dim, x_dim=task.x_dim, chunk_size=source.chunk_size,
        provenance=provenance(task, fidelity, config_hash), parameter_names=task.parameter_names,
    )
    have, want = twin.num_rows, source.num_rows
    theirs, seeds = theta_and_seeds(source, want)
    if have > want or not np.array_equal(theta_and_seeds(twin, have)[0], theirs[:have]):
        raise RuntimeError(f"table {table!r}/{fidelity} does not mirror {source_table!r}/{source_fidelity}: "
                           "the store was changed by hand; use another --store")
    if want > have:
        twin.reserve(theirs[have:], seeds[have:], round=0)
    return twin


def theta_and_seeds(table, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """θ and seeds of rows ``[0, stop)``, read chunk by chunk (the reader's unit)."""
    parts = [table.theta_rows(start, min(start + table.chunk_size, stop)) for start in range(0, stop, table.chunk_size)]
    theta = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, table.theta_dim))
    seeds = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
    return np.asarray(theta, dtype=np.float64), np.asarray(seeds, dtype=np.int64)


def _by_chunk(batches, chunk_size: int) -> list[list]:
    """Groups batches (in row order) by chunk: a chunk is never split between two jobs (no two writers)."""
    groups: dict[int, list] = {}
    for batch in batches:
        groups.setdefault(batch.rows[0] // chunk_size, []).append(batch)
    return [groups[chunk] for chunk in sorted(groups)]


# A job costs milliseconds to dispatch through Dask and to open the store and write its chunks: it
# should simulate for about this long, so that the orchestration adds ~1% (docs/performance.md).
JOB_SECONDS = 2.0
# A job holds its chunks' x in memory on the worker and in the scheduler's result.
MAX_JOB_BYTES = 256 * 2**20
# How much longer than with one-chunk jobs the busiest worker may be kept busy by larger jobs.
TAIL_SLACK = 0.05


def chunks_per_job(seconds_per_row: float | None, chunk_size: int, num_chunks: int, workers: int,
                   x_dim: int) -> int:
    """How many whole chunks one job simulates (adaptive batching).

    Enough chunks for about :data:`JOB_SECONDS` of simulation; never so many that fewer than two jobs
    per worker remain (the work must spread over every worker, and a slow worker must not hold the
    tail), nor that the last jobs leave workers idle (the busiest worker gets at most
    :data:`TAIL_SLACK` more chunks than with one-chunk jobs); never more than :data:`MAX_JOB_BYTES`
    of x.

    Arguments:
        seconds_per_row: measured simulator seconds per row (None: unknown, one chunk per job).
        chunk_size: rows per chunk; num_chunks: chunks to simulate; workers: workers available.
        x_dim: the task's output size.

    Returns:
        Chunks per job, at least 1.
    """
    if not seconds_per_row or seconds_per_row <= 0 or num_chunks <= 1:
        return 1
    workers = max(workers, 1)
    wanted = math.ceil(JOB_SECONDS / (seconds_per_row * chunk_size))
    spread = math.ceil(num_chunks / (2 * workers))
    memory = MAX_JOB_BYTES // (8 * x_dim * chunk_size)
    # The busiest worker's chunks, at most TAIL_SLACK above the ideal: 10 chunks in 5 jobs of 2 on
    # 2 workers leave one worker a job alone at the end (pyramidal HF: efficiency 0.83, measured).
    ideal = math.ceil(num_chunks / workers)
    for size in range(max(1, min(wanted, spread, memory)), 1, -1):
        if math.ceil(math.ceil(num_chunks / size) / workers) * size <= ideal * (1 + TAIL_SLACK):
            return size
    return 1


def run_pending(executor: BatchExecutor, store_url: str, task_spec: str, sim_table, *, table: str,
                fidelity: str, max_failure_fraction: float = 1.0, timeout: float | None = None,
                seconds_per_row: float | None = None, progress: ProgressCallback | None = None) -> SimulationReport:
    """Simulates every pending row of a table, in jobs of whole chunks sized from the measured cost.

    Jobs are sized by :func:`chunks_per_job` from the cost per row: the median of the rows this
    table already stores, else ``seconds_per_row``, else a first wave of one-chunk jobs (one per
    worker).

    Arguments:
        executor: where the batches run.
        store_url: the store, reopened by URL on the workers.
        task_spec: the task, resolved again on the workers.
        sim_table: the table (its pending batches are the work).
        table: the table's name; fidelity: ``"lf"`` or ``"hf"``.
        max_failure_fraction: stop once more than this fraction of simulated rows failed.
        timeout: seconds one simulation may take (each batch then runs in its own process).
        seconds_per_row: a prior estimate of the simulator's cost (e.g. ``Task.cost_seconds``).
        progress: called with ``(rows done, rows to do)``.

    Returns:
        What was simulated now.
    """
    # One status read; θ but not x (GaussianBlob's pending x would be GBs of NaN).
    pending, pending_theta = sim_table.pending_work()
    groups = _by_chunk(pending, sim_table.chunk_size)
    # Where each batch's θ starts in pending_theta (the batches cover the pending rows in order).
    offsets = dict(zip((b.rows[0] for b in pending), np.cumsum([0] + [len(b) for b in pending[:-1]])))

    def job(chunk_groups: list[list]) -> BatchJob:
        batches = [b for group in chunk_groups for b in group]
        first = int(offsets[batches[0].rows[0]])
        rows = sum(b.rows[1] - b.rows[0] for b in batches)
        return BatchJob(store_url, task_spec, table, fidelity, tuple((b.rows[0], b.rows[1], b.seed) for b in batches),
                        pending_theta[first: first + rows], timeout)

    total = sum(b.rows[1] - b.rows[0] for group in groups for b in group)
    tally = {"done": 0, "simulated": 0, "failed": 0, "seconds": 0.0, "reason": None}

    def run(jobs: list[BatchJob]) -> None:
        for result in executor.map_unordered(simulate_batch, jobs):
            tally["done"] += result.rows + result.skipped
            tally["simulated"] += result.rows
            tally["failed"] += result.failed
            tally["seconds"] += result.seconds
            tally["reason"] = tally["reason"] or result.first_reason
            if progress:
                progress(tally["done"], total)
            failed, simulated = tally["failed"], tally["simulated"]
            # Judge the rate only after enough rows: one early failure must not stop a large run.
            if failed and simulated >= min(total, 20) and failed / simulated > max_failure_fraction:
                raise SimulationFailureError(
                    f"{failed} of {simulated} {fidelity.upper()} simulations of {table!r} failed "
                    f"(limit {max_failure_fraction:.0%}); first reason: {tally['reason']}"
                )

    if progress:
        progress(0, total)
    workers = executor.num_workers()
    # HF jobs are sized like LF ones: an expensive HF simulation fills a job with one chunk, and a
    # failing simulator is still stopped after about JOB_SECONDS of work per worker.
    cost = sim_table.seconds_per_row() or seconds_per_row
    if cost is None and len(groups) > workers:
        run([job([group]) for group in groups[:workers]])  # the first wave measures the cost
        groups = groups[workers:]
        # A failing simulator's speed says nothing about a working one's.
        cost = tally["seconds"] / tally["simulated"] if tally["simulated"] and not tally["failed"] else None
    size = chunks_per_job(cost, sim_table.chunk_size, len(groups), workers, sim_table.x_dim)
    run([job(groups[i: i + size]) for i in range(0, len(groups), size)])
    return SimulationReport(table, fidelity, tally["simulated"], tally["failed"], tally["seconds"],
                            sim_table.counts()["ok"])

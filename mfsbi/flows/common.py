"""Steps shared by the amortised and the sequential flows."""

from __future__ import annotations

import dataclasses

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NONE as NO_CACHE

from mfsbi.flows import progress
from mfsbi.flows.config import RunConfig
from mfsbi.flows.executor import BatchExecutor, DaskExecutor
from mfsbi.flows.seeds import derive_seed
from mfsbi.flows.simulation import SimulationReport, ensure_rows, run_pending
from mfsbi.flows.work import TrainJob, TrainResult, train_estimator
from mfsbi.simulators import Task, get_task
from mfsbi.storage import SimulationStore

__all__ = ["finish_run", "training_resources", "estimator_dict", "pretrained_on_lf", "resolve_device", "simulate", "test_pairs", "train", "training_dict"]

# Caching is off on every task: the store is the cache. Rows already stored are never simulated
# again whatever Prefect remembers, and Prefect's own caching mis-handles killed Dask workers.


def resolve_device(device: str, executor: BatchExecutor) -> str:
    """``auto`` → ``cuda`` when a worker of the executor has a GPU, else ``cpu`` (and says so)."""
    if device != "auto":
        return device
    if executor.gpu_workers():
        return "cuda"
    get_run_logger().info("device auto: no GPU worker found, training on CPU")
    return "cpu"


def training_resources(device: str, executor: BatchExecutor) -> dict[str, float] | None:
    """Dask resources of a training job: CUDA training goes to a worker advertising ``GPU``."""
    if device == "cuda" and isinstance(executor, DaskExecutor) and executor.gpu_workers():
        return {"GPU": 1}
    return None


def estimator_dict(task_obj: Task) -> dict:
    """The paper's estimator, with the task's embedding (a CNN for images, z-scored as one block)."""
    from mfsbi.inference import EstimatorConfig

    if task_obj.embedding:
        return EstimatorConfig(embedding=task_obj.embedding, x_shape=task_obj.x_shape,
                               z_score_x="structured").to_dict()
    return EstimatorConfig().to_dict()


def training_dict(config: RunConfig, learning_rate: float, seed: int) -> dict:
    from mfsbi.inference import TrainingConfig

    return TrainingConfig(learning_rate=learning_rate, max_num_epochs=config.max_num_epochs, seed=seed).to_dict()


@task(name="simulate", cache_policy=NO_CACHE, task_run_name="simulate {fidelity} ×{num_rows} ({table})")
def simulate(executor: BatchExecutor, store: SimulationStore, task_obj: Task, config: RunConfig, *,
             table: str, fidelity: str, num_rows: int, chunk_size: int, seed: int,
             budget: int | None) -> SimulationReport:
    """Reserves rows drawn from the prior until the table holds ``num_rows``, then simulates the pending ones."""
    sim_table = ensure_rows(
        store, task_obj, table=table, fidelity=fidelity, num_rows=num_rows, chunk_size=chunk_size,
        seed=seed, config_hash=config.simulation_hash(fidelity, chunk_size, task_obj.version, seed),
        budget=budget,
    )
    return simulate_pending(executor, store, config, sim_table, table=table, fidelity=fidelity)


def simulate_pending(executor: BatchExecutor, store: SimulationStore, config: RunConfig, sim_table, *,
                     table: str, fidelity: str) -> SimulationReport:
    step = f"simulate {fidelity.upper()} ({table})"
    report = run_pending(
        executor, store.url, config.task, sim_table, table=table, fidelity=fidelity,
        max_failure_fraction=config.max_failure_fraction, timeout=config.simulation_timeout,
        seconds_per_row=get_task(config.task).cost_seconds.get(fidelity),
        progress=lambda done, total: progress.report(step, done, total),
    )
    get_run_logger().info("%s/%s: simulated %d now (%d failed), %d ok in the store", table, fidelity,
                          report.simulated, report.failed, report.stored_ok)
    return report


@task(name="train", cache_policy=NO_CACHE, task_run_name="{label}")
def train(executor: BatchExecutor, jobs: list[TrainJob], label: str) -> list[TrainResult]:
    """Trains one estimator per job (ensemble members in parallel across workers), in job order."""
    progress.report(label, 0, len(jobs))
    indexed = [(i, job) for i, job in enumerate(jobs)]
    results: dict[int, TrainResult] = {}
    resources = training_resources(jobs[0].device, executor) if jobs else None
    for done, (i, result) in enumerate(executor.map_unordered(_train_indexed, indexed, resources), start=1):
        results[i] = result
        progress.report(label, done, len(jobs))
    for result in results.values():
        get_run_logger().info("%s: %d simulations, %d epochs, %.1f s on %s (worker %s)", label,
                              result.num_simulations, result.epochs, result.seconds, result.device, result.worker)
    return [results[i] for i in range(len(jobs))]


def _train_indexed(item: tuple[int, TrainJob]) -> tuple[int, TrainResult]:
    return item[0], train_estimator(item[1])


def pretrained_on_lf(executor: BatchExecutor, store: SimulationStore, task_obj: Task, config: RunConfig,
                     device: str) -> tuple[bytes, dict]:
    """The LF-pretrained estimator: simulate the LF table, pretrain, keep the checkpoint in the store.

    The checkpoint is shared by every method and rerun with the same task, LF budget and seed.
    """
    lf = simulate(executor, store, task_obj, config, table=task_obj.name, fidelity="lf",
                  num_rows=config.lf_sims, chunk_size=config.chunk_rows("lf", task_obj), seed=config.seed, budget=None)
    name = f"{task_obj.name}/pretrained-lf{config.lf_sims}-seed{config.seed}.pt"
    info = {"lf": dataclasses.asdict(lf), "pretrained": f"artifacts/{name}"}
    try:
        return store.read_artifact(name), info
    except FileNotFoundError:
        pass
    (result,) = train(executor, [TrainJob(
        store.url, config.task, task_obj.name, "lf", config.lf_sims, estimator_dict(task_obj),
        training_dict(config, config.lf_learning_rate, derive_seed(config.seed, "pretrain")), None, device,
    )], label=f"pretrain on {config.lf_sims} LF")
    store.write_artifact(name, result.checkpoint)
    info["pretrain"] = result.record()
    return result.checkpoint, info


def test_pairs(executor: BatchExecutor, store: SimulationStore, task_obj: Task, config: RunConfig,
               num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out HF test pairs (fixed by ``test_seed``, shared by every run; not part of any budget)."""
    if num_rows <= 0:
        return np.zeros((0, task_obj.theta_dim)), np.zeros((0, task_obj.x_dim))
    table = f"{task_obj.name}-test"
    chunk = config.chunk_rows("hf", task_obj)
    # Whole chunks: a batch's random stream depends on its rows, so a half-filled chunk would give
    # other observations than a full one, and the held-out set would depend on its requested size.
    simulate(executor, store, task_obj, config, table=table, fidelity="hf", num_rows=-(-num_rows // chunk) * chunk,
             chunk_size=chunk, seed=config.test_seed, budget=None)
    sim_table = store.table(table, "hf")
    rows = sim_table.rows("ok")
    theta, x = sim_table.read("ok")
    keep = rows < num_rows
    return theta[keep], x[keep]


def finish_run(store: SimulationStore, task_obj: Task, config: RunConfig, summary: dict, started: float,
               samples: np.ndarray | None, truth: np.ndarray | None, where: str) -> None:
    """Saves a run's outputs in the store: samples, pair plot, ``summary.json``, and ``latest.json``.

    Arguments:
        summary: completed in place with the artifact locations, wall time and config.
        started: ``time.perf_counter()`` at the run's start.
        samples: posterior samples at the run's observation (``None``: no plot).
        truth: the true θ to mark in the plot, when known.
        where: what the samples condition on, for the plot's title.
    """
    import io
    import json
    import time
    from datetime import datetime, timezone

    from mfsbi.flows.evaluation import pair_plot_png

    prefix = f"{task_obj.name}/{config.run_name}"
    if samples is not None:
        if config.observation is not None or config.method not in ("npe", "mf-npe"):
            buffer = io.BytesIO()
            np.save(buffer, samples, allow_pickle=False)
            store.write_artifact(f"{prefix}/samples.npy", buffer.getvalue())
            summary["samples"] = f"artifacts/{prefix}/samples.npy"
        title = f"{task_obj.name} {config.run_name}: {where}"
        store.write_artifact(f"{prefix}/pairplot.png", pair_plot_png(samples, task_obj, truth, title))
        summary["pair_plot"] = f"artifacts/{prefix}/pairplot.png"
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    summary["finished_at"] = datetime.now(timezone.utc).isoformat()
    summary["config"] = config.model_dump()
    store.write_artifact(f"{prefix}/summary.json", json.dumps(summary, indent=2).encode())
    if "posterior" in summary and str(summary["posterior"]).endswith(".pt"):
        # `mfsbi sample` loads the latest run that saved an estimator.
        store.write_artifact("latest.json", json.dumps({"task": config.task, "run": prefix}).encode())

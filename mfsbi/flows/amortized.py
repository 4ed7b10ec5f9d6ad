"""The amortised flow: NPE and MF-NPE.

simulate LF → pretrain → simulate HF (the budget) → fine-tune (or train from scratch) → evaluate.
Prefect tasks are coarse and run in the flow process; the fan-out of simulations and the training
itself run as plain Dask tasks on the workers.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE as NO_CACHE

from mfsbi import __version__
from mfsbi.flows import progress
from mfsbi.flows.config import RunConfig
from mfsbi.flows.evaluation import Evaluation, evaluate_posterior, sample_posterior
from mfsbi.flows.executor import BatchExecutor, DaskExecutor
from mfsbi.flows.seeds import derive_seed
from mfsbi.flows.services import dask_client
from mfsbi.flows.common import (
    estimator_dict, finish_run, pretrained_on_lf, resolve_device, simulate, test_pairs, train, training_dict,
)
from mfsbi.flows.work import TrainJob, TrainResult
from mfsbi.simulators import Task, get_task
from mfsbi.storage import SimulationStore, StoreLock

__all__ = ["amortized_flow", "artifact_prefix", "run_amortized"]


def artifact_prefix(task: Task, config: RunConfig) -> str:
    """Where a run's files live inside the store's ``artifacts/``."""
    return f"{task.name}/{config.run_name}"


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(result: TrainResult, task_obj: Task, test_theta: np.ndarray, test_x: np.ndarray,
             config: RunConfig) -> Evaluation:
    from mfsbi.inference import estimator_from_bytes

    progress.report("evaluate", 0, 1)
    posterior = estimator_from_bytes(result.checkpoint, task_obj.prior).posterior()
    evaluation = evaluate_posterior(posterior, task_obj, test_theta, test_x,
                                    num_c2st=config.num_test_observations,
                                    num_samples=config.posterior_samples, seed=config.test_seed)
    progress.report("evaluate", 1, 1)
    return evaluation


def run_amortized(config: RunConfig, executor: BatchExecutor) -> dict:
    """The body of :func:`amortized_flow` on a given executor; returns the run summary."""
    started = time.perf_counter()
    task_obj = get_task(config.task)
    store = SimulationStore(config.store)
    device = resolve_device(config.device, executor)
    summary: dict = {"task": task_obj.name, "method": config.method, "run": config.run_name,
                     "seed": config.seed, "device": device, "mfsbi_version": __version__}

    test_theta, test_x = test_pairs(executor, store, task_obj, config,
                                    max(config.num_test_observations, config.num_nltp_pairs))
    pretrained: bytes | None = None
    if config.method == "mf-npe":
        pretrained, info = pretrained_on_lf(executor, store, task_obj, config, device)
        summary.update(info)

    hf = simulate(executor, store, task_obj, config, table=task_obj.name, fidelity="hf",
                  num_rows=config.hf_sims, chunk_size=config.chunk_rows("hf", task_obj), seed=config.seed, budget=config.hf_sims)
    summary["hf"] = dataclasses.asdict(hf)
    summary["hf_budget"] = dataclasses.asdict(store.table(task_obj.name, "hf").budget())
    label = f"fine-tune on {config.hf_sims} HF" if pretrained else f"train on {config.hf_sims} HF"
    (final,) = train(executor, [TrainJob(
        store.url, config.task, task_obj.name, "hf", config.hf_sims, estimator_dict(task_obj),
        training_dict(config, config.hf_learning_rate, derive_seed(config.seed, "train")), pretrained, device,
    )], label=label)
    summary["train"] = final.record()

    prefix = artifact_prefix(task_obj, config)
    store.write_artifact(f"{prefix}/posterior.pt", final.checkpoint)
    summary["posterior"] = f"artifacts/{prefix}/posterior.pt"

    evaluation = evaluate(final, task_obj, test_theta, test_x, config)
    summary["metrics"] = dataclasses.asdict(evaluation)

    samples, truth, where = _plot_samples(task_obj, config, final, test_theta, test_x)
    finish_run(store, task_obj, config, summary, started, samples, truth, where)
    _publish(summary, evaluation)
    return summary


def _plot_samples(task_obj, config, final, test_theta, test_x):
    """Posterior samples for the pair plot: at the given observation, else at held-out observation 0."""
    from mfsbi.inference import estimator_from_bytes

    if config.observation is not None:
        x_o, truth, where = np.asarray(config.observation, dtype=np.float64), None, "the given observation"
    elif len(test_x):
        x_o, truth, where = test_x[0], test_theta[0], "held-out observation 0 (true θ marked)"
    else:
        return None, None, ""
    posterior = estimator_from_bytes(final.checkpoint, task_obj.prior).posterior()
    return sample_posterior(posterior, x_o, config.posterior_samples, derive_seed(config.seed, "plot")), truth, where


def _publish(summary: dict, evaluation: Evaluation) -> None:
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in evaluation.as_rows()]
    lines += [
        f"| HF simulations stored ok | {summary['hf']['stored_ok']} |",
        f"| HF budget used / total | {summary['hf_budget']['reserved']} / {summary['hf_budget']['total']} |",
        f"| LF simulations stored ok | {summary.get('lf', {}).get('stored_ok', 0)} |",
        f"| training device (worker) | {summary['device']} ({summary['train']['worker']}) |",
        f"| posterior | `{summary['posterior']}` |",
        f"| pair plot | `{summary.get('pair_plot', '-')}` |",
    ]
    key = f"metrics-{summary['task']}-{summary['run']}".lower().replace("_", "-").replace(".", "-")
    create_markdown_artifact(key=key, markdown="\n".join(lines),
                             description=f"{summary['task']} {summary['run']}: metrics")


@flow(name="mfsbi-amortized",
      flow_run_name="{config.task} {config.method} lf={config.lf_sims} hf={config.hf_sims} seed={config.seed}")
def amortized_flow(config: RunConfig) -> dict:
    """NPE or MF-NPE on one task, with every simulation stored in the zarr store.

    Arguments:
        config: the validated run configuration (the CLI and the deployments use the same model).

    Returns:
        The run summary (metrics, counts, artifact locations).
    """
    with dask_client(config.dask_address, config.n_workers) as client:
        with StoreLock(config.store, owner=config.run_name):
            return run_amortized(config, DaskExecutor(client))

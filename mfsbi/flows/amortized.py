"""The amortised flow: NPE and MF-NPE.

simulate LF → pretrain → simulate HF (the budget) → fine-tune (or train from scratch) → evaluate.
Prefect tasks are coarse and run in the flow process; the fan-out of simulations and the training
itself run as plain Dask tasks on the workers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE as NO_CACHE

from mfsbi.flows.config import RunConfig
from mfsbi.flows.evaluation import evaluate_posterior, sample_posterior
from mfsbi.flows.run import Run
from mfsbi.flows.summary import Metrics, RunSummary
from mfsbi.runtime import progress
from mfsbi.runtime.cluster import dask_client
from mfsbi.runtime.executor import BatchExecutor, DaskExecutor
from mfsbi.runtime.training_jobs import TrainResult
from mfsbi.storage import StoreLock

__all__ = ["amortized_flow", "run_amortized"]


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(run: Run, result: TrainResult, test_theta: np.ndarray, test_x: np.ndarray) -> Metrics:
    from mfsbi.inference import estimator_from_bytes

    progress.report("evaluate", 0, 1)
    posterior = estimator_from_bytes(result.checkpoint, run.task.prior).posterior()
    metrics = evaluate_posterior(posterior, run.task, test_theta, test_x, num_c2st=run.config.num_test_observations,
                                 num_samples=run.config.posterior_samples, seed=run.config.test_seed)
    progress.report("evaluate", 1, 1)
    return metrics


def run_amortized(config: RunConfig, executor: BatchExecutor) -> RunSummary:
    """The body of :func:`amortized_flow` on a given executor; returns the run summary."""
    run = Run.start(config, executor)
    summary = run.new_summary()
    test_theta, test_x = run.test_pairs(max(config.num_test_observations, config.num_nltp_pairs))
    pretrained = run.pretrained_on_lf(summary) if run.method.uses_lf else None

    hf = run.simulate(table=run.hf_table, fidelity="hf", num_rows=config.hf_sims, seed=config.seed,
                      budget=config.hf_sims)
    summary.hf = dataclasses.asdict(hf)
    summary.hf_budget = dataclasses.asdict(run.store.table(run.hf_table, "hf").budget())
    label = f"fine-tune on {config.hf_sims} HF" if pretrained else f"train on {config.hf_sims} HF"
    (final,) = run.train([run.train_job(table=run.hf_table, fidelity="hf", limit=config.hf_sims,
                                        learning_rate=config.hf_learning_rate, seed=run.seed("train"),
                                        pretrained=pretrained)], label=label)
    summary.train = final.record()
    summary.posterior = run.write_artifact("posterior.pt", final.checkpoint)
    summary.metrics = evaluate(run, final, test_theta, test_x)

    samples, truth, where = _plot_samples(run, final, test_theta, test_x)
    run.finish(summary, samples, truth, where)
    _publish(summary)
    return summary


def _plot_samples(run: Run, final: TrainResult, test_theta: np.ndarray, test_x: np.ndarray):
    """Posterior samples for the pair plot: at the given observation, else at held-out observation 0."""
    from mfsbi.inference import estimator_from_bytes

    if run.config.observation is not None:
        x_o, truth, where = np.asarray(run.config.observation, dtype=np.float64), None, "the given observation"
    elif len(test_x):
        x_o, truth, where = test_x[0], test_theta[0], "held-out observation 0 (true θ marked)"
    else:
        return None, None, ""
    posterior = estimator_from_bytes(final.checkpoint, run.task.prior).posterior()
    return sample_posterior(posterior, x_o, run.config.posterior_samples, run.seed("plot")), truth, where


def _publish(summary: RunSummary) -> None:
    reserved, total = summary.hf_budget_used
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in summary.metrics.as_rows()]
    lines += [
        f"| HF simulations stored ok | {summary.hf_stored_ok} |",
        f"| HF budget used / total | {reserved} / {total} |",
        f"| LF simulations stored ok | {(summary.lf or {}).get('stored_ok', 0)} |",
        f"| training device (worker) | {summary.device} ({summary.train['worker']}) |",
        f"| posterior | `{summary.posterior}` |",
        f"| pair plot | `{summary.pair_plot or '-'}` |",
    ]
    key = f"metrics-{summary.task}-{summary.run}".lower().replace("_", "-").replace(".", "-")
    create_markdown_artifact(key=key, markdown="\n".join(lines), description=f"{summary.task} {summary.run}: metrics")


@flow(name="mfsbi-amortized",
      flow_run_name="{config.task} {config.method} lf={config.lf_sims} hf={config.hf_sims} seed={config.seed}")
def amortized_flow(config: RunConfig) -> RunSummary:
    """NPE or MF-NPE on one task, with every simulation stored in the zarr store.

    Arguments:
        config: the validated run configuration (the CLI and the deployments use the same model).

    Returns:
        The run summary (metrics, counts, artifact locations).
    """
    with dask_client(config.dask_address, config.n_workers) as client:
        with StoreLock(config.store, owner=config.run_name):
            return run_amortized(config, DaskExecutor(client))

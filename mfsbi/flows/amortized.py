"""The amortised flow: NPE, MF-NPE (at counts or within a compute budget), ML-NPE, any registered method.

The method's training strategy (for MF-NPE: simulate LF → pretrain → simulate HF (the budget) →
fine-tune or choose; :mod:`mfsbi.flows.strategies`) → evaluate → calibrate → store and publish.
Prefect tasks are coarse and run in the flow process; the fan-out of simulations and the training
itself run as plain Dask tasks on the workers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE as NO_CACHE

from mfsbi.flows.config import RunConfig
from mfsbi.flows.evaluation import calibration_on_pairs, evaluate_posterior, sample_posterior
from mfsbi.flows.run import Run, check_store_location
from mfsbi.flows.summary import Metrics, RunSummary
from mfsbi.inference import Ensemble, estimator_from_bytes
from mfsbi.runtime import progress
from mfsbi.runtime.cluster import dask_client
from mfsbi.runtime.executor import BatchExecutor, DaskExecutor
from mfsbi.runtime.training_jobs import TrainResult
from mfsbi.storage import StoreLock

__all__ = ["amortized_flow", "run_amortized"]


def _posterior(run: Run, results: list[TrainResult], weights: list[float] | None = None):
    """One member's ``DirectPosterior``, or sbi's ``EnsemblePosterior`` of all of them (``weights``: default equal)."""
    members = [estimator_from_bytes(r.checkpoint, run.task.prior) for r in results]
    return members[0].posterior() if len(members) == 1 else Ensemble(members, weights).posterior()


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(run: Run, posterior: Any, test_theta: np.ndarray, test_x: np.ndarray) -> Metrics:
    progress.report("evaluate", 0, 1)
    metrics = evaluate_posterior(posterior, run.task, test_theta, test_x,
                                 num_c2st=run.num_test_observations,
                                 num_samples=run.config.posterior_samples, seed=run.config.test_seed)
    progress.report("evaluate", 1, 1)
    return metrics


@task(name="calibrate", cache_policy=NO_CACHE)
def calibrate(run: Run, summary: RunSummary, posterior: Any, test_theta: np.ndarray, test_x: np.ndarray) -> None:
    """SBC and TARP on the held-out HF pairs, into the summary, the store and the UI."""
    result, on = calibration_on_pairs(posterior, test_theta, test_x,
                                      num_samples=run.config.posterior_samples, seed=run.test_seed("calibration"),
                                      max_bytes=run.config.training_memory)
    if result is not None:
        run.record_calibration(summary, result, on)


def run_amortized(config: RunConfig, executor: BatchExecutor) -> RunSummary:
    """The body of :func:`amortized_flow` on a given executor; returns the run summary."""
    run = Run.start(config, executor)
    summary = run.new_summary()
    # The method's training strategy (mfsbi.flows.strategies): what it simulates and trains is its own.
    results = run.method.train(run, summary)
    # Evaluation only reports: its pairs are simulated after every choice is made.
    test_theta, test_x = run.test_pairs(run.evaluation_pairs)
    members = len(results)
    if members == 1:
        summary.train = results[0].record()
        summary.posterior = run.write_artifact("posterior.pt", results[0].checkpoint)
    else:
        summary.train = [r.record() for r in results]
        summary.posterior = [run.write_artifact(f"posterior-member-{e}.pt", r.checkpoint)
                             for e, r in enumerate(results)]
    # One posterior for evaluation, calibration and the plot: the kept members, with their weights.
    posterior = _posterior(run, results, summary.posterior_weights)
    summary.metrics = evaluate(run, posterior, test_theta, test_x)
    calibrate(run, summary, posterior, test_theta, test_x)

    samples, truth, where = _plot_samples(run, posterior, test_theta, test_x)
    run.finish(summary, samples, truth, where)
    _publish(run, summary)
    return summary


def _plot_samples(run: Run, posterior: Any, test_theta: np.ndarray, test_x: np.ndarray):
    """Posterior samples for the pair plot: at the given observation, else at held-out observation 0."""
    if run.config.observation is not None:
        x_o, truth, where = np.asarray(run.config.observation, dtype=np.float64), None, "the given observation"
    elif len(test_x):
        x_o, truth, where = test_x[0], test_theta[0], "held-out observation 0 (true θ marked)"
    else:
        return None, None, ""
    return sample_posterior(posterior, x_o, run.config.posterior_samples, run.seed("plot")), truth, where


def _publish(run: Run, summary: RunSummary) -> None:
    reserved, total = summary.hf_budget_used
    paths = [summary.posterior] if isinstance(summary.posterior, str) else summary.posterior
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in summary.metrics.as_rows()]
    if summary.out_of_fold is not None:
        lines.append(f"| NLTP out of fold ({summary.out_of_fold['rows']} HF budget rows) | "
                     f"{summary.out_of_fold['nltp']:.3f} |")
    if summary.selection:
        selection = summary.selection
        verdicts = {name: (c or {}).get("verdict", "-") for name, c in (selection.get("calibration") or {}).items()}
        weights = selection.get("weights") or {}
        lines += [f"| candidate {name}{' (kept)' if name == selection['kept'] else ''}: out-of-fold mean log q "
                  f"[90 % interval], calibration{', mixture weight' if weights else ''} | {row['mean']:.3f} "
                  f"[{row['lower']:.3f}, {row['upper']:.3f}], {verdicts.get(name, '-')}"
                  f"{f', {weights.get(name, 0.0):.2f}' if weights else ''} |" for name, row in selection["scores"].items()]
        lines.append(f"| kept | {selection['reason']} |")
    if summary.calibration:
        lines.append(f"| calibration (SBC + TARP, {summary.calibration['on']}) | {summary.calibration['verdict']} |")
    lines += [
        f"| HF simulations stored ok | {summary.hf_stored_ok} |",
        f"| HF budget used / total | {reserved} / {total} |",
        f"| LF simulations stored ok | {(summary.lf or {}).get('stored_ok', 0)} |",
        f"| training device (worker) | {summary.device} ({_workers(summary.train)}) |",
        f"| posterior | {', '.join(f'`{run.location(p)}`' for p in paths)} |",
        f"| pair plot | `{run.location(summary.pair_plot) if summary.pair_plot else '-'}` |",
    ]
    key = f"metrics-{summary.task}-{summary.run}".lower().replace("_", "-").replace(".", "-")
    create_markdown_artifact(key=key, markdown="\n".join(lines), description=f"{summary.task} {summary.run}: metrics")


def _workers(train: dict | list[dict]) -> str:
    return train["worker"] if isinstance(train, dict) else ", ".join(sorted({t["worker"] for t in train}))


@flow(name="mfsbi-amortized",
      flow_run_name="{config.task} {config.method} lf={config.lf_sims} hf={config.hf_sims} seed={config.seed}")
def amortized_flow(config: RunConfig) -> RunSummary:
    """An amortised method (NPE, MF-NPE, ML-NPE, one estimator or an ensemble) on one task, every
    simulation stored in the zarr store.

    Arguments:
        config: the validated run configuration (the CLI and the deployments use the same model).

    Returns:
        The run summary (metrics, counts, artifact locations).
    """
    check_store_location(config.store)  # before the lock: taking it would create the folders
    with dask_client(config.dask_address, config.n_workers, config.cluster) as client:
        with StoreLock(config.store, owner=config.run_name):
            return run_amortized(config, DaskExecutor(client))

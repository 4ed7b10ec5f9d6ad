"""The MF-ABC baseline (Prescott & Baker 2020) as a flow, every simulation in the store.

LF proposals are the shared LF table (prior draws, the same rows MF-NPE pretrains on); the proposals
that continue to HF are reserved in the run's own HF table, whose budget is a hard cap. The
continuation coins are seeded, so a rerun reserves the same rows and simulates only pending ones.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE as NO_CACHE

from mfsbi.flows.config import RunConfig
from mfsbi.flows.evaluation import posterior_metrics
from mfsbi.flows.run import Run, check_store_location
from mfsbi.flows.summary import HFState, RunSummary
from mfsbi.inference.mf_abc import (
    ABCResult, abc_distances, continuation_decisions, distance_scale, epsilon_from_quantile, mf_abc_weights,
    proposals_within_budget,
)
from mfsbi.runtime.cluster import dask_client
from mfsbi.runtime.executor import BatchExecutor, DaskExecutor
from mfsbi.storage import StoreLock

__all__ = ["ABCNoAcceptanceError", "abc_flow", "run_abc"]


class ABCNoAcceptanceError(RuntimeError):
    """No proposal was accepted within the HF budget: there is no posterior sample to give."""


@task(name="mf-abc weights", cache_policy=NO_CACHE)
def _decide(theta: np.ndarray, x_lf: np.ndarray, x_o: np.ndarray, config: RunConfig, seed: int):
    scale = distance_scale(x_lf)
    lf_distances = abc_distances(x_lf, x_o, scale)
    epsilon = epsilon_from_quantile(lf_distances, config.abc_quantile)
    continued = continuation_decisions(lf_distances, epsilon, config.abc_eta_accept, config.abc_eta_reject,
                                       rng=np.random.default_rng(seed))
    used = proposals_within_budget(continued, config.hf_sims)
    return scale, lf_distances[:used], epsilon, continued[:used], used


def run_abc(config: RunConfig, executor: BatchExecutor) -> RunSummary:
    """The body of :func:`abc_flow`; returns the run summary."""
    run = Run.start(config, executor, device="cpu")
    x_o, theta_true = run.target_observation()
    num = config.abc_proposals or config.lf_sims
    lf = run.simulate(table=run.shared_table, fidelity="lf", num_rows=num, seed=config.seed, budget=None)
    theta, x_lf = run.store.table(run.shared_table, "lf").read("all")
    theta, x_lf = theta[:num], x_lf[:num]  # failed LF rows are NaN: LF rejects
    scale, lf_distances, epsilon, continued, used = _decide(theta, x_lf, x_o, config, run.seed("abc/continue"))

    hf_table = run.require_own_table()
    chosen = np.flatnonzero(continued)
    if hf_table.num_rows == 0 and len(chosen):
        chunks = np.arange(len(chosen)) // config.chunk_rows("hf", run.task)
        seeds = np.array([run.seed(f"sim/{run.own_table}", int(c)) for c in chunks], dtype=np.int64)
        hf_table.reserve(theta[chosen], seeds)
    hf = run.simulate_pending(hf_table, table=run.own_table, fidelity="hf")
    _, x_hf = hf_table.read("all")
    hf_distances = np.full(used, np.nan)
    hf_distances[chosen] = abc_distances(x_hf, x_o, scale)
    weights = mf_abc_weights(lf_distances, hf_distances, epsilon, config.abc_eta_accept, config.abc_eta_reject,
                             continued)
    result = ABCResult(theta[:used], weights, lf_distances, hf_distances, continued, epsilon,
                       config.abc_eta_accept, config.abc_eta_reject, int(len(chosen)), int(num), scale)
    if not (weights > 0).any():
        raise ABCNoAcceptanceError(
            f"MF-ABC accepted none of {used} proposals ({len(chosen)} HF simulations) at ε = {epsilon:.3g}: "
            "raise --hf-sims, or --abc-quantile for a looser ε"
        )
    samples = result.sample(config.posterior_samples, seed=run.seed("abc/sample"))

    summary = run.new_summary()
    counts = hf_table.counts()
    summary.lf = dataclasses.asdict(lf)
    summary.hf = HFState(stored_ok=counts["ok"], failed=counts["failed"],
                         budget=dataclasses.asdict(hf_table.budget()), simulated_now=hf.simulated)
    summary.abc = {"epsilon": float(epsilon), "proposals_used": int(used), "hf_used": int(len(chosen)),
                   "effective_sample_size": float(result.effective_sample_size),
                   "negative_weights": int((weights < 0).sum())}
    # ABC gives weighted samples, no density: no NLTP.
    summary.metrics = posterior_metrics(
        run.task, [samples], [x_o], num_samples=config.posterior_samples,
        reference_seed=lambda name, _: run.test_seed(f"reference/{name}", 10_000), c2st_seed=lambda _: 0,
        theta_true=None if theta_true is None else [theta_true], per_observation=False,
    )
    summary.posterior = run.artifact("samples.npy")
    run.finish(summary, samples, theta_true, config.observation_tag)
    lines = ["| field | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in summary.abc.items()]
    lines += [f"| C2ST vs {k} | {v:.3f} |" for k, v in summary.metrics.c2st.items()]
    reserved, total = summary.hf_budget_used
    lines += [f"| HF budget used / total | {reserved} / {total} |",
              f"| pair plot | `{run.location(summary.pair_plot) if summary.pair_plot else '-'}` |"]
    create_markdown_artifact(key="mf-abc", markdown="\n".join(lines), description=f"{run.task.name} {run.name}")
    return summary


@flow(name="mfsbi-mf-abc", flow_run_name="{config.task} mf-abc lf={config.lf_sims} hf={config.hf_sims} seed={config.seed}")
def abc_flow(config: RunConfig) -> RunSummary:
    """Multifidelity rejection ABC at one observation (NLTP is undefined: ABC gives no density).

    Arguments:
        config: the validated run configuration.
    """
    check_store_location(config.store)  # before the lock: taking it would create the folders
    with dask_client(config.dask_address, config.n_workers, config.cluster) as client:
        with StoreLock(config.store, owner=config.run_name):
            return run_abc(config, DaskExecutor(client))

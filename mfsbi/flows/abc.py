"""The MF-ABC baseline (Prescott & Baker 2020) as a flow, every simulation in the store.

LF proposals are the shared LF table (prior draws, the same rows MF-NPE pretrains on); the proposals
that continue to HF are reserved in the run's own HF table, whose budget is a hard cap. The
continuation coins are seeded, so a rerun reserves the same rows and simulates only pending ones.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE as NO_CACHE

from mfsbi import __version__
from mfsbi.flows.common import finish_run, simulate, simulate_pending
from mfsbi.flows.config import RunConfig
from mfsbi.flows.executor import BatchExecutor, DaskExecutor
from mfsbi.flows.seeds import derive_seed
from mfsbi.flows.sequential import target_observation
from mfsbi.flows.services import dask_client
from mfsbi.flows.simulation import provenance
from mfsbi.simulators import get_task
from mfsbi.storage import SimulationStore, StoreLock

__all__ = ["ABCNoAcceptanceError", "abc_flow", "run_abc"]


class ABCNoAcceptanceError(RuntimeError):
    """No proposal was accepted within the HF budget: there is no posterior sample to give."""


@task(name="mf-abc weights", cache_policy=NO_CACHE)
def _decide(theta: np.ndarray, x_lf: np.ndarray, x_o: np.ndarray, config: RunConfig):
    from mfsbi.inference.abc import (
        abc_distances, continuation_decisions, distance_scale, epsilon_from_quantile, proposals_within_budget,
    )

    scale = distance_scale(x_lf)
    lf_distances = abc_distances(x_lf, x_o, scale)
    epsilon = epsilon_from_quantile(lf_distances, config.abc_quantile)
    continued = continuation_decisions(lf_distances, epsilon, config.abc_eta_accept, config.abc_eta_reject,
                                       rng=np.random.default_rng(derive_seed(config.seed, "abc/continue")))
    used = proposals_within_budget(continued, config.hf_sims)
    return scale, lf_distances[:used], epsilon, continued[:used], used


def run_abc(config: RunConfig, executor: BatchExecutor) -> dict:
    """The body of :func:`abc_flow`; returns the run summary."""
    from mfsbi.inference.abc import ABCResult, abc_distances, mf_abc_weights

    started = time.perf_counter()
    task_obj = get_task(config.task)
    store = SimulationStore(config.store)
    x_o, theta_true = target_observation(executor, store, task_obj, config)
    num = config.abc_proposals or config.lf_sims
    lf = simulate(executor, store, task_obj, config, table=task_obj.name, fidelity="lf", num_rows=num,
                  chunk_size=config.chunk_rows("lf", task_obj), seed=config.seed, budget=None)
    theta, x_lf = store.table(task_obj.name, "lf").read("all")
    theta, x_lf = theta[:num], x_lf[:num]  # failed LF rows are NaN: LF rejects
    scale, lf_distances, epsilon, continued, used = _decide(theta, x_lf, x_o, config)

    table = f"{task_obj.name}.{config.run_name}"
    hf_table = store.require_table(
        table, "hf", theta_dim=task_obj.theta_dim, x_dim=task_obj.x_dim, chunk_size=config.chunk_rows("hf", task_obj),
        provenance=provenance(task_obj, "hf", config.simulation_hash("hf", config.chunk_rows("hf", task_obj), task_obj.version,
                                                                     config.seed)),
    )
    if hf_table.budget() is None:
        hf_table.set_budget(config.hf_sims)
    chosen = np.flatnonzero(continued)
    if hf_table.num_rows == 0 and len(chosen):
        chunks = np.arange(len(chosen)) // config.chunk_rows("hf", task_obj)
        seeds = np.array([derive_seed(config.seed, f"sim/{table}", int(c)) for c in chunks], dtype=np.int64)
        hf_table.reserve(theta[chosen], seeds)
    hf = simulate_pending(executor, store, config, hf_table, table=table, fidelity="hf")
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
    samples = result.sample(config.posterior_samples, seed=derive_seed(config.seed, "abc/sample"))

    summary: dict = {"task": task_obj.name, "method": "mf-abc", "run": config.run_name, "seed": config.seed,
                     "device": "cpu", "mfsbi_version": __version__, "lf": dataclasses.asdict(lf),
                     "hf": {"stored_ok": hf_table.counts()["ok"], "failed": hf_table.counts()["failed"],
                            "budget": dataclasses.asdict(hf_table.budget()), "simulated_now": hf.simulated},
                     "abc": {"epsilon": float(epsilon), "proposals_used": int(used), "hf_used": int(len(chosen)),
                             "effective_sample_size": float(result.effective_sample_size),
                             "negative_weights": int((weights < 0).sum())}}
    summary["metrics"] = _metrics(samples, task_obj, x_o, theta_true, config)
    summary["posterior"] = f"artifacts/{task_obj.name}/{config.run_name}/samples.npy"
    finish_run(store, task_obj, config, summary, started, samples, theta_true, config.observation_tag)
    lines = ["| field | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in summary["abc"].items()]
    lines += [f"| C2ST vs {k} | {v:.3f} |" for k, v in summary["metrics"]["c2st"].items()]
    budget = summary["hf"]["budget"]
    lines += [f"| HF budget used / total | {budget['reserved']} / {budget['total']} |",
              f"| pair plot | `{summary.get('pair_plot', '-')}` (in the store) |"]
    create_markdown_artifact(key="mf-abc", markdown="\n".join(lines), description=f"{task_obj.name} {config.run_name}")
    return summary


def _metrics(samples: np.ndarray, task_obj, x_o, theta_true, config: RunConfig) -> dict:
    from mfsbi.inference import c2st, mmd_squared, nrmse

    metrics: dict = {"c2st": {}, "mmd": {}, "nltp": None, "nrmse": None, "num_c2st_observations": 1,
                     "num_nltp_pairs": 0}
    for name, reference in task_obj.references.items():
        ref = reference(x_o, config.posterior_samples, derive_seed(config.test_seed, f"reference/{name}", 10_000))
        metrics["c2st"][name] = float(c2st(samples, ref, seed=0))
        metrics["mmd"][name] = float(mmd_squared(samples, ref))
    if theta_true is not None:
        low, high = task_obj.parameter_ranges()
        metrics["nrmse"] = float(nrmse(samples, theta_true, low, high))
    return metrics


@flow(name="mfsbi-mf-abc", flow_run_name="{config.task} mf-abc lf={config.lf_sims} hf={config.hf_sims} seed={config.seed}")
def abc_flow(config: RunConfig) -> dict:
    """Multifidelity rejection ABC at one observation (NLTP is undefined: ABC gives no density).

    Arguments:
        config: the validated run configuration.
    """
    with dask_client(config.dask_address, config.n_workers) as client:
        with StoreLock(config.store, owner=config.run_name):
            return run_abc(config, DaskExecutor(client))

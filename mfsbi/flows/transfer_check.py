"""The transfer check as a flow: an HF pilot, the LF at the same θ, the LF-pretrained estimator.

simulate LF → pretrain (the checkpoint an MF-NPE run shares) → simulate the first ``pilot`` rows of
the run's HF table (they count against its budget, and ``mfsbi run --method mf-npe`` with the same
store, task and seed reuses them) → simulate the LF at those θ in a table of their own → check.
"""

from __future__ import annotations

import json

import numpy as np
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from mfsbi.flows.config import RunConfig
from mfsbi.flows.run import Run, check_store_location
from mfsbi.inference import EstimatorConfig, TrainingConfig, check_transfer, estimator_from_bytes
from mfsbi.runtime import progress
from mfsbi.runtime.cluster import dask_client
from mfsbi.runtime.executor import BatchExecutor, DaskExecutor
from mfsbi.runtime.simulation import provenance
from mfsbi.storage import StoreLock

__all__ = ["run_transfer_check", "transfer_check_flow"]


def _paired_lf(run: Run, theta: np.ndarray) -> np.ndarray:
    """The LF outputs at the pilot's θ (row i of this table is HF row i), simulated once and stored."""
    task, config = run.task, run.config
    name = f"{run.shared_table}.pilot-seed{config.seed}"
    chunk = config.chunk_rows("lf", task)
    table = run.store.require_table(
        name, "lf", theta_dim=task.theta_dim, x_dim=task.x_dim, chunk_size=chunk,
        provenance=provenance(task, "lf", run.config_hash("lf", chunk, config.seed)),
        parameter_names=task.parameter_names)
    have = table.num_rows
    if have < len(theta):
        rows = np.arange(have, len(theta))
        seeds = np.array([run.seed(f"sim/{name}/lf", int(c)) for c in rows // chunk], dtype=np.int64)
        table.reserve(theta[have:], seeds)
    elif not np.array_equal(table.read_theta("all")[:len(theta)], theta):
        raise RuntimeError(f"table {name!r} holds other θ than the HF pilot: the store was changed by hand")
    run.simulate_pending(table, table=name, fidelity="lf")
    x = np.full((len(theta), task.x_dim), np.nan)
    ok = table.rows("ok")
    ok = ok[ok < len(theta)]
    x[ok] = table.read("ok")[1][: len(ok)]
    return x


def run_transfer_check(config: RunConfig, executor: BatchExecutor, pilot: int) -> dict:
    """The body of :func:`transfer_check_flow` on a given executor; returns the report."""
    run = Run.start(config, executor)
    summary = run.new_summary()
    pretrained = estimator_from_bytes(run.pretrained_through_chain(summary), run.task.prior)
    hf = run.simulate(table=run.hf_table, fidelity="hf", num_rows=pilot, seed=config.seed, budget=pilot)
    table = run.store.table(run.hf_table, "hf")
    theta_all = table.read_theta("all")[:pilot]
    x_hf = np.full((pilot, run.task.x_dim), np.nan)
    ok = table.rows("ok")
    ok = ok[ok < pilot]
    x_hf[ok] = table.read("ok")[1][: len(ok)]
    x_lf = _paired_lf(run, theta_all)
    progress.report("transfer check", 0, 1)
    estimator = EstimatorConfig()
    if run.task.embedding:
        estimator = EstimatorConfig(embedding=run.task.embedding, x_shape=run.task.x_shape, z_score_x="structured")
    check = check_transfer(
        pretrained, run.task.prior, theta_all, x_hf, x_lf,
        fine_tuning=TrainingConfig(learning_rate=config.hf_training_rate(True), max_num_epochs=config.max_num_epochs),
        scratch=TrainingConfig(learning_rate=config.hf_training_rate(False), max_num_epochs=config.max_num_epochs),
        estimator=estimator, seed=run.seed("check-transfer"))
    progress.report("transfer check", 1, 1)
    budget = table.budget()
    report = {"task": run.task.name, "lf_sims": config.lf_sims, "pilot_hf": pilot, "seed": config.seed,
              "hf_simulated_now": hf.simulated, "hf_budget": {"reserved": budget.reserved, "total": budget.total},
              "pretrained": summary.pretrained, **check.to_dict()}
    name = f"{run.task.name}/transfer-check-lf{config.lf_sims}-pilot{pilot}-seed{config.seed}.json"
    report["report"] = f"artifacts/{name}"
    run.store.write_artifact(name, json.dumps(report, indent=2).encode())
    rows = ["| quantity | value |", "|---|---|", f"| verdict | **{check.verdict}** |", f"| why | {check.reason} |",
            f"| mean log q on the pilot: prior / pretrained as is | {check.log_prob_prior:.3f} / "
            f"{check.log_prob_pretrained:.3f} |",
            f"| ranking AUC of the pilot's θ, x z-scoring refit (90 % interval; permutation p) | "
            f"{check.ranking_auc:.3f} ({check.ranking_auc_lower:.3f}–{check.ranking_auc_upper:.3f}; "
            f"p={check.ranking_pvalue:.3g}) |",
            f"| cross-validated: from scratch / fine-tuned | {check.log_prob_scratch:.3f} / "
            f"{check.log_prob_fine_tuned:.3f} |"]
    create_markdown_artifact(key=f"transfer-check-{run.task.name}".lower().replace("_", "-").replace(".", "-"),
                             markdown="\n".join(rows), description=f"{run.task.name}: transfer check")
    return report


@flow(name="mfsbi-check-transfer",
      flow_run_name="{config.task} check-transfer lf={config.lf_sims} pilot={pilot} seed={config.seed}")
def transfer_check_flow(config: RunConfig, pilot: int) -> dict:
    """The transfer check of an MF-NPE run's configuration, on its first ``pilot`` HF simulations."""
    check_store_location(config.store)
    with dask_client(config.dask_address, config.n_workers, config.cluster) as client:
        with StoreLock(config.store, owner=f"check-transfer-{config.task}"):
            return run_transfer_check(config, DaskExecutor(client), pilot)

"""The sequential flow: TSNPE, MF-TSNPE and A-MF-TSNPE as a Prefect loop of rounds.

Each round is a nested flow run ("round r" in the UI): propose θ (prior in round 0, then the
truncated posterior, plus acquired candidates for A-MF-TSNPE) → reserve the rows with their round →
simulate them on Dask → train every member from the previous round's weights on all data so far →
publish the round's artifact. Proposals, round metadata and checkpoints are written to the store as
they are made, so ``--resume`` after a crash re-proposes nothing, re-simulates no stored row and
re-trains no stored round.
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import torch
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from mfsbi import __version__
from mfsbi.flows.common import (
    estimator_dict, finish_run, pretrained_on_lf, resolve_device, simulate_pending, test_pairs, train,
    training_dict,
)
from mfsbi.flows.config import RunConfig
from mfsbi.flows.evaluation import sample_posterior
from mfsbi.flows.executor import BatchExecutor, DaskExecutor
from mfsbi.flows.seeds import derive_seed
from mfsbi.flows.services import dask_client
from mfsbi.flows.simulation import provenance
from mfsbi.flows.work import TrainJob
from mfsbi.simulators import Task, get_task
from mfsbi.storage import SimulationStore, StoreLock

__all__ = ["round_sizes", "run_sequential", "sequential_flow", "sequential_table", "target_observation"]


def round_sizes(total: int, rounds: int) -> list[int]:
    """HF simulations per round: ``total`` split as evenly as possible, earlier rounds first."""
    if total < rounds:
        raise ValueError(f"--hf-sims {total} cannot fill {rounds} rounds; use --hf-sims >= --rounds")
    base, extra = divmod(total, rounds)
    return [base + (r < extra) for r in range(rounds)]


def sequential_table(task: Task, config: RunConfig) -> str:
    """The table holding one sequential run's HF rows (they depend on x_o and on every round)."""
    return f"{task.name}.{config.run_name}"


def target_observation(executor: BatchExecutor, store: SimulationStore, task: Task,
                       config: RunConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """x_o and, for a held-out test observation, its true θ."""
    if config.observation is not None:
        return np.asarray(config.observation, dtype=np.float64), None
    theta, x = test_pairs(executor, store, task, config, config.observation_index + 1)
    if len(x) <= config.observation_index:
        raise RuntimeError(f"held-out observation {config.observation_index} failed to simulate; pick another index")
    return x[config.observation_index], theta[config.observation_index]


def _posterior(checkpoints: list[bytes], prior):
    from mfsbi.inference import Ensemble, estimator_from_bytes

    members = [estimator_from_bytes(c, prior) for c in checkpoints]
    return members[0].posterior() if len(members) == 1 else Ensemble(members).posterior()


def _propose(config: RunConfig, task: Task, checkpoints: list[bytes] | None, x_o: np.ndarray, round_index: int,
             size: int) -> tuple[np.ndarray, dict]:
    from mfsbi.inference import Ensemble, estimator_from_bytes, propose_round, truncated_prior

    seed = derive_seed(config.seed, "propose", round_index)
    if checkpoints is None:
        return task.sample_prior(size, seed), {"acceptance_rate": 1.0, "acquired": 0}
    posterior = _posterior(checkpoints, task.prior)
    proposal = truncated_prior(posterior, task.prior, x_o, quantile=config.truncation_quantile,
                               seed=derive_seed(config.seed, "truncate", round_index))
    info: dict = {"acceptance_rate": float(proposal.acceptance_rate), "acquired": 0}
    if config.method == "a-mf-tsnpe":
        ensemble = Ensemble([estimator_from_bytes(c, task.prior) for c in checkpoints])
        theta, acquisition = propose_round(
            ensemble, proposal, x_o, budget=size, fraction_acquired=config.acquisition_fraction,
            pool_size=config.pool_size, total_budget=config.hf_sims, kind=config.acquisition, seed=seed,
        )
        info.update(acquired=int(acquisition["acquired"]), pool_size=int(acquisition["pool_size"]),
                    selected_scores=acquisition["selected_scores"], pool_scores=acquisition["pool_scores"])
    else:
        theta = proposal.sample((size,), seed=seed)
    return theta.double().numpy(), info


def _reserve_round(sim_table, table: str, theta: np.ndarray, config: RunConfig, round_index: int) -> None:
    first = sim_table.num_rows
    chunks = (first + np.arange(len(theta))) // sim_table.chunk_size
    # One simulator seed per (round, chunk): the rows a chunk holds from one round form one batch.
    seeds = np.array([derive_seed(config.seed, f"sim/{table}/round{round_index}", int(c)) for c in chunks],
                     dtype=np.int64)
    sim_table.reserve(theta, seeds, round=round_index)


def reserve_round_once(store: SimulationStore, sim_table, table: str, prefix: str, config: RunConfig,
                       round_index: int, propose) -> dict:
    """Reserves a round's rows unless they are already stored; returns the round's proposal facts.

    A rerun (retry, restart, ``--resume``) finds the round's rows and proposes nothing, so a round
    can never spend its share of the HF budget twice.

    Arguments:
        prefix: the run's folder inside the store's artifacts.
        propose: called without arguments only when the round has no rows yet; returns
            ``(theta, info)``.
    """
    meta_name = f"{prefix}/round-{round_index}.json"
    if len(sim_table.read("all", rounds=[round_index])[0]) == 0:
        theta, info = propose()
        # The proposal's facts are stored before its rows: a resumed run reports them unchanged.
        store.write_artifact(meta_name, json.dumps(info).encode())
        _reserve_round(sim_table, table, theta, config, round_index)
    return json.loads(store.read_artifact(meta_name))


# Internal objects (executor, store, task) are passed through: no pydantic validation of them.
@flow(name="mfsbi-round", flow_run_name="{label}", validate_parameters=False)
def sequential_round(round_index: int, label: str, executor: BatchExecutor, store: SimulationStore,
                     task: Task, config: RunConfig, x_o: np.ndarray, theta_true: np.ndarray | None,
                     size: int, checkpoints: list[bytes] | None, initial: bytes | None,
                     device: str) -> tuple[list[bytes], dict]:
    """One round: propose, reserve, simulate, train, report. Returns the members' checkpoints and the round's row."""
    started = time.perf_counter()
    table = sequential_table(task, config)
    prefix = f"{task.name}/{config.run_name}"
    sim_table = store.table(table, "hf")
    info = reserve_round_once(store, sim_table, table, prefix, config, round_index,
                              lambda: _propose(config, task, checkpoints, x_o, round_index, size))
    report = simulate_pending(executor, store, config, sim_table, table=table, fidelity="hf")

    members = config.ensemble_size if config.method == "a-mf-tsnpe" else 1
    names = [f"{prefix}/round-{round_index}-member-{e}.pt" for e in range(members)]
    stored = [_maybe(store, name) for name in names]
    if all(s is not None for s in stored):
        new_checkpoints = stored
    else:
        starts = checkpoints if checkpoints is not None else [initial] * members
        jobs = [TrainJob(store.url, config.task, table, "hf", sim_table.num_rows, estimator_dict(task),
                         training_dict(config, config.hf_learning_rate, derive_seed(config.seed, "train", round_index, e)),
                         starts[e], device, refit_x_zscore=checkpoints is None) for e in range(members)]
        results = train(executor, jobs, label=f"{label}: train {members} × {sim_table.counts()['ok']} HF")
        new_checkpoints = [r.checkpoint for r in results]
        for name, checkpoint in zip(names, new_checkpoints):
            store.write_artifact(name, checkpoint)

    row = {"round": round_index, "new_simulations": size, "total_simulations": sim_table.counts()["ok"],
           "failed": sim_table.counts()["failed"], "simulated_now": report.simulated,
           "acceptance_rate": info.get("acceptance_rate"), "acquired": info.get("acquired", 0),
           "selected_scores": info.get("selected_scores"), "pool_scores": info.get("pool_scores")}
    if config.evaluate_rounds:
        row.update(_c2st_at(_posterior(new_checkpoints, task.prior), task, x_o, config, round_index))
    row["seconds"] = round(time.perf_counter() - started, 2)
    create_markdown_artifact(key=f"round-{round_index}", markdown=_round_markdown(label, row),
                             description=f"{task.name} {config.run_name}: round {round_index}")
    return new_checkpoints, row


def _maybe(store: SimulationStore, name: str) -> bytes | None:
    try:
        return store.read_artifact(name)
    except FileNotFoundError:
        return None


def _c2st_at(posterior, task: Task, x_o: np.ndarray, config: RunConfig, salt: int, mmd: bool = False) -> dict:
    from mfsbi.inference import c2st, mmd_squared

    if not task.references:
        return {}
    samples = sample_posterior(posterior, x_o, config.posterior_samples, derive_seed(config.test_seed, "seq", salt))
    out = {}
    for name, reference in task.references.items():
        ref = reference(x_o, config.posterior_samples, derive_seed(config.test_seed, f"reference/{name}", salt))
        out[f"c2st_{name}"] = float(c2st(samples, ref, seed=salt))
        if mmd:
            out[f"mmd_{name}"] = float(mmd_squared(samples, ref))
    return out


def _round_markdown(label: str, row: dict) -> str:
    lines = [f"### {label}", "", "| field | value |", "|---|---|"]
    for key, value in row.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v:.3g}" for k, v in value.items())
        lines.append(f"| {key} | {value} |")
    return "\n".join(lines)


def run_sequential(config: RunConfig, executor: BatchExecutor) -> dict:
    """The body of :func:`sequential_flow` on a given executor; returns the run summary."""
    started = time.perf_counter()
    task = get_task(config.task)
    store = SimulationStore(config.store)
    device = resolve_device(config.device, executor)
    sizes = round_sizes(config.hf_sims, config.rounds)
    summary: dict = {"task": task.name, "method": config.method, "run": config.run_name, "seed": config.seed,
                     "device": device, "mfsbi_version": __version__}
    x_o, theta_true = target_observation(executor, store, task, config)
    initial = None
    if config.method in ("mf-tsnpe", "a-mf-tsnpe"):
        initial, info = pretrained_on_lf(executor, store, task, config, device)
        summary.update(info)
    table = sequential_table(task, config)
    sim_table = store.require_table(
        table, "hf", theta_dim=task.theta_dim, x_dim=task.x_dim, chunk_size=config.chunk_rows("hf", task),
        provenance=provenance(task, "hf", config.simulation_hash("hf", config.chunk_rows("hf", task), task.version, config.seed)),
    )
    if sim_table.budget() is None:
        sim_table.set_budget(config.hf_sims)

    checkpoints: list[bytes] | None = None
    rounds = []
    for r, size in enumerate(sizes):
        label = f"{config.method} round {r + 1}/{config.rounds}"
        checkpoints, row = sequential_round(r, label, executor, store, task, config, x_o, theta_true, size,
                                            checkpoints, initial, device)
        rounds.append(row)

    prefix = f"{task.name}/{config.run_name}"
    summary["rounds"] = rounds
    summary["hf"] = {"stored_ok": sim_table.counts()["ok"], "failed": sim_table.counts()["failed"],
                     "budget": dataclasses.asdict(sim_table.budget())}
    summary["posterior"] = [f"artifacts/{prefix}/round-{len(sizes) - 1}-member-{e}.pt" for e in range(len(checkpoints))]
    posterior = _posterior(checkpoints, task.prior)
    summary["metrics"] = _final_metrics(posterior, task, x_o, theta_true, config)
    samples = sample_posterior(posterior, x_o, config.posterior_samples, derive_seed(config.seed, "plot"))
    _budget_plot(store, prefix, summary)
    finish_run(store, task, config, summary, started, samples, theta_true, config.observation_tag)
    create_markdown_artifact(key=f"rounds-{config.method}", markdown=_rounds_table(summary),
                             description=f"{task.name} {config.run_name}: all rounds")
    return summary


def _final_metrics(posterior, task: Task, x_o: np.ndarray, theta_true: np.ndarray | None, config: RunConfig) -> dict:
    from mfsbi.inference import nrmse

    metrics: dict = {"c2st": {}, "mmd": {}, "nltp": None, "nrmse": None, "num_c2st_observations": 1,
                     "num_nltp_pairs": 0}
    values = _c2st_at(posterior, task, x_o, config, salt=10_000, mmd=True)
    metrics["c2st"] = {k.removeprefix("c2st_"): v for k, v in values.items() if k.startswith("c2st_")}
    metrics["mmd"] = {k.removeprefix("mmd_"): v for k, v in values.items() if k.startswith("mmd_")}
    if theta_true is not None:
        with torch.no_grad():
            log_q = posterior.log_prob(torch.as_tensor(theta_true[None], dtype=torch.float32),
                                       x=torch.as_tensor(x_o, dtype=torch.float32))
        metrics["nltp"] = float(-log_q.item())
        metrics["num_nltp_pairs"] = 1
        low, high = task.parameter_ranges()
        samples = sample_posterior(posterior, x_o, config.posterior_samples, derive_seed(config.test_seed, "nrmse"))
        metrics["nrmse"] = float(nrmse(samples, theta_true, low, high))
    return metrics


def _budget_plot(store: SimulationStore, prefix: str, summary: dict) -> None:
    """C2ST after each round against the HF simulations spent so far, saved with the run."""
    import io as _io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    references = sorted({k for row in summary["rounds"] for k in row if k.startswith("c2st_")})
    if not references:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    spent = [row["total_simulations"] for row in summary["rounds"]]
    for key in references:
        ax.plot(spent, [row.get(key) for row in summary["rounds"]], marker="o", label=key.replace("c2st_", "vs "))
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_xlabel("HF simulations spent")
    ax.set_ylabel("C2ST (0.5 is perfect)")
    ax.set_title(summary["run"], fontsize=8)
    ax.legend(fontsize=7)
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    store.write_artifact(f"{prefix}/c2st-vs-budget.png", buffer.getvalue())
    summary["budget_plot"] = f"artifacts/{prefix}/c2st-vs-budget.png"


def _rounds_table(summary: dict) -> str:
    columns = ["round", "new_simulations", "total_simulations", "acceptance_rate", "acquired"]
    columns += sorted({k for row in summary["rounds"] for k in row if k.startswith("c2st_")})
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in summary["rounds"]:
        cells = [row.get(c) for c in columns]
        lines.append("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    budget = summary["hf"]["budget"]
    lines.append(f"\nHF budget used: {budget['reserved']} / {budget['total']}")
    for key in ("pair_plot", "budget_plot"):
        if key in summary:
            lines.append(f"\n{key.replace('_', ' ')}: `{summary[key]}` (in the store)")
    return "\n".join(lines)


@flow(name="mfsbi-sequential",
      flow_run_name="{config.task} {config.method} hf={config.hf_sims} rounds={config.rounds} seed={config.seed}")
def sequential_flow(config: RunConfig) -> dict:
    """TSNPE, MF-TSNPE or A-MF-TSNPE at one observation, every HF simulation stored by round.

    Arguments:
        config: the validated run configuration.

    Returns:
        The run summary (per-round table, final metrics, artifact locations).
    """
    with dask_client(config.dask_address, config.n_workers) as client:
        with StoreLock(config.store, owner=config.run_name):
            return run_sequential(config, DaskExecutor(client))

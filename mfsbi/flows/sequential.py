"""The sequential flow: TSNPE, MF-TSNPE, A-MF-TSNPE (and any registered variant) as a loop of rounds.

Each round is a nested flow run ("round r" in the UI): propose θ (prior in round 0, then the
method's :class:`~mfsbi.flows.proposals.Proposal` over the truncated posterior) → reserve the rows
with their round → simulate them on Dask → train every member from the previous round's weights on
all data so far → publish the round's artifact. Proposals, round metadata and checkpoints are
written to the store as they are made, so ``--resume`` after a crash re-proposes nothing,
re-simulates no stored row and re-trains no stored round.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from dataclasses import dataclass

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from mfsbi.flows.config import RunConfig
from mfsbi.flows.coverage import final_coverage, round_coverage
from mfsbi.flows.evaluation import calibration_at_reference, posterior_metrics, sample_posterior
from mfsbi.flows.proposals import ProposalContext
from mfsbi.flows.run import Run, check_store_location
from mfsbi.flows.scratch_check import scratch_check, scratch_member_names
from mfsbi.flows.summary import HFState, Metrics, RoundRecord, RunSummary
from mfsbi.flows.transfer_guard import compare_with_scratch, not_compared, warn_on_negative_transfer
from mfsbi.inference import Ensemble, estimator_from_bytes, pair_log_probs, truncated_prior
from mfsbi.runtime.cluster import dask_client
from mfsbi.runtime.executor import BatchExecutor, DaskExecutor
from mfsbi.storage import StoreLock

__all__ = ["RoundPlan", "reserve_round_once", "round_sizes", "run_sequential", "sequential_flow"]


def round_sizes(total: int, rounds: int) -> list[int]:
    """HF simulations per round: ``total`` split as evenly as possible, earlier rounds first."""
    if total < rounds:
        raise ValueError(f"--hf-sims {total} cannot fill {rounds} rounds; use --hf-sims >= --rounds")
    base, extra = divmod(total, rounds)
    return [base + (r < extra) for r in range(rounds)]


@dataclass(frozen=True)
class RoundPlan:
    """What one round starts from.

    Arguments:
        index: the round (0 first); label: its name in the UI; size: its new HF simulations.
        x_o: the observation; theta_true: its true θ when known.
        checkpoints: the previous round's members (``None`` in round 0).
        initial: what round 0 starts from: the LF-pretrained checkpoint, or ``None`` (from scratch).
        guard: before training, score the previous round's members against estimators trained from
            scratch on the same earlier rows, on this round's new rows (the transfer guard; MF methods,
            last round).
        last: the run's last round (its end runs the final check near x_o).
    """

    index: int
    label: str
    size: int
    x_o: np.ndarray
    theta_true: np.ndarray | None
    checkpoints: list[bytes] | None
    initial: bytes | None
    guard: bool = False
    last: bool = False


def _posterior(checkpoints: list[bytes], prior):
    members = [estimator_from_bytes(c, prior) for c in checkpoints]
    return members, (members[0].posterior() if len(members) == 1 else Ensemble(members).posterior())


def _propose(run: Run, plan: RoundPlan) -> tuple[np.ndarray, dict]:
    seed = run.seed("propose", plan.index)
    if plan.checkpoints is None:
        return run.task.sample_prior(plan.size, seed), {"acceptance_rate": 1.0, "acquired": 0}
    members, posterior = _posterior(plan.checkpoints, run.task.prior)
    proposal = truncated_prior(posterior, run.task.prior, plan.x_o, quantile=run.config.truncation_quantile,
                               seed=run.seed("truncate", plan.index))
    info: dict = {"acceptance_rate": float(proposal.acceptance_rate), "acquired": 0}
    theta, facts = run.method.propose(ProposalContext(members, posterior, proposal, plan.x_o, plan.size, seed,
                                                      run.config))
    info.update(facts)
    return torch.as_tensor(theta).double().numpy(), info


def _reserve_round(run: Run, sim_table, theta: np.ndarray, round_index: int) -> None:
    first = sim_table.num_rows
    chunks = (first + np.arange(len(theta))) // sim_table.chunk_size
    # One simulator seed per (round, chunk): the rows a chunk holds from one round form one batch.
    seeds = np.array([run.seed(f"sim/{run.own_table}/round{round_index}", int(c)) for c in chunks], dtype=np.int64)
    sim_table.reserve(theta, seeds, round=round_index)


def reserve_round_once(run: Run, sim_table, round_index: int, propose) -> dict:
    """Reserves a round's rows unless they are already stored; returns the round's proposal facts.

    A rerun (retry, restart, ``--resume``) finds the round's rows and proposes nothing, so a round
    can never spend its share of the HF budget twice.

    Arguments:
        run: the run (its store, table and seeds).
        sim_table: the run's own HF table.
        propose: called without arguments only when the round has no rows yet; returns
            ``(theta, info)``.
    """
    meta_name = f"round-{round_index}.json"
    if len(sim_table.read("all", rounds=[round_index])[0]) == 0:
        theta, info = propose()
        # The proposal's facts are stored before its rows: a resumed run reports them unchanged.
        run.write_artifact(meta_name, json.dumps(info).encode())
        _reserve_round(run, sim_table, theta, round_index)
    return json.loads(run.read_artifact(meta_name))


def _round_c2st(run: Run, posterior, x_o: np.ndarray, round_index: int) -> dict[str, float]:
    """C2ST at x_o after a round, by reference (the same seeds for every run seed)."""
    samples = sample_posterior(posterior, x_o, run.config.posterior_samples, run.test_seed("seq", round_index))
    return posterior_metrics(run.task, [samples], [x_o], num_samples=run.config.posterior_samples,
                             reference_seed=lambda name, _: run.test_seed(f"reference/{name}", round_index),
                             c2st_seed=lambda _: round_index, per_observation=False).c2st


GUARD_FILE = "transfer-guard.json"


def _guard_round(run: Run, plan: RoundPlan, sim_table, members: int) -> dict:
    """The transfer guard of a sequential MF run, stored before the round trains (``--resume`` reuses it).

    The previous round's members (the fine-tuned chain) and estimators trained from scratch on the
    same earlier rows are scored on this round's new rows, which neither has trained on.
    """
    held_theta, held_x = sim_table.read("ok", rounds=[plan.index])
    earlier = sim_table.num_rows - len(sim_table.read("all", rounds=[plan.index])[0])
    if len(held_theta) < 2:
        guard = not_compared(f"round {plan.index + 1} holds {len(held_theta)} new HF rows; the guard needs 2")
    else:
        config = run.config
        jobs = [run.train_job(table=run.own_table, fidelity="hf", limit=earlier,
                              learning_rate=config.hf_training_rate(False), seed=run.seed("guard", e), pretrained=None)
                for e in range(members)]
        scratch = run.train(jobs, label=f"transfer guard: train {members} × {earlier} HF from scratch")
        tuned = pair_log_probs(_posterior(plan.checkpoints, run.task.prior)[1], held_theta, held_x).numpy()
        fresh = pair_log_probs(_posterior([r.checkpoint for r in scratch], run.task.prior)[1], held_theta,
                               held_x).numpy()
        guard = compare_with_scratch(tuned, fresh, mode=config.transfer_guard,
                                     on=f"new HF rows of round {plan.index + 1}, held out from both",
                                     scratch_train=[r.record() for r in scratch],
                                     seed=run.seed("guard-choice", plan.index))
    run.write_artifact(GUARD_FILE, json.dumps(guard).encode())
    warn_on_negative_transfer(guard)
    return guard


# Internal objects (the run's executor, store and task) are passed through: no pydantic validation of them.
@flow(name="mfsbi-round", flow_run_name="{plan.label}", validate_parameters=False)
def sequential_round(run: Run, plan: RoundPlan) -> tuple[list[bytes], RoundRecord, dict | None, dict | None]:
    """One round: propose, reserve, simulate, (guard,) train, check near x_o, report.

    Returns:
        The members' checkpoints, the round's record, the transfer guard's record (or ``None``) and,
        in the last round, the final posterior's check near x_o (or ``None``).
    """
    started = time.perf_counter()
    config = run.config
    sim_table = run.store.table(run.own_table, "hf")
    info = reserve_round_once(run, sim_table, plan.index, lambda: _propose(run, plan))
    report = run.simulate_pending(sim_table, table=run.own_table, fidelity="hf")

    members = run.method.members(config.ensemble_size)
    names = [f"round-{plan.index}-member-{e}.pt" for e in range(members)]
    stored = [run.read_artifact(name) for name in names]
    trained = all(s is not None for s in stored)
    guard = None
    if plan.guard:
        decided = run.read_artifact(GUARD_FILE)
        if decided is not None:
            guard = json.loads(decided)
        elif not trained:  # a round trained before the guard existed keeps its members, unguarded
            guard = _guard_round(run, plan, sim_table, members)
    starts, refit = (plan.checkpoints, False) if plan.checkpoints is not None else ([plan.initial] * members, True)
    if guard is not None and guard["kept"] == "from scratch":
        starts, refit = [None] * members, True
    if trained:
        checkpoints = stored
    else:
        jobs = [run.train_job(table=run.own_table, fidelity="hf", limit=sim_table.num_rows,
                              learning_rate=config.hf_training_rate(False), seed=run.seed("train", plan.index, e),
                              pretrained=starts[e], refit_x_zscore=refit)
                for e in range(members)]
        results = run.train(jobs, label=f"{plan.label}: train {members} × {sim_table.counts()['ok']} HF")
        checkpoints = [r.checkpoint for r in results]
        for name, checkpoint in zip(names, checkpoints):
            run.write_artifact(name, checkpoint)

    acquired = int(info.get("acquired", 0))
    coverage = final = None
    if plan.checkpoints is not None:
        coverage = round_coverage(run, sim_table, plan.index, plan.checkpoints, plan.x_o, acquired)
        if plan.last and config.coverage_folds > 0:
            final = final_coverage(run, sim_table, plan.index, starts, refit, plan.checkpoints, plan.x_o, acquired)
    counts = sim_table.counts()
    record = RoundRecord(round=plan.index, new_simulations=plan.size, total_simulations=counts["ok"],
                         failed=counts["failed"], simulated_now=report.simulated,
                         acceptance_rate=info.get("acceptance_rate"), acquired=info.get("acquired", 0),
                         selected_scores=info.get("selected_scores"), pool_scores=info.get("pool_scores"),
                         coverage=coverage)
    if config.evaluate_rounds and run.task.references:
        posterior = _posterior(checkpoints, run.task.prior)[1]
        record.c2st = _round_c2st(run, posterior, plan.x_o, plan.index)
        calibrated, _ = calibration_at_reference(posterior, run.task, plan.x_o, num_samples=config.posterior_samples,
                                                 seed=run.test_seed("calibration", plan.index))
        record.calibration = {key: value for key, value in calibrated.to_dict().items()
                              if key in ("verdict", "tarp_atc", "tarp_ks_pvalue", "sbc_ks_pvalues")}
    record.seconds = round(time.perf_counter() - started, 2)
    create_markdown_artifact(key=f"round-{plan.index}", markdown=_round_markdown(plan.label, record, guard),
                             description=f"{run.task.name} {run.name}: round {plan.index}")
    return checkpoints, record, guard, final


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return str(value)


def _round_markdown(label: str, record: RoundRecord, guard: dict | None = None) -> str:
    lines = [f"### {label}", "", "| field | value |", "|---|---|"]
    for key, value in record.to_dict().items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {_short(v)}" for k, v in value.items())
        lines.append(f"| {key} | {value} |")
    if guard is not None and guard.get("compared"):
        lines.append(f"| transfer guard (mean log q on {guard['num_pairs']} {guard['on']}) | fine-tuned "
                     f"{guard['log_prob_fine_tuned']:.3f}, from scratch {guard['log_prob_scratch']:.3f}: "
                     f"kept {guard['kept']}" + (f" ({guard['reason']})" if "reason" in guard else "") + " |")
    elif guard is not None:
        lines.append(f"| transfer guard | not compared: {guard['reason']} |")
    return "\n".join(lines)


def run_sequential(config: RunConfig, executor: BatchExecutor) -> RunSummary:
    """The body of :func:`sequential_flow` on a given executor; returns the run summary."""
    run = Run.start(config, executor)
    sizes = round_sizes(config.hf_sims, config.rounds)
    summary = run.new_summary()
    x_o, theta_true = run.target_observation()
    initial = run.pretrained_through_chain(summary) if run.method.uses_lf else None
    sim_table = run.require_own_table()

    checkpoints: list[bytes] | None = None
    summary.rounds = []
    guarded = run.method.uses_lf and config.transfer_guard != "off"
    if guarded and len(sizes) < 2:
        summary.transfer_guard = not_compared("one round: no later round's HF rows to hold out")
    for r, size in enumerate(sizes):
        plan = RoundPlan(r, f"{config.method} round {r + 1}/{config.rounds}", size, x_o, theta_true,
                         checkpoints, initial, guard=guarded and r == len(sizes) - 1 and r > 0,
                         last=r == len(sizes) - 1)
        checkpoints, record, guard, final = sequential_round(run, plan)
        summary.rounds.append(record)
        if guard is not None:
            summary.transfer_guard = guard
        if final is not None:
            summary.coverage_at_x_o = final

    names = [f"round-{len(sizes) - 1}-member-{e}.pt" for e in range(len(checkpoints))]
    if run.method.uses_lf and config.scratch_check != "off":
        if (summary.transfer_guard or {}).get("kept") == "from scratch":
            summary.scratch_check = {"compared": False, "reason": "the last round already trained from scratch"}
        else:
            summary.scratch_check = scratch_check(run, sim_table, checkpoints, x_o)
            kept = summary.scratch_check["kept"]
            if kept != "chain":  # equal weights: a mixture holds as many chain members as from-scratch ones
                names = (names if kept == "mixture" else []) + scratch_member_names(len(checkpoints))
                checkpoints = [run.read_artifact(name) for name in names]
                if summary.coverage_at_x_o is not None:  # it checked the chain's training, not what is kept
                    summary.coverage_at_x_o["of"] = f"the chain (the cross-check kept {kept})"
    counts = sim_table.counts()
    summary.hf = HFState(stored_ok=counts["ok"], failed=counts["failed"], budget=dataclasses.asdict(sim_table.budget()))
    summary.posterior = [run.artifact(name) for name in names]
    _, posterior = _posterior(checkpoints, run.task.prior)
    summary.metrics = _final_metrics(run, posterior, x_o, theta_true)
    calibrated, on = calibration_at_reference(posterior, run.task, x_o, num_samples=config.posterior_samples,
                                              seed=run.test_seed("calibration", 10_000))
    if calibrated is not None:
        run.record_calibration(summary, calibrated, on)
    samples = sample_posterior(posterior, x_o, config.posterior_samples, run.seed("plot"))
    _budget_plot(run, summary)
    run.finish(summary, samples, theta_true, config.observation_tag)
    create_markdown_artifact(key=f"rounds-{config.method}", markdown=_rounds_table(run, summary),
                             description=f"{run.task.name} {run.name}: all rounds")
    return summary


def _final_metrics(run: Run, posterior, x_o: np.ndarray, theta_true: np.ndarray | None) -> Metrics:
    """The final posterior at x_o: C2ST and MMD (the same seeds for every run seed), NLTP and NRMSE at the true θ."""
    config, salt = run.config, 10_000
    samples = sample_posterior(posterior, x_o, config.posterior_samples, run.test_seed("seq", salt))
    value = nrmse_samples = None
    if theta_true is not None:
        with torch.no_grad():
            log_q = posterior.log_prob(torch.as_tensor(theta_true[None], dtype=torch.float32),
                                       x=torch.as_tensor(x_o, dtype=torch.float32))
        value = float(-log_q.item())
        nrmse_samples = [sample_posterior(posterior, x_o, config.posterior_samples, run.test_seed("nrmse"))]
    return posterior_metrics(run.task, [samples], [x_o], num_samples=config.posterior_samples,
                             reference_seed=lambda name, _: run.test_seed(f"reference/{name}", salt),
                             c2st_seed=lambda _: salt, per_observation=False,
                             theta_true=None if theta_true is None else [theta_true], nrmse_samples=nrmse_samples,
                             nltp=value, num_nltp_pairs=0 if theta_true is None else 1)


def _budget_plot(run: Run, summary: RunSummary) -> None:
    """C2ST after each round against the HF simulations spent so far, saved with the run."""
    matplotlib.use("Agg")

    references = sorted({name for row in summary.rounds for name in row.c2st})
    if not references:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    spent = [row.total_simulations for row in summary.rounds]
    for name in references:
        ax.plot(spent, [row.c2st.get(name) for row in summary.rounds], marker="o", label=f"vs {name}")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_xlabel("HF simulations spent")
    ax.set_ylabel("C2ST (0.5 is perfect)")
    ax.set_title(summary.run, fontsize=8)
    ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    summary.budget_plot = run.write_artifact("c2st-vs-budget.png", buffer.getvalue())
    run.publish_image(summary.budget_plot, buffer.getvalue(), "C2ST after each round against the HF simulations spent")


def _rounds_table(run: Run, summary: RunSummary) -> str:
    references = sorted({name for row in summary.rounds for name in row.c2st})
    columns = ["round", "new_simulations", "total_simulations", "acceptance_rate", "acquired"]
    lines = ["| " + " | ".join(columns + [f"c2st_{r}" for r in references]) + " |",
             "|" + "---|" * (len(columns) + len(references))]
    for row in summary.rounds:
        cells = [getattr(row, c) for c in columns] + [row.c2st.get(r) for r in references]
        lines.append("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    reserved, total = summary.hf_budget_used
    lines.append(f"\nHF budget used: {reserved} / {total}")
    coverage = summary.coverage_at_x_o
    if coverage is not None:
        lines.append(f"\ncoverage near x_o without a reference (truncated SBC + TARP of {coverage['of']} on "
                     f"{coverage['used']} of {coverage['pairs']} rows, {coverage['on']}): {coverage.get('verdict')}")
    check = summary.scratch_check
    if check is not None and check.get("compared"):
        lines.append(f"\nfrom-scratch cross-check at x_o (largest marginal shift {max(check['shift']):.2f} sd, rule "
                     f"> {check['threshold']:g}): kept {check['kept']}")
    for key in ("pair_plot", "budget_plot"):
        if getattr(summary, key):
            lines.append(f"\n{key.replace('_', ' ')}: `{run.location(getattr(summary, key))}`")
    return "\n".join(lines)


@flow(name="mfsbi-sequential",
      flow_run_name="{config.task} {config.method} hf={config.hf_sims} rounds={config.rounds} seed={config.seed}")
def sequential_flow(config: RunConfig) -> RunSummary:
    """A sequential method (TSNPE, MF-TSNPE, A-MF-TSNPE, ...) at one observation, every HF simulation stored by round.

    Arguments:
        config: the validated run configuration.

    Returns:
        The run summary (per-round table, final metrics, artifact locations).
    """
    check_store_location(config.store)  # before the lock: taking it would create the folders
    with dask_client(config.dask_address, config.n_workers, config.cluster) as client:
        with StoreLock(config.store, owner=config.run_name):
            return run_sequential(config, DaskExecutor(client))

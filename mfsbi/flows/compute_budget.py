"""MF-NPE with a compute budget instead of counts (``mfsbi run --compute-budget 2h``).

The run starts at the ``--sims`` counts and grows one fidelity of the chain at a time. Every
allocation is trained as MF-NPE trains (pretrain on LF, fine-tune through each level, fine-tune on
HF; checkpoints of the chain below HF are reused when only a higher level grew) and scored by its
held-out HF loss on planning pairs that no training sees. After two probes of each fidelity and one
training on all they simulated, the learning curves of :mod:`mfsbi.inference.allocation` are
refitted to every score so far and the next step is the one with the highest expected loss
reduction per second of compute. The run stops when
the budget or the expected gain runs out. Its result is the allocation it ends at, which uses every
simulation it paid for.

Compute is what the run's jobs measured: simulator seconds and training CPU seconds, summed over
workers (the planning pairs included; the held-out test pairs of the final metrics are not, as in
every run). A fidelity with a declared cost (``simulation_cost``) is charged and planned at that
cost instead, to plan as if a simulator were that slow; the summary says which were declared.
A step's estimate can be exceeded by what it then measures: the overrun is reported, not hidden.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from mfsbi.flows.run import Run
from mfsbi.flows.summary import RunSummary
from mfsbi.inference import Evaluation, estimator_from_bytes, fit_learning_curve, next_step, pair_log_probs
from mfsbi.runtime.simulation import SimulationReport
from mfsbi.runtime.training_jobs import TrainResult

__all__ = ["MAX_STEPS", "ComputeLedger", "learning_curves_png", "spend_compute_budget"]

# Greedy steps at most: a step at least doubles a count (by default), so this is far beyond any budget.
MAX_STEPS = 40


@dataclass
class ComputeLedger:
    """The seconds a planned run has spent, by simulations per fidelity and by training."""

    budget: float
    declared: dict[str, float] = field(default_factory=dict)
    simulations: dict[str, float] = field(default_factory=dict)
    simulated: dict[str, int] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)   # measured simulator seconds, declared or not
    training: float = 0.0

    @property
    def spent(self) -> float:
        return sum(self.simulations.values()) + self.training

    @property
    def remaining(self) -> float:
        return self.budget - self.spent

    def charge_simulations(self, fidelity: str, report: SimulationReport) -> None:
        """Charges the simulations a report says were run now (declared cost, else measured)."""
        self.simulated[fidelity] = self.simulated.get(fidelity, 0) + report.simulated
        self.measured[fidelity] = self.measured.get(fidelity, 0.0) + report.simulator_seconds
        cost = report.simulated * self.declared[fidelity] if fidelity in self.declared else report.simulator_seconds
        self.simulations[fidelity] = self.simulations.get(fidelity, 0.0) + cost

    def charge_training(self, result: TrainResult | None) -> None:
        # CPU seconds: what the training cost, whatever else shared the machine.
        if result is not None:
            self.training += result.cpu_seconds or result.seconds

    def seconds_per_simulation(self, fidelity: str, default: float | None) -> float:
        """The declared cost, else the mean measured so far, else the task's documented cost."""
        if fidelity in self.declared:
            return self.declared[fidelity]
        if self.simulated.get(fidelity):
            return self.measured[fidelity] / self.simulated[fidelity]
        return default or 0.0

    def to_dict(self) -> dict[str, object]:
        return {"budget_seconds": self.budget, "spent_seconds": round(self.spent, 3),
                "simulation_seconds": {f: round(s, 3) for f, s in self.simulations.items()},
                "training_seconds": round(self.training, 3), "simulated": dict(self.simulated),
                "declared_seconds_per_simulation": dict(self.declared)}


@dataclass
class _Trained:
    counts: dict[str, int]
    loss: float
    result: TrainResult
    spent: float


def spend_compute_budget(run: Run, summary: RunSummary) -> list[TrainResult]:
    """Plans and trains MF-NPE within ``compute_budget`` seconds (see the module).

    Returns:
        The HF training of the allocation the planner ended at, as a one-member list (what the
        amortised flow evaluates, stores and publishes). ``summary.planner`` holds every
        evaluation, decision and the fitted curve; the learning-curve plot is in the store and the UI.
    """
    config, task = run.config, run.task
    levels = [level for level, _ in run.levels]
    fidelities = ["lf", *levels, "hf"]
    counts = {"lf": config.lf_sims, **dict(run.levels), "hf": config.hf_sims}
    ledger = ComputeLedger(config.compute_budget, declared={f: c for f, c in config.simulation_cost.items()
                                                            if f in fidelities})
    logger = get_run_logger()

    # The planner's own held-out HF pairs: neither the training rows nor the test pairs of the metrics.
    table = f"{run.shared_table}.plan-seed{config.seed}"
    ledger.charge_simulations("hf", run.simulate(table=table, fidelity="hf", num_rows=config.planning_pairs,
                                                 seed=run.seed("planning"), budget=None))
    plan_theta, plan_x = run.store.table(table, "hf").read("ok")

    trained: list[_Trained] = []
    train_seconds: dict[str, float] = {}

    def train(allocation: dict[str, int]) -> _Trained:
        for done in trained:  # an allocation scored before is not trained again
            if done.counts == allocation:
                return done
        checkpoint, steps = run.chain_checkpoint(allocation["lf"], [(level, allocation[level]) for level in levels])
        for step in steps:
            ledger.charge_simulations(step.fidelity, step.simulations)
            ledger.charge_training(step.train)
            if step.train is not None:
                train_seconds[step.fidelity] = step.train.cpu_seconds or step.train.seconds
        ledger.charge_simulations("hf", run.simulate(table=run.hf_table, fidelity="hf", num_rows=allocation["hf"],
                                                     seed=config.seed, budget=allocation["hf"]))
        (result,) = run.train([run.train_job(table=run.hf_table, fidelity="hf", limit=allocation["hf"],
                                             learning_rate=config.hf_training_rate(True), seed=run.seed("train"),
                                             pretrained=checkpoint)],
                              label=f"fine-tune on {allocation['hf']} HF ({_describe(allocation)})")
        ledger.charge_training(result)
        train_seconds["hf"] = result.cpu_seconds or result.seconds
        posterior = estimator_from_bytes(result.checkpoint, task.prior).posterior()
        loss = -float(pair_log_probs(posterior, plan_theta, plan_x).mean())
        entry = _Trained(dict(allocation), loss, result, ledger.spent)
        trained.append(entry)
        logger.info("planner: %s -> held-out HF loss %.4f (%.0f of %.0f s spent)", _describe(allocation), loss,
                    ledger.spent, ledger.budget)
        return entry

    def retraining(fidelity: str) -> float:
        # Growing a level retrains it (its time grows with its rows) and re-fine-tunes every level above it.
        position = fidelities.index(fidelity)
        return sum(train_seconds.get(f, 0.0) * (config.planner_growth if f == fidelity else 1.0)
                   for f in fidelities[position:])

    def options(allocation: dict[str, int]):
        return dict(seconds_per_simulation={f: ledger.seconds_per_simulation(f, task.cost_seconds.get(f))
                                            for f in fidelities},
                    retraining_seconds={f: retraining(f) for f in fidelities}, remaining_seconds=ledger.remaining,
                    growth=config.planner_growth)

    decisions: list[dict] = []

    def _step_or_skip(allocation: dict[str, int], retrain_from: str, kind: str, why: str) -> None:
        """Trains a probe or the merge when the budget allows it; records the decision either way.

        Its expected cost: the simulations beyond those already paid for, and retraining from
        ``retrain_from`` up (the checkpoints below it are stored).
        """
        paid = {f: max(t.counts[f] for t in trained) for f in fidelities}
        per = options(allocation)
        cost = sum(max(0, allocation[f] - paid[f]) * per["seconds_per_simulation"][f] for f in fidelities)
        cost += sum(train_seconds.get(f, 0.0) * (config.planner_growth if f == retrain_from and kind == "probe" else 1)
                    for f in fidelities[fidelities.index(retrain_from):])
        fidelity = retrain_from if kind == "probe" else None
        if cost > ledger.remaining:
            decisions.append({"fidelity": fidelity, "counts": allocation, "expected_seconds": cost,
                              "reason": f"{kind} skipped: {cost:.0f} s needed, {ledger.remaining:.0f} s left"})
            return
        decisions.append({"fidelity": fidelity, "counts": allocation, "expected_seconds": cost,
                          "reason": f"{kind}: {why}"})
        spent_before = ledger.spent
        done = train(allocation)
        decisions[-1]["measured_seconds"] = round(ledger.spent - spent_before, 3)
        decisions[-1]["measured_loss"] = done.loss

    train(counts)
    # Two probes of each fidelity, cheapest first (its count times growth, then growth²; the others
    # at the start): every learning curve gets three points before any decision rests on it. Two
    # points were too few: at small counts one training's noise can make the larger count score
    # worse, and a curve fitted to that promises nothing.
    start = dict(counts)
    for fidelity in fidelities:
        for power in (1, 2):
            probe = dict(start)
            probe[fidelity] = int(np.ceil(start[fidelity] * config.planner_growth ** power))
            _step_or_skip(probe, fidelity, "probe", f"grow {fidelity} to {probe[fidelity]} to measure its learning curve")
    # Every simulation paid for is used from here on: the probes' largest counts, trained together.
    counts = {f: max(t.counts[f] for t in trained) for f in fidelities}
    if counts != start:
        # The LF-pretrained checkpoint at the largest LF count is stored: the levels above are retrained.
        _step_or_skip(counts, fidelities[1], "merge", "train on every simulation the probes paid for")
    # Greedy steps on curves refitted after every step.
    curve = None
    for _ in range(MAX_STEPS):
        curve = fit_learning_curve([Evaluation(t.counts, t.loss) for t in trained], fidelities)
        step = next_step(curve, counts, min_gain=config.planner_min_gain, **options(counts))
        decisions.append({**step.to_dict(), "curve": curve.to_dict()})
        if step.fidelity is None:
            break
        spent_before = ledger.spent
        done = train(step.counts)
        decisions[-1]["measured_seconds"] = round(ledger.spent - spent_before, 3)
        decisions[-1]["measured_loss"] = done.loss
        counts = step.counts
    else:
        decisions.append({"fidelity": None, "counts": dict(counts), "reason": f"steps: stopped after {MAX_STEPS}"})
    # The result is the allocation the planner ends at, which holds every simulation it kept: more
    # rows of the same method are never worse in expectation, while picking the lowest of noisy
    # held-out scores would favour a lucky training.
    final = next((t for t in trained if t.counts == counts), None) or train(counts)
    summary.planner = {
        "fidelities": fidelities, "ledger": ledger.to_dict(), "overrun_seconds": round(max(0.0, -ledger.remaining), 3),
        "evaluations": [{"counts": t.counts, "held_out_loss": t.loss, "spent_seconds": round(t.spent, 3)}
                        for t in trained],
        "decisions": decisions, "curve": curve.to_dict() if curve else None, "chosen": final.counts,
        "stop_reason": decisions[-1]["reason"], "planning_pairs": len(plan_theta),
    }
    summary.hf = dataclasses.asdict(SimulationReport(run.hf_table, "hf", ledger.simulated.get("hf", 0), 0,
                                                     ledger.measured.get("hf", 0.0), final.counts["hf"]))
    summary.hf_budget = dataclasses.asdict(run.store.table(run.hf_table, "hf").budget())
    _publish(run, summary, curve)
    return [final.result]


def _describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{f} {n}" for f, n in counts.items())


def _publish(run: Run, summary: RunSummary, curve) -> None:
    """The decisions as a markdown artifact, the scores and fitted curves as a plot (store and UI)."""
    planner = summary.planner
    lines = ["| step | allocation | expected gain | expected s | measured loss | reason |", "|---|---|---|---|---|---|"]
    for i, d in enumerate(planner["decisions"]):
        gain = d.get("expected_gain")
        lines.append(f"| {i} | {_describe(d['counts'])} | {'-' if gain is None else f'{gain:.3g}'} | "
                     f"{d.get('expected_seconds', 0):.0f} | {d.get('measured_loss', '-')} | {d['reason']} |")
    ledger = planner["ledger"]
    lines.append(f"\nspent {ledger['spent_seconds']:.0f} of {ledger['budget_seconds']:.0f} s "
                 f"(simulation {ledger['simulation_seconds']}, training {ledger['training_seconds']:.0f} s); "
                 f"chosen: {_describe(planner['chosen'])}")
    key = f"planner-{run.task.name}-{run.name}".lower().replace("_", "-").replace(".", "-")
    create_markdown_artifact(key=key[:100], markdown="\n".join(lines),
                             description=f"{run.task.name} {run.name}: compute-budget decisions")
    png = learning_curves_png(planner["evaluations"], planner["fidelities"], curve, planner["chosen"],
                              f"{run.task.name} {run.name}: held-out HF loss per allocation")
    summary.planner_plot = run.write_artifact("learning-curves.png", png)
    run.publish_image(summary.planner_plot, png, "planner: held-out HF loss and fitted learning curves")


def learning_curves_png(evaluations: list[dict], fidelities: list[str], curve, chosen: dict[str, int],
                        title: str) -> bytes:
    """One panel per fidelity: the scored allocations against its count, and the fitted curve through
    the chosen allocation (the other counts held there), as PNG bytes."""
    matplotlib.use("Agg")

    fig, axes = plt.subplots(1, len(fidelities), figsize=(3.2 * len(fidelities), 3), squeeze=False)
    for ax, fidelity in zip(axes[0], fidelities):
        n = np.array([e["counts"][fidelity] for e in evaluations], dtype=float)
        loss = np.array([e["held_out_loss"] for e in evaluations])
        ax.plot(n, loss, "o", ms=4, label="scored")
        if curve is not None:
            grid = np.geomspace(max(1.0, n.min() / 2), n.max() * 2, 50)
            predicted = [curve.predict({**chosen, fidelity: g}) for g in grid]
            ax.plot(grid, predicted, "-", lw=1, label="fitted")
        ax.set_xscale("log")
        ax.set_xlabel(f"{fidelity.upper()} simulations")
        ax.set_ylabel("held-out HF loss")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()

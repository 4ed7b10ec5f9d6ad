"""The multifidelity pretraining chain: pretrain on LF, then fine-tune through each intermediate fidelity.

What an MF method starts its HF training from (:func:`pretrained_through_chain`), and the chain at
any counts (:func:`chain_checkpoint`, which the compute-budget planner calls with its allocation).
Each step's checkpoint is kept in the store under a name holding the chain up to it, so it is
shared by every method and run with the same task, counts and seed, and a killed run resumes there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mfsbi.flows.summary import RunSummary
from mfsbi.runtime.simulation import SimulationReport
from mfsbi.runtime.training_jobs import TrainResult
from mfsbi.storage import SimulationStore

if TYPE_CHECKING:  # the run calls these functions: a type hint only, not an import cycle
    from mfsbi.flows.run import Run

__all__ = ["ChainStep", "chain_checkpoint", "pretrained_through_chain"]


@dataclass(frozen=True)
class ChainStep:
    """One step of the chain below HF: the table it trained on, its checkpoint, its training if run now."""

    fidelity: str
    count: int
    simulations: SimulationReport
    checkpoint: str                      # where it is in the store (``artifacts/...``)
    train: TrainResult | None = None     # None: the checkpoint was in the store already
    budget: object | None = None         # the level's budget (levels above LF)

    def record(self) -> dict:
        """What ``summary.json`` keeps of an intermediate level."""
        out = {"fidelity": self.fidelity, "simulations": dataclasses.asdict(self.simulations),
               "checkpoint": self.checkpoint}
        if self.budget is not None:
            out["budget"] = dataclasses.asdict(self.budget)
        if self.train is not None:
            out["train"] = self.train.record()
        return out


def pretrained_through_chain(run: Run, summary: RunSummary) -> bytes:
    """The estimator an MF method starts its HF training from: LF-pretrained, then fine-tuned
    through each intermediate fidelity the run gives a budget (``--sims lf=..,mf=..,hf=..``).

    Records the tables, checkpoints and (when trained now) the trainings in ``summary``.

    Returns:
        The last checkpoint of the chain.
    """
    checkpoint, steps = chain_checkpoint(run, run.config.lf_sims, run.levels)
    pretrain, *levels = steps
    summary.lf = dataclasses.asdict(pretrain.simulations)
    summary.pretrained = pretrain.checkpoint
    if pretrain.train is not None:
        summary.pretrain = pretrain.train.record()
    if levels:
        summary.levels = [step.record() for step in levels]
    return checkpoint


def chain_checkpoint(run: Run, lf_sims: int, levels: list[tuple[str, int]]) -> tuple[bytes, list[ChainStep]]:
    """Simulates and trains the chain below HF: pretrain on ``lf_sims`` LF rows, then fine-tune on
    the first ``count`` rows of each ``(level, count)`` in turn.

    Every step's checkpoint is kept in the store under a name that holds the chain up to it, so
    it is shared by every method and run with the same task, counts and seed, and a run killed
    mid-chain continues from the last level it finished.

    Returns:
        The last checkpoint, and one :class:`ChainStep` per step (LF first).
    """
    config = run.config
    report = run.simulate(table=run.shared_table, fidelity="lf", num_rows=lf_sims, seed=config.seed, budget=None)
    # The batch is in the name: a checkpoint pretrained with another batch is another estimator.
    chain = f"pretrained-lf{lf_sims}"
    name = f"{run.task.name}/{chain}-seed{config.seed}-b{config.lf_batch_size}.pt"
    checkpoint, result = _stored_checkpoint(run.store, name), None
    if checkpoint is None:
        (result,) = run.train([run.train_job(
            table=run.shared_table, fidelity="lf", limit=lf_sims, learning_rate=config.lf_learning_rate,
            seed=run.seed("pretrain"), pretrained=None, batch_size=config.lf_batch_size,
        )], label=f"pretrain on {lf_sims} LF")
        run.store.write_artifact(name, result.checkpoint)
        checkpoint = result.checkpoint
    steps = [ChainStep("lf", lf_sims, report, f"artifacts/{name}", result)]
    for level, count in levels:
        chain += f"-{level}{count}"
        # A given --hf-learning-rate also fine-tunes the levels: it is in the name, as the batch is.
        rate = "" if config.hf_learning_rate is None else f"-lr{config.hf_learning_rate:g}"
        name = f"{run.task.name}/{chain}-seed{config.seed}-b{config.lf_batch_size}{rate}.pt"
        report = run.simulate(table=run.shared_table, fidelity=level, num_rows=count, seed=config.seed, budget=count)
        stored, result = _stored_checkpoint(run.store, name), None
        if stored is None:
            (result,) = run.train([run.train_job(
                table=run.shared_table, fidelity=level, limit=count, learning_rate=config.hf_training_rate(True),
                seed=run.seed("fine-tune", len(steps) - 1), pretrained=checkpoint,
            )], label=f"fine-tune on {count} {level.upper()}")
            run.store.write_artifact(name, result.checkpoint)
            stored = result.checkpoint
        checkpoint = stored
        steps.append(ChainStep(level, count, report, f"artifacts/{name}", result,
                               run.store.table(run.shared_table, level).budget()))
    return checkpoint, steps


def _stored_checkpoint(store: SimulationStore, name: str) -> bytes | None:
    """A checkpoint of the chain, or ``None`` when no run stored it yet."""
    try:
        return store.read_artifact(name)
    except FileNotFoundError:
        return None

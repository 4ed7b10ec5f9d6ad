"""The built-in amortised training strategies (:class:`~mfsbi.flows.methods.AmortizedTraining`).

Each is what its method does between the run's start and its evaluation: NPE trains from scratch on
the HF budget; MF-NPE pretrains through the fidelity chain, then plans within a compute budget, or
chooses its estimator by cross-validation on the HF budget's rows, or fine-tunes; ML-NPE
(:func:`mfsbi.flows.multilevel.train_multilevel_run`) trains on coupled pairs. The amortised flow
(:func:`mfsbi.flows.amortized.run_amortized`) calls the method's strategy and nothing else.
"""

from __future__ import annotations

import dataclasses

from mfsbi.flows.compute_budget import spend_compute_budget
from mfsbi.flows.run import Run
from mfsbi.flows.selection import select_estimator
from mfsbi.flows.summary import RunSummary
from mfsbi.runtime.simulation import SimulationReport
from mfsbi.runtime.training_jobs import TrainResult

__all__ = ["mf_npe", "npe", "simulate_hf_budget", "train_on_hf_budget"]


def simulate_hf_budget(run: Run, summary: RunSummary) -> SimulationReport:
    """Simulates the run's HF budget (``hf_sims`` rows of its HF table); records it in ``summary``.

    Returns:
        What was simulated now and what the table holds.
    """
    config = run.config
    report = run.simulate(table=run.hf_table, fidelity="hf", num_rows=config.hf_sims, seed=config.seed,
                          budget=config.hf_sims)
    summary.hf = dataclasses.asdict(report)
    summary.hf_budget = dataclasses.asdict(run.store.table(run.hf_table, "hf").budget())
    return report


def train_on_hf_budget(run: Run, pretrained: bytes | None) -> list[TrainResult]:
    """Trains ``--ensemble`` members on the HF budget: fine-tuned from ``pretrained``, or from scratch.

    Member 0 keeps the seed of a single estimator, so ``--ensemble 1`` is the run it always was.
    """
    config = run.config
    label = f"fine-tune on {config.hf_sims} HF" if pretrained else f"train on {config.hf_sims} HF"
    members = config.ensemble
    if members > 1:
        label += f" ({members} members)"
    seeds = [run.seed("train")] + [run.seed("train", e) for e in range(1, members)]
    return run.train([run.train_job(table=run.hf_table, fidelity="hf", limit=config.hf_sims,
                                    learning_rate=config.hf_training_rate(pretrained is not None), seed=seed,
                                    pretrained=pretrained)
                      for seed in seeds], label=label)


def npe(run: Run, summary: RunSummary) -> list[TrainResult]:
    """NPE: the HF budget, trained from scratch (``--ensemble`` members)."""
    simulate_hf_budget(run, summary)
    return train_on_hf_budget(run, None)


def mf_npe(run: Run, summary: RunSummary) -> list[TrainResult]:
    """MF-NPE: within ``--compute-budget``, the planner's allocation (:mod:`mfsbi.flows.compute_budget`);
    else pretrained through the chain, then the HF budget's cross-validated choice of estimator
    (:mod:`mfsbi.flows.selection`; held-out test pairs are never passed in), or, with
    ``--transfer-guard off`` or ``--ensemble`` above 1, fine-tuned members.
    """
    config = run.config
    if config.compute_budget is not None:
        return spend_compute_budget(run, summary)
    pretrained = run.pretrained_through_chain(summary)
    simulate_hf_budget(run, summary)
    if config.transfer_guard != "off" and config.ensemble == 1:
        return select_estimator(run, summary, pretrained)
    return train_on_hf_budget(run, pretrained)

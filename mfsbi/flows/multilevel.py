"""Multilevel NPE (``--method ml-npe``) in the amortised flow: coupled pairs, then one training.

For each level above LF of the run's chain (``lf → [levels] → hf``): the level's rows are simulated
as MF-NPE simulates them (the same tables, seeds and budgets), then every row is simulated again one
level below at the same θ with the same seed, in a *twin* table (``<task>.twins-<level>``), so the
pair shares its noise on a coupled task. ML-NPE (:func:`mfsbi.inference.train_ml_npe`) then trains one
estimator on the LF rows and the coupled pairs. The twins are simulations beyond the levels' budgets,
reported in the summary (``levels[].twins``).
"""

from __future__ import annotations

import dataclasses

from mfsbi.flows.run import Run
from mfsbi.flows.summary import RunSummary
from mfsbi.runtime.multilevel_jobs import CoupledRows, MultilevelJob
from mfsbi.runtime.simulation import reserve_twins
from mfsbi.runtime.training_jobs import TrainResult

__all__ = ["train_multilevel_run", "twin_table"]


def twin_table(run: Run, fidelity: str) -> str:
    """The table of the twins, one level below, of the run's rows at ``fidelity``."""
    return f"{run.shared_table}.twins-{fidelity}"


def train_multilevel_run(run: Run, summary: RunSummary) -> list[TrainResult]:
    """Simulates the levels and their twins, trains ML-NPE on a worker; records the tables in ``summary``.

    Returns:
        The one training (a list, as the amortised flow takes its members).
    """
    config = run.config
    chain = ["lf", *(level for level, _ in run.levels), "hf"]
    counts = {"lf": config.lf_sims, **dict(run.levels), "hf": config.hf_sims}
    summary.lf = dataclasses.asdict(run.simulate(table=run.shared_table, fidelity="lf", num_rows=config.lf_sims,
                                                 seed=config.seed, budget=None))
    rows = [CoupledRows(run.shared_table, "lf", config.lf_sims)]
    levels = []
    for coarse, fine in zip(chain[:-1], chain[1:]):
        report = run.simulate(table=run.shared_table, fidelity=fine, num_rows=counts[fine], seed=config.seed,
                              budget=counts[fine])
        twins_name = twin_table(run, fine)
        source = run.store.table(run.shared_table, fine)
        twins = reserve_twins(run.store, run.task, source_table=run.shared_table, source_fidelity=fine,
                              table=twins_name, fidelity=coarse,
                              config_hash=run.config_hash(coarse, source.chunk_size, config.seed))
        twin_report = run.simulate_pending(twins, table=twins_name, fidelity=coarse)
        rows.append(CoupledRows(run.shared_table, fine, counts[fine], twins_name, coarse))
        record = {"fidelity": fine, "simulations": dataclasses.asdict(report),
                  "budget": dataclasses.asdict(source.budget()),
                  "twins": {"table": twins_name, "fidelity": coarse, **dataclasses.asdict(twin_report)}}
        if fine == "hf":
            summary.hf = record["simulations"]
            summary.hf_budget = record["budget"]
            summary.hf_twins = record["twins"]
        else:
            levels.append(record)
    if levels:
        summary.levels = levels
    # ML-NPE trains from scratch (the HF learning rate of NPE), with LF pretraining's batch: level 0,
    # the LF rows, sets the epoch, as in pretraining.
    job = MultilevelJob(run.store.url, config.task, tuple(rows), run.estimator_config(),
                        run.training_config(config.hf_training_rate(False), run.seed("train"), config.lf_batch_size),
                        run.device)
    label = f"train ML-NPE on {config.lf_sims} LF + " + " + ".join(f"{counts[f]} {f.upper()} pairs" for f in chain[1:])
    return run.train([job], label=label)

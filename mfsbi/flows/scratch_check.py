"""The from-scratch cross-check at the end of a sequential MF run (issue 34, item 2).

With an LF biased in a small way, MF-TSNPE's and A-MF-TSNPE's chains held less of the exact
posterior at x_o than TSNPE (sigma's 95 % intervals 0.68 and 0.87 of it, TSNPE 0.96;
docs/sequential.md), and the last round trained from scratch on the run's own HF rows restored it
(docs/sequential-correction-small.json). This runs that correction's estimate in every MF run:
after the last round, as many estimators as the chain has are trained from scratch on all the
run's HF rows (the budget's rows: no HF beyond it), and both are sampled at x_o. When their
marginals disagree (:func:`mfsbi.inference.agreement.marginal_agreement`; its rule was fixed on
development runs, then run on fresh ones, docs/sequential.md) the chain may have kept some of the
LF's bias: ``--scratch-check correct`` keeps the from-scratch estimate, ``report`` (the default)
keeps the chain and says so. The rule is a weak signal at HF 100 (it flagged 1 of the 7 development
chains that under-covered with the small bias), so ``mix`` needs no detection: it keeps the equal
mixture of the chain and the from-scratch estimators whatever the comparison says. The record and
the estimators are stored with the run, so ``--resume`` reuses them.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from mfsbi.flows.coverage import posterior_of
from mfsbi.flows.evaluation import sample_posterior
from mfsbi.flows.run import Run
from mfsbi.inference.agreement import marginal_agreement

__all__ = ["CHECK_SAMPLES", "SCRATCH_CHECK_FILE", "scratch_check", "scratch_member_names"]

#: Draws of each estimate at x_o the comparison reads.
CHECK_SAMPLES = 2000
SCRATCH_CHECK_FILE = "scratch-check.json"


def scratch_member_names(members: int) -> list[str]:
    """Where the from-scratch estimators are stored with the run."""
    return [f"scratch-check-member-{e}.pt" for e in range(members)]


def scratch_check(run: Run, sim_table, chain: list[bytes], x_o: np.ndarray) -> dict[str, Any]:
    """Trains from scratch on the run's HF rows and compares with the chain at x_o.

    Arguments:
        run: the run (its store, seeds and ``scratch_check`` mode).
        sim_table: the run's own HF table.
        chain: the last round's members.
        x_o: the observation.

    Returns:
        The record (stored as ``scratch-check.json``); its ``kept`` says what the run keeps: the
        ``chain``, the estimators ``from scratch`` (stored as :func:`scratch_member_names`) or the
        ``mixture`` of both.
    """
    names = scratch_member_names(len(chain))
    stored = run.read_artifact(SCRATCH_CHECK_FILE)
    if stored is not None:
        return json.loads(stored)
    checkpoints = [run.read_artifact(name) for name in names]
    if any(c is None for c in checkpoints):  # trained before a crash: not again
        rows = sim_table.counts()["ok"]
        jobs = [run.train_job(table=run.own_table, fidelity="hf", limit=sim_table.num_rows,
                              learning_rate=run.config.hf_training_rate(False), seed=run.seed("scratch-check", e),
                              pretrained=None)
                for e in range(len(chain))]
        trained = run.train(jobs, label=f"from-scratch cross-check: train {len(chain)} × {rows} HF")
        checkpoints = [t.checkpoint for t in trained]
        for name, checkpoint in zip(names, checkpoints):
            run.write_artifact(name, checkpoint)
    prior = run.task.prior
    agreement = marginal_agreement(sample_posterior(posterior_of(chain, prior), x_o, CHECK_SAMPLES,
                                                    run.seed("scratch-check/chain")),
                                   sample_posterior(posterior_of(checkpoints, prior), x_o, CHECK_SAMPLES,
                                                    run.seed("scratch-check/scratch")))
    mode = run.config.scratch_check
    kept = "mixture" if mode == "mix" else "from scratch" if agreement.disagree and mode == "correct" else "chain"
    found = ("the chain's marginals at x_o disagree with from scratch's: its coverage is in doubt"
             if agreement.disagree else "the chain agrees with from scratch at x_o")
    record = {"compared": True, "mode": mode, "hf_rows": sim_table.counts()["ok"], "members": len(chain),
              "samples": CHECK_SAMPLES, **agreement.to_dict(), "kept": kept,
              "reason": found + {"mixture": "; kept the equal mixture of both (--scratch-check mix)",
                                 "chain": "; kept the chain (--scratch-check report)" if agreement.disagree else "",
                                 "from scratch": ""}[kept],
              "posterior": [run.artifact(name) for name in names]}
    run.write_artifact(SCRATCH_CHECK_FILE, json.dumps(record).encode())
    return record

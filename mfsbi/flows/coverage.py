"""The check of a sequential run's posterior near x_o that needs no reference (issue 34, item 1).

Truncated SBC + TARP (:func:`mfsbi.inference.truncated_coverage.truncated_coverage`) on HF rows the
estimate did not train on, drawn from the prior truncated to the region the round's proposal used:

* **after each round** r ≥ 1, the posterior of round r − 1 on round r's new rows (they were drawn
  from its truncated prior and it has not seen them): no training, no HF beyond the budget;
* **at the end**, the final posterior out of fold: the last round's truncated rows in K folds, the
  last round's training done again K times, each without one fold (from the same starting weights,
  which had not seen that round's rows), each fold's rows checked under the estimate that did not
  train on them. K trainings, no HF beyond the budget (``--coverage-folds``, 0: off).

Rows a round acquired by ensemble disagreement (A-MF-TSNPE: the first ``acquired`` rows) are not
draws of the truncated prior and are left out of the check (they still train). Results are stored
with the run (``coverage-round-R.json``, ``coverage-final.json``) so that ``--resume`` reuses them.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from mfsbi.flows.run import Run
from mfsbi.inference import Ensemble, estimator_from_bytes, truncated_prior
from mfsbi.inference.truncated_coverage import pooled_truncated_coverage, truncated_coverage

__all__ = ["COVERAGE_SAMPLES", "final_coverage", "posterior_of", "round_coverage", "truncated_rows"]

#: Draws in the region per pair (SBC ranks out of 200; the rule's level does not depend on it).
COVERAGE_SAMPLES = 200


def posterior_of(checkpoints: list[bytes], prior):
    """The sbi posterior of stored members: one estimator's, or their equal-weight ensemble's."""
    members = [estimator_from_bytes(c, prior) for c in checkpoints]
    return members[0].posterior() if len(members) == 1 else Ensemble(members).posterior()


def truncated_rows(sim_table, round_index: int, acquired: int) -> np.ndarray:
    """Table rows of a round that were drawn from its truncated prior and simulated ok (acquired rows left out)."""
    first = len(sim_table.read("all", rounds=range(round_index))[0])
    size = len(sim_table.read("all", rounds=[round_index])[0])
    rows = first + np.arange(acquired, size)
    return rows[np.isin(rows, sim_table.rows("ok"))]


def _region(run: Run, checkpoints: list[bytes], x_o: np.ndarray, round_index: int):
    # The proposal's own region: the same posterior, quantile and seed as the round's proposal drew from.
    return truncated_prior(posterior_of(checkpoints, run.task.prior), run.task.prior, x_o,
                           quantile=run.config.truncation_quantile, seed=run.seed("truncate", round_index))


def _read_rows(sim_table, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    theta, x = sim_table.read("all")
    return theta[rows], x[rows]


def _stored(run: Run, name: str, compute) -> dict[str, Any]:
    found = run.read_artifact(name)
    if found is not None:
        return json.loads(found)
    result = compute()
    run.write_artifact(name, json.dumps(result).encode())
    return result


def round_coverage(run: Run, sim_table, round_index: int, previous: list[bytes], x_o: np.ndarray,
                   acquired: int) -> dict[str, Any]:
    """The previous round's posterior checked on this round's truncated rows (round ≥ 1)."""

    def compute() -> dict[str, Any]:
        rows = truncated_rows(sim_table, round_index, acquired)
        theta, x = _read_rows(sim_table, rows)
        region = _region(run, previous, x_o, round_index)
        result = truncated_coverage(posterior_of(previous, run.task.prior), region.accepts, theta, x,
                                    num_samples=COVERAGE_SAMPLES, seed=run.seed("coverage", round_index))
        return {"of": f"the posterior after round {round_index}", "on": f"round {round_index + 1}'s new rows",
                **result.to_dict()}

    return _stored(run, f"coverage-round-{round_index}.json", compute)


def final_coverage(run: Run, sim_table, round_index: int, starts: list[bytes | None], refit: bool,
                   previous: list[bytes], x_o: np.ndarray, acquired: int) -> dict[str, Any]:
    """The final posterior's training procedure checked out of fold on the last round's truncated rows.

    Arguments:
        starts: the weights each member of the last round started from (``None``: from scratch).
        refit: whether the last round refitted the x z-scoring (as its training did).
        previous: the posterior that proposed the last round (its region is the one checked).
    """
    folds = run.config.coverage_folds

    def compute() -> dict[str, Any]:
        rows = truncated_rows(sim_table, round_index, acquired)
        k = min(folds, len(rows))
        if k < 2:
            return {"of": "the final posterior", "on": "the last round's rows, out of fold", "pairs": len(rows),
                    "used": 0, "verdict": None, "reason": f"{len(rows)} truncated rows, {folds} folds: nothing to hold out"}
        order = np.random.default_rng(run.seed("coverage-folds")).permutation(rows)
        fold_rows = np.array_split(order, k)
        jobs = [run.train_job(table=run.own_table, fidelity="hf", limit=sim_table.num_rows,
                              learning_rate=run.config.hf_training_rate(False), seed=run.seed("coverage-fold", f),
                              pretrained=starts[f % len(starts)], refit_x_zscore=refit,
                              exclude_rows=tuple(int(r) for r in fold_rows[f]))
                for f in range(k)]
        trained = run.train(jobs, label=f"coverage check: {k} trainings, each without one fold of {len(rows)} rows")
        region = _region(run, previous, x_o, round_index)
        theta_all, x_all = sim_table.read("all")
        groups = [(posterior_of([t.checkpoint], run.task.prior), theta_all[fold], x_all[fold])
                  for t, fold in zip(trained, fold_rows)]
        result = pooled_truncated_coverage(groups, region.accepts, num_samples=COVERAGE_SAMPLES,
                                           seed=run.seed("coverage-final"))
        return {"of": "the final posterior", "on": f"the last round's rows, out of {k} folds", **result.to_dict()}

    return _stored(run, "coverage-final.json", compute)

"""MF-NPE's choice of estimator inside the HF budget: the candidates cross-validated on the workers.

Every trainable candidate of :data:`mfsbi.inference.selection.CANDIDATES` is trained once per fold
on the other folds of the run's own HF rows, all of them at once across the Dask workers; the flow
process scores every row with the estimator that did not train on it. By default the run keeps the
*stacked mixture*: every candidate's kept form (its fold-stopped ensemble,
:func:`mfsbi.inference.selection.fold_stopped_ensemble`: each member trained on all folds but one
and stopped on that one; the pretrained estimator as it is), weighted by
:func:`mfsbi.inference.selection.stacking_weights` of the out-of-fold scores. On the development
seeds of OU2, the noise LF and ``pyramidal`` it beat keeping one candidate by held-out NLTP on every
seed, at a C2ST cost of about 0.015 on OU2 (docs/selection.md, "Stacking the candidates").
``--transfer-guard select`` keeps one candidate by :func:`mfsbi.inference.selection.choose`, as
before. Held-out test pairs are never read here (issue 30): the kept estimator is the same whatever
test data the run reports on.
"""

from __future__ import annotations

import math

import numpy as np
from prefect import get_run_logger

from mfsbi.flows.run import Run
from mfsbi.flows.summary import RunSummary
from mfsbi.inference import Calibration, clearly_miscalibrated, estimator_from_bytes
from mfsbi.inference.selection import (
    CANDIDATES, Candidate, choose, fold_assignment, log_q, mixture_out_of_fold_calibration, mixture_scores,
    out_of_fold_calibration, out_of_fold_scores, spread_weights, stacking_weights,
)
from mfsbi.runtime.training_jobs import TrainResult, read_training_data

__all__ = ["DEFAULT_CANDIDATE", "SELECTION_FOLDS", "SELECTION_MARGIN", "select_estimator"]

#: Folds of the cross-validation: 5 trains each fold estimator on 80 % of the rows.
SELECTION_FOLDS = 5
#: The candidate a run keeps unless another scores clearly better.
DEFAULT_CANDIDATE = "fine-tuned"
#: Nats of mean out-of-fold log q a candidate must clear over the default (docs/selection.md).
SELECTION_MARGIN = 0.25
#: Stacking weights below this are dropped (their members not kept) and the rest renormalised.
STACKING_FLOOR = 0.01
#: Posterior draws per row of the out-of-fold calibration: the verdict's power at 100-200 draws was
#: within 7 points of 1 000 (docs/calibration.md, "Power and false alarms of the verdict").
CALIBRATION_DRAWS = 200


def _pretrained_result(checkpoint: bytes, device: str) -> TrainResult:
    """The pretrained estimator as a training result of its own (kept as it is: nothing trained now)."""
    return TrainResult(checkpoint=checkpoint, epochs=0, best_validation_loss=math.nan, seconds=0.0,
                       num_simulations=0, device=device, worker="", validation_losses=())


def _fold_job(run: Run, candidate: Candidate, pretrained: bytes, seed: int, fold: tuple[int, ...],
              stopped_on_fold: bool):
    """The candidate trained on the rows outside ``fold``: stopped on a random 10 % of them (scored on
    ``fold``), or on ``fold`` itself (a member of the kept ensemble)."""
    config = run.config
    return run.train_job(table=run.hf_table, fidelity="hf", limit=config.hf_sims,
                         learning_rate=config.hf_training_rate(candidate.from_pretrained), seed=seed,
                         pretrained=pretrained if candidate.from_pretrained else None,
                         anchor_penalty=candidate.anchor_penalty, exclude_rows=fold,
                         validate_on_excluded=stopped_on_fold)


def _kept_jobs(run: Run, candidate: Candidate, pretrained: bytes, rows: np.ndarray, folds: np.ndarray) -> list:
    """The members of the kept ensemble: one per fold, trained on the others and stopped on it."""
    return [_fold_job(run, candidate, pretrained, run.seed("selection-kept", k),
                      tuple(int(r) for r in rows[folds == k]), stopped_on_fold=True)
            for k in range(int(folds.max()) + 1)]


def _stack(run: Run, scores: dict[str, np.ndarray], fold_estimators: dict[str, list], theta: np.ndarray,
           x: np.ndarray, folds: np.ndarray) -> tuple[dict[str, float], np.ndarray, Calibration | None]:
    """Stacking weights (those under :data:`STACKING_FLOOR` dropped), the mixture's out-of-fold log q and calibration."""
    weights = stacking_weights(scores, floor=STACKING_FLOOR)
    calibration = mixture_out_of_fold_calibration(fold_estimators, weights, theta, x, folds, draws=CALIBRATION_DRAWS,
                                                  seed=run.seed("selection-calibration"),
                                                  max_bytes=run.config.training_memory)
    return weights, mixture_scores(scores, weights), calibration


def select_estimator(run: Run, summary: RunSummary, pretrained: bytes) -> list[TrainResult]:
    """Cross-validates the candidates on the run's HF rows, records the choice, returns what is kept.

    ``--transfer-guard stack`` (the default) keeps the stacked mixture: every candidate's kept form
    weighted by stacking of the out-of-fold scores. ``select`` keeps one candidate by the rule of
    :func:`mfsbi.inference.selection.choose`, ``report`` the fine-tuning. A candidate's kept form
    is its fold-stopped ensemble, in which every row trained all members but one and stopped that
    one (the members train in the batch of the folds; in ``select``, another kept candidate's after
    the choice); the pretrained estimator is kept as it is.

    Arguments:
        run: the run (its HF table holds the budget's rows, all simulated).
        summary: gets ``selection`` (every candidate's score and interval, what was kept and why),
            ``out_of_fold`` and, for the stacked mixture, ``posterior_weights`` (one per member).
        pretrained: the checkpoint MF-NPE starts from (LF, then each level of the chain).

    Returns:
        The kept estimator's members.
    """
    config = run.config
    table = run.store.table(run.hf_table, "hf")
    rows = table.rows("ok")
    rows = rows[rows < config.hf_sims]
    theta, x = read_training_data(table, config.hf_sims)
    folds_count = min(SELECTION_FOLDS, len(rows))
    if folds_count < 2:
        raise ValueError(f"hf_sims: {len(rows)} HF rows stored ok: choosing an estimator needs 2 or more; "
                         "simulate more or pass --transfer-guard off")
    folds = fold_assignment(len(rows), folds_count, run.seed("selection-folds"))
    trainable = [c for c in CANDIDATES.values() if c.trains]
    stacking = config.transfer_guard == "stack"
    # The kept members in the same batch as the folds: every trainable candidate's when stacking, else the default's.
    speculative = trainable if stacking else [CANDIDATES[DEFAULT_CANDIDATE]]
    jobs = [job for c in speculative for job in _kept_jobs(run, c, pretrained, rows, folds)]
    jobs += [_fold_job(run, c, pretrained, run.seed("selection", k), tuple(int(r) for r in rows[folds == k]),
                       stopped_on_fold=False)
             for c in trainable for k in range(folds_count)]
    results = run.train(jobs, label=f"fine-tune {len(speculative) * folds_count} fold-stopped members on "
                                    f"{config.hf_sims} HF; cross-validate {len(trainable)} candidates")
    kept_members = {c.name: results[i * folds_count:(i + 1) * folds_count] for i, c in enumerate(speculative)}
    results = results[len(speculative) * folds_count:]
    kept_members["pretrained"] = [_pretrained_result(pretrained, run.device)]
    by_candidate = {c.name: results[i * folds_count:(i + 1) * folds_count] for i, c in enumerate(trainable)}
    prior = run.task.prior
    start = estimator_from_bytes(pretrained, prior)
    fold_estimators = {"pretrained": [start] * folds_count}
    fold_estimators.update({name: [estimator_from_bytes(r.checkpoint, prior) for r in fold_results]
                            for name, fold_results in by_candidate.items()})
    scores = {"pretrained": log_q(start, theta, x)}
    scores.update({name: out_of_fold_scores(estimators, theta, x, folds)
                   for name, estimators in fold_estimators.items() if name != "pretrained"})
    calibrations = {name: out_of_fold_calibration(estimators, theta, x, folds, draws=CALIBRATION_DRAWS,
                                                  seed=run.seed("selection-calibration"), max_bytes=config.training_memory)
                    for name, estimators in fold_estimators.items()}
    miscalibrated = {name: result.verdict for name, result in calibrations.items() if clearly_miscalibrated(result)}
    choice = choose(scores, default=DEFAULT_CANDIDATE, margin=SELECTION_MARGIN, seed=run.seed("selection-choice"),
                    miscalibrated=miscalibrated)
    weights = None
    if stacking:
        weights, kept_scores, kept_calibration = _stack(run, scores, fold_estimators, theta, x, folds)
        kept = "stacked"
        reason = ("the candidates mixed with the weights that maximise their out-of-fold log score (stacking): "
                  + ", ".join(f"{n} {w:.2f}" for n, w in weights.items()) + f"; the rule alone would keep {choice.kept}")
    else:
        kept = choice.kept if config.transfer_guard == "select" else DEFAULT_CANDIDATE
        reason = choice.reason if kept == choice.kept else f"--transfer-guard report keeps {DEFAULT_CANDIDATE}; {choice.reason}"
        kept_scores, kept_calibration = scores[kept], calibrations[kept]
    summary.selection = {**choice.to_dict(), "kept": kept, "reason": reason, "mode": config.transfer_guard,
                         "weights": weights, "chosen_by_rule": choice.kept,
                         "calibration": {name: None if result is None else {
                             "verdict": result.verdict, "test": result.test, "draws": result.num_posterior_samples}
                             for name, result in calibrations.items()},
                         "folds": folds_count, "rows": len(rows), "on": "the HF budget's own rows (out of fold)",
                         "trainings": {name: [r.record() for r in fold] for name, fold in by_candidate.items()}}
    summary.out_of_fold = {"nltp": -float(np.mean(kept_scores)), "rows": len(rows), "estimator": kept,
                           "calibration": None if kept_calibration is None else kept_calibration.verdict}
    logger = get_run_logger()
    for name, row in choice.scores.items():
        verdict = calibrations[name].verdict if calibrations[name] is not None else "-"
        logger.info("candidate %s: out-of-fold mean log q %.3f (90 %% interval %.3f to %.3f), calibration %s", name,
                    row["mean"], row["lower"], row["upper"], verdict)
    logger.info("kept %s: %s", kept, reason)
    if stacking:
        members, summary.posterior_weights = spread_weights(weights, kept_members)
        return members
    if kept in kept_members:
        return kept_members[kept]
    return run.train(_kept_jobs(run, CANDIDATES[kept], pretrained, rows, folds),
                     label=f"train the kept candidate ({kept}): {folds_count} fold-stopped members")

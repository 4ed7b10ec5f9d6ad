r"""Choosing MF-NPE's estimator on the HF budget's own rows: K-fold cross-validation of candidates.

The candidates are ways to turn the LF-pretrained estimator and the HF rows into an estimator
(:data:`CANDIDATES`): the pretrained estimator as it is, an anchored fine-tuning (an L2-SP
penalty keeps it near the pretrained weights), the plain fine-tuning, and an estimator trained
from scratch. Each trainable candidate is trained once per fold on the other folds and stopped
early on its own held-out fold; its *out-of-fold score* is log q(theta_i | x_i) of every row under
the estimator that did not train on it. Nothing else is used to choose: held-out test pairs only
report (issue 30, item 1).

The rule (:func:`choose`, written here: no library has a rule for choosing among estimators): the
run keeps its default candidate unless another scores clearly better, that is when the one-sided
95 % bootstrap lower bound of the mean paired difference (other minus default, over the rows)
lies above ``margin``. The margin is the criterion's measured noise: the out-of-fold score of one
candidate trained again with another seed on the same rows moves by about that much
(docs/selection.md). Among several clear winners, the one with the highest mean. The kept
estimator is the chosen candidate's *fold-stopped ensemble* (:func:`fold_stopped_ensemble`): K
trainings, each on all folds but one and stopped early on that one, mixed with equal weights, so
that every row trains four members and stops the fifth; or the pretrained estimator itself.
Measured on development seeds, it beat one fine-tuning stopped on a random 10 % of the rows (5 rows
at 50 HF) by about 0.03 C2ST and 0.5 nats of held-out log q (docs/benchmark-ou2.md, "When the
fine-tuning stops"). Its members are not the ones scored: a fold estimator stopped on its own fold
scores that fold too well (about 0.6 nats at 50-100 HF, measured there), which would favour every
trained candidate over the pretrained estimator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from scipy.stats import bootstrap

from .acquisition import Ensemble
from .config import TrainingConfig
from .training import TrainedEstimator, fine_tune, train_npe

__all__ = ["CANDIDATES", "Candidate", "Choice", "CrossValidation", "choose", "cross_validate", "fold_assignment",
           "fold_stopped_ensemble", "log_q", "out_of_fold_scores"]


@dataclass(frozen=True)
class Candidate:
    """How a candidate estimator is made from the pretrained one and HF rows.

    Arguments:
        name: the candidate's name in summaries.
        trains: whether it trains at all (the pretrained estimator as it is does not).
        from_pretrained: fine-tunes the pretrained estimator (else trains from scratch).
        learning_rate: of its training.
        anchor_penalty: L2-SP strength toward the pretrained weights (0: none).
        nearness: how close it stays to the pretrained estimator (0 nearest); ties go to the nearer.
    """

    name: str
    trains: bool
    from_pretrained: bool
    learning_rate: float
    anchor_penalty: float
    nearness: int

    def training(self, seed: int, **overrides: Any) -> TrainingConfig:
        """Its training settings with ``seed`` (and any other field overridden)."""
        return TrainingConfig(learning_rate=self.learning_rate, anchor_penalty=self.anchor_penalty, seed=seed,
                              **overrides)


#: The candidates in order of nearness to the pretrained estimator. Learning rates: the measured
#: defaults of the run (fine-tuning 1e-4, from scratch 5e-4; docs/benchmark-ou2.md).
CANDIDATES: dict[str, Candidate] = {c.name: c for c in (
    Candidate("pretrained", trains=False, from_pretrained=True, learning_rate=1e-4, anchor_penalty=0.0, nearness=0),
    Candidate("anchored", trains=True, from_pretrained=True, learning_rate=1e-4, anchor_penalty=0.5, nearness=1),
    Candidate("fine-tuned", trains=True, from_pretrained=True, learning_rate=1e-4, anchor_penalty=0.0, nearness=2),
    Candidate("scratch", trains=True, from_pretrained=False, learning_rate=5e-4, anchor_penalty=0.0, nearness=3),
)}


def fold_assignment(num_rows: int, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each of ``num_rows`` rows: a seeded permutation cut in near-equal parts."""
    if not 2 <= folds <= num_rows:
        raise ValueError(f"folds: need 2 <= folds <= rows ({num_rows}), got {folds}")
    assignment = np.empty(num_rows, dtype=np.int64)
    for k, rows in enumerate(np.array_split(np.random.default_rng([seed, 30]).permutation(num_rows), folds)):
        assignment[rows] = k
    return assignment


@torch.no_grad()
def log_q(estimator: TrainedEstimator, theta: Any, x: Any) -> np.ndarray:
    """log q(theta_i | x_i) per row (the network's own density, as training's loss sees it)."""
    network = estimator.network
    device = next(network.parameters()).device
    theta_t = torch.as_tensor(np.asarray(theta), dtype=torch.float32, device=device)
    x_t = torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)
    return (-network.loss(theta_t, x_t)).double().cpu().numpy()


def out_of_fold_scores(fold_estimators: Sequence[TrainedEstimator], theta: Any, x: Any,
                       folds: np.ndarray) -> np.ndarray:
    """Every row scored by the estimator of its own fold (the one that did not train on it)."""
    theta, x = np.asarray(theta), np.asarray(x)
    scores = np.empty(len(theta))
    for k, estimator in enumerate(fold_estimators):
        held = folds == k
        scores[held] = log_q(estimator, theta[held], x[held])
    return scores


def train_candidate(candidate: Candidate, pretrained: TrainedEstimator, theta: Any, x: Any,
                    seed: int, validation: Optional[tuple[Any, Any]] = None, **training: Any) -> TrainedEstimator:
    """One candidate estimator on the given rows (the pretrained estimator itself when it trains nothing).

    Arguments:
        validation: rows that stop the training (the held-out fold); default a random 10 % of the rows.
        training: overrides of the candidate's training settings (``max_num_epochs=...``).
    """
    if not candidate.trains:
        return pretrained
    training = candidate.training(seed, **training)
    if candidate.from_pretrained:
        return fine_tune(pretrained, theta, x, training=training, validation=validation)
    return train_npe(pretrained.prior, theta, x, estimator=pretrained.estimator, training=training,
                     validation=validation)


@dataclass
class CrossValidation:
    """Out-of-fold scores of candidates, and their fold (and optionally all-row) estimators.

    ``full`` holds each candidate trained once on all rows (stopped on a random 10 % of them):
    what benchmarks compare the kept fold ensemble with.
    """

    folds: np.ndarray
    scores: dict[str, np.ndarray]
    fold_estimators: dict[str, list[TrainedEstimator]]
    full: dict[str, TrainedEstimator] = field(default_factory=dict)

    def fold_ensemble(self, name: str):
        """The candidate's fold estimators as an equal-weight mixture (the pretrained one as it is)."""
        members = self.fold_estimators[name]
        return members[0] if len(set(map(id, members))) == 1 else Ensemble(members)


def cross_validate(pretrained: TrainedEstimator, theta: Any, x: Any, folds: np.ndarray, *,
                   candidates: Sequence[str | Candidate] = tuple(CANDIDATES), seed: int = 0,
                   with_full: bool = False, **training: Any) -> CrossValidation:
    """K-fold cross-validation of candidates in this process (a notebook's way; runs send jobs to workers).

    Arguments:
        pretrained: the LF-pretrained estimator.
        theta, x: the HF rows (all valid).
        folds: each row's fold, from :func:`fold_assignment`.
        candidates: names in :data:`CANDIDATES`, or candidates of one's own.
        seed: the fold trainings' seed (fold k trains with ``seed + k``).
        with_full: also train each candidate on all rows (a random 10 % of them stopping it).
        training: overrides of every candidate's training settings (``max_num_epochs=...``).

    Returns:
        A :class:`CrossValidation`.
    """
    theta, x = np.asarray(theta, dtype=np.float64), np.asarray(x, dtype=np.float64)
    out = CrossValidation(folds=folds, scores={}, fold_estimators={})
    for candidate in candidates:
        candidate = CANDIDATES[candidate] if isinstance(candidate, str) else candidate
        name = candidate.name
        estimators = [train_candidate(candidate, pretrained, theta[folds != k], x[folds != k], seed + k, **training)
                      for k in range(int(folds.max()) + 1)]
        out.fold_estimators[name] = estimators
        out.scores[name] = out_of_fold_scores(estimators, theta, x, folds)
        if with_full:
            out.full[name] = train_candidate(candidate, pretrained, theta, x, seed, **training)
    return out


def fold_stopped_ensemble(candidate: str | Candidate, pretrained: TrainedEstimator, theta: Any, x: Any,
                          folds: np.ndarray, seed: int = 0, **training: Any):
    """What a run keeps of a candidate: K trainings, each on all folds but one and stopped on that one, mixed.

    Arguments:
        candidate: a name in :data:`CANDIDATES` or a candidate of one's own.
        pretrained: the LF-pretrained estimator (returned as it is for a candidate that trains nothing).
        theta, x: the HF rows (all valid).
        folds: each row's fold, from :func:`fold_assignment`.
        seed: member k trains with ``seed + k``.
        training: overrides of the candidate's training settings.

    Returns:
        An equal-weight :class:`~mfsbi.inference.acquisition.Ensemble` of the K members, or ``pretrained``.
    """
    candidate = CANDIDATES[candidate] if isinstance(candidate, str) else candidate
    if not candidate.trains:
        return pretrained
    theta, x = np.asarray(theta, dtype=np.float64), np.asarray(x, dtype=np.float64)
    return Ensemble([train_candidate(candidate, pretrained, theta[folds != k], x[folds != k], seed + k,
                                     validation=(theta[folds == k], x[folds == k]), **training)
                     for k in range(int(folds.max()) + 1)])


@dataclass(frozen=True)
class Choice:
    """Which candidate a run keeps, every candidate's score with its interval, and why."""

    kept: str
    default: str
    margin: float
    scores: dict[str, dict[str, float]]   # name -> mean, lower, upper (90 % bootstrap), vs_default_lower
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _interval(values: np.ndarray, seed: int, resamples: int) -> tuple[float, float]:
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    low, high = bootstrap((values,), np.mean, confidence_level=0.90, method="percentile", n_resamples=resamples,
                          random_state=np.random.default_rng([seed, 31])).confidence_interval
    return float(low), float(high)


def choose(scores: dict[str, np.ndarray], *, default: str, margin: float, seed: int = 0,
           resamples: int = 2000, miscalibrated: Optional[dict[str, str]] = None) -> Choice:
    """The rule of the module: keep ``default`` unless another candidate is clearly better.

    A candidate clearly miscalibrated (biased or over-confident out of fold) is never switched to;
    and when the default is, a candidate that is not and scores about as well (its mean difference
    to the default no lower than ``-margin``, the 95 % upper bound of it above zero) replaces it: the
    best-scoring such one.

    Arguments:
        scores: out-of-fold log q per row, by candidate (the same rows for all).
        default: the candidate kept unless another is clearly better.
        margin: nats of mean log q a difference must clear (the criterion's measured noise).
        seed: seeds the bootstrap.
        resamples: bootstrap resamples.
        miscalibrated: candidates whose out-of-fold calibration is clearly off, with the verdict.

    Returns:
        A :class:`Choice`.
    """
    if default not in scores:
        raise ValueError(f"default: {default!r} has no scores; candidates are {sorted(scores)}")
    miscalibrated = miscalibrated or {}
    table: dict[str, dict[str, float]] = {}
    clear: list[tuple[float, str]] = []
    similar: list[tuple[float, str]] = []
    for name, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        low, high = _interval(values, seed, resamples)
        row = {"mean": float(values.mean()), "lower": low, "upper": high}
        if name != default:
            difference = values - np.asarray(scores[default], dtype=np.float64)
            row["vs_default_mean"] = float(difference.mean())
            row["vs_default_lower"], row["vs_default_upper"] = _interval(difference, seed, resamples)
            if name not in miscalibrated:
                if row["vs_default_lower"] > margin:
                    clear.append((row["mean"], name))
                if row["vs_default_upper"] > 0 and row["vs_default_mean"] >= -margin:
                    similar.append((row["mean"], name))
        table[name] = row
    if clear:
        kept = max(clear)[1]
        reason = (f"{kept} scored clearly better than {default}: mean out-of-fold log q {table[kept]['mean']:.3f} vs "
                  f"{table[default]['mean']:.3f}, the 95 % lower bound of the difference "
                  f"{table[kept]['vs_default_lower']:+.3f} above the margin {margin:g}")
    elif default in miscalibrated and similar:
        kept = max(similar)[1]
        reason = (f"{default} is {miscalibrated[default]} out of fold; {kept} is not and scores about as well "
                  f"(mean out-of-fold log q {table[kept]['mean']:.3f} vs {table[default]['mean']:.3f})")
    else:
        kept = default
        reason = (f"kept the default {default}: no candidate's 95 % lower bound of its difference to it lies above "
                  f"the margin {margin:g} (the criterion's noise)")
    if miscalibrated:
        reason += "; clearly miscalibrated out of fold: " + ", ".join(f"{k} ({v})" for k, v in sorted(miscalibrated.items()))
    return Choice(kept=kept, default=default, margin=margin, scores=table, reason=reason)

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
from .calibration import Calibration, calibration_from_samples, samples_on_pairs
from .config import TrainingConfig
from .training import TrainedEstimator, fine_tune, train_npe

__all__ = ["CANDIDATES", "Candidate", "Choice", "CrossValidation", "choose", "choose_nearest", "cross_validate",
           "fold_assignment", "fold_stopped_ensemble", "log_q", "mixture_out_of_fold_calibration", "mixture_scores",
           "out_of_fold_calibration", "out_of_fold_scores", "spread_weights", "stacking_weights"]


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


def out_of_fold_calibration(fold_estimators: Sequence[TrainedEstimator], theta: Any, x: Any, folds: np.ndarray, *,
                            draws: int, seed: int, max_bytes: Optional[int] = None) -> Optional[Calibration]:
    """SBC + TARP with every row sampled from the estimator that did not train on it.

    :func:`mixture_out_of_fold_calibration` of one candidate (``fold_estimators``: fold k's
    estimator, trained without fold k's rows); the same arguments otherwise, and the same return.
    """
    return mixture_out_of_fold_calibration({"": fold_estimators}, {"": 1.0}, theta, x, folds, draws=draws, seed=seed,
                                           max_bytes=max_bytes)


def _allocate(draws: int, weights: dict[str, float]) -> dict[str, int]:
    """``draws`` split by ``weights`` in whole draws (largest remainders), so every row gets the same mixture."""
    exact = {name: draws * w / sum(weights.values()) for name, w in weights.items()}
    counts = {name: int(np.floor(v)) for name, v in exact.items()}
    for name in sorted(exact, key=lambda n: counts[n] - exact[n])[:draws - sum(counts.values())]:
        counts[name] += 1
    return counts


def mixture_out_of_fold_calibration(fold_estimators: dict[str, Sequence[TrainedEstimator]], weights: dict[str, float],
                                    theta: Any, x: Any, folds: np.ndarray, *, draws: int, seed: int,
                                    max_bytes: Optional[int] = None) -> Optional[Calibration]:
    """SBC + TARP of a mixture of candidates, every row sampled from the candidates' estimators that did not train on it.

    Arguments:
        fold_estimators: by candidate, fold k's estimator (trained without fold k's rows).
        weights: by candidate, its mixture weight; each row's ``draws`` are split by them.
        theta, x: the rows.
        folds: each row's fold.
        draws: posterior draws per row.
        seed: seeds the draws and TARP's reference points.
        max_bytes: bounds one sampling call's memory (default: the calibration's own bound).

    Returns:
        The calibration, or None under 2 rows.
    """
    if len(theta) < 2:
        return None
    theta = np.asarray(theta)
    x_t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    parts = []
    bound = {} if max_bytes is None else {"max_bytes": max_bytes}
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for name, count in _allocate(draws, weights).items():
            if count == 0:
                continue
            samples = torch.empty(count, len(theta), theta.shape[1])
            for k, estimator in enumerate(fold_estimators[name]):
                held = torch.as_tensor(folds == k)
                if held.any():
                    samples[:, held] = samples_on_pairs(estimator.posterior(), x_t[held], count, **bound)
            parts.append(samples)
    return calibration_from_samples(torch.cat(parts), theta, seed=seed)


def mixture_scores(scores: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Per row, log of the weighted mixture of the candidates' densities (their out-of-fold log q)."""
    used = [name for name, w in weights.items() if w > 0]
    return np.logaddexp.reduce(np.stack([np.log(weights[n]) + np.asarray(scores[n], dtype=np.float64) for n in used]),
                               axis=0)


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


def choose_nearest(scores: dict[str, np.ndarray], *, order: Sequence[str], margin: float, seed: int = 0,
                   resamples: int = 2000, miscalibrated: Optional[dict[str, str]] = None) -> Choice:
    """Nearness first: start at the candidate nearest the pretrained estimator, step farther only on a clear gain.

    The candidates are walked in ``order`` (nearest first); the walk moves from the candidate it holds
    to the next only when the next's one-sided 95 % bootstrap lower bound of its mean paired gain
    over the held one lies above ``margin``. The walk reads scores only: a candidate where it ends
    that is clearly miscalibrated then gives way as the default does in :func:`choose`, to the
    best-scoring candidate that is not and scores about as well. (Skipping miscalibrated candidates
    during the walk would compare a far one with a much worse near one and step past the better.)
    The table's ``vs_default`` columns compare with ``order[0]``; the steps are in the reason.

    Arguments:
        scores: out-of-fold log q per row, by candidate (the same rows for all).
        order: the candidates to walk, nearest to the pretrained estimator first.
        margin: nats of mean log q a step must clear (the criterion's measured noise).
        seed: seeds the bootstrap.
        resamples: bootstrap resamples.
        miscalibrated: candidates whose out-of-fold calibration is clearly off, with the verdict.

    Returns:
        A :class:`Choice` whose ``default`` is ``order[0]``.
    """
    missing = [name for name in order if name not in scores]
    if not order or missing:
        raise ValueError(f"order: {missing or 'empty'} without scores; candidates are {sorted(scores)}")
    miscalibrated = miscalibrated or {}
    start = order[0]
    table = choose(scores, default=start, margin=margin, seed=seed, resamples=resamples).scores
    held, steps = start, []
    for name in order[1:]:
        gain = np.asarray(scores[name], dtype=np.float64) - np.asarray(scores[held], dtype=np.float64)
        lower, _ = _interval(gain, seed, resamples)
        moved = lower > margin
        steps.append(f"{name} vs {held} {gain.mean():+.3f} (lower bound {lower:+.3f})" + (": stepped" if moved else ""))
        if moved:
            held = name
    reason = f"nearest first from {start}, a step needs a lower bound above {margin:g}: " + "; ".join(steps)
    if held in miscalibrated:
        fallback = choose({n: scores[n] for n in order}, default=held, margin=margin, seed=seed, resamples=resamples,
                          miscalibrated=miscalibrated)
        if fallback.kept != held and "about as well" in fallback.reason:
            reason += f"; {fallback.reason}"
            held = fallback.kept
    if miscalibrated:
        reason += "; clearly miscalibrated out of fold: " + ", ".join(f"{k} ({v})" for k, v in sorted(miscalibrated.items()))
    return Choice(kept=held, default=start, margin=margin, scores=table, reason=reason)


def stacking_weights(scores: dict[str, np.ndarray], *, floor: float = 0.0, iterations: int = 1000,
                     tolerance: float = 1e-9) -> dict[str, float]:
    """Mixture weights of the candidates that maximise the out-of-fold log score of their mixture.

    Stacking of predictive densities (Yao, Vehtari, Simpson and Gelman 2018): the weights w on the
    simplex maximising sum_i log sum_c w_c q_c(theta_i | x_i), each q_c scored out of fold. The
    components are fixed, so this is the EM update of a mixture's weights, which increases the
    objective at every step (written here: sbi mixes posteriors with given weights but fits none).

    Arguments:
        scores: out-of-fold log q per row, by candidate (the same rows for all).
        floor: candidates weighted below this are left out and the rest renormalised.
        iterations: EM steps at most.
        tolerance: stop when the objective gains less than this per row.

    Returns:
        The weight of each candidate kept (summing to 1).
    """
    names = list(scores)
    log_q = np.stack([np.asarray(scores[n], dtype=np.float64) for n in names], axis=1)
    weights = np.full(len(names), 1.0 / len(names))
    previous = -np.inf
    for _ in range(iterations):
        joint = log_q + np.log(np.maximum(weights, 1e-300))
        total = np.logaddexp.reduce(joint, axis=1)
        objective = float(total.mean())
        weights = np.exp(joint - total[:, None]).mean(axis=0)
        if objective - previous < tolerance:
            break
        previous = objective
    kept = {n: float(w) for n, w in zip(names, weights) if w >= floor}
    return {n: w / sum(kept.values()) for n, w in kept.items()}


def spread_weights(weights: dict[str, float], members: dict[str, Sequence[Any]]) -> tuple[list[Any], list[float]]:
    """One flat mixture from weighted candidates of several members each: a candidate's weight split evenly.

    Arguments:
        weights: by candidate, its mixture weight.
        members: by candidate, its members (its fold-stopped ensemble; one for the pretrained estimator).

    Returns:
        The members of every weighted candidate, and each member's weight.
    """
    pairs = [(m, w / len(members[n])) for n, w in weights.items() for m in members[n]]
    return [m for m, _ in pairs], [w for _, w in pairs]

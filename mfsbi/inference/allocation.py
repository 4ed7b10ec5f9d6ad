r"""Spending a compute budget across fidelities: learning curves fitted on the fly, and the next step.

The paper leaves the split of a budget between LF and HF simulations open; users pick the counts
by hand. Here a run starts small and grows one fidelity at a time. After every step the held-out HF
loss (mean −log q(θ | x) on HF pairs no training saw) is measured, and a learning curve is fitted
to every evaluation so far:

.. math:: L(n) \approx L_\infty + \sum_f b_f \, n_f^{-\beta_f},

one power law per fidelity ``f`` of the chain, added (the usual form of neural scaling laws, with
one term per data source). The next step grows the fidelity whose expected loss reduction per
second of compute — the simulations it adds plus the retraining it needs — is highest; the run stops
when no affordable step is expected to gain at least ``min_gain``.

With few evaluations the fit is underdetermined (``1 + 2k`` parameters for ``k`` fidelities), so
it is a penalised least-squares fit: each rate ``β_f`` is pulled toward ``prior_rate`` (0.5, the
rate of a parametric estimator's error) with weight ``prior_weight``, and the scales are kept
non-negative (more simulations never predict a worse loss). No library fits this model and makes
this decision: written here, on scipy's ``least_squares``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

__all__ = ["Evaluation", "LearningCurve", "Step", "fit_learning_curve", "next_step"]


@dataclass(frozen=True)
class Evaluation:
    """One trained allocation: the simulations per fidelity and the held-out HF loss it reached."""

    counts: Mapping[str, int]
    loss: float


@dataclass(frozen=True)
class LearningCurve:
    """``L(n) = floor + Σ_f scale[f] · n_f^(−rate[f])`` over the fidelities of a chain."""

    floor: float
    scale: Mapping[str, float]
    rate: Mapping[str, float]
    num_evaluations: int = 0
    rms_residual: float = float("nan")

    def predict(self, counts: Mapping[str, int]) -> float:
        """The expected held-out loss at an allocation.

        Arguments:
            counts: simulations per fidelity (every fidelity of the curve, each ≥ 1).

        Returns:
            The predicted loss.
        """
        return float(self.floor + sum(self.scale[f] * float(counts[f]) ** -self.rate[f] for f in self.scale))

    def to_dict(self) -> dict[str, object]:
        return {"floor": self.floor, "scale": dict(self.scale), "rate": dict(self.rate),
                "num_evaluations": self.num_evaluations, "rms_residual": self.rms_residual}


def fit_learning_curve(evaluations: Sequence[Evaluation], fidelities: Sequence[str], *, prior_rate: float = 0.5,
                       prior_weight: float = 0.3, rate_bounds: tuple[float, float] = (0.05, 2.0)) -> LearningCurve:
    """Fits the additive power law to the evaluations so far (see the module).

    Arguments:
        evaluations: at least one :class:`Evaluation`; its counts name every fidelity.
        fidelities: the fidelities of the chain, cheapest first.
        prior_rate: the rate each ``β_f`` is pulled toward.
        prior_weight: the weight of that pull, in loss units per unit of rate.
        rate_bounds: the rates allowed.

    Returns:
        The fitted :class:`LearningCurve`.
    """
    if not evaluations:
        raise ValueError("evaluations: need at least one trained allocation to fit a learning curve")
    k = len(fidelities)
    counts = np.array([[float(e.counts[f]) for f in fidelities] for e in evaluations])
    if np.any(counts < 1):
        raise ValueError("evaluations: every fidelity needs at least one simulation in every evaluation")
    losses = np.array([float(e.loss) for e in evaluations])
    if not np.all(np.isfinite(losses)):
        raise ValueError("evaluations: a held-out loss is not finite")

    def unpack(p: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        return p[0], p[1:1 + k], p[1 + k:]

    def residuals(p: np.ndarray) -> np.ndarray:
        floor, scale, rate = unpack(p)
        predicted = floor + (scale * counts ** -rate).sum(axis=1)
        return np.concatenate([predicted - losses, prior_weight * (rate - prior_rate)])

    # Start: the floor a little below the best loss, each fidelity explaining an equal share of the rest.
    spread = max(float(losses.max() - losses.min()), 0.1)
    start_scale = [spread / k * float(np.median(counts[:, j])) ** prior_rate for j in range(k)]
    start = np.array([losses.min() - spread, *start_scale, *([prior_rate] * k)])
    lower = np.array([-np.inf, *([0.0] * k), *([rate_bounds[0]] * k)])
    upper = np.array([np.inf, *([np.inf] * k), *([rate_bounds[1]] * k)])
    fit = least_squares(residuals, np.clip(start, lower, upper), bounds=(lower, upper))
    floor, scale, rate = unpack(fit.x)
    rms = float(np.sqrt(np.mean(fit.fun[: len(losses)] ** 2)))
    return LearningCurve(float(floor), dict(zip(fidelities, map(float, scale))), dict(zip(fidelities, map(float, rate))),
                         num_evaluations=len(evaluations), rms_residual=rms)


@dataclass(frozen=True)
class Step:
    """What to do next: grow ``fidelity`` to ``counts``, or stop (``fidelity`` is None)."""

    fidelity: str | None
    counts: dict[str, int]
    expected_gain: float
    expected_seconds: float
    reason: str
    options: list[dict[str, float | str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"fidelity": self.fidelity, "counts": dict(self.counts), "expected_gain": self.expected_gain,
                "expected_seconds": self.expected_seconds, "reason": self.reason, "options": list(self.options)}


def next_step(curve: LearningCurve, counts: Mapping[str, int], *, seconds_per_simulation: Mapping[str, float],
              retraining_seconds: Mapping[str, float], remaining_seconds: float, growth: float = 2.0,
              min_gain: float = 0.01, min_partial: float = 0.25) -> Step:
    """The affordable step with the highest expected loss reduction per second, or a reason to stop.

    A fidelity whose full step does not fit in the remaining compute is offered a partial step, the
    most simulations that fit, when that is at least ``min_partial`` of the full step: the last of
    the budget is spent rather than left over (measured: on OU2 a run stopped with 83 of 600 s left
    because doubling HF needed 213 s; docs/budget-and-chains.md).

    Arguments:
        curve: the fitted learning curve.
        counts: the current allocation.
        seconds_per_simulation: the measured (or declared) cost of one simulation per fidelity.
        retraining_seconds: the training a step on each fidelity needs (growing LF retrains from the
            start; growing a higher level only re-fine-tunes from there on).
        remaining_seconds: the compute left.
        growth: a step multiplies one fidelity's count by this factor.
        min_gain: a step expected to lower the loss by less than this (nats) is not worth taking.
        min_partial: the smallest partial step, as a fraction of the full step's new simulations.

    Returns:
        The :class:`Step`; every option considered is listed in ``options``.
    """
    if growth <= 1:
        raise ValueError(f"growth: must exceed 1, got {growth}")
    if not 0 < min_partial <= 1:
        raise ValueError(f"min_partial: must be in (0, 1], got {min_partial}")
    now = curve.predict(counts)
    options = []

    def option(fidelity: str, added: int, partial: bool) -> dict[str, float | str]:
        grown = dict(counts)
        grown[fidelity] = counts[fidelity] + added
        seconds = added * seconds_per_simulation[fidelity] + retraining_seconds[fidelity]
        gain = now - curve.predict(grown)
        return {"fidelity": fidelity, "to": grown[fidelity], "expected_gain": gain, "expected_seconds": seconds,
                "gain_per_hour": 3600.0 * gain / max(seconds, 1e-9), "partial": partial}

    for fidelity in curve.scale:
        full = int(np.ceil(counts[fidelity] * growth)) - counts[fidelity]
        options.append(option(fidelity, full, False))
        if options[-1]["expected_seconds"] > remaining_seconds and seconds_per_simulation[fidelity] > 0:
            fits = int((remaining_seconds - retraining_seconds[fidelity]) // seconds_per_simulation[fidelity])
            if fits >= max(1, int(np.ceil(min_partial * full))):
                options.append(option(fidelity, fits, True))
    affordable = [o for o in options if o["expected_seconds"] <= remaining_seconds]
    if not affordable:
        cheapest = min(o["expected_seconds"] for o in options)
        return Step(None, dict(counts), 0.0, 0.0,
                    f"budget: {remaining_seconds:.0f} s left, the cheapest step needs {cheapest:.0f} s", options)
    worth = [o for o in affordable if o["expected_gain"] >= min_gain]
    if not worth:
        best = max(o["expected_gain"] for o in affordable)
        return Step(None, dict(counts), 0.0, 0.0,
                    f"gain: the best affordable step is expected to gain {best:.3g} nats (< {min_gain:g})", options)
    best = max(worth, key=lambda o: o["gain_per_hour"])
    grown = dict(counts)
    grown[str(best["fidelity"])] = int(best["to"])
    kind = "the rest of the budget: " if best["partial"] else ""
    reason = (f"grow {best['fidelity']} to {best['to']}: {kind}expected −{best['expected_gain']:.3g} nats for "
              f"{best['expected_seconds']:.0f} s ({best['gain_per_hour']:.3g} nats/h, the best of {len(worth)})")
    return Step(str(best["fidelity"]), grown, float(best["expected_gain"]), float(best["expected_seconds"]), reason,
                options)

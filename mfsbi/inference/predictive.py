"""The posterior predictive check's rule: per statistic, how far x_o lies among simulated draws, and a verdict.

Per statistic j, the two-sided predictive tail probability of x_o among the N finite draws:
``p_j = min(1, 2 min((1 + #{x_ij <= x_o,j}) / (N + 1), (1 + #{x_ij >= x_o,j}) / (N + 1)))``, the rank
test's p-value. It needs no assumption on the draws' shape (spike counts, skewed rates) and is
valid, conservative with ties, when x_o is exchangeable with the draws; at a posterior predictive it
is more conservative still, because the posterior has seen x_o (Meng 1994). The verdict flags a
statistic when ``p_j <= level / d`` (Bonferroni over the ``d`` statistics: the family-wise false
alarm is at most ``level``). The smallest ``p_j`` that N draws give is ``2 / (N + 1)``: fewer than
``2 d / level - 1`` draws cannot flag anything, and the verdict then says so instead of "typical".

The standardized distance ``|x_o,j - median_j| / IQR_j`` is reported beside it, as a size (not a test).
It is hand-written: scipy and sbi have no rank p-value of one point among samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["FAMILY_LEVEL", "PredictiveCheck", "minimum_draws", "predictive_check", "predictive_p_values",
           "standardized_distance"]

# The family-wise false-alarm level of the verdict (5 %), fixed before it was measured (docs/ppc.md).
FAMILY_LEVEL = 0.05


def _finite_columns(draws: np.ndarray) -> list[np.ndarray]:
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim != 2:
        raise ValueError(f"draws: expected shape (N, d), got {draws.shape}")
    return [column[np.isfinite(column)] for column in draws.T]


def predictive_p_values(draws: np.ndarray, x_o: np.ndarray) -> np.ndarray:
    """The two-sided rank p-value of each statistic of ``x_o`` among the draws (NaN draws left out).

    Arguments:
        draws: simulated statistics, shape ``(N, d)``.
        x_o: the observation, shape ``(d,)``.

    Returns:
        Shape ``(d,)``; NaN where x_o or every draw is not finite.
    """
    x_o = np.asarray(x_o, dtype=np.float64)
    out = np.full(x_o.shape, np.nan)
    for j, column in enumerate(_finite_columns(draws)):
        if column.size and np.isfinite(x_o[j]):
            lower = (1 + np.count_nonzero(column <= x_o[j])) / (column.size + 1)
            upper = (1 + np.count_nonzero(column >= x_o[j])) / (column.size + 1)
            out[j] = min(1.0, 2 * min(lower, upper))
    return out


def standardized_distance(draws: np.ndarray, x_o: np.ndarray) -> np.ndarray:
    """``|x_o - median| / IQR`` per statistic; inf where the IQR is 0 and x_o differs from the median, NaN where undefined."""
    x_o = np.asarray(x_o, dtype=np.float64)
    out = np.full(x_o.shape, np.nan)
    for j, column in enumerate(_finite_columns(draws)):
        if column.size and np.isfinite(x_o[j]):
            q25, median, q75 = np.quantile(column, [0.25, 0.5, 0.75])
            gap = abs(x_o[j] - median)
            out[j] = gap / (q75 - q25) if q75 > q25 else (0.0 if gap == 0 else math.inf)
    return out


def minimum_draws(num_statistics: int, level: float = FAMILY_LEVEL) -> int:
    """The fewest draws with which the check can flag a statistic: ``2 / (N + 1) <= level / d``."""
    return max(1, math.ceil(2 * max(num_statistics, 1) / level - 1))


@dataclass(frozen=True)
class PredictiveCheck:
    """The check of one observation: per-statistic numbers and the verdict.

    Arguments:
        names: the statistics' names; x_o: the observation.
        median, low, high: the draws' median and central ``1 - level / d`` interval per statistic.
        distance: :func:`standardized_distance`; p_value: :func:`predictive_p_values`.
        flagged: the statistics whose p-value is at most ``level / d``.
        num_draws: the finite draws (the fewest over the statistics).
        level: the family-wise level; verdict: one line; status: ``typical``, ``misfit`` or ``inconclusive``.
    """

    names: tuple[str, ...]
    x_o: np.ndarray
    median: np.ndarray
    low: np.ndarray
    high: np.ndarray
    distance: np.ndarray
    p_value: np.ndarray
    flagged: tuple[str, ...]
    num_draws: int
    level: float
    verdict: str
    status: str

    @property
    def misfit(self) -> bool:
        return self.status == "misfit"

    def statistics(self) -> list[dict]:
        """One JSON-ready record per statistic (None for a number that is not finite)."""
        def number(value: float) -> float | None:
            return float(value) if np.isfinite(value) else None

        return [{"name": name, "x_o": number(self.x_o[j]), "median": number(self.median[j]),
                 "interval": [number(self.low[j]), number(self.high[j])], "distance": number(self.distance[j]),
                 "p_value": number(self.p_value[j]), "flagged": name in self.flagged}
                for j, name in enumerate(self.names)]


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.3g} %"


def predictive_check(draws: np.ndarray, x_o: np.ndarray, names: Sequence[str] | None = None,
                     level: float = FAMILY_LEVEL) -> PredictiveCheck:
    """Checks x_o against statistics simulated at posterior draws (module docstring: the rule).

    Arguments:
        draws: simulated statistics, shape ``(N, d)`` (NaN rows or entries are left out per statistic).
        x_o: the observation, shape ``(d,)``.
        names: the statistics' names (default ``x0``, ``x1``, ...).
        level: the family-wise false-alarm level.

    Returns:
        The :class:`PredictiveCheck`.
    """
    x_o = np.asarray(x_o, dtype=np.float64).reshape(-1)
    columns = _finite_columns(draws)
    if len(columns) != x_o.size:
        raise ValueError(f"draws: {len(columns)} statistics, x_o has {x_o.size}")
    names = tuple(names) if names is not None else tuple(f"x{j}" for j in range(x_o.size))
    tested = [j for j, column in enumerate(columns) if column.size and np.isfinite(x_o[j])]
    each = level / max(len(tested), 1)
    p_value, distance = predictive_p_values(draws, x_o), standardized_distance(draws, x_o)
    median, low, high = (np.full(x_o.shape, np.nan) for _ in range(3))
    for j in tested:
        low[j], median[j], high[j] = np.quantile(columns[j], [each / 2, 0.5, 1 - each / 2])
    flagged = tuple(names[j] for j in tested if p_value[j] <= each)
    num_draws = min((columns[j].size for j in tested), default=0)
    interval = f"{_percent(1 - each)} predictive interval"
    rule = f"Bonferroni over {len(tested)} statistics, {_percent(level)} family-wise"
    if not tested:
        status, verdict = "inconclusive", "inconclusive: no statistic has both a finite x_o and a finite draw"
    elif flagged:
        which = ", ".join(flagged)
        status = "misfit"
        verdict = (f"statistic{'s' if len(flagged) > 1 else ''} {which} fall{'' if len(flagged) > 1 else 's'} "
                   f"outside the {interval} ({rule}): the model or the posterior misfits x_o")
    elif num_draws < minimum_draws(len(tested), level):
        status = "inconclusive"
        verdict = (f"inconclusive: {num_draws} draws cannot reach the {interval} ({rule}); "
                   f"give -n {minimum_draws(len(tested), level)} or more")
    else:
        status, verdict = "typical", f"x_o is typical of the posterior predictive: every statistic inside its {interval} ({rule})"
    return PredictiveCheck(names, x_o, median, low, high, distance, p_value, flagged, num_draws, level, verdict, status)

"""The SIR epidemic benchmark task (PAPER.md, section "Tasks").

High fidelity: the sbibm SIR. The ODE S' = -beta S I / N, I' = beta S I / N - gamma I,
R' = gamma I with N = 1e6, I(0) = 1, S(0) = N - 1, R(0) = 0 over 160 days; I is observed on
days 0, 17, ..., 153 (sbibm solves on a 1-day grid 0..160 and keeps every 17th point) and each
observation is Binomial(1000, I / N), divided by 1000 so that x is O(1).

The ODE is integrated by a fixed-step RK4 on (S, log I), vectorised over the batch: in log I the
exponential growth and decay phases have a nearly constant right-hand side, which RK4 integrates
almost exactly, so a step of 1/8 day matches ``scipy.integrate.solve_ivp`` (rtol 1e-10) to about
1e-6 relative over the prior (tests/test_benchmark_tasks.py checks it).

Low fidelity (a setting, see docs/tasks-benchmark.md):

- ``"si"`` (default, the paper): the SI model without the R compartment, I' = beta S I / N with
  S = N - I, whose solution is the logistic curve I / N = expit(beta t - log(N - 1)); the same
  observation model. It uses beta only (``low_fidelity_parameters = (0,)``).
- ``"coarse-sir"`` (the authors' code uses a cheaper SIR): the same SIR by forward Euler with a
  1-day step. It uses beta and gamma.

There is no exact reference posterior (sbibm's is MCMC-based), so ``references`` is empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.special import expit
from torch.distributions import Distribution, Independent, LogNormal

from mfsbi.simulators.base import Task, check_theta_batch

__all__ = [
    "DAYS",
    "I0",
    "LowFidelityModel",
    "NUM_OBSERVATIONS",
    "OBSERVATION_DAYS",
    "PARAMETER_NAMES",
    "POPULATION",
    "TOTAL_COUNT",
    "SIRCoarseLowFidelity",
    "SIRHighFidelity",
    "SILowFidelity",
    "euler_sir",
    "rk4_sir",
    "si_infected",
    "sir",
]

LowFidelityModel = Literal["si", "coarse-sir"]

PARAMETER_NAMES: tuple[str, ...] = ("beta", "gamma")
PRIOR_LOC: tuple[float, float] = (math.log(0.4), math.log(0.125))
PRIOR_SCALE: tuple[float, float] = (0.5, 0.2)

POPULATION = 1_000_000.0
I0 = 1.0
DAYS = 160
NUM_OBSERVATIONS = 10
# sbibm keeps every 17th point of the daily solution 0..160: days 0, 17, ..., 153.
OBSERVATION_DAYS: tuple[int, ...] = tuple(17 * k for k in range(NUM_OBSERVATIONS))
TOTAL_COUNT = 1000  # Binomial trials per observation (sbibm)

# RK4 steps per day of the high-fidelity solver. Part of the simulator's output: changing it
# requires bumping the task version.
STEPS_PER_DAY = 8


def _check_theta(theta: np.ndarray) -> np.ndarray:
    return check_theta_batch(theta, 2, "SIR")


def _check_days(days: np.ndarray | tuple[int, ...]) -> np.ndarray:
    days = np.asarray(days)
    if days.ndim != 1 or np.any(np.diff(days) < 0) or np.any(days < 0) or np.any(days != np.round(days)):
        raise ValueError(f"days must be a non-decreasing 1-D sequence of whole days >= 0, got {days}")
    return days.astype(np.int64)


def rk4_sir(
    beta: np.ndarray,
    gamma: np.ndarray,
    days: np.ndarray | tuple[int, ...] = OBSERVATION_DAYS,
    steps_per_day: int = STEPS_PER_DAY,
) -> np.ndarray:
    """I(t) of the SIR ODE by fixed-step RK4 on (S, log I), vectorised over the batch.

    Arguments:
        beta: contact rates, shape ``(n,)``.
        gamma: recovery rates, shape ``(n,)``.
        days: whole days at which I is returned, non-decreasing.
        steps_per_day: RK4 steps per day.

    Returns:
        I at ``days``, shape ``(n, len(days))``.
    """
    beta = np.asarray(beta, dtype=np.float64)
    gamma = np.asarray(gamma, dtype=np.float64)
    days = _check_days(days)
    h = 1.0 / steps_per_day
    s = np.full(beta.shape, POPULATION - I0)
    u = np.full(beta.shape, math.log(I0))  # log I
    b = beta / POPULATION
    out = np.empty(beta.shape + (len(days),))

    def rhs(s: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # S' = -beta S I / N; (log I)' = beta S / N - gamma.
        return -b * s * np.exp(u), b * s - gamma

    step, target = 0, days * steps_per_day
    for k, stop in enumerate(target):
        while step < stop:
            ks1, ku1 = rhs(s, u)
            ks2, ku2 = rhs(s + 0.5 * h * ks1, u + 0.5 * h * ku1)
            ks3, ku3 = rhs(s + 0.5 * h * ks2, u + 0.5 * h * ku2)
            ks4, ku4 = rhs(s + h * ks3, u + h * ku3)
            s = s + (h / 6.0) * (ks1 + 2.0 * ks2 + 2.0 * ks3 + ks4)
            u = u + (h / 6.0) * (ku1 + 2.0 * ku2 + 2.0 * ku3 + ku4)
            step += 1
        out[..., k] = np.exp(u)
    return out


def euler_sir(
    beta: np.ndarray,
    gamma: np.ndarray,
    days: np.ndarray | tuple[int, ...] = OBSERVATION_DAYS,
    dt: float = 1.0,
) -> np.ndarray:
    """I(t) of the SIR ODE by forward Euler on (S, I) with step ``dt`` (the coarse LF model).

    S is clipped at 0: with beta I / N > 1 / dt a full Euler step would make it negative.

    Arguments:
        beta: contact rates, shape ``(n,)``.
        gamma: recovery rates, shape ``(n,)``.
        days: whole days at which I is returned, each a multiple of ``dt``.
        dt: the step in days.

    Returns:
        I at ``days``, shape ``(n, len(days))``.
    """
    beta = np.asarray(beta, dtype=np.float64)
    gamma = np.asarray(gamma, dtype=np.float64)
    days = _check_days(days)
    steps = days / dt
    if not np.allclose(steps, np.round(steps)):
        raise ValueError(f"days {days} are not multiples of dt={dt}")
    target = np.round(steps).astype(np.int64)
    s = np.full(beta.shape, POPULATION - I0)
    i = np.full(beta.shape, I0)
    b = beta / POPULATION
    out = np.empty(beta.shape + (len(days),))
    step = 0
    for k, stop in enumerate(target):
        while step < stop:
            infections = np.minimum(dt * b * s * i, s)
            s, i = s - infections, i + infections - dt * gamma * i
            step += 1
        out[..., k] = i
    return out


def si_infected(beta: np.ndarray, days: np.ndarray | tuple[int, ...] = OBSERVATION_DAYS) -> np.ndarray:
    """I(t) of the SI model I' = beta I (N - I) / N, I(0) = 1, in closed form (logistic curve).

    Arguments:
        beta: contact rates, shape ``(n,)``.
        days: days at which I is returned.

    Returns:
        I at ``days``, shape ``(n, len(days))``.
    """
    beta = np.asarray(beta, dtype=np.float64)
    t = np.asarray(days, dtype=np.float64)
    # I / N = 1 / (1 + (N / I0 - 1) exp(-beta t)).
    return POPULATION * expit(beta[..., None] * t - math.log(POPULATION / I0 - 1.0))


def _observe(infected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Binomial(1000, I / N) / 1000 per entry; a non-finite I marks the row as failed (NaN)."""
    p = infected / POPULATION
    bad = ~np.all(np.isfinite(p), axis=1)
    # numpy's binomial refuses NaN: failed rows are drawn at p = 0 and then overwritten.
    p = np.clip(np.nan_to_num(p, nan=0.0), 0.0, 1.0)
    x = rng.binomial(TOTAL_COUNT, p) / TOTAL_COUNT
    x[bad] = np.nan
    return x


@dataclass(frozen=True)
class SIRHighFidelity:
    """The sbibm SIR: RK4 solution, Binomial observations (picklable, vectorised).

    Arguments:
        steps_per_day: RK4 steps per day.
    """

    steps_per_day: int = STEPS_PER_DAY

    def __call__(self, theta: np.ndarray, seed: int) -> np.ndarray:
        """Simulates one batch.

        Arguments:
            theta: parameters (beta, gamma), shape ``(n, 2)``.
            seed: the batch's seed.

        Returns:
            Infected counts out of 1000, divided by 1000, on days 0, 17, ..., 153: shape
            ``(n, 10)``, float64.
        """
        theta = _check_theta(theta)
        rng = np.random.default_rng(seed)
        with np.errstate(over="ignore", invalid="ignore"):
            infected = rk4_sir(theta[:, 0], theta[:, 1], OBSERVATION_DAYS, self.steps_per_day)
        return _observe(infected, rng)


@dataclass(frozen=True)
class SILowFidelity:
    """The paper's low-fidelity SIR: the SI model (no recovery), closed form; ignores gamma."""

    def __call__(self, theta: np.ndarray, seed: int) -> np.ndarray:
        """Simulates one batch.

        Arguments:
            theta: parameters (beta, gamma), shape ``(n, 2)``; gamma is ignored.
            seed: the batch's seed.

        Returns:
            Shape ``(n, 10)``, float64, as for :class:`SIRHighFidelity`.
        """
        theta = _check_theta(theta)
        rng = np.random.default_rng(seed)
        return _observe(si_infected(theta[:, 0]), rng)


@dataclass(frozen=True)
class SIRCoarseLowFidelity:
    """A coarse low-fidelity SIR: forward Euler with step ``dt`` days (picklable, vectorised).

    Arguments:
        dt: the Euler step in days; every observation day must be a multiple of it.
    """

    dt: float = 1.0

    def __call__(self, theta: np.ndarray, seed: int) -> np.ndarray:
        """Simulates one batch.

        Arguments:
            theta: parameters (beta, gamma), shape ``(n, 2)``.
            seed: the batch's seed.

        Returns:
            Shape ``(n, 10)``, float64, as for :class:`SIRHighFidelity`.
        """
        theta = _check_theta(theta)
        rng = np.random.default_rng(seed)
        with np.errstate(over="ignore", invalid="ignore"):
            infected = euler_sir(theta[:, 0], theta[:, 1], OBSERVATION_DAYS, self.dt)
        return _observe(infected, rng)


def _prior() -> Distribution:
    # Support is constraints.independent(positive, 1): unbounded above, so the estimator's
    # "logit" theta transform (sbi's biject_to(prior.support)) becomes a log transform here.
    return Independent(
        LogNormal(torch.tensor(PRIOR_LOC, dtype=torch.float32), torch.tensor(PRIOR_SCALE, dtype=torch.float32)),
        1,
    )


# Measured seconds per simulation (docs/tasks-benchmark.md).
_COST_SECONDS: dict[str, float] = {"si": 5e-7, "coarse-sir": 1.4e-6, "hf": 7.5e-5}


def sir(lf: LowFidelityModel = "si") -> Task:
    """SIR: infer (beta, gamma) of an epidemic from 10 noisy prevalence counts.

    Arguments:
        lf: the low-fidelity model, ``"si"`` (the paper, default) or ``"coarse-sir"``.

    Returns:
        The task (named ``"sir"`` for the default LF, ``"sir-coarse"`` otherwise).
    """
    if lf == "si":
        low: SILowFidelity | SIRCoarseLowFidelity = SILowFidelity()
        low_parameters: tuple[int, ...] = (0,)
        description = "SIR epidemic (sbibm), (beta, gamma); LF: SI model without recovery"
    elif lf == "coarse-sir":
        low = SIRCoarseLowFidelity()
        low_parameters = (0, 1)
        description = "SIR epidemic (sbibm), (beta, gamma); LF: SIR by 1-day forward Euler"
    else:
        raise ValueError(f"lf must be 'si' or 'coarse-sir', got {lf!r}")
    return Task(
        name="sir" if lf == "si" else "sir-coarse",
        prior=_prior(),
        parameter_names=PARAMETER_NAMES,
        low_fidelity=low,
        high_fidelity=SIRHighFidelity(),
        x_dim=NUM_OBSERVATIONS,
        low_fidelity_parameters=low_parameters,
        references={},
        version="1",
        description=description,
        cost_seconds={"lf": _COST_SECONDS[lf], "hf": _COST_SECONDS["hf"]},
    )

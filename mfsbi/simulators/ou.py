"""The Ornstein–Uhlenbeck benchmark tasks OU2, OU3 and OU4 (PAPER.md, section "Tasks").

The high-fidelity model is the OU process dX = gamma (mu - X) dt + sigma dW with
X(0) ~ N(mu + mu_offset, 1), integrated by Euler–Maruyama with dt = 0.1 and observed every 10 steps
(steps 0, 10, ..., 90). The low-fidelity model ignores the dynamics: 10 i.i.d. draws from
N(mu, sigma^2).

The observed values of the high-fidelity model form a Gaussian Markov chain, so its likelihood is
exact and cheap, and the reference posteriors are sampled exactly by rejection (see
:class:`OUReferencePosterior`). Two references are offered: ``"euler-maruyama"``, the exact
posterior of the simulator (the truth), and ``"paper"``, which uses the continuous-time transition
like the paper's reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.optimize import minimize
from torch.distributions import Distribution

from mfsbi.simulators.base import Task, check_theta_batch

__all__ = [
    "DT",
    "FIXED_GAMMA",
    "FIXED_MU_OFFSET",
    "NUM_OBSERVATIONS",
    "PARAMETER_NAMES",
    "PRIOR_HIGH",
    "PRIOR_LOW",
    "SUBSAMPLE",
    "OUHighFidelity",
    "OULowFidelity",
    "OUReferencePosterior",
    "ReferenceKind",
    "log_likelihood",
    "ou2",
    "ou3",
    "ou4",
    "transition",
]

ReferenceKind = Literal["euler-maruyama", "paper"]

PARAMETER_NAMES: tuple[str, ...] = ("mu", "sigma", "gamma", "mu_offset")
PRIOR_LOW: tuple[float, ...] = (0.1, 0.1, 0.1, 0.0)
PRIOR_HIGH: tuple[float, ...] = (3.0, 0.6, 1.0, 4.0)
# The values of the parameters that OU2 / OU3 do not infer.
FIXED_GAMMA = 0.5
FIXED_MU_OFFSET = 3.0

DT = 0.1
SUBSAMPLE = 10  # Euler–Maruyama steps between two observed values.
NUM_OBSERVATIONS = 10  # x = X at steps 0, 10, ..., 90.

# Rows simulated together: the state and a block of noise stay in cache, which is about 30%
# faster than whole-batch vectors for large batches. Part of the random stream's layout: changing
# it changes the output for a given seed, so it requires bumping the task version.
_BLOCK = 8192

_LOG_2PI = math.log(2.0 * math.pi)


def _check_theta(theta: np.ndarray, theta_dim: int) -> np.ndarray:
    return check_theta_batch(theta, theta_dim, f"OU{theta_dim}")


def _expand(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Splits ``theta (n, d)``, d in 2..4, into (mu, sigma, gamma, mu_offset), filling fixed values."""
    n, d = theta.shape
    if d not in (2, 3, 4):
        raise ValueError(f"OU parameters must have 2, 3 or 4 columns, got {d}")
    mu, sigma = theta[:, 0], theta[:, 1]
    gamma = theta[:, 2] if d >= 3 else np.full(n, FIXED_GAMMA)
    offset = theta[:, 3] if d >= 4 else np.full(n, FIXED_MU_OFFSET)
    return mu, sigma, gamma, offset


def transition(
    sigma: np.ndarray, gamma: np.ndarray, kind: ReferenceKind
) -> tuple[np.ndarray, np.ndarray]:
    """The Gaussian transition between two consecutive observed values.

    ``X_next | X_prev ~ N(mu + a (X_prev - mu), v)``.

    Arguments:
        sigma: noise scales.
        gamma: mean-reversion rates.
        kind: ``"euler-maruyama"`` (exact for the 10-step discretised simulator) or ``"paper"``
            (continuous-time OU over a unit time interval).

    Returns:
        The decay factor ``a`` and the variance ``v``, broadcast like the arguments.
    """
    if kind == "euler-maruyama":
        r = 1.0 - gamma * DT
        r2 = r * r
        r8 = r2 * r2
        r8 *= r8
        # r^SUBSAMPLE = r^10 by squaring: np.power is several times slower, and this runs in the
        # rejection sampler's inner loop.
        a = r8 * r2
        # sum_{k<10} r^{2k} in closed form; r^2 < 1 on the whole prior (gamma dt <= 0.1).
        v = sigma * sigma * DT * (1.0 - a * a) / (1.0 - r2)
    elif kind == "paper":
        interval = DT * SUBSAMPLE
        a = np.exp(-gamma * interval)
        v = sigma**2 * -np.expm1(-2.0 * gamma * interval) / (2.0 * gamma)
    else:
        raise ValueError(f"kind must be 'euler-maruyama' or 'paper', got {kind!r}")
    return a, v


def log_likelihood(
    theta: np.ndarray, x_o: np.ndarray, kind: ReferenceKind = "euler-maruyama"
) -> np.ndarray:
    """The exact log-likelihood of the OU observation model, vectorised over ``theta``.

    Arguments:
        theta: parameters of shape ``(m, d)``, d = 2 (OU2), 3 (OU3) or 4 (OU4); the parameters
            a task does not infer take their fixed values.
        x_o: one observation of shape ``(10,)``, or one per row, shape ``(m, 10)``.
        kind: the transition model, see :func:`transition`.

    Returns:
        ``log p(x_o | theta)`` of shape ``(m,)``, float64 (the prior is not included).
    """
    theta = np.asarray(theta, dtype=np.float64)
    x_o = np.asarray(x_o, dtype=np.float64)
    if theta.ndim != 2:
        raise ValueError(f"theta must have shape (m, d), got {theta.shape}")
    if x_o.shape[-1] != NUM_OBSERVATIONS or x_o.ndim not in (1, 2):
        raise ValueError(f"x_o must have shape (10,) or (m, 10), got {x_o.shape}")
    mu, sigma, gamma, offset = _expand(theta)
    a, v = transition(sigma, gamma, kind)
    n_transitions = NUM_OBSERVATIONS - 1
    if x_o.ndim == 1:
        # One observation for all rows: the squared residuals expand into sufficient statistics
        # of x_o, so the cost is O(m) instead of O(10 m) with (m, 9) temporaries. Centring x_o
        # keeps the expansion free of cancellation.
        centre = x_o.mean()
        prev, nxt = x_o[:-1] - centre, x_o[1:] - centre
        s_pp, s_nn, s_np = prev @ prev, nxt @ nxt, nxt @ prev
        s_p, s_n = prev.sum(), nxt.sum()
        c = (mu - centre) * (1.0 - a)  # residual_i = nxt_i - a prev_i - c
        squares = s_nn - 2.0 * a * s_np + a * a * s_pp - 2.0 * c * (s_n - a * s_p) + n_transitions * c * c
        first = x_o[0] - mu - offset
    else:
        if x_o.shape[0] != theta.shape[0]:
            raise ValueError(f"x_o of shape {x_o.shape} does not match theta of shape {theta.shape}")
        residual = x_o[:, 1:] - mu[:, None] - a[:, None] * (x_o[:, :-1] - mu[:, None])
        squares = np.einsum("ij,ij->i", residual, residual)
        first = x_o[:, 0] - mu - offset
    initial = -0.5 * (first * first + _LOG_2PI)
    return initial - 0.5 * squares / v - 0.5 * n_transitions * (_LOG_2PI + np.log(v))


@dataclass(frozen=True)
class OUHighFidelity:
    """The Euler–Maruyama OU simulator (picklable, vectorised over the batch).

    Only steps 0..90 are integrated: the 101-step grid of the paper ends at step 100, but steps
    91..100 are never observed, so skipping them changes no output distribution.

    Arguments:
        theta_dim: 2 (mu, sigma), 3 (+ gamma) or 4 (+ mu_offset).
    """

    theta_dim: int = 4

    def __call__(self, theta: np.ndarray, seed: int) -> np.ndarray:
        """Simulates one batch.

        Arguments:
            theta: parameters, shape ``(n, theta_dim)``.
            seed: the batch's seed.

        Returns:
            X at steps 0, 10, ..., 90, shape ``(n, 10)``, float64.
        """
        theta = _check_theta(theta, self.theta_dim)
        mu, sigma, gamma, offset = _expand(theta)
        rng = np.random.default_rng(seed)
        n = theta.shape[0]
        out = np.empty((n, NUM_OBSERVATIONS))
        for start in range(0, n, _BLOCK):
            rows = slice(start, min(start + _BLOCK, n))
            m = rows.stop - rows.start
            # X <- X (1 - gamma dt) + (gamma dt mu + sigma sqrt(dt) Z): the bracket is built for
            # 10 steps at once so the inner loop is two in-place passes per step.
            decay = 1.0 - gamma[rows] * DT
            drift = gamma[rows] * DT * mu[rows]
            scale = sigma[rows] * math.sqrt(DT)
            x = mu[rows] + offset[rows] + rng.standard_normal(m)
            noise = np.empty((SUBSAMPLE, m))
            for k in range(NUM_OBSERVATIONS):
                out[rows, k] = x
                if k == NUM_OBSERVATIONS - 1:
                    break
                rng.standard_normal(out=noise)
                noise *= scale
                noise += drift
                for j in range(SUBSAMPLE):
                    x *= decay
                    x += noise[j]
        return out


@dataclass(frozen=True)
class OULowFidelity:
    """The low-fidelity OU model: 10 i.i.d. draws from N(mu, sigma^2) (picklable, vectorised).

    Takes the full parameter vector and ignores gamma and mu_offset.

    Arguments:
        theta_dim: 2, 3 or 4, as for :class:`OUHighFidelity`.
    """

    theta_dim: int = 4

    def __call__(self, theta: np.ndarray, seed: int) -> np.ndarray:
        """Simulates one batch.

        Arguments:
            theta: parameters, shape ``(n, theta_dim)``.
            seed: the batch's seed.

        Returns:
            Outputs of shape ``(n, 10)``, float64.
        """
        theta = _check_theta(theta, self.theta_dim)
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((theta.shape[0], NUM_OBSERVATIONS))
        return theta[:, :1] + theta[:, 1:2] * z


@dataclass(frozen=True)
class OUReferencePosterior:
    """Exact samples of the OU posterior under the uniform prior, by rejection from the prior.

    Proposals are prior draws, accepted with probability ``exp(log_lik - log_envelope)``, where
    ``log_envelope`` is the maximum log-likelihood over the prior box (multi-start L-BFGS-B from
    the best points of a pilot) plus ``margin`` nats. A proposal above the envelope proves the
    optimiser missed the maximum: the sampler then discards what it accepted and restarts with
    the raised envelope, so the samples stay exact. No sampling-importance-resampling is used.

    A tighter box envelope around the mode was tried and dropped: the posterior has heavy tails
    (the scale sigma decays only polynomially), so a box that provably holds the mass is most of
    the prior box, and building it cost more than it saved. Measured on one core: 1 000 samples
    take about 5 ms for a typical OU2 observation (at most about 0.1 s), about 0.1 s for OU4
    (at most about 4 s when sigma is near 0.1 and gamma near 1, acceptance about 1e-5).

    Arguments:
        theta_dim: 2, 3 or 4 (OU2, OU3, OU4).
        kind: ``"euler-maruyama"`` (the exact posterior of the simulator) or ``"paper"``.
        margin: nats added to the maximum log-likelihood.
    """

    theta_dim: int
    kind: ReferenceKind = "euler-maruyama"
    margin: float = 0.1

    def __post_init__(self) -> None:
        if self.theta_dim not in (2, 3, 4):
            raise ValueError(f"theta_dim must be 2, 3 or 4, got {self.theta_dim}")
        transition(np.ones(1), np.ones(1), self.kind)  # validates kind
        if not self.margin > 0:
            # A zero margin could restart the sampler forever on a proposal at the maximum.
            raise ValueError(f"margin must be positive, got {self.margin}")

    def __call__(self, x_o: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
        """Draws exact posterior samples for one observation.

        Arguments:
            x_o: one observation, shape ``(10,)``.
            num_samples: how many samples.
            seed: the sampler's seed.

        Returns:
            Samples of shape ``(num_samples, theta_dim)``, float64.
        """
        return self.sample(x_o, num_samples, seed)[0]

    def sample(self, x_o: np.ndarray, num_samples: int, seed: int) -> tuple[np.ndarray, dict[str, float]]:
        """Like calling the sampler, and also returns diagnostics.

        Returns:
            The samples and a dict with ``log_max`` (the optimiser's maximum log-likelihood),
            ``log_envelope`` (the envelope finally used), ``acceptance`` (accepted / proposed
            under it) and ``restarts`` (how often a proposal exceeded the envelope).
        """
        x_o = np.asarray(x_o, dtype=np.float64).reshape(-1)
        if x_o.shape != (NUM_OBSERVATIONS,) or not np.all(np.isfinite(x_o)):
            raise ValueError(f"x_o must be 10 finite values, got shape {x_o.shape}")
        rng = np.random.default_rng(seed)
        lo = np.asarray(PRIOR_LOW[: self.theta_dim])
        width = np.asarray(PRIOR_HIGH[: self.theta_dim]) - lo

        def log_lik(u: np.ndarray) -> np.ndarray:
            # Optimisation runs in the unit cube so that one finite-difference step and the
            # L-BFGS-B tolerances suit every parameter.
            return log_likelihood(lo + width * u, x_o, self.kind)

        log_max = _maximum(log_lik, self.theta_dim, rng)
        u, diagnostics = _rejection(log_lik, self.theta_dim, log_max, self.margin, num_samples, rng)
        diagnostics["log_max"] = log_max
        return lo + width * u, diagnostics


def _maximum(log_lik: Callable[[np.ndarray], np.ndarray], d: int, rng: np.random.Generator) -> float:
    """The maximum of ``log_lik`` over the unit cube, by L-BFGS-B from the centre and the best
    three of 4 096 uniform draws; gradients by central differences evaluated in one batch."""
    step = 1e-6
    stencil = np.concatenate([np.zeros((1, d)), step * np.eye(d), -step * np.eye(d)])

    def negative(u: np.ndarray) -> tuple[float, np.ndarray]:
        values = log_lik(u + stencil)
        gradient = (values[1 : d + 1] - values[d + 1 :]) / (2.0 * step)
        return -values[0], -gradient

    pilot = rng.uniform(size=(4096, d))
    values = log_lik(pilot)
    starts = np.concatenate([np.full((1, d), 0.5), pilot[np.argsort(values)[-3:]]])
    best = float(values.max())
    for start in starts:
        result = minimize(negative, start, jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0)] * d)
        best = max(best, float(log_lik(np.clip(result.x, 0.0, 1.0)[None])[0]))
    return best


def _rejection(
    log_lik: Callable[[np.ndarray], np.ndarray],
    d: int,
    log_max: float,
    margin: float,
    num_samples: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, float]]:
    """Rejection with uniform proposals on the unit cube and envelope ``exp(log_max + margin)``,
    in batches sized from the running acceptance rate."""
    log_envelope = log_max + margin
    accepted: list[np.ndarray] = []
    count, proposed, restarts = 0, 0, 0
    batch = 16384
    while count < num_samples:
        u = rng.uniform(size=(batch, d))
        values = log_lik(u)
        top = float(values.max())
        if top > log_envelope:
            # What was accepted so far used too low an envelope: discard it to stay exact.
            log_envelope = top + margin
            accepted, count, proposed = [], 0, 0
            restarts += 1
            continue
        keep = np.log(rng.uniform(size=batch)) < values - log_envelope
        accepted.append(u[keep])
        count += int(keep.sum())
        proposed += batch
        # Batches of at most 2^18 rows keep the temporaries of log_likelihood near 2 MB each.
        batch = int(np.clip(1.2 * (num_samples - count) * proposed / max(count, 1), 16384, 262144))
    samples = np.concatenate(accepted)[:num_samples]
    diagnostics = {
        "log_envelope": log_envelope,
        "acceptance": count / proposed,
        "restarts": float(restarts),
    }
    return samples, diagnostics


def _prior(theta_dim: int) -> Distribution:
    from sbi.utils import BoxUniform  # deferred: sbi costs 1.7 s over torch; `import mfsbi.simulators` must not load it

    return BoxUniform(
        low=torch.tensor(PRIOR_LOW[:theta_dim], dtype=torch.float32),
        high=torch.tensor(PRIOR_HIGH[:theta_dim], dtype=torch.float32),
    )


def _task(theta_dim: int, description: str) -> Task:
    return Task(
        name=f"ou{theta_dim}",
        prior=_prior(theta_dim),
        parameter_names=PARAMETER_NAMES[:theta_dim],
        low_fidelity=OULowFidelity(theta_dim),
        high_fidelity=OUHighFidelity(theta_dim),
        x_dim=NUM_OBSERVATIONS,
        low_fidelity_parameters=(0, 1),
        # The exact Euler–Maruyama posterior comes first: it is the default truth.
        references={
            "euler-maruyama": OUReferencePosterior(theta_dim, "euler-maruyama"),
            "paper": OUReferencePosterior(theta_dim, "paper"),
        },
        version="1",
        description=description,
        # One core, batches of 1e4 (helper measurement, see docs/tasks-benchmark.md): ~1.1e6 HF and
        # ~2.3e6 LF simulations per second.
        cost_seconds={"lf": 4.3e-7, "hf": 9e-7},
    )


def ou2() -> Task:
    """OU2: infer (mu, sigma) with gamma = 0.5 and mu_offset = 3.

    Returns:
        The task.
    """
    return _task(2, "Ornstein-Uhlenbeck process, (mu, sigma); LF: i.i.d. N(mu, sigma^2)")


def ou3() -> Task:
    """OU3: infer (mu, sigma, gamma) with mu_offset = 3.

    Returns:
        The task.
    """
    return _task(3, "Ornstein-Uhlenbeck process, (mu, sigma, gamma); LF: i.i.d. N(mu, sigma^2)")


def ou4() -> Task:
    """OU4: infer (mu, sigma, gamma, mu_offset).

    Returns:
        The task.
    """
    return _task(4, "Ornstein-Uhlenbeck process, (mu, sigma, gamma, mu_offset); LF: i.i.d. N(mu, sigma^2)")

"""OU2 as a chain of three fidelities: Euler–Maruyama at three step sizes, coupled (issue 18).

The high-fidelity model is OU2's (:class:`~mfsbi.simulators.ou.OUHighFidelity`: dt = 0.1, ten steps
between two observed values), so the task shares OU2's exact reference posteriors. The cheaper
levels integrate the same process with larger steps: ``"lf"`` one step per observation interval
(dt = 1), ``"mf"`` two steps (dt = 0.5). A coarse step's Brownian increment is the sum of the fine
increments it spans, drawn from the same random stream in the same order as the HF simulator draws
them, and the initial state is the same draw: for the same ``(theta, seed)`` the three levels share
their noise (the classic multilevel Monte Carlo coupling; ``Task.coupled``).

With gamma = 0.5 the coarse steps are biased, not broken: the one-interval decay factor is 0.5 at
dt = 1 and 0.5625 at dt = 0.5 against 0.599 at dt = 0.1, and the one-interval variance is
sigma² · 1.0, 0.78 and 0.66.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mfsbi.simulators.base import FidelityLevel, Task
from mfsbi.simulators.ou import (
    _BLOCK, DT, NUM_OBSERVATIONS, PARAMETER_NAMES, SUBSAMPLE, OUHighFidelity, OUReferencePosterior, _check_theta,
    _expand, _prior,
)

__all__ = ["OUCoarseEuler", "ou2_euler"]


@dataclass(frozen=True)
class OUCoarseEuler:
    """Euler–Maruyama for the OU process with ``steps`` steps per observation interval, coupled to HF.

    Draws exactly the normals :class:`~mfsbi.simulators.ou.OUHighFidelity` draws (per block of
    rows: the initial states, then ten increments per interval) and sums each run of
    ``SUBSAMPLE // steps`` fine increments into one coarse increment.

    Arguments:
        steps: Euler steps per observation interval; a divisor of 10 (1, 2, 5 or 10).
        theta_dim: 2 (mu, sigma), 3 (+ gamma) or 4 (+ mu_offset).
    """

    steps: int
    theta_dim: int = 2

    def __post_init__(self) -> None:
        if self.steps < 1 or SUBSAMPLE % self.steps:
            raise ValueError(f"steps must divide {SUBSAMPLE} (1, 2, 5 or 10), got {self.steps}")

    def __call__(self, theta: np.ndarray, seed: int) -> np.ndarray:
        """Simulates one batch.

        Arguments:
            theta: parameters, shape ``(n, theta_dim)``.
            seed: the batch's seed (the HF simulator with this seed shares the noise).

        Returns:
            X at times 0, 1, ..., 9, shape ``(n, 10)``, float64.
        """
        theta = _check_theta(theta, self.theta_dim)
        mu, sigma, gamma, offset = _expand(theta)
        rng = np.random.default_rng(seed)
        n = theta.shape[0]
        out = np.empty((n, NUM_OBSERVATIONS))
        h = DT * SUBSAMPLE / self.steps
        group = SUBSAMPLE // self.steps
        for start in range(0, n, _BLOCK):
            rows = slice(start, min(start + _BLOCK, n))
            m = rows.stop - rows.start
            x = mu[rows] + offset[rows] + rng.standard_normal(m)
            noise = np.empty((SUBSAMPLE, m))
            for k in range(NUM_OBSERVATIONS):
                out[rows, k] = x
                if k == NUM_OBSERVATIONS - 1:
                    break
                rng.standard_normal(out=noise)
                # The coarse increments: sqrt(dt) times the sum of the fine normals each spans.
                increments = math.sqrt(DT) * noise.reshape(self.steps, group, m).sum(axis=1)
                for j in range(self.steps):
                    x = x + gamma[rows] * (mu[rows] - x) * h + sigma[rows] * increments[j]
        return out


def ou2_euler() -> Task:
    """OU2 with three coupled Euler–Maruyama fidelities: lf (dt = 1), mf (dt = 0.5), hf (dt = 0.1).

    Returns:
        The task; its HF simulator and references are OU2's.
    """
    return Task(
        name="ou2-euler",
        prior=_prior(2),
        parameter_names=PARAMETER_NAMES[:2],
        low_fidelity=OUCoarseEuler(1, 2),
        high_fidelity=OUHighFidelity(2),
        x_dim=NUM_OBSERVATIONS,
        low_fidelity_parameters=(0, 1),
        references={
            "euler-maruyama": OUReferencePosterior(2, "euler-maruyama"),
            "paper": OUReferencePosterior(2, "paper"),
        },
        version="1",
        description="OU2 (mu, sigma) as a chain of coupled Euler-Maruyama step sizes: lf dt=1, mf dt=0.5, hf dt=0.1",
        # Measured (process time, batches of 1e4, one core of a busy machine): about 1 µs a row at
        # every level. The coarse levels draw every fine normal to stay coupled, and drawing them is
        # most of the cost: this chain is a ladder of accuracy, not of cost.
        cost_seconds={"lf": 1.0e-6, "mf": 1.0e-6, "hf": 1.0e-6},
        intermediate=(FidelityLevel("mf", OUCoarseEuler(2, 2), "Euler-Maruyama, dt = 0.5"),),
        coupled=True,
    )

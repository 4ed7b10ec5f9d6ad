r"""Multifidelity rejection ABC with continuation probabilities (MF-ABC).

Prescott & Baker (2020), "Multifidelity approximate Bayesian computation", SIAM/ASA Journal on
Uncertainty Quantification 8(1). For each proposal theta ~ prior: simulate LF, distance d~ to x_o;
continue to HF with probability eta(d~) = eta1 if d~ < eps (LF accepts) else eta2. If continued,
simulate HF, distance d, and weight

    w = 1[d~ < eps] + (1[d < eps] - 1[d~ < eps]) / eta(d~),

else w = 1[d~ < eps]. E[w | theta] equals the HF ABC acceptance probability, so sum_i w_i f(theta_i)
/ sum_i w_i estimates the HF ABC posterior mean of f. Weights can be negative (an LF accept that HF
rejects, when eta1 < 1): that is the estimator, not a bug.

Hand-written: no maintained library provides MF-ABC (pyabc, ELFI and sbi have single-fidelity ABC
only). The driver :func:`mf_abc` owns its simulations; a pipeline that owns them can use the pure
pieces instead: :func:`distance_scale`, :func:`abc_distances`, :func:`epsilon_from_quantile`,
:func:`continuation_decisions`, :func:`proposals_within_budget`, :func:`mf_abc_weights`, and
build an :class:`ABCResult`.

Defaults eta1 = 1, eta2 = 0.1. With eta1 = 1 every LF accept is checked by HF, so no weight is
negative and no false positive survives; LF accepts are the rare, informative proposals, so this
costs little. eta2 sets how often an LF reject is checked for being an HF accept (a false
negative, rescued with weight 1/eta2): Prescott & Baker's optimal eta2 is small when LF is cheap
and its false-negative rate low, and under a hard HF budget every HF call spent on LF rejects is
taken from the proposals; 0.1 (the low end of the usual 0.1-0.3) spends most of the budget on
proposals near x_o while keeping the rescue weights (10) moderate. Tune both for a task (P&B give
the optimum in terms of the false-positive/-negative rates and the cost ratio).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

__all__ = [
    "ABCResult",
    "DEFAULT_ETA1",
    "DEFAULT_ETA2",
    "abc_distances",
    "continuation_decisions",
    "continuation_probabilities",
    "distance_scale",
    "epsilon_from_quantile",
    "mf_abc",
    "mf_abc_weights",
    "proposals_within_budget",
]

#: Continuation probability after an LF accept (see the module docstring).
DEFAULT_ETA1 = 1.0
#: Continuation probability after an LF reject (see the module docstring).
DEFAULT_ETA2 = 0.1

_DISTANCES = ("euclidean-zscored", "euclidean")

SimulatorFn = Callable[[np.ndarray, int], Any]


def _check_eta(eta1: float, eta2: float) -> None:
    for name, eta in (("eta1", eta1), ("eta2", eta2)):
        if not (isinstance(eta, (int, float)) and 0.0 < eta <= 1.0):
            raise ValueError(f"{name} must lie in (0, 1], got {eta!r}")


def distance_scale(x: np.ndarray) -> np.ndarray:
    r"""Per-dimension scale for z-scored distances: the std of simulated outputs.

    Arguments:
        x: simulations, shape ``(n, k)``; rows with NaN are ignored.

    Returns:
        Shape ``(k,)``; a zero or undefined std becomes 1 (that dimension is left unscaled).
    """
    x = np.asarray(x, dtype=np.float64)
    valid = x[np.isfinite(x).all(axis=1)]
    if len(valid) < 2:
        return np.ones(x.shape[1])
    std = valid.std(axis=0)
    return np.where(np.isfinite(std) & (std > 0), std, 1.0)


def abc_distances(x: np.ndarray, x_o: np.ndarray, scale: Optional[np.ndarray] = None) -> np.ndarray:
    r"""Euclidean distances of simulations to x_o, optionally per-dimension scaled.

    Arguments:
        x: simulations, shape ``(n, k)``.
        x_o: the observation, shape ``(k,)`` or ``(1, k)``.
        scale: divides each dimension (``None``: unscaled).

    Returns:
        Shape ``(n,)``; NaN for a failed (NaN) simulation.
    """
    x = np.asarray(x, dtype=np.float64)
    diff = x - np.asarray(x_o, dtype=np.float64).reshape(1, -1)
    if scale is not None:
        diff = diff / np.asarray(scale, dtype=np.float64).reshape(1, -1)
    return np.sqrt((diff**2).sum(axis=1))


def epsilon_from_quantile(lf_distances: np.ndarray, quantile: float) -> float:
    r"""The threshold eps as a quantile of the LF distances (LF is cheap, so all are known first).

    Arguments:
        lf_distances: shape ``(n,)``; NaN ignored.
        quantile: in (0, 1).

    Returns:
        eps; about ``quantile`` of the proposals are LF accepts.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"epsilon_quantile must lie in (0, 1), got {quantile!r}")
    d = np.asarray(lf_distances, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        raise ValueError("no finite LF distance to take a quantile of")
    return float(np.quantile(d, quantile))


def continuation_probabilities(lf_distances: np.ndarray, epsilon: float, eta1: float, eta2: float) -> np.ndarray:
    r"""eta(d~): eta1 where the LF distance is below eps, eta2 elsewhere (NaN: an LF reject).

    Returns:
        Shape ``(n,)``.
    """
    _check_eta(eta1, eta2)
    lf_accept = np.asarray(lf_distances, dtype=np.float64) < epsilon  # NaN < eps is False
    return np.where(lf_accept, float(eta1), float(eta2))


def continuation_decisions(
    lf_distances: np.ndarray,
    epsilon: float,
    eta1: float = DEFAULT_ETA1,
    eta2: float = DEFAULT_ETA2,
    rng: Union[np.random.Generator, int, None] = None,
) -> np.ndarray:
    r"""Which proposals continue to HF: independent coins with probability eta(d~).

    Arguments:
        lf_distances: shape ``(n,)``.
        epsilon: the ABC threshold.
        eta1: continuation probability after an LF accept.
        eta2: continuation probability after an LF reject.
        rng: a numpy Generator or a seed.

    Returns:
        Bool mask of shape ``(n,)``.
    """
    eta = continuation_probabilities(lf_distances, epsilon, eta1, eta2)
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return generator.random(eta.shape[0]) < eta


def proposals_within_budget(continued: np.ndarray, hf_budget: int) -> int:
    r"""How many proposals (in order) can be processed before the HF budget is spent.

    Proposing stops right after the ``hf_budget``-th continuation, so the HF calls of the first
    ``n`` proposals are exactly ``min(hf_budget, continued.sum())``.

    Arguments:
        continued: bool mask of shape ``(N,)``, in proposal order.
        hf_budget: the hard cap on HF simulations.

    Returns:
        ``n`` (``N`` when the budget is not reached).
    """
    if hf_budget < 0:
        raise ValueError(f"hf_budget must be >= 0, got {hf_budget}")
    positions = np.flatnonzero(np.asarray(continued, dtype=bool))
    if len(positions) <= hf_budget:
        return int(len(continued))
    if hf_budget == 0:
        return int(positions[0])  # stop before the first proposal that would need HF
    return int(positions[hf_budget - 1] + 1)


def mf_abc_weights(
    lf_distances: np.ndarray,
    hf_distances: np.ndarray,
    epsilon: float,
    eta1: float,
    eta2: float,
    continued: np.ndarray,
) -> np.ndarray:
    r"""The MF-ABC weights w = 1[d~<eps] + continued · (1[d<eps] − 1[d~<eps]) / eta(d~).

    Arguments:
        lf_distances: d~, shape ``(n,)``; NaN (failed LF) counts as an LF reject.
        hf_distances: d, shape ``(n,)``; NaN where not continued. A NaN where continued (a
            failed HF simulation) counts as an HF reject.
        epsilon: the ABC threshold.
        eta1: continuation probability after an LF accept.
        eta2: continuation probability after an LF reject.
        continued: bool mask of shape ``(n,)``.

    Returns:
        Weights of shape ``(n,)``, float64; negative where an LF accept was continued and HF
        rejected (only possible for eta1 < 1).
    """
    lf_d = np.asarray(lf_distances, dtype=np.float64)
    hf_d = np.asarray(hf_distances, dtype=np.float64)
    cont = np.asarray(continued, dtype=bool)
    if not (lf_d.shape == hf_d.shape == cont.shape):
        raise ValueError(f"shapes differ: {lf_d.shape}, {hf_d.shape}, {cont.shape}")
    lf_accept = (lf_d < epsilon).astype(np.float64)
    hf_accept = (hf_d < epsilon).astype(np.float64)
    eta = continuation_probabilities(lf_d, epsilon, eta1, eta2)
    return lf_accept + np.where(cont, (hf_accept - lf_accept) / eta, 0.0)


@dataclass(frozen=True)
class ABCResult:
    r"""Weighted samples of the HF ABC posterior.

    Arguments:
        theta: all processed proposals, shape ``(n, d)``.
        weights: their MF-ABC weights, shape ``(n,)`` (may be negative).
        lf_distances: d~, shape ``(n,)``.
        hf_distances: d, NaN where not continued.
        continued: bool mask of the proposals simulated at HF.
        epsilon: the ABC threshold.
        eta1: continuation probability after an LF accept.
        eta2: continuation probability after an LF reject.
        hf_used: HF simulations run (``<= hf_budget``).
        lf_used: LF simulations run (every proposal drawn, processed or not).
        scale: the per-dimension distance scale (ones for ``"euclidean"``).
    """

    theta: np.ndarray
    weights: np.ndarray
    lf_distances: np.ndarray
    hf_distances: np.ndarray
    continued: np.ndarray
    epsilon: float
    eta1: float
    eta2: float
    hf_used: int
    lf_used: int
    scale: np.ndarray = field(default_factory=lambda: np.ones(0))

    @property
    def effective_sample_size(self) -> float:
        """(Σw)² / Σw²; 0 when every weight is 0."""
        w = self.weights
        denominator = float((w**2).sum())
        return float(w.sum()) ** 2 / denominator if denominator > 0 else 0.0

    def mean(self) -> np.ndarray:
        r"""The signed-weight estimate Σ w θ / Σ w of the ABC posterior mean.

        Returns:
            Shape ``(d,)``.

        Raises:
            ValueError: the weights sum to <= 0 (no accepted proposal).
        """
        total = float(self.weights.sum())
        if not total > 0:
            raise ValueError("the MF-ABC weights sum to <= 0: no proposal was accepted")
        return (self.weights[:, None] * self.theta).sum(axis=0) / total

    def sample(self, num_samples: int, seed: int = 0) -> np.ndarray:
        r"""Resamples the proposals with probability ∝ max(w, 0).

        Negative weights cannot be resampled; dropping them (the positive-part estimator) biases
        the samples slightly toward LF accepts that HF would reject. With the default eta1 = 1 no
        weight is negative and this is exact resampling. Use :meth:`mean` or the weights
        themselves for unbiased expectations.

        Arguments:
            num_samples: how many.
            seed: the resampling seed.

        Returns:
            Shape ``(num_samples, d)``.
        """
        p = np.clip(self.weights, 0.0, None)
        if not p.sum() > 0:
            raise ValueError("no proposal has a positive MF-ABC weight")
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(p), size=num_samples, replace=True, p=p / p.sum())
        return self.theta[idx]


def _simulate(simulator: SimulatorFn, theta: np.ndarray, seed: int) -> np.ndarray:
    # The mfsbi Simulator contract allows (x, reasons); ABC only needs x (NaN rows = failed).
    out = simulator(theta, seed)
    x = out[0] if isinstance(out, tuple) else out
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != theta.shape[0]:
        raise ValueError(f"simulator returned shape {x.shape} for {theta.shape[0]} parameters")
    return x


def _in_batches(
    simulator: SimulatorFn, theta: np.ndarray, batch_size: Optional[int], seeds: np.random.SeedSequence
) -> np.ndarray:
    size = len(theta) if not batch_size else int(batch_size)
    starts = list(range(0, len(theta), max(size, 1)))
    batch_seeds = seeds.generate_state(max(len(starts), 1), dtype=np.uint32)
    outputs = [_simulate(simulator, theta[s : s + size], int(batch_seeds[i])) for i, s in enumerate(starts)]
    return np.concatenate(outputs) if outputs else np.empty((0, 0))


def mf_abc(
    prior: Distribution,
    lf_simulator: SimulatorFn,
    hf_simulator: SimulatorFn,
    x_o: Union[np.ndarray, Tensor],
    *,
    hf_budget: int,
    num_proposals: int,
    epsilon: Optional[float] = None,
    epsilon_quantile: Optional[float] = None,
    eta1: float = DEFAULT_ETA1,
    eta2: float = DEFAULT_ETA2,
    distance: str = "euclidean-zscored",
    lf_batch_size: Optional[int] = None,
    hf_batch_size: Optional[int] = None,
    seed: int = 0,
) -> ABCResult:
    r"""Multifidelity rejection ABC (Prescott & Baker 2020) under a hard HF budget.

    Steps: draw ``num_proposals`` theta from the prior; simulate LF for all (cheap); distances
    (z-scored by the LF simulations' std for ``"euclidean-zscored"``); eps given or the
    ``epsilon_quantile`` of the LF distances; continuation coins; process proposals in order
    until the ``hf_budget``-th continuation (stop proposing when the budget is spent); simulate
    the continued ones at HF in batches of ``hf_batch_size``; weights.

    Arguments:
        prior: a torch distribution over theta, ``event_shape (d,)``.
        lf_simulator: ``(theta (n, d) float64, seed) -> x (n, k)`` (the mfsbi Simulator contract).
        hf_simulator: the same for HF.
        x_o: the observation, shape ``(k,)``.
        hf_budget: hard cap on HF simulations.
        num_proposals: prior proposals (all simulated at LF).
        epsilon: the ABC threshold; exactly one of ``epsilon`` and ``epsilon_quantile``.
        epsilon_quantile: eps as this quantile of the LF distances.
        eta1: continuation probability after an LF accept.
        eta2: continuation probability after an LF reject.
        distance: ``"euclidean-zscored"`` or ``"euclidean"``.
        lf_batch_size: proposals per LF call (``None``: one call).
        hf_batch_size: continued proposals per HF call (``None``: one call).
        seed: seeds the prior draws, the simulator seeds and the continuation coins.

    Returns:
        An :class:`ABCResult` over the processed proposals.
    """
    _check_eta(eta1, eta2)
    if (epsilon is None) == (epsilon_quantile is None):
        raise ValueError("give exactly one of epsilon and epsilon_quantile")
    if distance not in _DISTANCES:
        raise ValueError(f"distance must be one of {_DISTANCES}, got {distance!r}")
    if num_proposals < 1:
        raise ValueError(f"num_proposals must be >= 1, got {num_proposals}")
    if hf_budget < 0:
        raise ValueError(f"hf_budget must be >= 0, got {hf_budget}")

    prior_seq, lf_seq, coin_seq, hf_seq = np.random.SeedSequence(seed).spawn(4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(prior_seq.generate_state(1, dtype=np.uint32)[0]))
        theta = prior.sample((num_proposals,)).detach().cpu().double().numpy()
    x_obs = np.asarray(x_o.detach().cpu() if isinstance(x_o, Tensor) else x_o, dtype=np.float64).reshape(-1)

    x_lf = _in_batches(lf_simulator, theta, lf_batch_size, lf_seq)
    scale = distance_scale(x_lf) if distance == "euclidean-zscored" else np.ones(x_lf.shape[1])
    lf_d = abc_distances(x_lf, x_obs, scale)
    eps = float(epsilon) if epsilon is not None else epsilon_from_quantile(lf_d, float(epsilon_quantile))

    continued_all = continuation_decisions(lf_d, eps, eta1, eta2, np.random.default_rng(coin_seq))
    n = proposals_within_budget(continued_all, hf_budget)
    theta, lf_d, continued = theta[:n], lf_d[:n], continued_all[:n]

    hf_d = np.full(n, np.nan)
    hf_index = np.flatnonzero(continued)
    if len(hf_index) > 0:
        x_hf = _in_batches(hf_simulator, theta[hf_index], hf_batch_size, hf_seq)
        hf_d[hf_index] = abc_distances(x_hf, x_obs, scale)
    weights = mf_abc_weights(lf_d, hf_d, eps, eta1, eta2, continued)
    return ABCResult(
        theta=theta,
        weights=weights,
        lf_distances=lf_d,
        hf_distances=hf_d,
        continued=continued,
        epsilon=eps,
        eta1=float(eta1),
        eta2=float(eta2),
        hf_used=int(len(hf_index)),
        lf_used=int(num_proposals),
        scale=scale,
    )

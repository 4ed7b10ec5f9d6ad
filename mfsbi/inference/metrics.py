r"""Metrics of posterior quality (PAPER.md, "Metrics"): C2ST, MMD, NLTP and NRMSE."""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch
from sbi.utils.metrics import c2st as _sbi_c2st
from torch import Tensor

__all__ = [
    "c2st",
    "median_bandwidth",
    "mmd_squared",
    "nltp",
    "nrmse",
    "pair_log_probs",
]

ArrayLike = Union[Tensor, np.ndarray]


def _as_tensor(value: ArrayLike, dtype: torch.dtype = torch.float64) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(device="cpu", dtype=dtype)
    return torch.as_tensor(np.asarray(value), dtype=dtype)


def _as_samples(name: str, value: ArrayLike, dtype: torch.dtype = torch.float64) -> Tensor:
    t = _as_tensor(value, dtype)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] < 1:
        raise ValueError(f"{name} must have shape (n, d), got {tuple(t.shape)}")
    return t


def c2st(samples_a: ArrayLike, samples_b: ArrayLike, seed: int = 0, n_folds: int = 5) -> float:
    r"""Classifier two-sample test accuracy; 0.5 means indistinguishable, 1 fully separable.

    sbi's ``c2st``: a scikit-learn random forest (default settings), ``n_folds``-fold
    cross-validated accuracy, both sets z-scored with the mean and std of ``samples_a``.

    Arguments:
        samples_a: samples of shape ``(n, d)``, e.g. from the reference posterior.
        samples_b: samples of shape ``(m, d)``, e.g. from the estimate.
        seed: seeds the forest and the folds.
        n_folds: cross-validation folds.

    Returns:
        The mean accuracy over the folds.
    """
    a, b = _as_samples("samples_a", samples_a, torch.float32), _as_samples("samples_b", samples_b, torch.float32)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimension mismatch: {a.shape[1]} vs {b.shape[1]}")
    return float(_sbi_c2st(a, b, seed=seed, n_folds=n_folds, classifier="rf", z_score=True))


def _pairwise_sq_dists(a: Tensor, b: Tensor) -> Tensor:
    # Direct differences, not the |a|^2 + |b|^2 - 2ab expansion, so identical points give exactly 0.
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def _kernel_sum(a: Tensor, b: Tensor, gamma: float, chunk: int) -> float:
    total = torch.zeros((), dtype=torch.float64)
    for i in range(0, a.shape[0], chunk):
        block = a[i : i + chunk]
        for j in range(0, b.shape[0], chunk):
            total += torch.exp(-gamma * _pairwise_sq_dists(block, b[j : j + chunk])).sum()
    return float(total)


def median_bandwidth(a: ArrayLike, b: ArrayLike, max_points: int = 2000, seed: int = 0) -> float:
    r"""The median heuristic: the median of the non-zero pairwise distances of the pooled samples.

    Arguments:
        a, b: samples of shape ``(n, d)`` and ``(m, d)``.
        max_points: above this pooled size, a seeded random subset is used (memory is quadratic).
        seed: seeds that subset.

    Returns:
        The bandwidth; 1.0 when all points coincide.
    """
    pooled = torch.cat([_as_samples("a", a), _as_samples("b", b)])
    if pooled.shape[0] > max_points:
        generator = torch.Generator().manual_seed(seed)
        pooled = pooled[torch.randperm(pooled.shape[0], generator=generator)[:max_points]]
    distances = _pairwise_sq_dists(pooled, pooled).sqrt()
    positive = distances[distances > 0]
    return float(positive.median()) if positive.numel() else 1.0


def mmd_squared(
    a: ArrayLike, b: ArrayLike, bandwidth: Optional[float] = None, chunk: int = 2048
) -> float:
    r"""Biased squared MMD with an RBF kernel k(u, v) = exp(-|u - v|^2 / (2 sigma^2)).

    Hand-written: sbi's ``biased_mmd`` returns the square root and takes its median over
    distances that include the zero self-distances; ``unbiased_mmd_squared`` drops the diagonal
    terms. No maintained library we use gives exactly the paper's estimator (biased, squared,
    median heuristic over non-zero pooled distances, as in the authors' ``mmd.py``).

    Arguments:
        a, b: samples of shape ``(n, d)`` and ``(m, d)``.
        bandwidth: sigma; ``None`` uses :func:`median_bandwidth`.
        chunk: block size of the kernel sums (bounds memory to ``chunk**2`` entries).

    Returns:
        mean k(a, a') + mean k(b, b') - 2 mean k(a, b), clamped at 0 against round-off.
    """
    x, y = _as_samples("a", a), _as_samples("b", b)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"dimension mismatch: {x.shape[1]} vs {y.shape[1]}")
    sigma = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if not sigma > 0:
        raise ValueError(f"bandwidth must be > 0, got {sigma}")
    gamma = 0.5 / sigma**2
    n, m = x.shape[0], y.shape[0]
    value = (
        _kernel_sum(x, x, gamma, chunk) / n**2
        + _kernel_sum(y, y, gamma, chunk) / m**2
        - 2.0 * _kernel_sum(x, y, gamma, chunk) / (n * m)
    )
    return max(value, 0.0)


def nltp(
    posterior: Any,
    theta_o: ArrayLike,
    x_o: ArrayLike,
    *,
    norm_posterior: bool = False,
    batch_size: int = 1000,
) -> float:
    r"""Negative log-probability of true parameters: the mean of -log q(theta_o | x_o) over pairs.

    Arguments:
        posterior: an sbi posterior (``log_prob(theta, x=...)``; ``log_prob_batched`` is used
            when available and ``norm_posterior`` is False).
        theta_o: true parameters, shape ``(n, d)``.
        x_o: their simulated observations, shape ``(n, k)``.
        norm_posterior: renormalise for mass leaking outside the prior (sbi's rejection
            estimate, one observation at a time). Not needed with the logit theta transform,
            which puts no mass outside the prior.
        batch_size: pairs per batched call.

    Returns:
        The mean over pairs (lower is better); ``inf`` if some theta_o gets zero density.
    """
    return float(-pair_log_probs(posterior, theta_o, x_o, norm_posterior=norm_posterior,
                                batch_size=batch_size).mean())


def pair_log_probs(posterior: Any, theta_o: ArrayLike, x_o: ArrayLike, *, norm_posterior: bool = False,
                   batch_size: int = 1000) -> Tensor:
    r"""log q(theta_i | x_i) of each pair, float64 ``(n,)``: the terms of :func:`nltp` (same arguments)."""
    theta = _as_samples("theta_o", theta_o, torch.float32)
    x = _as_samples("x_o", x_o, torch.float32)
    if theta.shape[0] != x.shape[0]:
        raise ValueError(f"theta_o has {theta.shape[0]} rows but x_o has {x.shape[0]}")
    device = getattr(posterior, "_device", "cpu")
    theta, x = theta.to(device), x.to(device)
    log_probs = []
    members = getattr(posterior, "posteriors", None)
    with torch.no_grad():
        if not norm_posterior and members and all(hasattr(m, "log_prob_batched") for m in members):
            # sbi's EnsemblePosterior has no log_prob_batched (its log_prob scores one x at a time and
            # renormalises each member by rejection sampling): the mixture's, from its members' batched ones.
            log_weights = torch.log(posterior.weights.to(device))[:, None]
            for i in range(0, theta.shape[0], batch_size):
                lp = torch.stack([m.log_prob_batched(theta[i : i + batch_size], x=x[i : i + batch_size],
                                                     norm_posterior=False).reshape(-1) for m in members])
                log_probs.append(torch.logsumexp(lp + log_weights, dim=0).cpu().double())
        elif not norm_posterior and hasattr(posterior, "log_prob_batched"):
            for i in range(0, theta.shape[0], batch_size):
                # (batch, d) theta with (batch, k) x: pair i is scored under observation i.
                lp = posterior.log_prob_batched(theta[i : i + batch_size], x=x[i : i + batch_size], norm_posterior=False)
                log_probs.append(lp.reshape(-1).cpu().double())
        else:
            for i in range(theta.shape[0]):
                kwargs = {"norm_posterior": norm_posterior} if hasattr(posterior, "log_prob_batched") else {}
                lp = posterior.log_prob(theta[i : i + 1], x=x[i : i + 1], **kwargs)
                log_probs.append(lp.reshape(-1).cpu().double())
    return torch.cat(log_probs)


def nrmse(samples: ArrayLike, theta_o: ArrayLike, low: ArrayLike, high: ArrayLike) -> float:
    r"""Root-mean-square error of posterior samples around the truth, relative to the prior range.

    Per dimension j: sqrt(mean_s (samples[s, j] - theta_o[j])^2) / (high[j] - low[j]); averaged
    over dimensions, and over observations for batched input.

    Arguments:
        samples: shape ``(S, d)`` for one observation, or ``(n, S, d)`` for ``n`` observations.
        theta_o: the true parameters, shape ``(d,)`` or ``(n, d)``.
        low, high: the prior's bounds per dimension, shape ``(d,)``.

    Returns:
        The normalised RMSE (0 when every sample equals theta_o).
    """
    s = _as_tensor(samples)
    t = _as_tensor(theta_o)
    lo, hi = _as_tensor(low).reshape(-1), _as_tensor(high).reshape(-1)
    if s.ndim == 2:
        s = s[None]
    if t.ndim == 1:
        t = t[None]
    if s.ndim != 3 or t.ndim != 2 or s.shape[0] != t.shape[0] or s.shape[2] != t.shape[1]:
        raise ValueError(f"samples {tuple(s.shape)} and theta_o {tuple(t.shape)} do not match")
    width = hi - lo
    if width.shape != (t.shape[1],) or not bool((width > 0).all()):
        raise ValueError("low and high must have one entry per dimension with high > low")
    rmse = ((s - t[:, None, :]) ** 2).mean(dim=1).sqrt()  # (n, d)
    return float((rmse / width).mean())

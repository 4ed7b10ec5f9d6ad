r"""Calibration of a sequential estimate near x_o without a reference: SBC and TARP on the truncated prior.

A truncated sequential round draws θ from the prior restricted to a region R (the HPR of the
previous posterior at x_o) and simulates x. Those pairs are draws of the joint p(x | θ) p_R(θ),
whose posterior is the true posterior restricted to R: p_R(θ | x) ∝ p(x | θ) p(θ) 1_R(θ). So an
estimate q(θ | x) that is right on R gives uniform SBC ranks and a diagonal TARP curve on such pairs
once its draws are restricted to R too (TSNPE, Deistler et al. 2022, §3: the truncated prior makes
the amortised diagnostics valid inside the region). Pairs the estimate trained on do not count:
the caller passes pairs it did not see (a round's new rows, before it trains on them; or the last
round's rows out of fold). Nothing here needs an exact posterior, so the check runs on a user's own
simulator; its verdict rule and level are :func:`mfsbi.inference.calibration.calibration_from_samples`'.

Rejection to R is written here (no library restricts an sbi posterior's draws to a region by pair):
each pair draws until it holds ``num_samples`` draws inside R, at most ``max_rounds`` times; pairs
whose estimate puts too little mass in R to get there are left out and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from .calibration import CALIBRATION_BATCH_BYTES, Calibration, calibration_from_samples, samples_on_pairs

__all__ = ["TruncatedCoverage", "pooled_truncated_coverage", "truncated_coverage"]


@dataclass(frozen=True)
class TruncatedCoverage:
    """The check's result.

    Arguments:
        calibration: SBC + TARP on the pairs kept (``None``: fewer than 2 pairs).
        pairs: pairs given; used: pairs with ``num_samples`` draws in R (the others are left out).
        mass_in_region: mean share of the estimate's draws that fell in R, over the pairs.
    """

    calibration: Optional[Calibration]
    pairs: int
    used: int
    mass_in_region: float

    @property
    def verdict(self) -> Optional[str]:
        return None if self.calibration is None else self.calibration.verdict

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pairs": self.pairs, "used": self.used, "mass_in_region": round(self.mass_in_region, 4),
                               "verdict": self.verdict}
        if self.calibration is not None:
            full = self.calibration.to_dict()
            out.update({k: full[k] for k in ("test", "tarp_atc", "tarp_ks_pvalue", "sbc_ks_pvalues") if k in full})
        return out


def truncated_coverage(posterior: Any, accepts: Callable[[Tensor], Tensor], theta: np.ndarray | Tensor,
                       x: np.ndarray | Tensor, *, num_samples: int = 200, seed: int = 0, max_rounds: int = 20,
                       level: float = 0.05, max_bytes: int = CALIBRATION_BATCH_BYTES) -> TruncatedCoverage:
    """SBC and TARP of ``posterior`` on pairs drawn from the prior truncated to a region R.

    Arguments:
        posterior: an sbi posterior (``DirectPosterior``, ``EnsemblePosterior``).
        accepts: R's indicator: ``(m, d)`` parameters to an ``(m,)`` bool tensor
            (:meth:`mfsbi.inference.sequential.TruncatedPrior.accepts`).
        theta: ``(n, d)`` parameters drawn from the prior restricted to R; rows outside R are left out.
        x: ``(n, k)`` their simulations, which the estimate did not train on.
        num_samples: draws in R per pair.
        seed: seeds the draws (the caller's RNG state is kept).
        max_rounds: sampling rounds before a pair short of draws in R is left out.
        level: the tests' significance level.
        max_bytes: the memory one sampling call's repeated x may take.

    Returns:
        A :class:`TruncatedCoverage`.
    """
    return pooled_truncated_coverage([(posterior, theta, x)], accepts, num_samples=num_samples, seed=seed,
                                     max_rounds=max_rounds, level=level, max_bytes=max_bytes)


def pooled_truncated_coverage(groups: Sequence[tuple[Any, np.ndarray | Tensor, np.ndarray | Tensor]],
                              accepts: Callable[[Tensor], Tensor], *, num_samples: int = 200, seed: int = 0,
                              max_rounds: int = 20, level: float = 0.05,
                              max_bytes: int = CALIBRATION_BATCH_BYTES) -> TruncatedCoverage:
    """One verdict over groups of pairs, each group's draws from its own estimate (out-of-fold checks).

    Arguments:
        groups: ``(posterior, theta, x)`` per group: the pairs ``posterior`` did not train on.
        accepts, num_samples, seed, max_rounds, level, max_bytes: as for :func:`truncated_coverage`.

    Returns:
        A :class:`TruncatedCoverage` of all groups' pairs.
    """
    if num_samples < 2 or max_rounds < 1:
        raise ValueError(f"num_samples must be >= 2 and max_rounds >= 1, got {num_samples} and {max_rounds}")
    pairs = drawn = accepted = 0
    samples: list[Tensor] = []
    truths: list[Tensor] = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for posterior, theta, x in groups:
            theta = torch.as_tensor(np.asarray(theta), dtype=torch.float32)
            x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
            if theta.ndim != 2 or x.ndim != 2 or len(theta) != len(x):
                raise ValueError(f"theta (n, d) and x (n, k) must have the same n, got {tuple(theta.shape)} and "
                                 f"{tuple(x.shape)}")
            pairs += len(theta)
            if not len(theta):
                continue
            inside = accepts(theta).bool()
            draws, full, counts = _restricted_draws(posterior, accepts, x[inside], num_samples, max_rounds, max_bytes)
            drawn, accepted = drawn + counts[0], accepted + counts[1]
            if len(full):
                samples.append(draws)
                truths.append(theta[inside][full])
        used = sum(len(t) for t in truths)
        mass = accepted / drawn if drawn else float("nan")
        if used < 2:
            return TruncatedCoverage(None, pairs, used, mass)
        result = calibration_from_samples(torch.cat(samples, dim=1), torch.cat(truths), level=level, seed=seed)
    return TruncatedCoverage(result, pairs, used, mass)


def _restricted_draws(posterior: Any, accepts: Callable[[Tensor], Tensor], x: Tensor, num_samples: int,
                      max_rounds: int, max_bytes: int) -> tuple[Tensor, list[int], tuple[int, int]]:
    """``num_samples`` draws in R for each x that reaches them: ``(num_samples, m, d)``, which x, (drawn, accepted)."""
    n = len(x)
    kept: list[list[Tensor]] = [[] for _ in range(n)]
    held = torch.zeros(n, dtype=torch.long)
    drawn = accepted = 0
    for _ in range(max_rounds):
        short = torch.nonzero(held < num_samples).flatten()
        if not len(short):
            break
        draws = samples_on_pairs(posterior, x[short], num_samples, max_bytes)  # (num_samples, m, d)
        ok = accepts(draws.reshape(-1, draws.shape[-1])).reshape(draws.shape[:2])
        drawn, accepted = drawn + ok.numel(), accepted + int(ok.sum())
        for j, i in enumerate(short.tolist()):
            kept[i].append(draws[ok[:, j], j])
            held[i] += int(ok[:, j].sum())
    full = [i for i in range(n) if held[i] >= num_samples]
    if not full:
        return torch.zeros(0), [], (drawn, accepted)
    return torch.stack([torch.cat(kept[i])[:num_samples] for i in full], dim=1), full, (drawn, accepted)

r"""Ensembles of fine-tuned estimators and the active-learning acquisition of A-MF-TSNPE.

PAPER.md, "Algorithms" (A-MF-TSNPE, a.k.a. MF-TSNPE-AF): an ensemble of E = 5 estimators, each
initialised from the same LF-pretrained weights (diversity from the validation split and the
minibatch order); each round after the first, about 20% of the round's HF parameters are the
top-B candidates of a pool drawn from the prior, ranked by the disagreement of the members at x_o,
and the rest come from the truncated proposal. The posterior is the equal-weight mixture.

The ensemble posterior is sbi's ``EnsemblePosterior``. The acquisition (scores, top-B selection,
the mixed proposal) is hand-written: no maintained library provides it (sbi has no active
learning), so it is kept small and is tested against known variances.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from sbi.inference import EnsemblePosterior
from torch import Tensor
from torch.distributions import Distribution

from .config import TrainingConfig
from .sequential import _as_x_o
from .training import ArrayLike, TrainedEstimator, fine_tune

__all__ = [
    "ACQUISITION_KINDS",
    "Ensemble",
    "acquisition_scores",
    "continue_ensemble",
    "default_pool_size",
    "propose_round",
    "select_top",
    "train_ensemble",
]

#: ``"log-variance"``: variance across members of log q_e(theta | x_o) (the authors' code);
#: ``"density-variance"``: variance of q_e(theta | x_o) itself (the paper's text).
ACQUISITION_KINDS = ("log-variance", "density-variance")


@dataclass(frozen=True)
class Ensemble:
    r"""An equal-weight ensemble of estimators q_e(theta | x).

    Arguments:
        members: the trained estimators (anything with ``.posterior()`` returning an sbi
            posterior works, which the tests use for fakes).
        weights: the members' mixture weights (normalised here); default equal. MF-NPE's stacked
            mixture weighs its candidates (:func:`mfsbi.inference.selection.stacking_weights`).
    """

    members: tuple[TrainedEstimator, ...]
    weights: Optional[tuple[float, ...]] = None

    def __init__(self, members: Sequence[TrainedEstimator], weights: Optional[Sequence[float]] = None) -> None:
        if len(members) < 1:
            raise ValueError("an ensemble needs at least one member")
        if weights is not None:
            weights = [float(w) for w in weights]
            if len(weights) != len(members) or min(weights) < 0 or not sum(weights) > 0:
                raise ValueError(f"weights: need {len(members)} non-negative weights with a positive sum, got {weights}")
            weights = tuple(w / sum(weights) for w in weights)
        object.__setattr__(self, "members", tuple(members))
        object.__setattr__(self, "weights", weights)

    def __len__(self) -> int:
        return len(self.members)

    def posterior(self) -> EnsemblePosterior:
        r"""sbi's mixture of the members' posteriors (equal weights unless given).

        Returns:
            An ``EnsemblePosterior`` with ``.sample((n,), x=x_o)`` and ``.log_prob(theta, x=x_o)``.
        """
        weights = None if self.weights is None else list(self.weights)
        return EnsemblePosterior([m.posterior() for m in self.members], weights=weights)

    @torch.no_grad()
    def log_probs(self, theta: ArrayLike, x_o: ArrayLike) -> Tensor:
        r"""Every member's log q_e(theta | x_o).

        Unnormalised for leakage (``norm_posterior=False``): the logit theta transform leaks no
        mass, and sbi's leakage estimate would run an unseeded rejection sampler per member.

        Arguments:
            theta: parameters, shape ``(n, d)``.
            x_o: one observation, shape ``(k,)`` or ``(1, k)``.

        Returns:
            Tensor of shape ``(E, n)``; -inf outside the prior support.
        """
        t = torch.as_tensor(np.asarray(theta) if not isinstance(theta, Tensor) else theta)
        t = t.detach().to(dtype=torch.float32, device="cpu")
        x = _as_x_o(x_o)
        rows = [m.posterior().log_prob(t, x=x, norm_posterior=False) for m in self.members]
        return torch.stack([torch.as_tensor(r, dtype=torch.float32).reshape(-1) for r in rows])


def _member_seeds(size: int, training: TrainingConfig, seeds: Optional[Sequence[int]]) -> list[int]:
    if seeds is None:
        return [training.seed + i for i in range(size)]
    seeds = [int(s) for s in seeds]
    if len(seeds) != size:
        raise ValueError(f"{len(seeds)} seeds for an ensemble of size {size}")
    if len(set(seeds)) != len(seeds):
        raise ValueError("ensemble seeds must differ (they are the members' only source of diversity)")
    return seeds


def train_ensemble(
    pretrained: TrainedEstimator,
    theta: ArrayLike,
    x: ArrayLike,
    *,
    size: int = 5,
    training: TrainingConfig = TrainingConfig(),
    seeds: Optional[Sequence[int]] = None,
    refit_x_zscore: bool = True,
    device: str = "cpu",
) -> Ensemble:
    r"""Round 1 of A-MF-TSNPE: E members fine-tuned from the same pretrained weights.

    Every member is :func:`fine_tune` of the same ``pretrained`` on the same data; only the
    training seed differs, i.e. the validation split and the minibatch order (PAPER.md: the
    ensemble's diversity). The pretrained estimator is not modified.

    Arguments:
        pretrained: the LF-pretrained estimator.
        theta: HF parameters, shape ``(m, d)``.
        x: HF observations, shape ``(m, k)``.
        size: E, the number of members.
        training: training settings; member i uses ``seeds[i]`` as its seed.
        seeds: one distinct seed per member; default ``training.seed + i``.
        refit_x_zscore: refit the x z-scoring on ``x`` (as MF-NPE does).
        device: ``"cpu"`` or ``"cuda"``.

    Returns:
        The :class:`Ensemble`.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    members = [
        fine_tune(
            pretrained,
            theta,
            x,
            training=dataclasses.replace(training, seed=s),
            refit_x_zscore=refit_x_zscore,
            device=device,
        )
        for s in _member_seeds(size, training, seeds)
    ]
    return Ensemble(members)


def continue_ensemble(
    previous: Ensemble,
    theta_all: ArrayLike,
    x_all: ArrayLike,
    *,
    training: TrainingConfig = TrainingConfig(),
    seeds: Optional[Sequence[int]] = None,
    refit_x_zscore: bool = False,
    device: str = "cpu",
) -> Ensemble:
    r"""A later A-MF-TSNPE round: every member continues from its own weights on all pairs so far.

    As :func:`mfsbi.inference.sequential.train_round`, the x z-scoring is kept by default (the
    members' weights were trained for it).

    Arguments:
        previous: the previous round's ensemble.
        theta_all: all HF parameters so far, shape ``(n, d)``.
        x_all: the matching HF observations, shape ``(n, k)``.
        training: training settings of this round.
        seeds: one distinct seed per member; default ``training.seed + i``.
        refit_x_zscore: refit the x z-scoring on ``x_all``.
        device: ``"cpu"`` or ``"cuda"``.

    Returns:
        The new :class:`Ensemble` (the previous one is not modified).
    """
    seeds = _member_seeds(len(previous), training, seeds)
    members = [
        fine_tune(
            member,
            theta_all,
            x_all,
            training=dataclasses.replace(training, seed=s),
            refit_x_zscore=refit_x_zscore,
            device=device,
        )
        for member, s in zip(previous.members, seeds)
    ]
    return Ensemble(members)


def acquisition_scores(
    ensemble: Any, candidates: ArrayLike, x_o: ArrayLike, kind: str = "log-variance"
) -> Tensor:
    r"""The members' disagreement at each candidate: the acquisition score.

    Arguments:
        ensemble: an :class:`Ensemble` (or anything with ``log_probs(theta, x_o) -> (E, n)``).
        candidates: parameters, shape ``(n, d)``.
        x_o: the observation.
        kind: ``"log-variance"``: Var_e[log q_e(theta | x_o)]; ``"density-variance"``:
            Var_e[q_e(theta | x_o)] (population variances, ``correction=0``).

    Returns:
        Scores of shape ``(n,)``, float64; higher means more disagreement. A candidate where a
        member's log-density is not finite (outside the support) scores -inf, so it is never
        acquired.
    """
    if kind not in ACQUISITION_KINDS:
        raise ValueError(f"kind must be one of {ACQUISITION_KINDS}, got {kind!r}")
    log_q = torch.as_tensor(ensemble.log_probs(candidates, x_o)).to(torch.float64)
    if log_q.ndim != 2:
        raise ValueError(f"log_probs must have shape (E, n), got {tuple(log_q.shape)}")
    if kind == "log-variance":
        scores = log_q.var(dim=0, correction=0)
    else:
        # float64 keeps exp(log q) of a sharp posterior (log q ~ +10 .. +30) representable.
        scores = log_q.exp().var(dim=0, correction=0)
    finite = torch.isfinite(log_q).all(dim=0) & torch.isfinite(scores)
    return torch.where(finite, scores, torch.full_like(scores, -math.inf))


def select_top(candidates: ArrayLike, scores: ArrayLike, k: int) -> tuple[Tensor, Tensor]:
    r"""The k highest-scoring candidates.

    Arguments:
        candidates: shape ``(n, d)``.
        scores: shape ``(n,)``.
        k: how many, ``0 <= k <= n``.

    Returns:
        ``(theta_top (k, d), indices (k,))``, in decreasing order of score.
    """
    c = torch.as_tensor(np.asarray(candidates) if not isinstance(candidates, Tensor) else candidates)
    s = torch.as_tensor(np.asarray(scores) if not isinstance(scores, Tensor) else scores).reshape(-1)
    if c.shape[0] != s.shape[0]:
        raise ValueError(f"{c.shape[0]} candidates but {s.shape[0]} scores")
    if not 0 <= k <= c.shape[0]:
        raise ValueError(f"k must lie in [0, {c.shape[0]}], got {k}")
    indices = torch.topk(s, k, largest=True, sorted=True).indices
    return c[indices], indices


def default_pool_size(total_budget: int) -> int:
    r"""Candidate pool size of the authors' code for a total HF budget M.

    Returns:
        250 for M <= 1e3, 2 500 for M <= 1e4, else 25 000.
    """
    if total_budget <= 1_000:
        return 250
    if total_budget <= 10_000:
        return 2_500
    return 25_000


def _summary(scores: Tensor) -> dict[str, float]:
    if scores.numel() == 0:
        return {"min": math.nan, "median": math.nan, "max": math.nan}
    return {
        "min": float(scores.min()),
        "median": float(scores.median()),
        "max": float(scores.max()),
    }


def propose_round(
    ensemble: Any,
    proposal: Distribution,
    x_o: ArrayLike,
    *,
    budget: int,
    fraction_acquired: float = 0.2,
    pool_size: Optional[int] = None,
    total_budget: Optional[int] = None,
    prior: Optional[Distribution] = None,
    kind: str = "log-variance",
    seed: int = 0,
) -> tuple[Tensor, dict[str, Any]]:
    r"""The parameters of one A-MF-TSNPE round: top-B acquired from a prior pool + the rest truncated.

    B = round(fraction_acquired · budget) (halves round up). The pool is drawn from the PRIOR and
    redrawn every call (PAPER.md); the remaining ``budget - B`` come from ``proposal`` (the
    truncated prior, or the prior itself). No correction for the acquisition bias (as the paper).

    Arguments:
        ensemble: an :class:`Ensemble` (or anything with ``log_probs``).
        proposal: the truncated prior (a :class:`~mfsbi.inference.sequential.TruncatedPrior`) or
            a plain prior.
        x_o: the observation.
        budget: HF parameters this round.
        fraction_acquired: share of the round acquired from the pool.
        pool_size: candidates in the pool; default :func:`default_pool_size` of ``total_budget``.
        total_budget: M, the run's total HF budget (sets the default pool size); default ``budget``.
        prior: the pool's distribution; default ``proposal.prior`` when it has one, else
            ``proposal``.
        kind: see :func:`acquisition_scores`.
        seed: seeds the pool and the truncated draws (the caller's RNG state is kept).

    Returns:
        ``(theta, info)``: ``theta`` of shape ``(budget, d)``, the acquired rows first; ``info``
        has ``acquired`` (B), ``pool_size``, ``pool_indices`` (of the acquired rows),
        ``selected_scores`` and ``pool_scores`` (min / median / max).
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if not 0.0 <= fraction_acquired <= 1.0:
        raise ValueError(f"fraction_acquired must lie in [0, 1], got {fraction_acquired}")
    acquired = int(math.floor(fraction_acquired * budget + 0.5))
    if pool_size is None:
        pool_size = default_pool_size(total_budget if total_budget is not None else budget)
    if acquired > pool_size:
        raise ValueError(f"cannot acquire {acquired} parameters from a pool of {pool_size}")
    pool_prior = prior if prior is not None else getattr(proposal, "prior", proposal)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if acquired > 0:
            pool = pool_prior.sample((pool_size,))
            scores = acquisition_scores(ensemble, pool, x_o, kind=kind)
            theta_top, indices = select_top(pool, scores, acquired)
        else:
            pool_size, scores = 0, torch.empty(0, dtype=torch.float64)
            theta_top, indices = torch.empty(0, 0), torch.empty(0, dtype=torch.long)
        rest = budget - acquired
        # TruncatedPrior.sample(seed=None) draws from the forked, seeded global generator.
        theta_rest = proposal.sample((rest,)) if rest > 0 else None

    parts = [p.to(torch.float32) for p in (theta_top if acquired > 0 else None, theta_rest) if p is not None]
    if parts:
        theta = torch.cat(parts)
    else:
        theta = torch.empty(0, int(pool_prior.event_shape[0]))
    info = {
        "acquired": acquired,
        "pool_size": pool_size,
        "pool_indices": indices,
        "selected_scores": _summary(scores[indices] if acquired > 0 else scores),
        "pool_scores": _summary(scores),
    }
    return theta, info

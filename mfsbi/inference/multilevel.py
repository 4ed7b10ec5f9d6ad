r"""Multilevel NPE (ML-NPE): one estimator trained on a hierarchy of simulators of rising fidelity.

Hikida, Bharti, Jeffrey, Briol (2025), "Multilevel neural simulation-based inference", arXiv
2506.06087; the authors' code is github.com/yugahikida/multilevel-sbi (``src/train.py``). Levels
``l = 0..L`` (0 cheapest, L the target): ``n_0`` pairs (theta, x_0) from the cheapest simulator, and
for each ``l >= 1`` ``n_l`` *coupled* rows (theta_i, x_l(theta_i, u_i), x_{l-1}(theta_i, u_i)) that
share theta and the simulator's random seed u. The loss is the telescoping multilevel Monte Carlo
estimate of the level-L NPE loss,

    L(phi) = mean_i[-log q(theta_i | x_0,i)] + sum_{l>=1} mean_i[-log q(theta_i | x_l,i) + log q(theta_i | x_{l-1},i)],

whose expectation is E[-log q(theta | x_L)]: the coarse members cancel the level below in
expectation, and the coupling (same theta and seed) makes each difference small in variance.

Everything else is :func:`~mfsbi.inference.training.train_npe`'s: the same sbi zuko flow and
theta transform, a seeded row split per level, and the same loop,
:func:`~mfsbi.inference.fitting.fit` (Adam, gradient clipping, early stopping, the best-validation
weights), given ML-NPE's batches (:class:`CoupledBatches`: a batch of every level per step) and
its objective (:class:`MultilevelLoss`: one gradient per term of the loss, combined).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from .config import EstimatorConfig, TrainingConfig
from .fitting import VALIDATION_BATCH_SIZE, EpochCallback, fit
from .training import TrainedEstimator, _builder

__all__ = ["CoupledBatches", "CoupledLevel", "MultilevelLoss", "adjusted_gradient", "coupled_levels", "ml_npe_loss",
           "ml_npe_terms", "train_ml_npe"]

ArrayLike = Union[Tensor, np.ndarray]
#: Level 0 is ``(theta, x)`` (or ``(theta, x, None)``); a level l >= 1 is ``(theta, x_l, x_{l-1})``.
LevelData = Union[tuple[ArrayLike, ArrayLike], tuple[ArrayLike, ArrayLike, Optional[ArrayLike]]]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoupledLevel:
    r"""The valid rows of one level.

    Arguments:
        theta: parameters, shape ``(n, d)``.
        x: this level's observations, shape ``(n, k)``.
        x_coarse: the level below's observations at the same theta and seed, shape ``(n, k)``;
            ``None`` on level 0.
        dropped: rows dropped because x or x_coarse was not finite (pairs are dropped together).
    """

    theta: Tensor
    x: Tensor
    x_coarse: Optional[Tensor]
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.theta)

    def rows(self, index: Tensor, device: Optional[str] = None) -> CoupledLevel:
        """The sub-level holding rows ``index``, on ``device`` if given."""
        move = (lambda t: t[index]) if device is None else (lambda t: t[index].to(device))
        coarse = None if self.x_coarse is None else move(self.x_coarse)
        return CoupledLevel(move(self.theta), move(self.x), coarse, self.dropped)


def _matrix(where: str, name: str, value: ArrayLike) -> Tensor:
    # sbi's flows are float32; a float64 numpy array from a store is the common input.
    t = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
    t = t.detach().to(device="cpu", dtype=torch.float32)
    if t.ndim != 2:
        raise ValueError(f"{where}: {name} must have shape (n, dim), got {tuple(t.shape)}; pass one row per simulation")
    return t


def coupled_levels(levels: Sequence[LevelData]) -> tuple[CoupledLevel, ...]:
    r"""Validates ML-NPE training data and drops the rows of failed simulations.

    Arguments:
        levels: level 0 as ``(theta, x)`` or ``(theta, x, None)``, then one ``(theta, x_l, x_{l-1})``
            per coupled level, cheapest first; the members of a coupled row share theta and seed.

    Returns:
        One :class:`CoupledLevel` per level. Rows where theta, x or x_coarse is not finite are
        dropped, both members of a pair together; the count is logged and kept in ``dropped``.

    Raises:
        ValueError: naming ``levels[i]`` and the fix, for a malformed or empty level.
    """
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or len(levels) == 0:
        raise ValueError("levels: pass a non-empty sequence: (theta, x) for level 0, then (theta, x_l, x_{l-1}) per level")
    result: list[CoupledLevel] = []
    for i, level in enumerate(levels):
        where = f"levels[{i}]"
        if not isinstance(level, (tuple, list)) or len(level) not in (2, 3):
            raise ValueError(f"{where}: expected a tuple (theta, x) or (theta, x_fine, x_coarse), got {type(level).__name__}")
        coarse_in = level[2] if len(level) == 3 else None
        if i == 0 and coarse_in is not None:
            raise ValueError(f"{where}: level 0 has no coarser level; pass (theta, x) or (theta, x, None)")
        if i > 0 and coarse_in is None:
            raise ValueError(f"{where}: a coupled level needs x_coarse; pass (theta, x_fine, x_coarse) simulated "
                             "with the same theta and seed")
        theta, x = _matrix(where, "theta", level[0]), _matrix(where, "x", level[1])
        coarse = None if coarse_in is None else _matrix(where, "x_coarse", coarse_in)
        if theta.shape[0] != x.shape[0]:
            raise ValueError(f"{where}: theta has {theta.shape[0]} rows but x has {x.shape[0]}; pass the rows of "
                             "one level together")
        if coarse is not None and coarse.shape != x.shape:
            raise ValueError(f"{where}: x_coarse has shape {tuple(coarse.shape)} but x has {tuple(x.shape)}; pass "
                             "both members of every coupled pair")
        for name, t in (("theta", theta), ("x", x)):
            if result and t.shape[1] != getattr(result[0], name).shape[1]:
                raise ValueError(f"{where}: {name} has {t.shape[1]} columns but level 0's has "
                                 f"{getattr(result[0], name).shape[1]}; every level must share theta's and x's space")
        valid = torch.isfinite(torch.cat([theta, x] + ([] if coarse is None else [coarse]), dim=1)).all(dim=1)
        dropped = int((~valid).sum())
        if dropped:
            logger.warning("%s: dropped %d of %d rows with non-finite values (coupled pairs together)",
                           where, dropped, len(theta))
        if not bool(valid.any()):
            raise ValueError(f"{where}: level {i} holds no valid row; pass at least one (theta, x) pair with finite values")
        result.append(CoupledLevel(theta, x, coarse, dropped).rows(valid.nonzero().squeeze(1)))
    return tuple(result)


def ml_npe_terms(network: nn.Module, levels: Sequence[CoupledLevel]) -> list[Tensor]:
    r"""The terms of the ML-NPE loss: ``[h_0, f_1^+, f_1^-, ..., f_L^+, f_L^-]``.

    ``h_0 = mean[-log q(theta | x_0)]``, ``f_l^+ = mean[-log q(theta | x_l)]`` and
    ``f_l^- = mean[+log q(theta | x_{l-1})]`` over each level's rows (the names of the authors' code).
    """
    terms = [network.loss(levels[0].theta, levels[0].x).mean()]
    for level in levels[1:]:
        n = len(level)
        # One forward pass for both members: the same network evaluates fine and coarse x.
        losses = network.loss(torch.cat([level.theta, level.theta]), torch.cat([level.x, level.x_coarse]))
        terms += [losses[:n].mean(), -losses[n:].mean()]
    return terms


def ml_npe_loss(network: nn.Module, levels: Sequence[CoupledLevel]) -> Tensor:
    r"""The ML-NPE loss (module docstring): level 0's NPE loss plus every level's correction.

    Arguments:
        network: an sbi density estimator (its ``loss(theta, x)`` is -log q per row).
        levels: from :func:`coupled_levels`.

    Returns:
        A scalar; with ``x_coarse == x`` on every coupled level it is level 0's NPE loss.
    """
    return torch.stack(ml_npe_terms(network, levels)).sum()


def adjusted_gradient(gradients: Sequence[Tensor], adjust: bool = True) -> Tensor:
    r"""Combines the flat gradients of :func:`ml_npe_terms` into one update direction.

    The paper's gradient-stability techniques (Hikida et al. 2025, method section on training with
    the ML loss; its section number was not checked here, only the paper's first page was
    readable), exactly as the authors' ``MLMC_train`` (``src/train.py``) applies them every step.
    A correction is the difference of two large, nearly cancelling gradients, and the empirical
    ML loss is unbounded below (pushing q(theta | x_{l-1}) to 0 at the few coupled rows lowers
    it without end), so (1) each ``grad f_l^-`` is rescaled to the norm of its ``grad f_l^+``,
    and (2) when level 0's gradient ``g_0`` and the summed correction ``g_c`` conflict
    (``g_0 . g_c < 0``), each is projected onto the normal plane of the other (symmetric gradient
    surgery, Yu et al. 2020) before they are added. The price: the step is no longer the
    gradient of the unbiased loss; as ``grad f_l^+`` vanishes near the fine-level fit the
    correction shrinks with it, and part of level 0's bias can remain (tests/test_multilevel.py
    keeps a fifth to a half of a 0.3 shift; unadjusted, the training loss there falls without
    bound and only early stopping holds the fit).

    Arguments:
        gradients: ``[grad h_0, grad f_1^+, grad f_1^-, ...]``, flat, same length.
        adjust: ``False`` gives the plain gradient of the ML-NPE loss (their sum).

    Returns:
        The flat update direction.
    """
    g0 = gradients[0]
    if not adjust:
        return torch.stack(list(gradients)).sum(dim=0)
    correction = torch.zeros_like(g0)
    for plus, minus in zip(gradients[1::2], gradients[2::2]):
        correction = correction + plus + minus * (plus.norm() / (minus.norm() + 1e-8))
    # clamp(max=0): no change without conflict; tensors, not ``if``, so CUDA needs no sync per step.
    conflict = torch.dot(g0, correction).clamp(max=0.0)
    tiny = torch.finfo(g0.dtype).tiny
    g0_new = g0 - conflict / torch.dot(correction, correction).clamp_min(tiny) * correction
    correction_new = correction - conflict / torch.dot(g0, g0).clamp_min(tiny) * g0
    return g0_new + correction_new


def _flat_gradients(terms: Sequence[Tensor], parameters: list[nn.Parameter]) -> list[Tensor]:
    flats = []
    for term in terms:
        grads = torch.autograd.grad(term, parameters, retain_graph=True, allow_unused=True)
        flats.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                for g, p in zip(grads, parameters)]))
    return flats


def _cycle(n: int, batch_size: int, seed: int, level: int, device: torch.device) -> Iterator[Tensor]:
    # Each level reshuffles on its own, pass after pass: small coupled levels recur within an epoch.
    for shuffle in itertools.count():
        order = torch.from_numpy(np.random.default_rng([seed, level, shuffle]).permutation(n)).to(device)
        yield from order.split(batch_size)


class CoupledBatches:
    r"""ML-NPE's batches: every step takes rows from every level (a :class:`~mfsbi.inference.fitting.Batches`).

    An epoch is ``max_l ceil(n_l / batch_size)`` steps (one pass over the largest level); a level
    gives ``min(batch_size, n_l)`` rows per step and reshuffles when used up, with the order of its
    k-th pass drawn from ``(seed, level, k)``. The passes run on across epochs (a level's order
    continues where the last epoch left it), so the epoch number does not change the order.

    Arguments:
        levels: the levels' rows, on the training device.
        batch_size: rows per step and level.
        seed: the seed of the row orders.
    """

    def __init__(self, levels: Sequence[CoupledLevel], batch_size: int, seed: int):
        self.levels = list(levels)
        self.steps = max(math.ceil(len(level) / batch_size) for level in self.levels)
        self._batch_size, self._seed = batch_size, seed
        self._streams: Optional[list[Iterator[Tensor]]] = None  # started by the first epoch

    def epoch(self, epoch: int) -> Iterator[list[CoupledLevel]]:  # noqa: ARG002 -- the passes run on
        if self._streams is None:
            self._streams = [_cycle(len(level), min(self._batch_size, len(level)), self._seed, i,
                                    level.theta.device) for i, level in enumerate(self.levels)]
        for _ in range(self.steps):
            yield [level.rows(next(stream)) for level, stream in zip(self.levels, self._streams)]


class MultilevelLoss:
    r"""ML-NPE's objective for :func:`~mfsbi.inference.fitting.fit`.

    A step's gradient is :func:`adjusted_gradient` of the flat gradients of :func:`ml_npe_terms`;
    its training loss is the sum of the terms, averaged over the epoch's steps. The validation
    loss is the ML-NPE loss of the held-out rows of every level (:class:`CoupledBatches`).

    Arguments:
        adjust: the paper's gradient rescaling and projection; ``False``: the plain gradient.
    """

    name = "ML-NPE"

    def __init__(self, adjust: bool = True):
        self.adjust = adjust

    def backward(self, network: nn.Module, parameters: list[nn.Parameter],
                 batch: list[CoupledLevel]) -> tuple[Tensor, int]:
        terms = ml_npe_terms(network, batch)
        direction = adjusted_gradient(_flat_gradients(terms, parameters), self.adjust)
        for p, g in zip(parameters, direction.split([p.numel() for p in parameters])):
            p.grad = g.view_as(p).clone()
        return torch.stack(terms).sum().detach(), 1

    def validation_loss(self, network: nn.Module, validation: CoupledBatches, epoch: int) -> tuple[float, int]:  # noqa: ARG002
        return _validation_loss(network, validation.levels), sum(len(level) for level in validation.levels)


@torch.no_grad()
def _validation_loss(network: nn.Module, levels: Sequence[CoupledLevel]) -> float:
    total = 0.0
    for i, level in enumerate(levels):
        for start in range(0, len(level), VALIDATION_BATCH_SIZE):
            chunk = level.rows(torch.arange(start, min(start + VALIDATION_BATCH_SIZE, len(level))))
            if i == 0:
                total += float(network.loss(chunk.theta, chunk.x).sum()) / len(level)
            else:  # the correction's value, sum_i[-log q(theta|x_l) + log q(theta|x_{l-1})] / n_l
                total += float((network.loss(chunk.theta, chunk.x) - network.loss(chunk.theta, chunk.x_coarse)).sum()) \
                    / len(level)
    return total


def train_ml_npe(
    prior: Distribution,
    levels: Sequence[LevelData],
    *,
    estimator: EstimatorConfig = EstimatorConfig(),
    training: TrainingConfig = TrainingConfig(),
    adjust_gradients: bool = True,
    device: str = "cpu",
    on_epoch: Optional[EpochCallback] = None,
) -> TrainedEstimator:
    r"""Trains q(theta | x) of the finest level with the ML-NPE loss (module docstring).

    The same data, configs and ``training.seed`` give identical weights on the same machine.
    Each step takes one batch from every level: level 0 (normally the largest) sets the epoch, one
    pass over its training rows in ``training.batch_size`` rows; a coupled level contributes
    ``min(batch_size, n_l)`` rows per step and reshuffles when used up. Validation holds out
    ``validation_fraction`` of every level's rows, and training stops on the ML-NPE loss of the
    held-out rows: its expectation is the finest level's NPE loss (the quantity minimised) and the
    coupling keeps its variance below that of the few finest rows alone; it may be negative.
    (The authors' code trains a fixed number of full-batch epochs; ``stop_after_epochs`` of
    ``max_num_epochs`` or more does that, keeping the best-validation weights.)

    Arguments:
        prior: a torch distribution over theta (bounded support for ``"logit"``).
        levels: see :func:`coupled_levels`; a single level is plain NPE.
        estimator: the architecture; x is z-scored with the finest level's training x (the
            authors' choice: the posterior is queried at finest-level observations, and pooled
            statistics would follow the many, possibly shifted, cheap simulations).
        training: the training settings.
        adjust_gradients: the paper's gradient rescaling and projection (:func:`adjusted_gradient`);
            ``False`` follows the plain gradient of the loss.
        device: ``"cpu"`` or ``"cuda"``.
        on_epoch: called with an :class:`EpochReport` (losses are ML-NPE losses) after every epoch.

    Returns:
        The trained estimator with the best-validation weights; ``num_simulations`` counts valid
        simulations (a coupled row is two).
    """
    start = time.perf_counter()
    data = coupled_levels(levels)
    theta_dim, x_dim = data[0].theta.shape[1], data[0].x.shape[1]
    if tuple(prior.event_shape) != (theta_dim,):
        raise ValueError(f"levels: theta has {theta_dim} columns but the prior's event_shape is "
                         f"{tuple(prior.event_shape)}; pass parameters drawn from this prior")
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(training.seed)
        train, validation = [], []
        for i, level in enumerate(data):
            n = len(level)
            n_train = int((1 - training.validation_fraction) * n)
            if n_train < 1 or n - n_train < 1:
                raise ValueError(f"levels[{i}]: {n} valid rows with validation_fraction="
                                 f"{training.validation_fraction} leave an empty training or validation set; add rows")
            permutation = torch.randperm(n)
            train.append(level.rows(permutation[:n_train], device))
            validation.append(level.rows(permutation[n_train:], device))
        if estimator.z_score_x != "none" and len(train[-1]) < 2:
            raise ValueError(f"levels[{len(data) - 1}]: the x z-scoring needs at least 2 training rows of the finest level")
        finest = train[-1]
        network = _builder(prior, estimator)(finest.theta.cpu(), finest.x.cpu()).to(device)
        fitted = fit(network, CoupledBatches(train, training.batch_size, training.seed),
                     CoupledBatches(validation, VALIDATION_BATCH_SIZE, training.seed), training, device=device,
                     on_epoch=on_epoch, objective=MultilevelLoss(adjust_gradients))
        network, losses = fitted.network, fitted.validation_losses
    return TrainedEstimator(
        network=network, prior=prior, estimator=estimator, training=training, epochs=len(losses),
        best_validation_loss=float(min(losses)), seconds=time.perf_counter() - start, theta_dim=theta_dim,
        x_dim=x_dim, num_simulations=sum(len(level) * (1 if i == 0 else 2) for i, level in enumerate(data)),
        validation_losses=tuple(losses),
    )

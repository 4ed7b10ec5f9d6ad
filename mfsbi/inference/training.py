r"""NPE training and MF-NPE fine-tuning with sbi 0.27's estimators.

sbi builds the network (``posterior_nn``: the zuko flow, its z-scoring and theta transform) and
defines its loss; the loop is :func:`~mfsbi.inference.fitting.fit`, sbi's rules (Adam, a random
train/validation split, early stopping, gradient clipping, best-validation weights) with less
Python per batch. This module adds what MF-NPE needs around it (PAPER.md, "Algorithms"): seeding,
building the zuko flow from a config, fine-tuning a deep copy of a pretrained network with every
weight trainable, and refitting its x z-scoring on the high-fidelity data.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from sbi.inference import DirectPosterior
from sbi.neural_nets import posterior_nn
from sbi.utils.sbiutils import Standardize, standardizing_net
from torch import Tensor, nn
from torch.distributions import Distribution

from .config import EstimatorConfig, TrainingConfig
from .embeddings import make_embedding
from .fitting import VALIDATION_BATCH_SIZE, EpochCallback, EpochReport, Fitted, RowBatches, fit

__all__ = [
    "EpochCallback",
    "EpochReport",
    "TrainedEstimator",
    "build_network",
    "fine_tune",
    "pretrain",
    "refit_x_standardizer",
    "restandardized_copy",
    "train_npe",
    "x_standardizer",
]

ArrayLike = Union[Tensor, np.ndarray]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedEstimator:
    r"""A trained conditional density estimator q(theta | x) with its provenance.

    Arguments:
        network: the sbi ``ZukoFlow`` (a ``torch.nn.Module``) holding the best-validation weights.
        prior: the prior the network's theta transform was built from.
        estimator: the architecture.
        training: the training settings used.
        epochs: epochs trained (including the ``stop_after_epochs`` without improvement).
        best_validation_loss: the best mean validation loss, -log q(theta | x).
        seconds: wall-clock seconds of training (network building included).
        theta_dim: parameter dimension ``d``.
        x_dim: observation dimension ``k``.
        num_simulations: the number of valid (theta, x) pairs trained on.
        validation_losses: validation loss of every epoch.
    """

    network: nn.Module
    prior: Distribution
    estimator: EstimatorConfig
    training: TrainingConfig
    epochs: int
    best_validation_loss: float
    seconds: float
    theta_dim: int
    x_dim: int
    num_simulations: int = 0
    validation_losses: tuple[float, ...] = field(default=())

    @property
    def device(self) -> torch.device:
        """The device the network's weights live on."""
        return next(self.network.parameters()).device

    def posterior(self) -> DirectPosterior:
        r"""An sbi ``DirectPosterior`` around the network.

        Returns:
            A posterior with ``.sample((n,), x=x_o)`` and ``.log_prob(theta, x=x_o)``; it shares
            (does not copy) the network.
        """
        return DirectPosterior(
            posterior_estimator=self.network, prior=self.prior, device=str(self.device)
        )


def _as_2d_float(name: str, value: ArrayLike) -> Tensor:
    # sbi's flows are float32; a float64 numpy array from a store is the common input.
    t = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
    t = t.detach().to(device="cpu", dtype=torch.float32)
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape (n, dim), got {tuple(t.shape)}")
    return t


def _check_data(prior: Distribution, theta: ArrayLike, x: ArrayLike) -> tuple[Tensor, Tensor]:
    theta_t, x_t = _as_2d_float("theta", theta), _as_2d_float("x", x)
    if theta_t.shape[0] != x_t.shape[0]:
        raise ValueError(f"theta has {theta_t.shape[0]} rows but x has {x_t.shape[0]}")
    event = tuple(prior.event_shape)
    if event != (theta_t.shape[1],):
        raise ValueError(f"theta has {theta_t.shape[1]} columns but the prior's event_shape is {event}")
    return theta_t, x_t


def _builder(prior: Distribution, estimator: EstimatorConfig) -> Callable[[Tensor, Tensor], nn.Module]:
    kwargs: dict[str, Any] = {}
    if estimator.theta_transform == "logit":
        # sbi maps theta through biject_to(prior.support) before the flow: the density is
        # supported on the prior's box only (x_dist is the flow's "x", i.e. our theta).
        kwargs["x_dist"] = prior
    return posterior_nn(
        model=estimator.model,
        embedding_net=make_embedding(estimator.embedding, estimator.x_shape),
        z_score_theta=estimator.sbi_z_score_theta,
        z_score_x=estimator.z_score_x,
        hidden_features=estimator.hidden_features,
        num_transforms=estimator.num_transforms,
        num_bins=estimator.num_bins,
        **kwargs,
    )


def build_network(
    prior: Distribution, theta: ArrayLike, x: ArrayLike, estimator: EstimatorConfig = EstimatorConfig()
) -> nn.Module:
    r"""Builds an untrained network as sbi would (z-scoring statistics from the given batch).

    Arguments:
        prior: the prior; defines the theta transform.
        theta: a batch of parameters, shape ``(n, d)``.
        x: a batch of observations, shape ``(n, k)``.
        estimator: the architecture.

    Returns:
        An sbi ``ZukoFlow``; its initial weights come from torch's global generator.
    """
    theta_t, x_t = _check_data(prior, theta, x)
    return _builder(prior, estimator)(theta_t, x_t)


def x_standardizer(network: nn.Module) -> Optional[Standardize]:
    r"""The module that z-scores x inside an sbi zuko flow, or ``None`` without z-scoring.

    sbi prepends it to the condition's embedding: ``_embedding_net = Sequential(Standardize,
    embedding)`` (``sbi.neural_nets.net_builders.flow._prepare_y_embedding``).
    """
    embedding = getattr(network, "_embedding_net", None)
    if isinstance(embedding, nn.Sequential) and len(embedding) > 0:
        if isinstance(embedding[0], Standardize):
            return embedding[0]
    return None


@torch.no_grad()
def refit_x_standardizer(network: nn.Module, x: ArrayLike, structured: bool = False) -> None:
    r"""Recomputes, in place, the mean and std with which ``network`` z-scores x.

    Uses sbi's own ``standardizing_net`` on ``x`` (invalid rows excluded, std floored at 1e-7),
    so the result is what a network built on ``x`` would hold.

    Arguments:
        network: an sbi zuko flow with x z-scoring.
        x: observations, shape ``(n, k)``, ``n >= 2``.
        structured: one mean/std over all dimensions instead of one per dimension.
    """
    standardize = x_standardizer(network)
    if standardize is None:
        raise ValueError("network has no x z-scoring layer to refit")
    x_t = _as_2d_float("x", x)
    if x_t.shape[0] < 2:
        raise ValueError("refitting the x z-scoring needs at least 2 rows")
    fresh = standardizing_net(x_t, structured_dims=structured)
    if fresh._mean.shape != standardize._mean.shape:
        raise ValueError(
            f"x has {x_t.shape[1]} columns but the network z-scores shape {tuple(standardize._mean.shape)}"
        )
    standardize._mean.copy_(fresh._mean)
    standardize._std.copy_(fresh._std)
    # Standardize also keeps plain attributes ``mean``/``std``; keep them pointing at the buffers.
    standardize.mean, standardize.std = standardize._mean, standardize._std


def restandardized_copy(pretrained: TrainedEstimator, x: Tensor) -> nn.Module:
    r"""A CPU copy of a pretrained network whose x z-scoring is refit on the valid rows of ``x``.

    What :func:`fine_tune` starts from (with ``refit_x_zscore``); a network without x z-scoring is
    copied as it is.

    Arguments:
        pretrained: the estimator to copy (not modified).
        x: observations, shape ``(n, k)``; rows with NaN/inf are left out of the refit.

    Returns:
        The copy.
    """
    network = copy.deepcopy(pretrained.network).to("cpu")
    if pretrained.estimator.z_score_x != "none":
        x_t = torch.as_tensor(x, dtype=torch.float32)
        refit_x_standardizer(network, x_t[torch.isfinite(x_t).all(dim=1)],
                             structured=pretrained.estimator.z_score_x == "structured")
    return network


def _fit(
    theta: Tensor,
    x: Tensor,
    builder: Callable[[Tensor, Tensor], nn.Module],
    training: TrainingConfig,
    device: str,
    on_epoch: Optional[EpochCallback] = None,
    penalty: Optional[Callable[[], Tensor]] = None,
    validation: Optional[tuple[Tensor, Tensor]] = None,
) -> tuple[Fitted, int, float]:
    """Splits the valid rows as sbi does (or trains on all of them and stops on ``validation``),
    builds the network on the training rows and fits it, all under a private, seeded copy of
    torch's global RNG."""
    start = time.perf_counter()
    # Failed simulations (NaN/inf rows) are dropped rather than poisoning the loss.
    valid = torch.isfinite(x).all(dim=1)
    theta, x = theta[valid], x[valid]
    n = theta.shape[0]
    if validation is not None:
        held_valid = torch.isfinite(validation[1]).all(dim=1)
        held_theta, held_x = validation[0][held_valid], validation[1][held_valid]
        if n < 1 or len(held_theta) < 1:
            raise ValueError(f"{n} valid training and {len(held_theta)} valid validation rows: both must be >= 1")
    else:
        n_train = int((1 - training.validation_fraction) * n)
        if n_train < 1 or n - n_train < 1:
            raise ValueError(
                f"{n} valid simulations with validation_fraction={training.validation_fraction} leave an "
                "empty training or validation set"
            )
    # The split and the network's initial weights draw from torch's global generator (as in sbi):
    # seed it, and restore the caller's state afterwards. The batch order has its own generator.
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(training.seed)
        if validation is None:
            permutation = torch.randperm(n)
            train_rows, validation_rows = permutation[:n_train], permutation[n_train:]
            held_theta, held_x = theta[validation_rows], x[validation_rows]
            theta, x = theta[train_rows], x[train_rows]
        network = builder(theta, x)
        fitted = fit(
            network,
            RowBatches(theta, x, training.batch_size, seed=training.seed, device=device),
            RowBatches(held_theta, held_x, VALIDATION_BATCH_SIZE, device=device),
            training,
            device,
            on_epoch,
            penalty,
        )
    return fitted, n, time.perf_counter() - start


def _trained(
    fitted: Fitted,
    prior: Distribution,
    estimator: EstimatorConfig,
    training: TrainingConfig,
    num_valid: int,
    seconds: float,
    theta_dim: int,
    x_dim: int,
) -> TrainedEstimator:
    return TrainedEstimator(
        network=fitted.network,
        prior=prior,
        estimator=estimator,
        training=training,
        epochs=fitted.epochs,
        best_validation_loss=float(fitted.best_validation_loss),
        seconds=float(seconds),
        theta_dim=theta_dim,
        x_dim=x_dim,
        num_simulations=num_valid,
        validation_losses=fitted.validation_losses,
    )


def train_npe(
    prior: Distribution,
    theta: ArrayLike,
    x: ArrayLike,
    *,
    estimator: EstimatorConfig = EstimatorConfig(),
    training: TrainingConfig = TrainingConfig(),
    device: str = "cpu",
    on_epoch: Optional[EpochCallback] = None,
    validation: Optional[tuple[ArrayLike, ArrayLike]] = None,
) -> TrainedEstimator:
    r"""Trains q(theta | x) from scratch on (theta, x) pairs drawn from the prior (NPE).

    The same data, configs and ``training.seed`` give identical weights on the same machine.

    Arguments:
        prior: a torch distribution over theta on ``device`` (bounded support for ``"logit"``).
        theta: parameters, shape ``(n, d)``.
        x: observations, shape ``(n, k)``; rows with NaN/inf are dropped.
        estimator: the architecture.
        training: the training settings.
        device: ``"cpu"`` or ``"cuda"``; the rows are moved there once.
        on_epoch: called with an :class:`EpochReport` after every epoch (progress displays).
        validation: rows ``(theta, x)`` that stop the training (a cross-validation's held-out
            fold) instead of a random ``training.validation_fraction`` of ``theta, x``, which
            then all train.

    Returns:
        The trained estimator with the best-validation weights.
    """
    theta_t, x_t = _check_data(prior, theta, x)
    held = None if validation is None else _check_data(prior, *validation)
    fitted, num_valid, seconds = _fit(theta_t, x_t, _builder(prior, estimator), training, device, on_epoch,
                                      validation=held)
    return _trained(fitted, prior, estimator, training, num_valid, seconds, theta_t.shape[1], x_t.shape[1])


#: MF-NPE step 1: train on low-fidelity pairs. It is :func:`train_npe`; the authors' code pretrains
#: with learning rate 1e-4 (``PAPER_CODE_LF_LEARNING_RATE``), the paper and mfsbi's default use 5e-4.
pretrain = train_npe


def _anchor(network: nn.Module, strength: float, device: str) -> Callable[[], Tensor]:
    """L2-SP (Li et al. 2018): ``strength * sum((w - w_start) ** 2)``, w_start the weights as they are now.

    Written here: torch's weight decay pulls toward zero, not toward a starting point.
    """
    parameters = list(network.parameters())
    start = [p.detach().clone().to(device) for p in parameters]

    def penalty() -> Tensor:
        return strength * sum(((p - s) ** 2).sum() for p, s in zip(parameters, start))

    return penalty


def fine_tune(
    pretrained: TrainedEstimator,
    theta_hf: ArrayLike,
    x_hf: ArrayLike,
    *,
    training: TrainingConfig = TrainingConfig(),
    refit_x_zscore: bool = True,
    device: str = "cpu",
    on_epoch: Optional[EpochCallback] = None,
    validation: Optional[tuple[ArrayLike, ArrayLike]] = None,
) -> TrainedEstimator:
    r"""MF-NPE step 2: trains a copy of a pretrained estimator on high-fidelity pairs.

    The pretrained estimator is not modified. Every weight of the copy is trainable (PAPER.md:
    nothing is frozen); the theta transform stays the pretrained one (built from the same prior),
    and training runs until early stopping with best-validation weights, as in :func:`train_npe`.

    Arguments:
        pretrained: the LF-trained estimator.
        theta_hf: HF parameters, shape ``(m, d)``.
        x_hf: HF observations, shape ``(m, k)``; rows with NaN/inf are dropped.
        training: the training settings of this step.
        refit_x_zscore: recompute the x z-scoring mean/std from all valid rows of ``x_hf``
            before training, as the authors' code does; ``False`` keeps the LF statistics.
        device: ``"cpu"`` or ``"cuda"``.
        on_epoch: called with an :class:`EpochReport` after every epoch.
        validation: rows ``(theta, x)`` that stop the training instead of a random
            ``training.validation_fraction`` of the HF rows, which then all train (the x
            z-scoring is refit on them alone).

    Returns:
        The fine-tuned estimator; ``epochs`` and ``seconds`` count this step only.
    """
    prior = pretrained.prior
    theta_t, x_t = _check_data(prior, theta_hf, x_hf)
    if x_t.shape[1] != pretrained.x_dim:
        raise ValueError(f"x_hf has {x_t.shape[1]} columns, the pretrained estimator expects {pretrained.x_dim}")

    network = restandardized_copy(pretrained, x_t) if refit_x_zscore else copy.deepcopy(pretrained.network).to("cpu")
    for parameter in network.parameters():
        parameter.requires_grad_(True)

    # The builder is called once with the HF training split; returning the copy makes the loop
    # continue from the pretrained weights.
    def builder(batch_theta: Tensor, batch_x: Tensor) -> nn.Module:
        return network

    penalty = _anchor(network, training.anchor_penalty, device) if training.anchor_penalty > 0 else None
    held = None if validation is None else _check_data(prior, *validation)
    fitted, num_valid, seconds = _fit(theta_t, x_t, builder, training, device, on_epoch, penalty, held)
    return _trained(fitted, prior, pretrained.estimator, training, num_valid, seconds, pretrained.theta_dim,
                    pretrained.x_dim)

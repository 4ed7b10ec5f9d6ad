r"""NPE training and MF-NPE fine-tuning on data read chunk by chunk (out of core).

The same estimator, loss and training loop as :mod:`mfsbi.inference.training`
(:func:`~mfsbi.inference.fitting.fit`), over a :class:`~mfsbi.inference.chunk_stream.ChunkLoader`
instead of rows in memory. What differs, by design:
the validation split is by whole chunks (fixed by the seed) and the x z-scoring statistics come from
one streaming pass over the training chunks.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from .chunk_stream import ChunkLoader, ChunkSource, StreamingConfig, chunk_moments, split_chunks
from .config import EstimatorConfig, TrainingConfig
from .fitting import EpochCallback, fit
from .training import TrainedEstimator, _builder, x_standardizer

__all__ = ["fine_tune_streaming", "train_npe_streaming"]


def _pseudo_batch(mean: Tensor, std: Tensor) -> Tensor:
    # Two rows whose per-dimension mean and (unbiased) std are exactly ``mean`` and ``std``:
    # what sbi's builders z-score from, without holding the data.
    half = std / math.sqrt(2.0)
    return torch.stack([mean + half, mean - half])


def _theta_moments(source: ChunkSource, chunks) -> tuple[Tensor, Tensor]:
    # chunk_moments reads x; theta's moments are those of a source whose x is its theta.
    class _Theta:
        num_chunks = source.num_chunks

        def read_chunk(self, chunk: int):
            theta, x = source.read_chunk(chunk)
            keep = np.isfinite(np.asarray(x, dtype=np.float64)).all(axis=1)
            return theta[keep], theta[keep]

    return chunk_moments(_Theta(), chunks)


def _set_x_standardizer(network: nn.Module, mean: Tensor, std: Tensor) -> None:
    standardize = x_standardizer(network)
    if standardize is None:
        return
    standardize._mean.copy_(mean.reshape(standardize._mean.shape))
    standardize._std.copy_(std.reshape(standardize._std.shape))
    standardize.mean, standardize.std = standardize._mean, standardize._std


def _fit_streaming(network: nn.Module, source: ChunkSource, train_chunks, validation_chunks,
                   training: TrainingConfig, streaming: StreamingConfig, device: str,
                   on_epoch: Optional[EpochCallback]) -> tuple[nn.Module, list[float], int, int]:
    train = ChunkLoader(source, train_chunks, training.batch_size, streaming, seed=training.seed, device=device)
    validation = ChunkLoader(source, validation_chunks, streaming.validation_batch_size, streaming,
                             shuffle=False, device=device)
    fitted = fit(network, train, validation, training, device, on_epoch)
    return fitted.network, list(fitted.validation_losses), fitted.best_epoch, \
        fitted.training_rows + fitted.validation_rows


def _result(network, prior, estimator, training, losses, seconds, theta_dim, x_dim, rows) -> TrainedEstimator:
    return TrainedEstimator(network=network, prior=prior, estimator=estimator, training=training,
                            epochs=len(losses), best_validation_loss=float(min(losses)), seconds=seconds,
                            theta_dim=theta_dim, x_dim=x_dim, num_simulations=rows,
                            validation_losses=tuple(losses))


def _devices(device: str) -> list[int]:
    return [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []


def train_npe_streaming(
    prior: Distribution,
    source: ChunkSource,
    *,
    estimator: EstimatorConfig = EstimatorConfig(),
    training: TrainingConfig = TrainingConfig(),
    streaming: StreamingConfig = StreamingConfig(),
    device: str = "cpu",
    on_epoch: Optional[EpochCallback] = None,
) -> TrainedEstimator:
    r"""Trains q(theta | x) from scratch on chunks read as training goes (NPE, out of core).

    Holds at most a few chunks at once (``streaming``); the same source, configs and seed give
    identical weights on the same machine.

    Arguments:
        prior: a torch distribution over theta (bounded support for ``"logit"``).
        source: the simulations, at least 2 chunks (whole chunks validate).
        estimator: the architecture.
        training: the training settings (``validation_fraction`` of the chunks validate).
        streaming: buffer and prefetch sizes.
        device: ``"cpu"`` or ``"cuda"``.
        on_epoch: called with an :class:`EpochReport` after every epoch.

    Returns:
        The trained estimator with the best-validation weights; ``num_simulations`` counts the
        valid rows (training and validation) of the last epoch, as the in-memory trainings do.
    """
    start = time.perf_counter()
    train_chunks, validation_chunks = split_chunks(source.num_chunks, training.validation_fraction, training.seed)
    structured = estimator.z_score_x == "structured"
    x_mean, x_std = chunk_moments(source, train_chunks, structured=structured)
    theta_first, x_first = next((rows for rows in map(source.read_chunk, map(int, train_chunks)) if len(rows[0])),
                                (None, None))
    if theta_first is None:
        raise ValueError("the training chunks hold no rows")
    theta_dim, x_dim = theta_first.shape[1], x_first.shape[1]
    if tuple(prior.event_shape) != (theta_dim,):
        raise ValueError(f"theta has {theta_dim} columns but the prior's event_shape is {tuple(prior.event_shape)}")
    if estimator.theta_transform == "independent":
        theta_batch = _pseudo_batch(*_theta_moments(source, train_chunks))
    else:  # the logit transform and none use no data: any two rows give the same network
        theta_batch = torch.as_tensor(np.resize(theta_first, (2, theta_dim)), dtype=torch.float32)
    x_batch = _pseudo_batch(x_mean.expand(x_dim), x_std.expand(x_dim))
    with torch.random.fork_rng(devices=_devices(device)):
        torch.manual_seed(training.seed)
        network = _builder(prior, estimator)(theta_batch, x_batch)
        _set_x_standardizer(network, x_mean, x_std)
        network, losses, _, rows = _fit_streaming(network, source, train_chunks, validation_chunks, training,
                                                  streaming, device, on_epoch)
    return _result(network, prior, estimator, training, losses, time.perf_counter() - start, theta_dim, x_dim, rows)


def fine_tune_streaming(
    pretrained: TrainedEstimator,
    source: ChunkSource,
    *,
    training: TrainingConfig = TrainingConfig(),
    streaming: StreamingConfig = StreamingConfig(),
    refit_x_zscore: bool = True,
    device: str = "cpu",
    on_epoch: Optional[EpochCallback] = None,
) -> TrainedEstimator:
    r"""MF-NPE step 2 out of core: trains a copy of a pretrained estimator on chunks of HF pairs.

    As :func:`~mfsbi.inference.training.fine_tune`: every weight trainable, the pretrained estimator
    unchanged, the x z-scoring refitted on the new data's training chunks unless told otherwise.

    Arguments:
        pretrained: the LF-trained estimator.
        source: the HF simulations, at least 2 chunks.
        training: the training settings of this step.
        streaming: buffer and prefetch sizes.
        refit_x_zscore: recompute the x z-scoring from the new data.
        device: ``"cpu"`` or ``"cuda"``.
        on_epoch: called with an :class:`EpochReport` after every epoch.

    Returns:
        The fine-tuned estimator; ``epochs`` and ``seconds`` count this step only.
    """
    start = time.perf_counter()
    train_chunks, validation_chunks = split_chunks(source.num_chunks, training.validation_fraction, training.seed)
    network = copy.deepcopy(pretrained.network).to("cpu")
    for parameter in network.parameters():
        parameter.requires_grad_(True)
    if refit_x_zscore and pretrained.estimator.z_score_x != "none":
        structured = pretrained.estimator.z_score_x == "structured"
        _set_x_standardizer(network, *chunk_moments(source, train_chunks, structured=structured))
    with torch.random.fork_rng(devices=_devices(device)):
        torch.manual_seed(training.seed)
        network, losses, _, rows = _fit_streaming(network, source, train_chunks, validation_chunks, training,
                                                  streaming, device, on_epoch)
    return _result(network, pretrained.prior, pretrained.estimator, training, losses, time.perf_counter() - start,
                   pretrained.theta_dim, pretrained.x_dim, rows)

r"""Checkpoints of trained estimators: a state dict plus the configs that rebuild the network.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)``: opening a file from elsewhere never runs its code. The
prior is not stored (it is code, not data): the caller passes it back in, and the stored support
bounds, where the prior has them, are checked against it.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from importlib.metadata import PackageNotFoundError, version
from typing import IO, Any, Optional, Union

import torch
from torch import nn
from torch.distributions import Distribution

from .config import EstimatorConfig, TrainingConfig
from .training import TrainedEstimator, _builder

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "estimator_from_bytes",
    "estimator_to_bytes",
    "load_estimator",
    "save_estimator",
]

CHECKPOINT_FORMAT = "mfsbi-estimator"
CHECKPOINT_VERSION = 1

PathOrFile = Union[str, os.PathLike, IO[bytes]]


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _support_bounds(prior: Distribution) -> Optional[tuple[list[float], list[float]]]:
    """The prior's box bounds (e.g. of a ``BoxUniform``) as lists, or ``None`` if it has none."""
    try:
        support = prior.support
    except (NotImplementedError, AttributeError):
        return None
    constraint = getattr(support, "base_constraint", support)
    low, high = getattr(constraint, "lower_bound", None), getattr(constraint, "upper_bound", None)
    if not (isinstance(low, torch.Tensor) and isinstance(high, torch.Tensor)):
        return None
    shape = tuple(prior.event_shape)
    try:
        low, high = low.expand(shape), high.expand(shape)
    except RuntimeError:
        return None
    return low.detach().cpu().double().tolist(), high.detach().cpu().double().tolist()


def _check_plain(value: Any, where: str) -> None:
    """Rejects anything that ``weights_only=True`` could not load back."""
    # Exact types: a str or float subclass (e.g. torch's TorchVersion) pickles as a global that
    # weights_only=True then refuses.
    if value is None or type(value) in (bool, int, float, str, torch.Tensor):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: dict keys must be str, got {key!r}")
            _check_plain(item, f"{where}.{key}")
        return
    raise ValueError(f"{where}: {type(value).__name__} cannot be stored in a checkpoint")


def _payload(trained: TrainedEstimator, metadata: Optional[dict[str, Any]]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "epochs": trained.epochs,
        "best_validation_loss": trained.best_validation_loss,
        "seconds": trained.seconds,
        "num_simulations": trained.num_simulations,
        "validation_losses": list(trained.validation_losses),
        "sbi_version": _version("sbi"),
        "torch_version": str(torch.__version__),
    }
    bounds = _support_bounds(trained.prior)
    if bounds is not None:
        meta["prior_low"], meta["prior_high"] = bounds
    if metadata:
        meta["user"] = dict(metadata)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "state_dict": {k: v.detach().cpu().clone() for k, v in trained.network.state_dict().items()},
        "estimator": trained.estimator.to_dict(),
        "training": trained.training.to_dict(),
        "theta_dim": trained.theta_dim,
        "x_dim": trained.x_dim,
        "metadata": meta,
    }
    _check_plain(payload, "checkpoint")
    return payload


def save_estimator(
    trained: TrainedEstimator, path_or_file: PathOrFile, *, metadata: Optional[dict[str, Any]] = None
) -> None:
    r"""Writes a checkpoint of ``trained``.

    Arguments:
        trained: the estimator.
        path_or_file: a path or a binary file object opened for writing.
        metadata: extra provenance (str keys; str, numbers, lists, dicts), stored under
            ``metadata["user"]``.
    """
    torch.save(_payload(trained, metadata), path_or_file)


def estimator_to_bytes(trained: TrainedEstimator, *, metadata: Optional[dict[str, Any]] = None) -> bytes:
    r"""The checkpoint of ``trained`` as bytes (e.g. to store in a zarr array)."""
    buffer = io.BytesIO()
    save_estimator(trained, buffer, metadata=metadata)
    return buffer.getvalue()


def _read(path_or_file: Union[PathOrFile, bytes, bytearray, memoryview]) -> dict[str, Any]:
    source: Any = path_or_file
    if isinstance(path_or_file, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(path_or_file))
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as error:
        # weights_only=True refuses pickled code ("Unsupported global"), and truncated or foreign
        # files fail in the zip or pickle reader: all mean "not a checkpoint we can trust".
        raise ValueError(f"not a loadable {CHECKPOINT_FORMAT} checkpoint: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not a {CHECKPOINT_FORMAT} checkpoint (missing or wrong 'format')")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"unsupported {CHECKPOINT_FORMAT} version {payload.get('version')!r}; "
            f"this mfsbi reads version {CHECKPOINT_VERSION}"
        )
    missing = {"state_dict", "estimator", "training", "theta_dim", "x_dim", "metadata"} - set(payload)
    if missing:
        raise ValueError(f"{CHECKPOINT_FORMAT} checkpoint lacks {sorted(missing)}")
    return payload


def _dummy_network(prior: Distribution, estimator: EstimatorConfig, theta_dim: int, x_dim: int) -> nn.Module:
    # Only shapes matter: the z-scoring buffers and all weights are overwritten by the state dict.
    # fork_rng: building initialises weights from the global generator, which is the caller's.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        theta = prior.sample((2,)).to("cpu", torch.float32).reshape(2, theta_dim)
        x = torch.zeros(2, x_dim)
        return _builder(prior, estimator)(theta, x)


def load_estimator(
    path_or_file: Union[PathOrFile, bytes], prior: Distribution, device: str = "cpu"
) -> TrainedEstimator:
    r"""Rebuilds a :class:`TrainedEstimator` from a checkpoint.

    Arguments:
        path_or_file: a path, a binary file object, or the checkpoint's bytes.
        prior: the prior the estimator was trained with (it defines the theta transform).
        device: where to put the network.

    Returns:
        The estimator, with exactly the stored weights.

    Raises:
        ValueError: for a file that is not an mfsbi estimator checkpoint, one that holds pickled
            objects, or one that does not match ``prior``.
    """
    payload = _read(path_or_file)
    estimator = EstimatorConfig.from_dict(payload["estimator"])
    training = TrainingConfig.from_dict(payload["training"])
    theta_dim, x_dim = int(payload["theta_dim"]), int(payload["x_dim"])
    meta = payload["metadata"]
    if tuple(prior.event_shape) != (theta_dim,):
        raise ValueError(f"checkpoint has theta_dim {theta_dim}, the prior's event_shape is {tuple(prior.event_shape)}")
    bounds = _support_bounds(prior)
    if bounds is not None and "prior_low" in meta:
        stored = (meta["prior_low"], meta["prior_high"])
        close = all(
            math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
            for got, want in zip(bounds, stored)
            for a, b in zip(got, want)
        )
        if not close:
            raise ValueError(f"prior support {bounds} differs from the checkpoint's {stored}")

    network = _dummy_network(prior, estimator, theta_dim, x_dim)
    try:
        network.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        raise ValueError(f"checkpoint weights do not fit the configured network: {error}") from error
    network.to(device).eval()
    return TrainedEstimator(
        network=network,
        prior=prior,
        estimator=estimator,
        training=training,
        epochs=int(meta.get("epochs", 0)),
        best_validation_loss=float(meta.get("best_validation_loss", float("nan"))),
        seconds=float(meta.get("seconds", 0.0)),
        theta_dim=theta_dim,
        x_dim=x_dim,
        num_simulations=int(meta.get("num_simulations", 0)),
        validation_losses=tuple(float(v) for v in meta.get("validation_losses", ())),
    )


def estimator_from_bytes(data: bytes, prior: Distribution, device: str = "cpu") -> TrainedEstimator:
    r"""The inverse of :func:`estimator_to_bytes`; see :func:`load_estimator`."""
    return load_estimator(bytes(data), prior, device=device)

r"""Configurations of the density estimator and of its training.

Both are frozen dataclasses that validate themselves on construction and round-trip through
plain JSON-able dictionaries, so that a checkpoint can rebuild exactly the network it stores.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

from .embeddings import EMBEDDINGS

__all__ = [
    "EstimatorConfig",
    "PAPER_CODE_LF_LEARNING_RATE",
    "TrainingConfig",
]

#: Learning rate of the LF pretraining in the authors' code (their paper states 5e-4 for all
#: training). mfsbi keeps 5e-4 as the default everywhere; pass
#: ``TrainingConfig(learning_rate=PAPER_CODE_LF_LEARNING_RATE)`` to ``pretrain`` to match the code.
PAPER_CODE_LF_LEARNING_RATE = 1e-4

# The builders whose network layout (sbi's ``ZukoFlow``: the x z-scoring is the first module of
# ``_embedding_net``) the fine-tuning and checkpoint code relies on.
_MODELS = ("zuko_nsf", "zuko_maf")
_Z_SCORE_X = ("independent", "structured", "none")
# theta_transform -> sbi's ``z_score_theta`` of ``posterior_nn``.
_THETA_TRANSFORMS = {
    "logit": "transform_to_unconstrained",
    "independent": "independent",
    "none": "none",
}


def _require(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{name}: {message}")


def _is_int(value: Any) -> bool:
    # bool is an int subclass; a flag where a count belongs is a bug.
    return isinstance(value, int) and not isinstance(value, bool)


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}.from_dict: expected a dict, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{cls.__name__}.from_dict: unknown fields {sorted(unknown)}")
    return cls(**data)


@dataclass(frozen=True)
class EstimatorConfig:
    r"""The conditional density estimator q(theta | x) (PAPER.md: zuko NSF, 5 x 50, 8 bins).

    Arguments:
        model: sbi builder name, ``"zuko_nsf"`` or ``"zuko_maf"``.
        hidden_features: width of every hidden layer of the conditioners (sbi gives each
            transform ``num_transforms`` hidden layers of this width).
        num_transforms: number of autoregressive transforms.
        num_bins: spline bins (NSF only).
        z_score_x: z-scoring of x: ``"independent"`` (per dimension), ``"structured"``
            (one mean and std for all dimensions) or ``"none"``.
        theta_transform: ``"logit"`` maps theta onto the prior's bounded support
            (sbi's ``transform_to_unconstrained``), so no posterior mass leaks outside it;
            ``"independent"`` z-scores theta; ``"none"`` leaves it.
        embedding: ``"identity"`` or ``"cnn"`` (images; see :mod:`mfsbi.inference.embeddings`).
        x_shape: the unflattened shape of one x, needed by ``"cnn"``.
    """

    model: str = "zuko_nsf"
    hidden_features: int = 50
    num_transforms: int = 5
    num_bins: int = 8
    z_score_x: str = "independent"
    theta_transform: str = "logit"
    embedding: str = "identity"
    x_shape: Optional[tuple[int, ...]] = None

    def __post_init__(self) -> None:
        if self.x_shape is not None:
            # JSON gives lists back; keep the frozen config hashable and comparable.
            object.__setattr__(self, "x_shape", tuple(int(s) for s in self.x_shape))
        _require(self.embedding in EMBEDDINGS, "embedding", f"must be one of {EMBEDDINGS}, got {self.embedding!r}")
        _require(self.embedding != "cnn" or (self.x_shape is not None and len(self.x_shape) == 2),
                 "x_shape", f"embedding 'cnn' needs a two-dimensional x_shape, got {self.x_shape!r}")
        _require(self.model in _MODELS, "model", f"must be one of {_MODELS}, got {self.model!r}")
        for name in ("hidden_features", "num_transforms", "num_bins"):
            value = getattr(self, name)
            _require(_is_int(value) and value >= 1, name, f"must be an int >= 1, got {value!r}")
        _require(
            self.z_score_x in _Z_SCORE_X,
            "z_score_x",
            f"must be one of {_Z_SCORE_X}, got {self.z_score_x!r}",
        )
        _require(
            self.theta_transform in _THETA_TRANSFORMS,
            "theta_transform",
            f"must be one of {tuple(_THETA_TRANSFORMS)}, got {self.theta_transform!r}",
        )

    @property
    def sbi_z_score_theta(self) -> str:
        """The value of sbi's ``posterior_nn(z_score_theta=...)`` for this config."""
        return _THETA_TRANSFORMS[self.theta_transform]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EstimatorConfig:
        """The inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        return _from_dict(cls, data)


@dataclass(frozen=True)
class TrainingConfig:
    r"""Training of one estimator (sbi's rules: Adam, early stopping, best-validation weights).

    Arguments:
        batch_size: minibatch size.
        learning_rate: Adam learning rate (see ``PAPER_CODE_LF_LEARNING_RATE`` for LF pretraining).
        validation_fraction: fraction of the pairs held out for early stopping.
        stop_after_epochs: epochs without validation improvement before stopping.
        clip_max_norm: gradient-norm clipping; ``None`` disables it.
        max_num_epochs: hard cap on the number of epochs.
        seed: seeds network initialisation, the train/validation split and the minibatch order.
        anchor_penalty: fine-tuning only: lambda of an L2-SP penalty (Li et al. 2018),
            ``lambda * sum((w - w_pretrained) ** 2)`` over the weights, added to the mean loss of
            every batch: it keeps a fine-tuning near the pretrained estimator; 0 turns it off.
    """

    batch_size: int = 200
    learning_rate: float = 5e-4
    validation_fraction: float = 0.1
    stop_after_epochs: int = 20
    clip_max_norm: Optional[float] = 5.0
    max_num_epochs: int = 2**31 - 1
    seed: int = 0
    anchor_penalty: float = 0.0

    def __post_init__(self) -> None:
        for name in ("batch_size", "stop_after_epochs", "max_num_epochs"):
            value = getattr(self, name)
            _require(_is_int(value) and value >= 1, name, f"must be an int >= 1, got {value!r}")
        _require(
            _is_int(self.seed) and 0 <= self.seed < 2**63,
            "seed",
            f"must be an int in [0, 2**63), got {self.seed!r}",
        )
        lr = self.learning_rate
        _require(
            isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0,
            "learning_rate",
            f"must be a finite float > 0, got {lr!r}",
        )
        vf = self.validation_fraction
        _require(
            isinstance(vf, (int, float)) and not isinstance(vf, bool) and 0.0 < vf < 1.0,
            "validation_fraction",
            f"must lie in (0, 1), got {vf!r}",
        )
        a = self.anchor_penalty
        _require(
            isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) and a >= 0,
            "anchor_penalty",
            f"must be a finite float >= 0, got {a!r}",
        )
        c = self.clip_max_norm
        _require(
            c is None
            or (isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c > 0),
            "clip_max_norm",
            f"must be None or a finite float > 0, got {c!r}",
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        """The inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        return _from_dict(cls, data)

r"""Posteriors known exactly, and ones distorted by known amounts, for testing calibration verdicts.

The model is conjugate: theta ~ N(0, I_d) (or uniform on the box [-b, b]^d), x = theta + sigma * eps.
Its exact posterior factorises over parameters: N(x / (1 + sigma^2), sigma^2 / (1 + sigma^2)) per
parameter under the Gaussian prior, N(x, sigma^2) truncated to [-b, b] under the box prior.

A :class:`KnownPosterior` draws from that posterior with each parameter's location moved by
``shift`` posterior SDs and its scale multiplied by ``scale`` (then truncated to the box, if any):
``scale < 1`` is over-confident, ``scale > 1`` under-confident, ``shift != 0`` biased, and
``scale = 1, shift = 0`` the exact posterior. It has what :func:`mfsbi.inference.calibration`
needs of an sbi posterior: ``sample(shape, x=...)`` and ``sample_batched(shape, x=...)``, as sbi's
``get_posterior_samples_on_batch`` calls it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ConjugateGaussianModel", "KnownPosterior"]


@dataclass(frozen=True)
class ConjugateGaussianModel:
    """theta ~ N(0, I_dim) or U([-box, box]^dim); x = theta + noise_std * N(0, I_dim)."""

    dim: int = 2
    noise_std: float = 1.0
    box: float | None = None      # half-width of a uniform prior's box; None: the N(0, I) prior

    def pairs(self, num_pairs: int, seed: int) -> tuple[Tensor, Tensor]:
        """``num_pairs`` prior draws and their simulations, float32 ``(n, dim)`` each, from ``seed`` alone."""
        generator = torch.Generator().manual_seed(seed)
        if self.box is None:
            theta = torch.randn(num_pairs, self.dim, generator=generator, dtype=torch.float64)
        else:
            theta = (2 * torch.rand(num_pairs, self.dim, generator=generator, dtype=torch.float64) - 1) * self.box
        x = theta + self.noise_std * torch.randn(num_pairs, self.dim, generator=generator, dtype=torch.float64)
        return theta.float(), x.float()

    def posterior(self, scale: float = 1.0, shift: float = 0.0) -> KnownPosterior:
        """The exact posterior (defaults) or one distorted by ``scale`` and ``shift`` (see the module)."""
        return KnownPosterior(self, scale, shift)


class KnownPosterior:
    """Draws of the model's posterior, its SD times ``scale``, its location moved by ``shift`` SDs."""

    def __init__(self, model: ConjugateGaussianModel, scale: float = 1.0, shift: float = 0.0):
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        self.model, self.scale, self.shift = model, scale, shift

    def location_and_sd(self, x: Tensor) -> tuple[Tensor, float]:
        """The exact posterior's (untruncated) location at each row of ``x``, and its SD (the same for all)."""
        var = self.model.noise_std ** 2
        if self.model.box is None:
            return x / (1 + var), math.sqrt(var / (1 + var))
        return x, self.model.noise_std

    def sample_batched(self, sample_shape, x: Tensor, show_progress_bars: bool = False) -> Tensor:
        """``(*sample_shape, len(x), dim)`` draws, independent across rows of ``x`` (the torch RNG)."""
        x = torch.as_tensor(x, dtype=torch.float64).reshape(-1, self.model.dim)
        location, sd = self.location_and_sd(x)
        mean, sd = location + self.shift * sd, self.scale * sd
        shape = tuple(sample_shape) + tuple(x.shape)
        uniform = torch.rand(shape, dtype=torch.float64)
        if self.model.box is None:
            draws = mean + sd * torch.special.ndtri(uniform)
        else:
            # Truncated normal by inverse CDF. Mirror each row so its mean is >= 0: the box's bounds
            # then never both lie far in the upper tail, where ndtr rounds to 1 and the interval vanishes.
            sign = torch.where(mean < 0, -1.0, 1.0).to(torch.float64)
            m = mean * sign
            low, high = torch.special.ndtr((-self.model.box - m) / sd), torch.special.ndtr((self.model.box - m) / sd)
            u = low + uniform * (high - low)
            draws = sign * (m + sd * torch.special.ndtri(u.clamp(1e-300, 1 - 1e-16)))
            draws = draws.clamp(-self.model.box, self.model.box)
        return draws.float()

    def sample(self, sample_shape, x: Tensor, show_progress_bars: bool = False) -> Tensor:
        """``(*sample_shape, dim)`` draws at one observation ``x``."""
        return self.sample_batched(sample_shape, x, show_progress_bars)[..., 0, :]

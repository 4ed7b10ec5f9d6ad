"""The GaussianBlob image benchmark task (PAPER.md, section "Tasks").

High fidelity: a ``size x size`` image (256 in the paper) of a dark blob on a light background.
The blob's centre is (x0, y0) plus a jitter N(0, 0.5^2) per axis; pixel (i, j) has its centre at
(j + 0.5, i + 0.5) (x to the right, y down, the image covering [0, size]^2), r is its distance to
the jittered centre, p = 0.9 - 0.8 exp(-0.5 (r^2 / sigma^2)^gamma) with sigma = 12, and the pixel
value is Binomial(255, p) / 255.

Low fidelity: the same picture drawn on a ``lf_size x lf_size`` grid (32 in the paper) with
sigma = 2: the jittered centre is scaled by lf_size / size (the same jitter draw, so centre / 8 at
the paper's sizes), the same observation model, then bilinearly upsampled to ``size x size``
(``align_corners=False``, as ``torch.nn.functional.interpolate``), so both fidelities give
``size^2`` values. Images are stored flat, row-major (``x.reshape(n, size, size)[:, i, j]`` is
row i, column j).

Differences from the authors' code, on purpose: pixel centres at half-integers (their code puts
pixel i at coordinate i), so that the LF and HF pixel grids describe the same square; the LF
uses the HF jitter scaled to its grid and 255 trials (their LF draws its own jitter of 0.5 LF
pixels and 20 trials divided by 255, and adds N(0, 0.001^2) noise after upsampling). There is
no reference posterior (the likelihood needs the jitter marginalised).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.distributions import Distribution

from mfsbi.simulators.base import Task, check_theta_batch

__all__ = [
    "GAMMA_HIGH",
    "GAMMA_LOW",
    "JITTER_STD",
    "PARAMETER_NAMES",
    "TRIALS",
    "GaussianBlobHighFidelity",
    "GaussianBlobLowFidelity",
    "bilinear_upsample",
    "blob_probability",
    "gaussian_blob",
]

PARAMETER_NAMES: tuple[str, ...] = ("x0", "y0", "gamma")
GAMMA_LOW = 0.2
GAMMA_HIGH = 2.0
JITTER_STD = 0.5  # in high-fidelity pixels
TRIALS = 255
# Paper sizes and blob widths: sigma = 12 on the 256 grid, 2 on the 32 grid.
PAPER_SIZE, PAPER_LF_SIZE = 256, 32
PAPER_SIGMA, PAPER_LF_SIGMA = 12.0, 2.0

# Images simulated together: at 256 x 256 a block of 16 keeps each float64 temporary at 8 MB
# (a whole batch of 1 000 would be 524 MB per temporary). Part of the random stream's layout:
# changing it changes the output for a given seed, so it requires bumping the task version.
_BLOCK = 16


def _check_theta(theta: np.ndarray) -> np.ndarray:
    return check_theta_batch(theta, 3, "GaussianBlob")


def blob_probability(cx: np.ndarray, cy: np.ndarray, gamma: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """The Binomial probability of every pixel, ``0.9 - 0.8 exp(-0.5 (r^2 / sigma^2)^gamma)``.

    Arguments:
        cx, cy: blob centres in pixel units of this grid, shape ``(m,)``.
        gamma: shape exponents, shape ``(m,)``.
        size: the grid's side.
        sigma: the blob's width in pixels of this grid.

    Returns:
        Shape ``(m, size, size)``, indexed ``[image, row (y), column (x)]``.
    """
    centres = np.arange(size) + 0.5
    dx2 = (centres[None, :] - cx[:, None]) ** 2  # (m, size) over columns
    dy2 = (centres[None, :] - cy[:, None]) ** 2  # (m, size) over rows
    q = (dy2[:, :, None] + dx2[:, None, :]) / (sigma * sigma)
    # q^gamma, computed in place: 0^gamma = 0 for gamma > 0, so p = 0.1 at the centre.
    np.power(q, gamma[:, None, None], out=q)
    np.multiply(q, -0.5, out=q)
    np.exp(q, out=q)
    np.multiply(q, -0.8, out=q)
    q += 0.9
    return q


def _interpolation_matrix(source: int, target: int) -> np.ndarray:
    """The (target, source) matrix of 1-D linear interpolation with ``align_corners=False``."""
    # Output pixel i sits at source coordinate (i + 0.5) * source / target - 0.5, clamped to the
    # first / last pixel centre as torch does.
    position = (np.arange(target) + 0.5) * (source / target) - 0.5
    position = np.clip(position, 0.0, source - 1)
    left = np.floor(position).astype(np.int64)
    right = np.minimum(left + 1, source - 1)
    weight = position - left
    matrix = np.zeros((target, source))
    np.add.at(matrix, (np.arange(target), left), 1.0 - weight)
    np.add.at(matrix, (np.arange(target), right), weight)
    return matrix


def bilinear_upsample(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of square images (``align_corners=False``, as torch's ``interpolate``).

    Separable: rows then columns, two small matrix products per image.

    Arguments:
        images: shape ``(m, s, s)``.
        size: the output side.

    Returns:
        Shape ``(m, size, size)``.
    """
    matrix = _interpolation_matrix(images.shape[-1], size)
    return matrix @ images @ matrix.T


def _draw_pixels(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    """Binomial(255, p) / 255 per pixel; NaN where p is NaN (a row with a NaN parameter fails).

    numpy's binomial refuses NaN, so such pixels are drawn at p = 0.5 and then overwritten.
    """
    bad = np.isnan(p)
    values = rng.binomial(TRIALS, np.where(bad, 0.5, p)) / TRIALS
    values[bad] = np.nan
    return values


def _jittered(theta: np.ndarray, rng: np.random.Generator, jitter_std: float) -> tuple[np.ndarray, np.ndarray]:
    """The blob centres with jitter, in high-fidelity pixels; one (n, 2) normal draw per batch."""
    jitter = jitter_std * rng.standard_normal((theta.shape[0], 2))
    return theta[:, 0] + jitter[:, 0], theta[:, 1] + jitter[:, 1]


@dataclass(frozen=True)
class GaussianBlobHighFidelity:
    """The high-resolution blob image (picklable, vectorised in blocks of images).

    Arguments:
        size: the image side in pixels.
        sigma: the blob width in pixels.
        jitter_std: standard deviation of the centre jitter in pixels (0 turns it off).
    """

    size: int = PAPER_SIZE
    sigma: float = PAPER_SIGMA
    jitter_std: float = JITTER_STD

    def __call__(self, theta: np.ndarray, seed: int) -> np.ndarray:
        """Simulates one batch.

        Arguments:
            theta: parameters (x0, y0, gamma), shape ``(n, 3)``, x0 and y0 in pixels.
            seed: the batch's seed.

        Returns:
            Flat images of shape ``(n, size * size)``, values k / 255, float64.
        """
        theta = _check_theta(theta)
        rng = np.random.default_rng(seed)
        n = theta.shape[0]
        cx, cy = _jittered(theta, rng, self.jitter_std)
        out = np.empty((n, self.size * self.size))
        for start in range(0, n, _BLOCK):
            rows = slice(start, min(start + _BLOCK, n))
            p = blob_probability(cx[rows], cy[rows], theta[rows, 2], self.size, self.sigma)
            out[rows] = _draw_pixels(rng, p).reshape(p.shape[0], -1)
        return out


@dataclass(frozen=True)
class GaussianBlobLowFidelity:
    """The low-resolution blob image, bilinearly upsampled to the HF size (picklable).

    Arguments:
        size: the output (high-fidelity) side in pixels.
        lf_size: the low-fidelity grid's side; the centre is scaled by ``lf_size / size``.
        sigma: the blob width in low-fidelity pixels.
        jitter_std: standard deviation of the centre jitter in high-fidelity pixels.
    """

    size: int = PAPER_SIZE
    lf_size: int = PAPER_LF_SIZE
    sigma: float = PAPER_LF_SIGMA
    jitter_std: float = JITTER_STD

    def __call__(self, theta: np.ndarray, seed: int) -> np.ndarray:
        """Simulates one batch.

        Arguments:
            theta: parameters (x0, y0, gamma), shape ``(n, 3)``, x0 and y0 in HF pixels.
            seed: the batch's seed.

        Returns:
            Flat upsampled images of shape ``(n, size * size)``, float64.
        """
        theta = _check_theta(theta)
        rng = np.random.default_rng(seed)
        n = theta.shape[0]
        cx, cy = _jittered(theta, rng, self.jitter_std)
        scale = self.lf_size / self.size
        matrix = _interpolation_matrix(self.lf_size, self.size)
        out = np.empty((n, self.size * self.size))
        for start in range(0, n, _BLOCK):
            rows = slice(start, min(start + _BLOCK, n))
            p = blob_probability(cx[rows] * scale, cy[rows] * scale, theta[rows, 2], self.lf_size, self.sigma)
            small = _draw_pixels(rng, p)
            # The same separable product as bilinear_upsample, with the matrix built once.
            out[rows] = (matrix @ small @ matrix.T).reshape(p.shape[0], -1)
        return out


def _prior(size: int) -> Distribution:
    from sbi.utils import BoxUniform  # deferred: sbi costs 1.7 s over torch; `import mfsbi.simulators` must not load it

    return BoxUniform(
        low=torch.tensor([0.0, 0.0, GAMMA_LOW], dtype=torch.float32),
        high=torch.tensor([float(size), float(size), GAMMA_HIGH], dtype=torch.float32),
    )


# Measured seconds per simulation at the paper's sizes (docs/tasks-benchmark.md).
_COST_SECONDS: dict[str, float] = {"lf": 7e-4, "hf": 2.0e-2}


def gaussian_blob(image_size: int = PAPER_SIZE, lf_size: int = PAPER_LF_SIZE) -> Task:
    """GaussianBlob: infer a blob's centre and shape exponent from a noisy image.

    The prior on the centre covers the image, U(0, image_size)^2; the blob widths scale with
    the grids (sigma = 12 image_size / 256, LF sigma = 2 lf_size / 32), so smaller sizes (for
    tests) draw the same picture at a lower resolution.

    Arguments:
        image_size: the HF image side (the paper: 256).
        lf_size: the LF grid side (the paper: 32).

    Returns:
        The task (named ``"gaussian-blob"`` at the paper's sizes).
    """
    if not (0 < lf_size <= image_size):
        raise ValueError(f"need 0 < lf_size <= image_size, got lf_size={lf_size}, image_size={image_size}")
    paper = (image_size, lf_size) == (PAPER_SIZE, PAPER_LF_SIZE)
    return Task(
        name="gaussian-blob" if paper else f"gaussian-blob-{image_size}-{lf_size}",
        prior=_prior(image_size),
        parameter_names=PARAMETER_NAMES,
        low_fidelity=GaussianBlobLowFidelity(image_size, lf_size, PAPER_LF_SIGMA * lf_size / PAPER_LF_SIZE),
        high_fidelity=GaussianBlobHighFidelity(image_size, PAPER_SIGMA * image_size / PAPER_SIZE),
        x_dim=image_size * image_size,
        low_fidelity_parameters=(0, 1, 2),
        references={},
        version="1",
        description=(
            f"Gaussian blob image {image_size}x{image_size}, (x0, y0, gamma); "
            f"LF: {lf_size}x{lf_size} image upsampled bilinearly"
        ),
        x_shape=(image_size, image_size),
        embedding="cnn",
        cost_seconds=dict(_COST_SECONDS) if paper else {},
    )

"""OU2 with a low-fidelity model that is wrong on purpose: biased by known amounts, or pure noise.

Test beds for what the multifidelity methods do when the LF misleads (issues 30 and 34). The
high-fidelity model, the prior and the exact reference posteriors are OU2's
(:func:`mfsbi.simulators.ou.ou2`); only the LF changes:

* ``ou2-lf-biased-small`` / ``-medium`` / ``-large``: the LF's mean is off by a known amount,
  10 i.i.d. draws from N(mu + b, sigma²) with b = 0.1, 0.3 and 0.9 (3 %, 10 % and 31 % of mu's
  prior range 0.1-3). An estimator pretrained on it places mu about b too low at an HF x_o, a bias
  in a known direction (the case Bridged SBI, arXiv 2606.09155, shows sequential MF can lose
  coverage on). Against the posterior's width on mu (about 0.1-0.2 at sigma 0.3), small is about
  one posterior SD, large several.
* ``ou2-lf-noise``: the LF ignores θ, 10 standard normals (the useless LF of docs/calibration.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mfsbi.simulators.base import Task
from mfsbi.simulators.ou import NUM_OBSERVATIONS, OULowFidelity, _check_theta, ou2

__all__ = ["LF_BIAS", "OUNoiseLowFidelity", "OUShiftedLowFidelity", "ou2_lf_biased", "ou2_lf_biased_large",
           "ou2_lf_biased_medium", "ou2_lf_biased_small", "ou2_lf_noise"]

#: The shift b of the biased LF's mean, by size (units of mu).
LF_BIAS: dict[str, float] = {"small": 0.1, "medium": 0.3, "large": 0.9}


@dataclass(frozen=True)
class OUShiftedLowFidelity:
    """OU2's LF with its mean shifted: 10 i.i.d. draws from N(mu + bias, sigma²) (the same normals as OU2's LF).

    Arguments:
        bias: the shift b added to mu.
        theta_dim: 2, 3 or 4, as for :class:`~mfsbi.simulators.ou.OULowFidelity`.
    """

    bias: float
    theta_dim: int = 2

    def __call__(self, theta: np.ndarray, seed: int) -> np.ndarray:
        """Simulates one batch: OU2's LF output at ``theta`` plus ``bias``, shape ``(n, 10)``."""
        return OULowFidelity(self.theta_dim)(theta, seed) + self.bias


@dataclass(frozen=True)
class OUNoiseLowFidelity:
    """An LF that carries no information on θ: 10 standard normals per row.

    Arguments:
        theta_dim: the θ width it accepts (and ignores).
    """

    theta_dim: int = 2

    def __call__(self, theta: np.ndarray, seed: int) -> np.ndarray:
        """Simulates one batch: standard normals of shape ``(n, 10)``, whatever ``theta`` holds."""
        theta = _check_theta(theta, self.theta_dim)
        return np.random.default_rng(seed).standard_normal((theta.shape[0], NUM_OBSERVATIONS))


def _with_low_fidelity(name: str, low_fidelity, description: str, uses: tuple[int, ...] = (0, 1)) -> Task:
    return dataclasses.replace(ou2(), name=name, low_fidelity=low_fidelity, description=description, version="1",
                               low_fidelity_parameters=uses)


def ou2_lf_biased(size: str) -> Task:
    """OU2 whose LF's mean is off by :data:`LF_BIAS` ``[size]``.

    Arguments:
        size: ``"small"``, ``"medium"`` or ``"large"``.

    Returns:
        The task ``ou2-lf-biased-SIZE``.
    """
    if size not in LF_BIAS:
        raise ValueError(f"size: {size!r} is not one of {sorted(LF_BIAS)}")
    bias = LF_BIAS[size]
    return _with_low_fidelity(f"ou2-lf-biased-{size}", OUShiftedLowFidelity(bias, 2),
                              f"OU2 (mu, sigma); LF biased on purpose: i.i.d. N(mu + {bias:g}, sigma^2)")


def ou2_lf_biased_small() -> Task:
    """OU2 with its LF's mean off by 0.1."""
    return ou2_lf_biased("small")


def ou2_lf_biased_medium() -> Task:
    """OU2 with its LF's mean off by 0.3."""
    return ou2_lf_biased("medium")


def ou2_lf_biased_large() -> Task:
    """OU2 with its LF's mean off by 0.9."""
    return ou2_lf_biased("large")


def ou2_lf_noise() -> Task:
    """OU2 with an LF of pure noise (it ignores θ)."""
    return _with_low_fidelity("ou2-lf-noise", OUNoiseLowFidelity(2),
                              "OU2 (mu, sigma); LF of pure noise: 10 standard normals that ignore theta", uses=())

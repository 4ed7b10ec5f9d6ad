"""The mean-field fixed point of the plastic E/I network (the low-fidelity model, PAPER.md).

With Poisson spike trains of rates ``r_pre`` and ``r_post`` the traces average to
``<x_pre> = r_pre tau_pre`` and ``<x_post> = r_post tau_post``, so the rule
``dw = eta [delta_pre (alpha + kappa x_post) + delta_post (beta + gamma x_pre)]`` drifts by

    <dw/dt> = eta [alpha r_pre + beta r_post + lambda r_pre r_post],
    lambda = kappa tau_post + gamma tau_pre.

The weights stop moving where the drift vanishes. For E->E (``r_pre = r_post = r_E``) this gives
``r_E* = -(alpha_EE + beta_EE) / lambda_EE``; for E->I (pre E, post I) it gives
``r_I* = -alpha_EI r_E* / (beta_EI + lambda_EI r_E*)``. Only the EE and EI rules enter.

Both are roots of a drift that is linear in the unknown rate ``r`` (after dividing the EE drift by
``r_E > 0``): ``f(r) = a + b r``. Where the root is not in ``[0, r_max]`` (no, a negative or an
infinite fixed point), ``f`` has one sign on the whole range: a positive drift potentiates the
synapse and pushes the rate to the top of the range, a negative one depresses it to silence.
:func:`fixed_point_rates` returns that bound (policy ``"bounded"``, the default) or NaN
(policy ``"nan"``, the literal formula). Rates are in Hz, time constants in seconds.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "Policy",
    "R_MAX",
    "drift_root",
    "fixed_point_rates",
    "learning_gain",
]

Policy = Literal["bounded", "nan"]

# The largest rate the high-fidelity network can produce: one spike per 5 ms refractory period.
R_MAX = 200.0


def learning_gain(tau_pre: np.ndarray, tau_post: np.ndarray, gamma: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    """``lambda = kappa tau_post + gamma tau_pre`` (seconds), the weight of the pre x post term.

    Arguments:
        tau_pre, tau_post: trace time constants in seconds.
        gamma, kappa: the post- and pre-triggered trace coefficients.

    Returns:
        ``lambda``, broadcast like the arguments.
    """
    return kappa * tau_post + gamma * tau_pre


def drift_root(a: np.ndarray, b: np.ndarray, r_max: float = R_MAX, policy: Policy = "bounded") -> np.ndarray:
    """The rate ``r = -a / b`` where the drift ``a + b r`` vanishes, restricted to ``[0, r_max]``.

    Arguments:
        a, b: drift offset and slope (same shape).
        r_max: the top of the rate range (Hz).
        policy: ``"bounded"``: a root outside ``[0, r_max]`` (or none, ``b = 0``) is replaced by
            ``r_max`` where the drift is positive on the range (potentiation) and by 0 where it
            is negative (depression); ``"nan"``: NaN where the root is negative or not finite,
            and a root above ``r_max`` is kept.

    Returns:
        The rates, float64, shape of ``a``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        root = -a / b
    inside = np.isfinite(root) & (root >= 0.0)
    if policy == "nan":
        return np.where(inside, root, np.nan) + 0.0  # + 0.0 turns -0.0 (a = -0) into 0.0
    if policy != "bounded":
        raise ValueError(f"policy must be 'bounded' or 'nan', got {policy!r}")
    inside &= root <= r_max
    # Outside the range the drift has one sign on [0, r_max]; its value at the middle tells which
    # (a drift that is identically zero counts as depression: the rate has nothing to hold it up).
    up = (a + b * (0.5 * r_max)) > 0.0
    return np.where(inside, root, np.where(up, r_max, 0.0)) + 0.0


def fixed_point_rates(
    ee: np.ndarray, ei: np.ndarray, r_max: float = R_MAX, policy: Policy = "bounded"
) -> np.ndarray:
    """The mean-field fixed point ``(r_E*, r_I*)`` of the EE and EI rules, vectorised.

    Arguments:
        ee, ei: rule parameters of shape ``(n, 6)`` in the order
            ``(tau_pre, tau_post, alpha, beta, gamma, kappa)``, time constants in seconds.
        r_max: the top of the rate range (Hz), see :func:`drift_root`.
        policy: what to return where a fixed point is not in range, see :func:`drift_root`.

    Returns:
        Rates in Hz, shape ``(n, 2)``; with policy ``"nan"`` a row holds NaN where either rate has
        no non-negative finite fixed point.
    """
    ee = np.asarray(ee, dtype=np.float64)
    ei = np.asarray(ei, dtype=np.float64)
    lam_ee = learning_gain(ee[:, 0], ee[:, 1], ee[:, 4], ee[:, 5])
    lam_ei = learning_gain(ei[:, 0], ei[:, 1], ei[:, 4], ei[:, 5])
    # EE drift / r_E = (alpha + beta) + lambda r_E.
    r_e = drift_root(ee[:, 2] + ee[:, 3], lam_ee, r_max, policy)
    # EI drift = alpha r_E + (beta + lambda r_E) r_I, linear in r_I at the fixed r_E.
    r_i = drift_root(ei[:, 2] * r_e, ei[:, 3] + lam_ei * r_e, r_max, policy)
    out = np.stack([r_e, r_i], axis=1)
    out[~np.isfinite(out).all(axis=1)] = np.nan
    return out

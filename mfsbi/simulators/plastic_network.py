"""The plastic E/I spiking-network task (PAPER.md, "Recurrent spiking network with synaptic plasticity").

High fidelity: a recurrent network of conductance-based LIF neurons with an adaptive threshold
(Brian2), N_E excitatory and N_I inhibitory, 10% recurrent connectivity, Poisson input, AMPA / NMDA
/ GABA conductances. All four recurrent synapse types (EE, EI, IE, II; the first letter is the
presynaptic population) learn with

    dw = eta [delta_pre (alpha + kappa x_post) + delta_post (beta + gamma x_pre)],

traces ``x_pre``, ``x_post`` jumping by 1 at a spike and decaying with ``tau_pre``, ``tau_post``;
weights are clipped to ``[0, W_MAX]``. theta holds 24 parameters: for each type in (EE, EI, IE, II)
the six ``(tau_pre, tau_post, alpha, beta, gamma, kappa)``. x = (E rate, I rate) in Hz over the
final ``window`` seconds. Low fidelity: the mean-field fixed point of the EE and EI rules
(:mod:`mfsbi.simulators.mean_field`). See docs/tasks-network.md for the constants and costs.

The model is in three modules: the parameters and constants in
:mod:`mfsbi.simulators.network_model`, the Brian2 network in :mod:`mfsbi.simulators.network_brian2`
and the mean field in :mod:`mfsbi.simulators.mean_field`; this one holds the low-fidelity
simulator, the prior and the task, and names everything of the other two as before.

Brian2 is imported only inside the simulator: ``import brian2`` fails outside a process's main
thread, so a process that simulates in worker threads (a Dask worker) must import it first in its
main thread, e.g. ``dask worker --preload mfsbi.simulators.plastic_network`` (importing this module
does not import brian2; its ``dask_setup`` hook calls :func:`preload`) or by calling :func:`preload`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.distributions import Distribution

from mfsbi.simulators.base import Task
from mfsbi.simulators.mean_field import R_MAX, Policy, fixed_point_rates
from mfsbi.simulators.network_brian2 import (
    PlasticNetworkHighFidelity,
    Target,
    dask_setup,
    default_cache_dir,
    preload,
    resolve_target,
)
from mfsbi.simulators.network_model import (
    ETA,
    LOW_FIDELITY_PARAMETERS,
    PARAMETER_NAMES,
    PLAUSIBLE_RATES,
    RULE_HIGH,
    RULE_LOW,
    RULE_PARAMETERS,
    SYNAPSE_TYPES,
    W_MAX,
    NetworkConstants,
    NetworkScale,
    check_network_theta,
    is_plausible,
)

# The names of network_model and network_brian2 stay importable from here: tests, the Dask
# preload (``dask_setup``, ``preload``) and the images import them from this module.
__all__ = [
    "ETA",
    "LOW_FIDELITY_PARAMETERS",
    "PARAMETER_NAMES",
    "PLAUSIBLE_RATES",
    "RULE_HIGH",
    "RULE_LOW",
    "RULE_PARAMETERS",
    "SYNAPSE_TYPES",
    "W_MAX",
    "NetworkConstants",
    "NetworkScale",
    "PlasticNetworkHighFidelity",
    "PlasticNetworkLowFidelity",
    "Target",
    "check_network_theta",
    "dask_setup",
    "default_cache_dir",
    "is_plausible",
    "plastic_network",
    "plastic_network_paper",
    "plastic_network_tiny",
    "preload",
    "resolve_target",
]


@dataclass(frozen=True)
class PlasticNetworkLowFidelity:
    """The mean-field fixed point of the EE and EI rules (picklable, vectorised, no brian2).

    Arguments:
        policy: ``"bounded"`` (default): a fixed point that is negative, infinite or missing becomes
            0 or ``r_max`` by the sign of the weight drift (depression silences, potentiation runs
            away), one above ``r_max`` becomes ``r_max``; ``"nan"``: such rows fail with reason
            ``"no fixed point"``.
        r_max: the top of the rate range in Hz (the refractory limit of the network).
    """

    policy: Policy = "bounded"
    r_max: float = R_MAX

    def __call__(self, theta: np.ndarray, seed: int) -> tuple[np.ndarray, list[str | None]]:
        """Evaluates one batch (``seed`` is unused: the model is deterministic).

        Arguments:
            theta: parameters, shape ``(n, 24)``.
            seed: the batch's seed.

        Returns:
            Rates (E, I) in Hz, shape ``(n, 2)``, and one reason per row.
        """
        theta = check_network_theta(theta)
        x = fixed_point_rates(theta[:, 0:6], theta[:, 6:12], self.r_max, self.policy)
        failed = ~np.isfinite(x).all(axis=1)
        reasons: list[str | None] = ["no fixed point" if f else None for f in failed]
        return x, reasons


def _prior() -> Distribution:
    from sbi.utils import BoxUniform  # deferred: sbi costs 1.7 s over torch; `import mfsbi.simulators` must not load it

    return BoxUniform(
        low=torch.tensor(RULE_LOW * len(SYNAPSE_TYPES), dtype=torch.float32),
        high=torch.tensor(RULE_HIGH * len(SYNAPSE_TYPES), dtype=torch.float32),
    )


# Seconds per simulation on the 2-core reference machine, shared with other jobs (docs/tasks-network.md).
# HF default: between warm cython (~20 s) and numpy (~33 s) for a static network; runaway rows stop
# early. Paper: extrapolated from 2 s of simulated time (~10 s on numpy), not run in full.
_COST_SECONDS: dict[str, dict[str, float]] = {
    "tiny": {"lf": 1e-6, "hf": 2.0},
    "default": {"lf": 1e-6, "hf": 25.0},
    "paper": {"lf": 1e-6, "hf": 600.0},
}


def plastic_network(scale: str = "default", target: Target = "auto") -> Task:
    """The plastic E/I network task.

    Arguments:
        scale: ``"default"`` (400 + 100 neurons, 10 s), ``"paper"`` (4 096 + 1 024, 120 s) or ``"tiny"``.
        target: Brian2 code generation target of the high-fidelity simulator.

    Returns:
        The task.
    """
    network_scale = NetworkScale.named(scale)
    return Task(
        name="plastic-network" if scale == "default" else f"plastic-network-{scale}",
        prior=_prior(),
        parameter_names=PARAMETER_NAMES,
        low_fidelity=PlasticNetworkLowFidelity(),
        high_fidelity=PlasticNetworkHighFidelity(scale=network_scale, target=target),
        x_dim=2,
        low_fidelity_parameters=LOW_FIDELITY_PARAMETERS,
        references={},
        version="1",
        description="Plastic E/I spiking network (Brian2), 24 rule parameters; LF: mean-field fixed point",
        cost_seconds=dict(_COST_SECONDS[scale]),
    )


def plastic_network_tiny() -> Task:
    """The network at the test scale (80 + 20 neurons, 2 s): seconds per HF run, for trying things out."""
    return plastic_network(scale="tiny")


def plastic_network_paper() -> Task:
    """The network at the paper's scale (4 096 + 1 024 neurons, 120 s): minutes per HF run."""
    return plastic_network(scale="paper")

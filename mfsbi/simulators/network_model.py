"""The plastic E/I network's parameters, sizes and constants, shared by both fidelities.

theta holds 24 parameters: for each synapse type in :data:`SYNAPSE_TYPES` (EE, EI, IE, II; the
first letter is the presynaptic population) the six :data:`RULE_PARAMETERS`. The task is described
in :mod:`mfsbi.simulators.plastic_network`; the constants and costs in docs/tasks-network.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mfsbi.simulators.base import check_theta_batch

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
    "check_network_theta",
    "is_plausible",
]

SYNAPSE_TYPES: tuple[str, ...] = ("EE", "EI", "IE", "II")
RULE_PARAMETERS: tuple[str, ...] = ("tau_pre", "tau_post", "alpha", "beta", "gamma", "kappa")
PARAMETER_NAMES: tuple[str, ...] = tuple(f"{s}_{p}" for s in SYNAPSE_TYPES for p in RULE_PARAMETERS)
# Prior bounds per rule parameter (tau in seconds).
RULE_LOW: tuple[float, ...] = (0.01, 0.01, -2.0, -2.0, -2.0, -2.0)
RULE_HIGH: tuple[float, ...] = (0.1, 0.1, 2.0, 2.0, 2.0, 2.0)
# The mean field uses all six parameters of the EE and EI rules (lambda needs both taus, gamma
# and kappa; the numerators alpha and beta) and none of IE and II.
LOW_FIDELITY_PARAMETERS: tuple[int, ...] = tuple(range(12))

ETA = 0.01  # learning rate (PAPER.md)
# Upper weight bound, in units of the leak conductance at paper scale: 5-25x the initial weights,
# enough for a potentiated network to run away, low enough that one synapse stays sub-threshold.
W_MAX = 0.5
PLAUSIBLE_RATES: tuple[float, float] = (1.0, 50.0)  # Hz, both rates (PAPER.md)


@dataclass(frozen=True)
class NetworkScale:
    """Network size and simulated time.

    Weights are given at paper scale and multiplied by ``K_paper / K`` (K the expected in-degree)
    in smaller networks, so that the mean input conductance of a neuron does not depend on the
    scale (its fluctuations grow as the network shrinks).

    Arguments:
        n_exc, n_inh: population sizes.
        duration: simulated seconds (weights learn throughout).
        window: the final seconds over which the rates in x are counted.
        n_input: Poisson input sources (PAPER.md: 5 000 for 5 120 neurons, scaled with the network).
        p_recurrent: recurrent connection probability.
        p_input: input connection probability (each neuron gets ``round(p_input n_input)`` inputs).
        input_rate: Hz per input source.
        input_gain: multiplies the input weight. A large network is closer to mean-driven and
            more inhibition-dominated than a small one at the same mean input, so the paper
            scale needs a stronger drive for a static network to fire at a few Hz (calibrated:
            2.0 gives E about 2 Hz and I about 9 Hz, against about 0.4 and 1.3 Hz at 1.0).
    """

    n_exc: int = 400
    n_inh: int = 100
    duration: float = 10.0
    window: float = 2.0
    n_input: int = 488
    p_recurrent: float = 0.1
    p_input: float = 0.05
    input_rate: float = 10.0
    input_gain: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.window <= self.duration:
            raise ValueError(f"window must be in (0, duration], got {self.window} for {self.duration}")
        if min(self.n_exc, self.n_inh, self.n_input) < 1:
            raise ValueError("population sizes must be positive")

    @classmethod
    def paper(cls) -> NetworkScale:
        """4 096 + 1 024 neurons, 5 000 inputs (input gain 2), 120 s, rates over the last 10 s."""
        return cls(n_exc=4096, n_inh=1024, duration=120.0, window=10.0, n_input=5000, input_gain=2.0)

    @classmethod
    def default(cls) -> NetworkScale:
        """400 + 100 neurons, 488 inputs, 10 s, rates over the last 2 s (tens of seconds a run)."""
        return cls()

    @classmethod
    def tiny(cls) -> NetworkScale:
        """80 + 20 neurons, 98 inputs, 2 s, rates over the last 1 s: for tests."""
        return cls(n_exc=80, n_inh=20, duration=2.0, window=1.0, n_input=98)

    @classmethod
    def named(cls, name: str) -> NetworkScale:
        """``"paper"``, ``"default"`` or ``"tiny"``."""
        factories = {"paper": cls.paper, "default": cls.default, "tiny": cls.tiny}
        if name not in factories:
            raise ValueError(f"scale must be one of {', '.join(factories)}, got {name!r}")
        return factories[name]()


@dataclass(frozen=True)
class NetworkConstants:
    """Neuron and synapse constants (SI units: volt, second; conductances in units of the leak).

    Membrane, reversal and synaptic time constants follow Vogels et al. 2011 (Science 334:1569) and
    Zenke et al. 2015 (Nat. Commun. 6:6922), the lineage of the Auryn networks of Confavreux et al.
    2023: tau_m 20 ms, E_L -70 mV, threshold -50 mV, reset -70 mV, E_exc 0 mV, E_inh -80 mV,
    refractory 5 ms, AMPA / GABA / NMDA 5 / 10 / 100 ms. NMDA follows AMPA as a low-pass filter
    (Zenke et al. 2015), so both carry the same charge; ``ampa_fraction`` of the excitatory
    conductance is fast. The threshold adaptation and the initial weights are chosen here (not
    taken from a paper): weights give a non-plastic network at the default scale of a few Hz (E)
    and about ten Hz (I).
    """

    tau_m: float = 20e-3
    e_leak: float = -70e-3
    v_threshold: float = -50e-3
    v_reset: float = -70e-3
    e_exc: float = 0.0
    e_inh: float = -80e-3
    refractory: float = 5e-3
    tau_ampa: float = 5e-3
    tau_gaba: float = 10e-3
    tau_nmda: float = 100e-3
    ampa_fraction: float = 0.5  # chosen
    threshold_jump: float = 2e-3  # chosen: +2 mV per spike
    tau_threshold: float = 100e-3  # chosen
    # Initial weights (leak units, paper scale) per type, and of the input synapses (not plastic).
    w_init: tuple[float, float, float, float] = (0.02, 0.04, 0.12, 0.1)  # chosen, EE EI IE II
    w_input: float = 0.03  # chosen
    eta: float = ETA
    w_max: float = W_MAX


def is_plausible(x: np.ndarray) -> np.ndarray:
    """Whether both rates lie in ``PLAUSIBLE_RATES`` (1-50 Hz, PAPER.md); NaN rows are not.

    Arguments:
        x: rates of shape ``(n, 2)`` or ``(2,)``.

    Returns:
        Booleans of shape ``(n,)`` (or a 0-d array for one row).
    """
    x = np.asarray(x, dtype=np.float64)
    low, high = PLAUSIBLE_RATES
    with np.errstate(invalid="ignore"):
        return np.all((x >= low) & (x <= high), axis=-1)


def check_network_theta(theta: np.ndarray) -> np.ndarray:
    """Checks a batch of network parameters (both fidelities take the same 24).

    Arguments:
        theta: parameters, shape ``(n, 24)``.

    Returns:
        ``theta`` as a float64 array.
    """
    return check_theta_batch(theta, len(PARAMETER_NAMES), "the plastic network")

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

Brian2 is imported only inside the simulator: ``import brian2`` fails outside a process's main
thread, so a process that simulates in worker threads (a Dask worker) must import it first in its
main thread, e.g. ``dask worker --preload mfsbi.simulators.plastic_network`` (importing this module
does not import brian2; its ``dask_setup`` hook calls :func:`preload`) or by calling :func:`preload`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from torch.distributions import Distribution

from mfsbi.simulators.base import Task, check_theta_batch
from mfsbi.simulators.mean_field import R_MAX, Policy, fixed_point_rates
from mfsbi.simulators.registry import register_task

__all__ = [
    "ETA",
    "PARAMETER_NAMES",
    "PLAUSIBLE_RATES",
    "SYNAPSE_TYPES",
    "W_MAX",
    "NetworkConstants",
    "NetworkScale",
    "PlasticNetworkHighFidelity",
    "PlasticNetworkLowFidelity",
    "default_cache_dir",
    "is_plausible",
    "plastic_network",
    "preload",
    "resolve_target",
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

Target = Literal["auto", "cython", "numpy"]


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


def preload() -> None:
    """Imports brian2 in the calling thread, which must be a process's main thread.

    Call it once in every process that simulates the high-fidelity model outside its main thread
    (Dask workers: ``--preload mfsbi.simulators.plastic_network`` or ``LocalCluster(preload=...)``).
    """
    import brian2  # noqa: F401


def dask_setup(worker: Any = None) -> None:
    """The Dask ``--preload`` hook: imports brian2 in the worker's main thread."""
    preload()


def default_cache_dir() -> str:
    """The Cython cache: ``$MFSBI_BRIAN2_CACHE`` or ``~/.cache/mfsbi/brian2`` (shared by runs)."""
    return os.environ.get("MFSBI_BRIAN2_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "mfsbi", "brian2"))


_TARGET_LOCK = threading.Lock()
_RESOLVED: dict[str, str] = {}


def resolve_target(target: Target) -> str:
    """``"cython"`` or ``"numpy"``; ``"auto"`` is cython when a test compile works (checked once)."""
    if target in ("cython", "numpy"):
        return target
    if target != "auto":
        raise ValueError(f"target must be 'auto', 'cython' or 'numpy', got {target!r}")
    with _TARGET_LOCK:
        if "auto" not in _RESOLVED:
            try:
                from brian2.codegen.runtime.cython_rt import CythonCodeObject

                _RESOLVED["auto"] = "cython" if CythonCodeObject.is_available() else "numpy"
            except Exception:  # noqa: BLE001 - any failure to compile means "no cython"
                _RESOLVED["auto"] = "numpy"
        return _RESOLVED["auto"]


# Brian2's preferences and RNG are process-global: one simulation at a time per process.
_RUN_LOCK = threading.Lock()


def _import_brian2() -> Any:
    """brian2, or a RuntimeError that says to preload it (an import in a worker thread fails)."""
    try:
        import brian2
    except ValueError as error:
        if threading.current_thread() is threading.main_thread():
            raise
        raise RuntimeError(
            "brian2 cannot be imported outside a process's main thread: call "
            "mfsbi.simulators.plastic_network.preload() in the main thread first (Dask workers: "
            "--preload mfsbi.simulators.plastic_network)"
        ) from error
    return brian2


def _row_seeds(seed: int, n: int) -> list[int]:
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n)]


@dataclass(frozen=True)
class PlasticNetworkHighFidelity:
    """The Brian2 network, one row at a time (picklable; brian2 is imported on the first call).

    Each row builds a fresh network (new random connectivity, initial potentials and input) with
    the same object names, so the Cython target compiles each code object once per cache dir.
    The simulation runs in chunks of ``check_interval`` seconds; if either population rate over a
    chunk exceeds ``runaway_rate`` the run stops and x holds that chunk's rates (flagged
    implausible, not failed): runaway networks are frequent under the prior and otherwise cost
    the most. A Brian2 error gives a NaN row with the error as reason.

    Arguments:
        scale: network size and duration.
        constants: neuron and synapse constants.
        target: Brian2 code generation target; ``"auto"``: cython if a compiler works.
        dt: integration step in seconds.
        check_interval: seconds between runaway checks.
        runaway_rate: Hz above which a run is stopped.
        cache_dir: Cython cache directory; ``None``: :func:`default_cache_dir`.
    """

    scale: NetworkScale = field(default_factory=NetworkScale)
    constants: NetworkConstants = field(default_factory=NetworkConstants)
    target: Target = "auto"
    dt: float = 1e-4
    check_interval: float = 0.5
    runaway_rate: float = 100.0
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not (self.dt > 0 and self.check_interval > 0 and self.runaway_rate > 0):
            raise ValueError("dt, check_interval and runaway_rate must be positive")

    def __call__(self, theta: np.ndarray, seed: int) -> tuple[np.ndarray, list[str | None]]:
        """Simulates one batch, row by row.

        Arguments:
            theta: parameters, shape ``(n, 24)``.
            seed: the batch's seed; row ``i`` uses the ``i``-th child of ``SeedSequence(seed)``.

        Returns:
            Rates (E, I) in Hz, shape ``(n, 2)``, and one reason per row (``None`` if it worked).
        """
        theta = _check_theta(theta)
        # Outside the row loop: a process that cannot import brian2 is a setup error for the whole
        # batch, not a failed simulation.
        _import_brian2()
        x = np.full((theta.shape[0], 2), np.nan)
        reasons: list[str | None] = [None] * theta.shape[0]
        for i, row_seed in enumerate(_row_seeds(seed, theta.shape[0])):
            try:
                x[i] = self.simulate_one(theta[i], row_seed)
            except Exception as error:  # noqa: BLE001 - a failed row, not a failed batch
                reasons[i] = f"simulation error: {type(error).__name__}: {error}"[:300]
        return x, reasons

    def simulate_one(self, theta: np.ndarray, seed: int) -> np.ndarray:
        """Builds and runs one network.

        Arguments:
            theta: one parameter vector, shape ``(24,)``.
            seed: the row's seed.

        Returns:
            ``(rate_E, rate_I)`` in Hz.
        """
        b2 = _import_brian2()
        with _RUN_LOCK:
            target = resolve_target(self.target)
            b2.prefs.codegen.target = target
            b2.prefs.codegen.runtime.cython.cache_dir = self.cache_dir or default_cache_dir()
            # b2.seed reseeds numpy's global RNG: keep the caller's stream untouched.
            state = np.random.get_state()
            try:
                b2.seed(seed)
                net, namespace, mon_e, mon_i = self._build(
                    b2, np.asarray(theta, dtype=np.float64), np.random.default_rng(seed)
                )
                return self._run(b2, net, namespace, mon_e, mon_i)
            finally:
                np.random.set_state(state)

    def _build(self, b2: Any, theta: np.ndarray, rng: np.random.Generator) -> tuple[Any, dict[str, Any], Any, Any]:
        c, s = self.constants, self.scale
        second = b2.second
        namespace = {
            "tau_m": c.tau_m * second,
            "E_L": c.e_leak * b2.volt,
            "V_th": c.v_threshold * b2.volt,
            "V_reset": c.v_reset * b2.volt,
            "E_exc": c.e_exc * b2.volt,
            "E_inh": c.e_inh * b2.volt,
            "tau_ampa": c.tau_ampa * second,
            "tau_gaba": c.tau_gaba * second,
            "tau_nmda": c.tau_nmda * second,
            "a_ampa": c.ampa_fraction,
            "dtheta": c.threshold_jump * b2.volt,
            "tau_theta": c.tau_threshold * second,
            "eta": c.eta,
            "w_max": c.w_max,
        }
        eqs = """
        dv/dt = (E_L - v + g_exc * (E_exc - v) + g_gaba * (E_inh - v)) / tau_m : volt (unless refractory)
        g_exc = a_ampa * g_ampa + (1 - a_ampa) * g_nmda : 1
        dg_ampa/dt = -g_ampa / tau_ampa : 1
        dg_nmda/dt = (g_ampa - g_nmda) / tau_nmda : 1
        dg_gaba/dt = -g_gaba / tau_gaba : 1
        dv_ad/dt = -v_ad / tau_theta : volt
        """
        clock = b2.Clock(dt=self.dt * second, name="pn_clock")
        groups = {}
        for pop, n in (("E", s.n_exc), ("I", s.n_inh)):
            group = b2.NeuronGroup(
                n, eqs, threshold="v > V_th + v_ad", reset="v = V_reset; v_ad += dtheta",
                refractory=c.refractory * second, method="euler", clock=clock, name=f"pn_{pop}",
            )
            # Spread initial potentials below threshold so the network does not start synchronised.
            group.v = (c.e_leak + rng.uniform(size=n) * (c.v_threshold - c.e_leak)) * b2.volt
            groups[pop] = group
        objects: list[Any] = list(groups.values())

        # Independent Poisson inputs per neuron: one binomial draw per step (what PoissonInput does,
        # which takes no name= and so would defeat the Cython cache) instead of n_input spike sources
        # and a synapse object. Inputs are therefore not shared between neurons.
        k_in = max(1, round(s.p_input * s.n_input))
        namespace["w_in"] = s.input_gain * c.w_input * round(0.05 * 5000) / k_in
        for pop, group in groups.items():
            namespace[f"pn_binomial_{pop}"] = b2.BinomialFunction(
                k_in, s.input_rate * self.dt, name=f"pn_binomial_{pop}"
            )
            group.run_regularly(f"g_ampa += w_in * pn_binomial_{pop}()", when="synapses", name=f"pn_input_{pop}")

        n_pop = {"E": s.n_exc, "I": s.n_inh}
        n_pop_paper = {"E": 4096, "I": 1024}
        rule_model = """
        w : 1
        w_scale : 1 (shared, constant)
        taupre : second (shared, constant)
        taupost : second (shared, constant)
        alpha : 1 (shared, constant)
        beta : 1 (shared, constant)
        gam : 1 (shared, constant)
        kap : 1 (shared, constant)
        dxpre/dt = -xpre / taupre : 1 (event-driven)
        dxpost/dt = -xpost / taupost : 1 (event-driven)
        """
        for k, name in enumerate(SYNAPSE_TYPES):
            pre, post = groups[name[0]], groups[name[1]]
            conductance = "g_ampa_post" if name[0] == "E" else "g_gaba_post"
            # The synapse's conductance jump uses the weight before this spike's update; the trace of
            # the spiking side jumps after the update (its own spike does not count in its pairing).
            on_pre = f"""
            {conductance} += w * w_scale
            w = clip(w + eta * (alpha + kap * xpost), 0, w_max)
            xpre += 1
            """
            on_post = """
            w = clip(w + eta * (beta + gam * xpre), 0, w_max)
            xpost += 1
            """
            syn = b2.Synapses(
                pre, post, model=rule_model, on_pre=on_pre, on_post=on_post, clock=clock, name=f"pn_syn_{name}"
            )
            syn.connect(condition="i != j" if name[0] == name[1] else None, p=s.p_recurrent)
            tau_pre, tau_post, alpha, beta, gamma, kappa = theta[6 * k : 6 * k + 6]
            # Weights are given at paper scale; scaling by the in-degree ratio keeps the mean input.
            syn.w_scale = n_pop_paper[name[0]] / n_pop[name[0]]
            syn.taupre = tau_pre * second
            syn.taupost = tau_post * second
            syn.alpha, syn.beta, syn.gam, syn.kap = alpha, beta, gamma, kappa
            syn.w = c.w_init[k]
            objects.append(syn)

        mon_e = b2.SpikeMonitor(groups["E"], record=False, name="pn_spikes_E")
        mon_i = b2.SpikeMonitor(groups["I"], record=False, name="pn_spikes_I")
        objects += [mon_e, mon_i]
        net = b2.Network(*objects, name="pn_network")
        return net, namespace, mon_e, mon_i

    def _run(self, b2: Any, net: Any, namespace: dict[str, Any], mon_e: Any, mon_i: Any) -> np.ndarray:
        s = self.scale
        steps_total = round(s.duration / self.dt)
        steps_window = round(s.window / self.dt)
        steps_chunk = max(1, round(self.check_interval / self.dt))
        # Chunk boundaries: regular chunks before the window, then the window in chunks, so that the
        # window's start is a boundary.
        boundaries = list(range(0, steps_total - steps_window, steps_chunk)) + list(
            range(steps_total - steps_window, steps_total, steps_chunk)
        )
        boundaries = sorted(set(boundaries)) + [steps_total]
        window_start = steps_total - steps_window
        counts_at_window = (0, 0)  # the window is the whole run when window == duration
        previous = (0, 0)
        for start, stop in zip(boundaries[:-1], boundaries[1:]):
            if start == window_start:
                counts_at_window = previous
            net.run((stop - start) * self.dt * b2.second, namespace=namespace)
            current = (int(mon_e.num_spikes), int(mon_i.num_spikes))
            seconds = (stop - start) * self.dt
            rate_e = (current[0] - previous[0]) / (s.n_exc * seconds)
            rate_i = (current[1] - previous[1]) / (s.n_inh * seconds)
            if max(rate_e, rate_i) > self.runaway_rate:
                return np.array([rate_e, rate_i])
            previous = current
        return np.array(
            [
                (previous[0] - counts_at_window[0]) / (s.n_exc * s.window),
                (previous[1] - counts_at_window[1]) / (s.n_inh * s.window),
            ]
        )


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
        theta = _check_theta(theta)
        x = fixed_point_rates(theta[:, 0:6], theta[:, 6:12], self.r_max, self.policy)
        failed = ~np.isfinite(x).all(axis=1)
        reasons: list[str | None] = ["no fixed point" if f else None for f in failed]
        return x, reasons


def _check_theta(theta: np.ndarray) -> np.ndarray:
    return check_theta_batch(theta, len(PARAMETER_NAMES), "the plastic network")


def _prior() -> Distribution:
    # sbi is imported here, not at module import (see ou.py).
    import torch
    from sbi.utils import BoxUniform

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


register_task("plastic-network", plastic_network)


def plastic_network_tiny() -> Task:
    """The network at the test scale (80 + 20 neurons, 2 s): seconds per HF run, for trying things out."""
    return plastic_network(scale="tiny")


def plastic_network_paper() -> Task:
    """The network at the paper's scale (4 096 + 1 024 neurons, 120 s): minutes per HF run."""
    return plastic_network(scale="paper")


register_task("plastic-network-tiny", plastic_network_tiny)
register_task("plastic-network-paper", plastic_network_paper)

"""The high-fidelity plastic network: a recurrent spiking network in Brian2.

A recurrent network of conductance-based LIF neurons with an adaptive threshold, N_E excitatory
and N_I inhibitory, 10% recurrent connectivity, Poisson input, AMPA / NMDA / GABA conductances;
all four recurrent synapse types learn with the rule of :mod:`mfsbi.simulators.plastic_network`.

Brian2 is imported only inside the simulator: ``import brian2`` fails outside a process's main
thread, so a process that simulates in worker threads (a Dask worker) must import it first in its
main thread, by :func:`preload` (or the Dask hook :func:`dask_setup`).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mfsbi.simulators.network_model import (
    SYNAPSE_TYPES,
    NetworkConstants,
    NetworkScale,
    check_network_theta,
)

__all__ = [
    "PlasticNetworkHighFidelity",
    "Target",
    "dask_setup",
    "default_cache_dir",
    "preload",
    "resolve_target",
]

Target = Literal["auto", "cython", "numpy"]


def preload() -> None:
    """Imports brian2 in the calling thread, which must be a process's main thread.

    Call it once in every process that simulates the high-fidelity model outside its main thread
    (Dask workers: ``--preload mfsbi.simulators.plastic_network`` or ``LocalCluster(preload=...)``).
    """
    import brian2  # noqa: F401 -- deferred: the point of this function (see _import_brian2)


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
                from brian2.codegen.runtime.cython_rt import CythonCodeObject  # deferred: as _import_brian2

                _RESOLVED["auto"] = "cython" if CythonCodeObject.is_available() else "numpy"
            except Exception:  # noqa: BLE001 - any failure to compile means "no cython"
                _RESOLVED["auto"] = "numpy"
        return _RESOLVED["auto"]


# Brian2's preferences and RNG are process-global: one simulation at a time per process.
_RUN_LOCK = threading.Lock()


def _import_brian2() -> Any:
    """brian2, or a RuntimeError that says to preload it (an import in a worker thread fails)."""
    try:  # deferred: brian2 costs 1.4 s, and fails to import outside a main thread (Dask worker threads)
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
        theta = check_network_theta(theta)
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

"""The multicompartment pyramidal-neuron task (PAPER.md, "Multicompartment pyramidal neuron").

Hodgkin–Huxley channels (NEURON's ``hh``) in every section of a reconstructed pyramidal cell
(NEURON's demo ``pyramid.nrn`` by default, or a user's SWC/ASC file), parameters
theta = (gNa, gK) in S/cm². A step current is injected into the soma from 10 to 110 ms of a 120 ms
run (dt = 0.025 ms), plus a Gaussian white-noise current. The high-fidelity model has 8 segments
per section (or NEURON's d_lambda rule), the low-fidelity one 1 segment per section; both take the
same parameters.

Summary statistics, x (k = 4): the number of spikes (upward crossings of 0 mV by the somatic
voltage, with 10 mV hysteresis), the mean and the standard deviation of the somatic voltage at rest
(from 5 ms to the stimulus onset) and the mean somatic voltage during the stimulus. A row whose
voltage is not finite or exceeds 1 000 mV in magnitude is returned as failed, with a reason.
``statistics="rich"`` adds first-spike latency, mean ISI, adaptation index, AP peak and AP
half-width (k = 9; :func:`rich_statistics`).

The step amplitude is calibrated for this morphology and the noise amplitude chosen as documented
in docs/tasks-pyramidal.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import numpy as np
import torch
from torch.distributions import Distribution

from mfsbi.simulators.base import FidelityLevel, Task
from mfsbi.simulators.neuron_cell import Discretization, GeometryBuilder, demo_pyramid_path, get_cell
from mfsbi.simulators.neuron_cell import read_morphology, simulation_lock
from mfsbi.simulators.recording import Recording

__all__ = [
    "DT",
    "HF_NSEG",
    "LF_NSEG",
    "MAX_ABS_VOLTAGE",
    "NOISE_STD",
    "PARAMETER_NAMES",
    "PRIOR_HIGH",
    "PRIOR_LOW",
    "RICH_STATISTIC_NAMES",
    "SPIKE_HYSTERESIS",
    "SPIKE_THRESHOLD",
    "STATISTIC_NAMES",
    "STIMULUS_AMPLITUDE",
    "PyramidalSimulator",
    "pyramidal",
    "recording",
    "rich_statistics",
    "spike_count",
    "spike_onsets",
    "statistic_names",
    "summary_statistics",
    "trace",
]

PARAMETER_NAMES: tuple[str, ...] = ("gNa", "gK")
PRIOR_LOW: tuple[float, ...] = (0.005, 1e-6)
PRIOR_HIGH: tuple[float, ...] = (0.8, 0.15)
STATISTIC_NAMES: tuple[str, ...] = ("spike_count", "rest_mean", "rest_std", "stimulus_mean")
RICH_STATISTIC_NAMES: tuple[str, ...] = (
    "spike_count", "first_spike_latency", "mean_isi", "adaptation_index", "ap_peak", "ap_half_width",
    "rest_mean", "rest_std", "stimulus_mean",
)

HF_NSEG = 8
LF_NSEG = 1
DT = 0.025  # ms
TSTOP = 120.0  # ms
STIMULUS_START = 10.0  # ms
STIMULUS_DURATION = 100.0  # ms
# Calibrated so that the prior spans silent to repetitive firing (docs/tasks-pyramidal.md).
STIMULUS_AMPLITUDE = 1.0  # nA
# Standard deviation of the white-noise current, drawn independently every time step (nA).
NOISE_STD = 0.5
SETTLE = 5.0  # ms: the resting window is [SETTLE, STIMULUS_START).
V_INIT = -65.0  # mV: only the starting guess of the steady-state initialisation.
SPIKE_THRESHOLD = 0.0  # mV
# A spike is counted again only after the voltage fell this far below the threshold, so that noise
# on a plateau near 0 mV (depolarisation block) is not counted as spikes.
SPIKE_HYSTERESIS = 10.0  # mV
MAX_ABS_VOLTAGE = 1e3  # mV: beyond this the integration has blown up.

Statistics = Literal["paper", "rich"]


def spike_count(v: np.ndarray, threshold: float = SPIKE_THRESHOLD, hysteresis: float = SPIKE_HYSTERESIS) -> int:
    """Counts upward crossings of ``threshold``, re-armed only below ``threshold - hysteresis``.

    Arguments:
        v: a voltage trace, mV.
        threshold: the crossing level, mV.
        hysteresis: how far below the threshold the voltage must fall between two spikes, mV.

    Returns:
        The number of spikes. A trace that starts above the threshold counts no spike until it has
        fallen below ``threshold - hysteresis``.
    """
    return int(spike_onsets(v, threshold, hysteresis).size)


def summary_statistics(
    v: np.ndarray,
    dt: float = DT,
    start: float = STIMULUS_START,
    duration: float = STIMULUS_DURATION,
    settle: float = SETTLE,
) -> np.ndarray:
    """The paper's four statistics of one somatic voltage trace.

    Arguments:
        v: the voltage at t = 0, dt, 2 dt, ..., mV.
        dt: the sampling step, ms.
        start, duration: the stimulus window, ms.
        settle: the start of the resting window, ms (it ends at the stimulus onset).

    Returns:
        ``(spike count, resting mean, resting standard deviation, mean during the stimulus)``,
        shape ``(4,)``, float64.
    """
    i_settle, i_start = round(settle / dt), round(start / dt)
    i_stop = round((start + duration) / dt)
    rest = v[i_settle:i_start]
    return np.array(
        [float(spike_count(v)), rest.mean(), rest.std(), v[i_start:i_stop].mean()], dtype=np.float64
    )


def spike_onsets(
    v: np.ndarray, threshold: float = SPIKE_THRESHOLD, hysteresis: float = SPIKE_HYSTERESIS
) -> np.ndarray:
    """The sample indices of the spikes that :func:`spike_count` counts (first sample above threshold).

    Arguments:
        v: a voltage trace, mV.
        threshold, hysteresis: as in :func:`spike_count`.

    Returns:
        Increasing indices, int64; ``len(spike_onsets(v)) == spike_count(v)``.
    """
    # Each sample is an event: below the re-arm level (+1), above the threshold (-1), or neither.
    # A spike is an "above" event whose previous event was "below": vectorised Schmitt trigger.
    event = np.where(v < threshold - hysteresis, 1, np.where(v >= threshold, -1, 0))
    where = np.flatnonzero(event)
    events = event[where]
    return where[1:][(events[1:] == -1) & (events[:-1] == 1)]


def _half_width(v: np.ndarray, peak: int, level: float, lo: int, hi: int, dt: float) -> float:
    """Time (ms) that v stays at or above ``level`` around ``peak`` within [lo, hi), interpolated."""
    below = np.flatnonzero(v[lo:peak] < level)
    rise = lo + below[-1] if below.size else lo  # last sample below the level before the peak
    after = np.flatnonzero(v[peak:hi] < level)
    fall = peak + after[0] if after.size else hi - 1  # first sample below it after the peak
    # Linear interpolation of both crossings between the samples that bracket them.
    t_rise = rise + (level - v[rise]) / (v[rise + 1] - v[rise]) if v[rise] < level else float(rise)
    t_fall = fall - 1 + (v[fall - 1] - level) / (v[fall - 1] - v[fall]) if v[fall] < level else float(fall)
    return float(t_fall - t_rise) * dt


def rich_statistics(
    v: np.ndarray,
    dt: float = DT,
    start: float = STIMULUS_START,
    duration: float = STIMULUS_DURATION,
    settle: float = SETTLE,
) -> np.ndarray:
    """Nine statistics of one somatic trace: the paper's four plus spike timing and AP shape.

    Spikes are those of :func:`spike_count`; the timing and shape statistics use the spikes whose
    onset lies in the stimulus window. Silent cases get finite values (NaN would fail the row):

    - ``first_spike_latency``: onset minus stimulus start, ms; no spike: ``duration``;
    - ``mean_isi``: mean interval between onsets, ms; fewer than 2 spikes: ``duration``;
    - ``adaptation_index``: last ISI / first ISI; fewer than 3 spikes: 1 (no adaptation seen);
    - ``ap_peak``: mean spike peak, mV; no spike: the maximum voltage during the stimulus;
    - ``ap_half_width``: mean width at half height, ms, the height measured from the spike's base
      (the minimum since the previous peak or the stimulus onset) to its peak; no spike: 0.

    Arguments:
        v, dt, start, duration, settle: as in :func:`summary_statistics`.

    Returns:
        Shape ``(9,)``, float64, in the order of :data:`RICH_STATISTIC_NAMES`.
    """
    spike, rest_mean, rest_std, stimulus_mean = summary_statistics(v, dt, start, duration, settle)
    i_start, i_stop = round(start / dt), round((start + duration) / dt)
    every = spike_onsets(v)
    inside = (every >= i_start) & (every < i_stop)
    onsets = every[inside]
    latency, isi, adaptation, width = duration, duration, 1.0, 0.0
    peak_v = float(v[i_start:i_stop].max())
    if onsets.size:
        latency = (onsets[0] - i_start) * dt
        intervals = np.diff(onsets) * dt
        isi = float(intervals.mean()) if intervals.size else duration
        adaptation = float(intervals[-1] / intervals[0]) if intervals.size >= 2 else 1.0
        # A spike's peak and width are sought up to the next spike's onset (after the window too).
        ends = np.append(every[1:], v.size)[inside]
        peaks, widths, lo = [], [], i_start
        for onset, end in zip(onsets, ends):
            peak = int(onset + np.argmax(v[onset:end]))
            base = float(v[lo : onset + 1].min())
            widths.append(_half_width(v, peak, (v[peak] + base) / 2, lo, end, dt))
            peaks.append(float(v[peak]))
            lo = peak
        peak_v, width = float(np.mean(peaks)), float(np.mean(widths))
    return np.array(
        [spike, latency, isi, adaptation, peak_v, width, rest_mean, rest_std, stimulus_mean], dtype=np.float64
    )


def statistic_names(statistics: Statistics) -> tuple[str, ...]:
    """The names of the statistics of a ``statistics`` setting (``"paper"`` or ``"rich"``)."""
    if statistics not in ("paper", "rich"):
        raise ValueError(f"statistics must be 'paper' or 'rich', got {statistics!r}")
    return STATISTIC_NAMES if statistics == "paper" else RICH_STATISTIC_NAMES


@dataclass(frozen=True)
class PyramidalSimulator:
    """The HH pyramidal-cell simulator of one discretisation (picklable: holds only its config).

    The NEURON cell is built lazily in the process that calls it, once per morphology (see
    :mod:`mfsbi.simulators.neuron_cell`); rows are simulated one after the other.

    Arguments:
        nseg: segments per section (``8`` for HF, ``1`` for LF) or ``"d_lambda"``.
        morphology: an SWC/ASC/hoc morphology file; ``None`` is NEURON's demo ``pyramid.nrn``.
        amplitude: the step current, nA.
        noise_std: the standard deviation of the white-noise current per time step, nA.
        tstop: the run length, ms.
        start, duration: the step current's window, ms.
        settle: the resting window is ``[settle, start)``, ms.
        dt: the time step, ms.
        statistics: ``"paper"`` (the four statistics) or ``"rich"`` (nine, :func:`rich_statistics`).
    """

    nseg: Discretization = HF_NSEG
    morphology: str | None = None
    amplitude: float = STIMULUS_AMPLITUDE
    noise_std: float = NOISE_STD
    tstop: float = TSTOP
    start: float = STIMULUS_START
    duration: float = STIMULUS_DURATION
    settle: float = SETTLE
    dt: float = DT
    statistics: Statistics = field(default="paper")

    def __post_init__(self) -> None:
        if not (isinstance(self.nseg, int) and self.nseg >= 1) and self.nseg != "d_lambda":
            raise ValueError(f"nseg must be a positive int or 'd_lambda', got {self.nseg!r}")
        if not 0 <= self.settle < self.start <= self.start + self.duration <= self.tstop:
            raise ValueError(
                "need 0 <= settle < start <= start + duration <= tstop, got "
                f"settle={self.settle}, start={self.start}, duration={self.duration}, tstop={self.tstop}"
            )
        statistic_names(self.statistics)  # raises on an unknown setting
        if self.noise_std < 0 or self.dt <= 0:
            raise ValueError("noise_std must be >= 0 and dt > 0")

    @property
    def x_dim(self) -> int:
        """The number of statistics."""
        return len(statistic_names(self.statistics))

    def _morphology(self) -> str:
        # Resolved in the worker: the demo's path depends on where NEURON is installed there.
        return str(demo_pyramid_path() if self.morphology is None else self.morphology)

    def _geometry(self) -> GeometryBuilder:
        # The full reconstruction; a reduced model (mfsbi.simulators.reduced_cell) overrides this.
        return read_morphology

    def _noise(self, seed: int, row: int) -> np.ndarray:
        # One stream per (batch seed, row): a row's noise does not depend on the other rows.
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(row,)))
        n = int(round(self.tstop / self.dt)) + 2
        return self.noise_std * rng.standard_normal(n)

    def voltage(self, theta: np.ndarray, seed: int, row: int = 0) -> np.ndarray:
        """The somatic voltage for one parameter vector.

        Arguments:
            theta: ``(gNa, gK)``, shape ``(2,)``.
            seed: the batch seed.
            row: the row index within the batch (selects the noise stream).

        Returns:
            The voltage at t = 0, dt, ..., tstop, mV.
        """
        gna, gk = (float(value) for value in np.asarray(theta, dtype=np.float64).reshape(2))
        noise = self._noise(seed, row)
        # Held across both calls: another thread must not switch the cell or its nseg in between.
        with simulation_lock:
            cell = get_cell(self._morphology(), self.nseg, self._geometry())
            return cell.run(gna, gk, self.amplitude, self.start, self.duration, noise, self.tstop, self.dt, V_INIT)

    def __call__(self, theta: np.ndarray, seed: int) -> tuple[np.ndarray, list[str | None]]:
        """Simulates one batch, row by row.

        Arguments:
            theta: parameters, shape ``(n, 2)``.
            seed: the batch's seed.

        Returns:
            ``x`` of shape ``(n, x_dim)``, float64, NaN in failed rows, and one reason per row
            (``None`` for a good row).
        """
        theta = np.asarray(theta, dtype=np.float64)
        if theta.ndim != 2 or theta.shape[1] != len(PARAMETER_NAMES):
            raise ValueError(f"theta must have shape (n, 2), got {theta.shape}")
        x = np.full((theta.shape[0], self.x_dim), np.nan)
        reasons: list[str | None] = []
        for i, row in enumerate(theta):
            reason = None
            try:
                v = self.voltage(row, seed, i)
            except RuntimeError as error:  # a hoc error inside NEURON: one bad row, not the batch
                reasons.append(f"NEURON error: {error}")
                continue
            if not np.all(np.isfinite(v)):
                reason = "non-finite somatic voltage"
            elif (peak := float(np.abs(v).max())) > MAX_ABS_VOLTAGE:
                reason = f"numerical blow-up: |V| reached {peak:.3g} mV"
            else:
                statistics = summary_statistics if self.statistics == "paper" else rich_statistics
                stats = statistics(v, self.dt, self.start, self.duration, self.settle)
                if np.all(np.isfinite(stats)):
                    x[i] = stats
                else:
                    reason = "non-finite summary statistics"
            reasons.append(reason)
        return x, reasons


def trace(
    theta: np.ndarray,
    nseg: Discretization = HF_NSEG,
    seed: int = 0,
    **config: object,
) -> tuple[np.ndarray, np.ndarray]:
    """The somatic voltage trace for one parameter vector (for plots and checks).

    Arguments:
        theta: ``(gNa, gK)``.
        nseg: segments per section, or ``"d_lambda"``.
        seed: the noise seed (row 0 of a batch with this seed).
        **config: other :class:`PyramidalSimulator` fields (``morphology``, ``noise_std``, ...).

    Returns:
        Times (ms) and voltages (mV), both of shape ``(round(tstop / dt) + 1,)``.
    """
    simulator = PyramidalSimulator(nseg=nseg, **config)  # type: ignore[arg-type]
    v = simulator.voltage(theta, seed)
    return simulator.dt * np.arange(v.size), v


def recording(statistics: Statistics = "paper") -> Recording:
    """How a recorded somatic current-clamp trace becomes the task's statistics (``mfsbi observe``).

    The trace must hold the simulated protocol from its start: rest from t = 0, the step current
    from 10 ms to 110 ms; it is resampled to 40 kHz (dt = 0.025 ms) and scaled from volts to mV.
    The statistics are the simulators' own functions with the simulators' windows, so a simulated
    trace written to a recording gives back the simulator's ``x``.

    Arguments:
        statistics: ``"paper"`` or ``"rich"``, as the task's.
    """
    function = summary_statistics if statistics == "paper" else rich_statistics
    return Recording(
        statistics=partial(function, dt=DT, start=STIMULUS_START, duration=STIMULUS_DURATION, settle=SETTLE),
        rate=1e3 / DT, scale=1e3, duration=(STIMULUS_START + STIMULUS_DURATION) / 1e3,
        protocol=f"somatic voltage from t = 0: rest, then a step current from {STIMULUS_START:g} to "
                 f"{STIMULUS_START + STIMULUS_DURATION:g} ms",
    )


def _prior() -> Distribution:
    from sbi.utils import BoxUniform  # deferred: sbi costs 1.7 s over torch; `import mfsbi.simulators` must not load it

    return BoxUniform(
        low=torch.tensor(PRIOR_LOW, dtype=torch.float32),
        high=torch.tensor(PRIOR_HIGH, dtype=torch.float32),
    )


# Measured on the reference machine (2 cores, one process, one thread), averaged over prior draws;
# see docs/tasks-pyramidal.md.
COST_SECONDS = {"lf": 0.034, "mf": 0.051, "hf": 0.158}


def pyramidal(
    morphology: str | None = None,
    hf_nseg: Discretization = HF_NSEG,
    amplitude: float = STIMULUS_AMPLITUDE,
    noise_std: float = NOISE_STD,
    tstop: float = TSTOP,
    statistics: Statistics = "paper",
) -> Task:
    """The pyramidal-neuron task: infer (gNa, gK) of an HH multicompartment cell.

    Arguments:
        morphology: an SWC/ASC/hoc file; ``None`` is NEURON's demo ``pyramid.nrn``.
        hf_nseg: segments per section of the HF model, or ``"d_lambda"`` (0.1 λ at 100 Hz).
        amplitude: the step current, nA (the default is calibrated for ``pyramid.nrn``).
        noise_std: the white-noise current's standard deviation per 0.025 ms step, nA.
        tstop: the run length, ms (the stimulus stays at 10..110 ms, so at least 110).
        statistics: ``"paper"`` (4) or ``"rich"`` (9, :func:`rich_statistics`; version ``"1-rich"``).

    Returns:
        The task (LF: 1 segment per section; between LF and HF, ``"mf"``: NEURON's d_lambda rule,
        unless the HF is that rule). The fidelities are coupled: the same θ, batch seed and row
        inject the same noise current at every level.
    """
    config = dict(
        morphology=morphology, amplitude=amplitude, noise_std=noise_std, tstop=tstop, statistics=statistics
    )
    between = () if hf_nseg == "d_lambda" else (
        FidelityLevel("mf", PyramidalSimulator(nseg="d_lambda", **config), "d_lambda rule (0.1 λ at 100 Hz)"),  # type: ignore[arg-type]
    )
    return Task(
        name="pyramidal",
        prior=_prior(),
        parameter_names=PARAMETER_NAMES,
        low_fidelity=PyramidalSimulator(nseg=LF_NSEG, **config),  # type: ignore[arg-type]
        high_fidelity=PyramidalSimulator(nseg=hf_nseg, **config),  # type: ignore[arg-type]
        x_dim=len(statistic_names(statistics)),
        low_fidelity_parameters=(0, 1),
        references={},
        version="1" if statistics == "paper" else "1-rich",
        description="HH multicompartment pyramidal cell (NEURON), (gNa, gK); LF: 1 segment per section",
        cost_seconds=dict(COST_SECONDS),
        intermediate=between,
        coupled=True,
        recording=recording(statistics),
    )

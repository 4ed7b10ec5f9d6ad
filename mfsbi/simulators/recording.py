"""How a task turns a raw recording into its statistics: one sampled trace in, one ``x`` out.

A task whose data come from an instrument (a current-clamp trace of a neuron) says how a recording
becomes the summary statistics its simulators output (:class:`Recording`, ``Task.recording``).
The recording arrives in SI units (NWB stores volts, seconds) at its own sampling rate; it is
scaled to the unit the statistics take and resampled to the rate they expect (scipy's
``resample_poly``, a polyphase anti-aliasing filter), unless the rates are the same, when the
samples are used as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

__all__ = ["Recording", "RecordingError"]

# Largest up or down factor of a resampling: 40 kHz from 44.1 kHz is 400/441.
MAX_FACTOR = 1000


class RecordingError(ValueError):
    """A recording a task cannot turn into statistics (too short, not one trace, an odd rate)."""


@dataclass(frozen=True)
class Recording:
    """How one recorded trace becomes a task's statistics.

    Arguments:
        statistics: one trace (in the unit ``scale`` gives, sampled at ``rate``, the protocol's
            t = 0 at the first sample) to ``x`` of shape ``(x_dim,)``; a module-level function or a
            ``functools.partial`` of one.
        rate: the sampling rate the statistics expect, Hz (the simulators' own).
        scale: the statistics' unit per SI unit of the recording (``1e3``: volts to mV).
        duration: the least length of recording the statistics need, s.
        protocol: one line saying what must have been recorded, for messages and ``mfsbi tasks``.
    """

    statistics: Callable[[np.ndarray], np.ndarray]
    rate: float
    scale: float = 1.0
    duration: float = 0.0
    protocol: str = ""

    def __call__(self, trace: np.ndarray, rate: float) -> np.ndarray:
        """The statistics of one recorded trace.

        Arguments:
            trace: the samples, in SI units (volts for a voltage), shape ``(n,)``.
            rate: its sampling rate, Hz.

        Returns:
            ``x``, float64, shape ``(x_dim,)``.

        Raises:
            RecordingError: the trace is not one finite 1-D series, too short, or at a rate that
                no ratio of small integers turns into :attr:`rate`.
        """
        trace = np.asarray(trace, dtype=np.float64)
        if trace.ndim != 1:
            raise RecordingError(f"a recording must be one trace (1-D), got shape {trace.shape}")
        if not np.isfinite(rate) or rate <= 0:
            raise RecordingError(f"sampling rate {rate} Hz is not a positive number")
        if trace.size / rate < self.duration:
            raise RecordingError(f"the recording lasts {1e3 * trace.size / rate:g} ms; the statistics need "
                                 f"{1e3 * self.duration:g} ms ({self.protocol or 'from the protocol start'})")
        if not np.all(np.isfinite(trace)):
            raise RecordingError("the recording holds non-finite samples (NaN or infinity)")
        return np.asarray(self.statistics(self.scale * self.resampled(trace, rate)), dtype=np.float64)

    def resampled(self, trace: np.ndarray, rate: float) -> np.ndarray:
        """``trace`` at :attr:`rate`: the same samples if the rates agree, else a polyphase resampling."""
        if rate == self.rate:
            return trace
        ratio = Fraction(self.rate / rate).limit_denominator(MAX_FACTOR)
        if ratio.numerator > MAX_FACTOR or abs(float(ratio) * rate / self.rate - 1) > 1e-9:
            raise RecordingError(f"cannot resample {rate:g} Hz to {self.rate:g} Hz by a ratio of integers up to "
                                 f"{MAX_FACTOR}; resample the recording first")
        # deferred: scipy.signal costs 1.0 s over `import mfsbi.simulators`; only a recording at another rate needs it.
        from scipy.signal import resample_poly

        # "edge" padding: the filter sees the resting level beyond the ends, not zero volts.
        return resample_poly(trace, ratio.numerator, ratio.denominator, padtype="edge")

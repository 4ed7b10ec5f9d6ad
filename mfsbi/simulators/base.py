"""The task interface: a prior, a low- and a high-fidelity simulator, and optionally a reference.

A *simulator* maps a batch of parameters to a batch of outputs, ``theta[n, d] -> x[n, k]``,
deterministically for a given integer seed. The seed belongs to the batch, not to a row: the
pipeline always simulates the same rows together (one batch is one chunk of the store), so the same
run seed gives the same simulations whatever the number of workers. A simulator marks a row it
could not produce with NaN; the pipeline stores such rows as failed. To say *why*, a simulator may
return ``(x, reasons)`` instead of ``x``, with ``reasons[i]`` a short string for a failed row and
``None`` for a good one.

Both simulators of a task take the full high-fidelity parameter vector. Parameters that exist only
in the high-fidelity model are ignored by the low-fidelity one; ``low_fidelity_parameters`` names
the ones it does use (PAPER.md: theta_L is a subset of theta).

Fidelities form an ordered chain, cheapest first: ``"lf"``, then any intermediate levels the task
names (:class:`FidelityLevel`, e.g. ``"mf"``), then ``"hf"``. Two fidelities remain the common case:
a task without intermediate levels is the chain ``("lf", "hf")``. A task whose simulators share their
noise for the same ``(theta, seed)`` at every level says so with ``coupled=True`` (multilevel NPE
trains on such coupled pairs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch.distributions import Distribution

from mfsbi.simulators.recording import Recording, RecordingError

__all__ = [
    "check_theta_batch",
    "Fidelity",
    "FidelityLevel",
    "LEVEL_NAME",
    "ReferencePosterior",
    "Simulator",
    "Task",
]

# "lf", an intermediate level's name, or "hf".
Fidelity = str

# The name of an intermediate fidelity level: a short lowercase word ("mf", "mf2", "dlambda"). It
# names a zarr group of the store and an option key (``--sims mf=2000``).
LEVEL_NAME = re.compile(r"[a-z][a-z0-9]{0,15}")


def check_theta_batch(theta: np.ndarray, theta_dim: int, task: str) -> np.ndarray:
    """A simulator's input check: ``theta`` as float64 of shape ``(n, theta_dim)``.

    Arguments:
        theta: the batch given to a simulator.
        theta_dim: the task's parameter count.
        task: the task's name, for the message.

    Returns:
        ``theta`` as a float64 array.
    """
    theta = np.asarray(theta, dtype=np.float64)
    if theta.ndim != 2 or theta.shape[1] != theta_dim:
        raise ValueError(f"theta must have shape (n, {theta_dim}) for {task}, got shape {theta.shape}")
    return theta


@runtime_checkable
class Simulator(Protocol):
    """A batched, seeded simulator.

    Arguments:
        theta: parameters, shape ``(n, d)`` with ``d`` the task's parameter count.
        seed: the batch's seed; the same ``(theta, seed)`` gives the same ``x``.

    Returns:
        Outputs of shape ``(n, k)``, float64; a row of NaN marks a failed simulation. Or a pair
        ``(x, reasons)`` with one ``str | None`` per row.
    """

    def __call__(self, theta: np.ndarray, seed: int) -> np.ndarray | tuple[np.ndarray, list[str | None]]: ...


@runtime_checkable
class ReferencePosterior(Protocol):
    """Draws exact samples of p(theta | x_o) for one observation.

    Arguments:
        x_o: one observation, shape ``(k,)``.
        num_samples: how many samples.
        seed: the sampler's seed.

    Returns:
        Samples of shape ``(num_samples, d)``.
    """

    def __call__(self, x_o: np.ndarray, num_samples: int, seed: int) -> np.ndarray: ...


@dataclass(frozen=True)
class FidelityLevel:
    """An intermediate fidelity between a task's LF and HF simulators.

    Arguments:
        name: the level's name (:data:`LEVEL_NAME`; not ``"lf"`` or ``"hf"``), e.g. ``"mf"``.
        simulator: its batched, seeded simulator (same parameters and output size as the others).
        description: one line for ``mfsbi tasks``.
    """

    name: str
    simulator: Simulator
    description: str = ""


@dataclass(frozen=True)
class Task:
    """An inference problem with two or more fidelities.

    Arguments:
        name: registry name, e.g. ``"ou2"``.
        prior: a torch distribution over ``theta`` with bounded support and ``event_shape (d,)``.
        parameter_names: one name per parameter dimension.
        low_fidelity: the cheap simulator.
        high_fidelity: the expensive simulator.
        x_dim: the output size ``k`` shared by both fidelities.
        low_fidelity_parameters: indices into ``theta`` that the low-fidelity simulator uses.
        references: exact posterior samplers by name; the first one is the default truth.
        version: bumped whenever a simulator's output for a given seed changes; stored as
            provenance so that a store is never continued with a different simulator.
        description: one line for ``mfsbi tasks``.
        x_shape: the shape of one x before flattening (e.g. ``(256, 256)`` for an image); ``x`` is
            always stored flat with ``x_dim = prod(x_shape)``.
        embedding: the name of the embedding network the estimator should use (``"cnn"`` for
            images); ``None`` is the identity. Resolved by ``mfsbi.inference``, not here.
        cost_seconds: measured seconds per simulation by fidelity (``{"lf": ..., "hf": ...}``) on
            the reference machine (2 cores), for ``mfsbi tasks`` and batching; see docs/tasks.md.
        intermediate: fidelity levels between LF and HF, cheapest first (default: none).
        coupled: the same ``(theta, seed)`` gives outputs at every level that share their noise
            (same initial state, same random increments), as multilevel NPE needs.
        recording: how a raw recording becomes ``x`` (:class:`~mfsbi.simulators.recording.Recording`;
            ``mfsbi observe``); ``None``: observations come as statistics only.
    """

    name: str
    prior: Distribution
    parameter_names: tuple[str, ...]
    low_fidelity: Simulator
    high_fidelity: Simulator
    x_dim: int
    low_fidelity_parameters: tuple[int, ...]
    references: dict[str, ReferencePosterior] = field(default_factory=dict)
    version: str = "1"
    description: str = ""
    x_shape: tuple[int, ...] | None = None
    embedding: str | None = None
    cost_seconds: dict[str, float] = field(default_factory=dict)
    intermediate: tuple[FidelityLevel, ...] = ()
    coupled: bool = False
    recording: Recording | None = None

    def __post_init__(self) -> None:
        d = len(self.parameter_names)
        if tuple(self.prior.event_shape) != (d,):
            raise ValueError(
                f"task {self.name!r}: prior event_shape {tuple(self.prior.event_shape)} does not "
                f"match {d} parameter names"
            )
        if self.x_shape is not None and int(np.prod(self.x_shape)) != self.x_dim:
            raise ValueError(f"task {self.name!r}: x_shape {self.x_shape} does not hold x_dim={self.x_dim} values")
        if not all(0 <= i < d for i in self.low_fidelity_parameters):
            raise ValueError(f"task {self.name!r}: low_fidelity_parameters out of range 0..{d - 1}")
        names = [level.name for level in self.intermediate]
        for name in names:
            if not isinstance(name, str) or not LEVEL_NAME.fullmatch(name) or name in ("lf", "hf"):
                raise ValueError(f"task {self.name!r}: intermediate fidelity {name!r} must be a short lowercase "
                                 "word (letters and digits, starting with a letter) other than 'lf' and 'hf'")
        if len(set(names)) != len(names):
            raise ValueError(f"task {self.name!r}: intermediate fidelities {names} repeat a name")

    def statistics_of_recording(self, trace: np.ndarray, rate: float) -> np.ndarray:
        """``x`` of one raw recording, as the task's simulators would output it.

        Arguments:
            trace: the recorded samples in SI units (volts), shape ``(n,)``.
            rate: the sampling rate, Hz (resampled to the task's own if it differs).

        Returns:
            ``x`` of shape ``(x_dim,)``, float64.

        Raises:
            RecordingError: the task has no :attr:`recording`, or the trace does not fit it.
        """
        if self.recording is None:
            raise RecordingError(f"task {self.name!r} says no way to turn a recording into its statistics "
                                 "(Task.recording); give the statistics as a .npy instead")
        x = self.recording(trace, rate)
        if x.shape != (self.x_dim,):
            raise RecordingError(f"task {self.name!r}: its recording statistics gave shape {x.shape}, "
                                 f"not ({self.x_dim},)")
        return x

    @property
    def fidelities(self) -> tuple[str, ...]:
        """The chain of fidelities, cheapest first: ``("lf", *intermediate, "hf")``."""
        return ("lf", *(level.name for level in self.intermediate), "hf")

    @property
    def theta_dim(self) -> int:
        """The number of parameters ``d``."""
        return len(self.parameter_names)

    def simulator(self, fidelity: Fidelity) -> Simulator:
        """The simulator of one fidelity of the chain (``"lf"``, an intermediate level, ``"hf"``)."""
        if fidelity == "lf":
            return self.low_fidelity
        if fidelity == "hf":
            return self.high_fidelity
        for level in self.intermediate:
            if level.name == fidelity:
                return level.simulator
        raise ValueError(f"task {self.name!r} has no fidelity {fidelity!r}: choose one of {', '.join(self.fidelities)}")

    def parameter_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-parameter ``(low, high)``: the prior's box, or its central 99.8 % for unbounded priors.

        Used for plot limits and to normalise errors (NRMSE divides by these ranges).
        """
        constraint = getattr(self.prior.support, "base_constraint", self.prior.support)
        low, high = getattr(constraint, "lower_bound", None), getattr(constraint, "upper_bound", None)
        if isinstance(low, torch.Tensor) and isinstance(high, torch.Tensor):
            shape = (self.theta_dim,)
            return (low.expand(shape).double().numpy().copy(), high.expand(shape).double().numpy().copy())
        samples = self.sample_prior(100_000, seed=0)
        return np.quantile(samples, 0.001, axis=0), np.quantile(samples, 0.999, axis=0)

    def sample_prior(self, num_samples: int, seed: int) -> np.ndarray:
        """Draws ``num_samples`` parameters from the prior with a private torch generator state.

        Returns:
            float64 array of shape ``(num_samples, d)``.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            theta = self.prior.sample((num_samples,))
        return theta.double().numpy()

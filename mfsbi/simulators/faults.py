"""Fault-injecting tasks: a real task whose simulators fail, hang, crash or slow down on purpose.

For reliability drills and tests (``benchmarks/fault_injection.py``, docs/reliability.md). The plan
comes from the environment when this module is imported, so Dask workers and isolated simulation
processes started with the same environment inject the same faults::

    MFSBI_FAULTS="exception=0.05,nan=0.05,inf=0.02,hang=0.02,crash=0,hf_delay=0.02,on=hf" \\
        mfsbi run --task mfsbi.simulators.faults:ou2 --simulation-timeout 2

Which rows fail is decided by their θ, so the same plan fails the same rows in any batch.
``MFSBI_FAULTS_LOG=FILE`` appends one line per simulator call (``fidelity seed rows pid``): the
drills count from it how often each batch was simulated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import time

import numpy as np

from mfsbi.simulators.base import Simulator, Task
from mfsbi.simulators.ou import ou2 as ou2_task

__all__ = ["FaultPlan", "FaultySimulator", "faulty", "ou2"]

KINDS = ("exception", "nan", "inf", "hang", "crash")


@dataclasses.dataclass(frozen=True)
class FaultPlan:
    """Per-row probabilities of each fault, delays per simulated row, and the fidelities affected."""

    exception: float = 0.0
    nan: float = 0.0
    inf: float = 0.0
    hang: float = 0.0
    crash: float = 0.0
    lf_delay: float = 0.0
    hf_delay: float = 0.0
    on: tuple[str, ...] = ("hf",)

    def __post_init__(self) -> None:
        rates = [getattr(self, kind) for kind in KINDS]
        if any(not 0 <= r <= 1 for r in rates) or sum(rates) > 1:
            raise ValueError(f"MFSBI_FAULTS: fault rates must lie in [0, 1] and sum to at most 1, got {rates}")
        if self.lf_delay < 0 or self.hf_delay < 0:
            raise ValueError("MFSBI_FAULTS: delays must be >= 0 seconds")
        if not set(self.on) <= {"lf", "hf"}:
            raise ValueError(f"MFSBI_FAULTS: on= takes lf, hf or lf+hf, got {'+'.join(self.on)}")

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        """Reads ``"exception=0.1,hang=0.02,on=lf+hf"``; an empty text injects nothing."""
        values: dict[str, object] = {}
        fields = {f.name for f in dataclasses.fields(cls)}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key not in fields:
                raise ValueError(f"MFSBI_FAULTS: unknown item {item!r}; use KEY=VALUE with KEY in {sorted(fields)}")
            values[key] = tuple(value.split("+")) if key == "on" else float(value)
        return cls(**values)

    def __str__(self) -> str:
        def text(value: object) -> str:
            return "+".join(value) if isinstance(value, tuple) else f"{value:g}"

        return ",".join(f"{f.name}={text(getattr(self, f.name))}" for f in dataclasses.fields(self))


class FaultySimulator:
    """Wraps a simulator: delays it and, for the rows drawn by the plan, fails in the chosen way."""

    def __init__(self, base: Simulator, fidelity: str, plan: FaultPlan, log: str | None = None) -> None:
        self.base, self.fidelity, self.plan, self.log = base, fidelity, plan, log

    def faults(self, theta: np.ndarray) -> np.ndarray:
        """The fault of each row, ``""`` for none, from its parameters alone.

        Like a real simulator's failures, they follow θ: the same row fails in any batch, with any seed.
        """
        theta = np.ascontiguousarray(theta, dtype=np.float64)
        u = np.array([int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") / 2**64
                      for row in theta])
        kinds = np.full(len(theta), "", dtype=object)
        if self.fidelity not in self.plan.on:
            return kinds
        low = 0.0
        for kind in KINDS:
            rate = getattr(self.plan, kind)
            kinds[(u >= low) & (u < low + rate)] = kind
            low += rate
        return kinds

    def __call__(self, theta: np.ndarray, seed: int) -> np.ndarray:
        n = len(theta)
        if self.log:
            with open(self.log, "a") as log:  # one short O_APPEND write: whole lines from many processes
                log.write(f"{self.fidelity} {seed} {n} {os.getpid()}\n")
        time.sleep(n * (self.plan.hf_delay if self.fidelity == "hf" else self.plan.lf_delay))
        faults = self.faults(theta)
        if (faults == "crash").any():
            os.kill(os.getpid(), signal.SIGSEGV)
        if (faults == "hang").any():
            time.sleep(10**6)
        if (faults == "exception").any():
            raise RuntimeError(f"injected fault in {int((faults == 'exception').sum())} of {n} rows")
        x = np.array(self.base(theta, seed), dtype=np.float64)
        x[faults == "nan"] = np.nan
        x[faults == "inf"] = np.inf
        return x


def faulty(base: Task, plan: FaultPlan, log: str | None = None) -> Task:
    """A copy of ``base`` named ``<name>-faulty`` whose simulators inject the plan's faults.

    The plan is part of the task's version, so a store made under one plan refuses another.
    """
    return dataclasses.replace(
        base, name=f"{base.name}-faulty", version=f"{base.version}+faults({plan})",
        low_fidelity=FaultySimulator(base.low_fidelity, "lf", plan, log),
        high_fidelity=FaultySimulator(base.high_fidelity, "hf", plan, log),
        description=f"{base.description} (with injected faults: {plan})",
        cost_seconds={f: base.cost_seconds.get(f, 0.0) + getattr(plan, f"{f}_delay") for f in ("lf", "hf")},
    )


def ou2() -> Task:
    """OU2 with the faults of ``$MFSBI_FAULTS`` (task ``mfsbi.simulators.faults:ou2``).

    Returns:
        The task ``ou2-faulty``.
    """
    return faulty(ou2_task(), FaultPlan.parse(os.environ.get("MFSBI_FAULTS", "")),
                  os.environ.get("MFSBI_FAULTS_LOG") or None)

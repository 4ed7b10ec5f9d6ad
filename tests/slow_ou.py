"""OU2 whose LF simulator takes 5 ms a row: enough work for an adaptive cluster to scale on (test_slurm)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from mfsbi.simulators.ou import ou2


@dataclasses.dataclass(frozen=True)
class Slowed:
    """A simulator that sleeps ``seconds`` per row before calling ``simulator``."""

    simulator: object
    seconds: float = 0.005

    def __call__(self, theta: np.ndarray, seed: int):
        time.sleep(self.seconds * len(theta))
        return self.simulator(theta, seed)


def slow_ou2():
    task = ou2()
    # No cost estimate: OU2's (microseconds) would put every LF chunk into one Dask task.
    return dataclasses.replace(task, name="ou2-slow-lf", low_fidelity=Slowed(task.low_fidelity), cost_seconds={})

"""Calling a task's simulator on one batch and turning whatever it does into rows: x and reasons.

Shared by the worker's in-process path (:mod:`mfsbi.runtime.batches`) and the child process of
:mod:`mfsbi.runtime.isolation`, so that both record failures identically.
"""

from __future__ import annotations

import numpy as np

from mfsbi.simulators import Task

__all__ = ["call_simulator"]


def call_simulator(task: Task, fidelity: str, theta: np.ndarray, seed: int) -> tuple[np.ndarray, list[str] | None]:
    """Simulates one batch; a simulator that raises or returns a wrong shape fails every row.

    Arguments:
        task: the task; fidelity: ``"lf"`` or ``"hf"``.
        theta: parameters ``(n, d)``; seed: the batch's simulator seed.

    Returns:
        ``x`` of shape ``(n, x_dim)`` (NaN rows for failures) and one reason per row, or ``None``
        when the simulator gave no reasons.
    """
    n = len(theta)
    try:
        output = task.simulator(fidelity)(theta, seed)
        reasons = None
        if isinstance(output, tuple):
            output, reasons = output
        x = np.asarray(output, dtype=np.float64)
        if x.shape != (n, task.x_dim):
            raise ValueError(f"simulator returned shape {x.shape}, expected {(n, task.x_dim)}")
        if reasons is not None:
            if len(reasons) != n:
                raise ValueError(f"simulator returned {len(reasons)} reasons for {n} rows")
            # A row with a reason is failed whatever its values; the store keys failure on non-finite x.
            x[[i for i, r in enumerate(reasons) if r]] = np.nan
            reasons = [r or "" for r in reasons]
        return x, reasons
    except Exception as error:  # noqa: BLE001 -- recorded per row, counted, and stops the run past a threshold
        return np.full((n, task.x_dim), np.nan), [f"{type(error).__name__}: {error}"[:120]] * n

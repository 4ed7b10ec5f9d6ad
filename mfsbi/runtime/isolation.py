"""Simulating a batch in a child process, so that a hang can be stopped and a crash contained.

A Python thread stuck in a simulator (a solver that never converges, a deadlocked C extension)
cannot be interrupted, and a segfault in NEURON takes its whole process down. With a
``simulation_timeout``, every batch runs in a short-lived child process instead: the parent kills it
when it overruns and records the rows as failed with the reason. Data travel as ``.npy``/``.npz``
bytes over pipes, never as pickles.

Protocol of the child (``python -m mfsbi.runtime.isolation SPEC FIDELITY SEED``): after its imports it
writes one byte ``R`` (so that import time never counts against the timeout), reads θ as ``.npy``
from stdin, and writes ``.npz`` with ``x`` and ``reasons`` to its stdout. Anything the simulator
prints goes to stderr.
"""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import tempfile

import numpy as np

from mfsbi.runtime.processes import die_with_parent
from mfsbi.runtime.simulator_calls import call_simulator
from mfsbi.runtime.worker_cache import task_for

__all__ = ["simulate_isolated"]

READY = b"R"
# Imports (torch, NEURON, Brian2) may take a while on a loaded machine; they never count as a hang.
STARTUP_TIMEOUT = 300.0


def _child_environment() -> dict[str, str]:
    # The child must resolve the same `module:attribute` tasks as this process.
    paths = [p for p in sys.path if p]
    existing = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths + ([existing] if existing else []))}


def _tail(stream: io.BufferedRandom, limit: int = 200) -> str:
    stream.seek(0)
    text = stream.read().decode(errors="replace").strip()
    return text[-limit:].replace("\n", " | ")


def simulate_isolated(task_spec: str, fidelity: str, theta: np.ndarray, seed: int, x_dim: int,
                      timeout: float) -> tuple[np.ndarray, list[str]]:
    """Simulates one batch in a child process that is killed after ``timeout`` seconds.

    Arguments:
        task_spec: the task (registry name or ``module:attribute``).
        fidelity: ``"lf"`` or ``"hf"``.
        theta: parameters, shape ``(n, d)``.
        seed: the batch's simulator seed.
        x_dim: the task's output size.
        timeout: seconds the simulation itself may take (imports excluded).

    Returns:
        ``x`` of shape ``(n, x_dim)`` (NaN rows for failures) and one reason per row ("" if ok).
    """
    n = len(theta)
    payload = io.BytesIO()
    np.save(payload, np.ascontiguousarray(theta, dtype=np.float64), allow_pickle=False)
    failed = np.full((n, x_dim), np.nan)
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "mfsbi.runtime.isolation", task_spec, fidelity, str(int(seed))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
            env=_child_environment(), preexec_fn=die_with_parent,
        )
        try:
            ready, _, _ = select.select([child.stdout], [], [], STARTUP_TIMEOUT)
            if not ready or os.read(child.stdout.fileno(), 1) != READY:
                return failed, [f"simulator process did not start ({_tail(stderr)})"[:160]] * n
            output, _ = child.communicate(payload.getvalue(), timeout=timeout)
        except subprocess.TimeoutExpired:
            return failed, [f"timeout: no result within {timeout:g} s (simulation_timeout)"] * n
        finally:
            if child.poll() is None:  # not started in time, or past its timeout
                child.kill()
                child.wait()
        if child.returncode != 0 or not output:
            how = f"signal {-child.returncode}" if child.returncode < 0 else f"exit code {child.returncode}"
            return failed, [f"simulator process died ({how}): {_tail(stderr)}"[:160]] * n
    with np.load(io.BytesIO(output), allow_pickle=False) as result:
        return np.array(result["x"], dtype=np.float64), [str(r) for r in result["reasons"]]


def _child(task_spec: str, fidelity: str, seed: int) -> None:
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the simulator prints must not corrupt the protocol stream
    task = task_for(task_spec)
    task.simulator(fidelity)  # resolve (and import) before the clock starts
    protocol.write(READY)
    protocol.flush()
    theta = np.load(io.BytesIO(sys.stdin.buffer.read()), allow_pickle=False)
    x, reasons = call_simulator(task, fidelity, theta, seed)
    buffer = io.BytesIO()
    np.savez(buffer, x=x, reasons=np.array(reasons if reasons is not None else [""] * len(theta), dtype=str))
    protocol.write(buffer.getvalue())
    protocol.flush()
    # Interpreter teardown (torch, zarr's event loop) takes seconds and would count as simulation time.
    os._exit(0)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))

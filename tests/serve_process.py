"""Stopping an `mfsbi serve` subprocess the way a user does (shared by the deploy-path and SLURM tests)."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_serve(serve: subprocess.Popen, grace: float) -> None:
    """SIGTERM (serve then stops its services), and SIGKILL of its process group after ``grace`` s."""
    if serve.poll() is not None:
        return
    serve.send_signal(signal.SIGTERM)
    try:
        serve.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(serve.pid, signal.SIGKILL)
        serve.wait()

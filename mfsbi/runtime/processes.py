"""Child processes that must not outlive their parent (embedded services, isolated simulations)."""

from __future__ import annotations

import ctypes
import signal
import sys

__all__ = ["die_with_parent"]


def die_with_parent() -> None:
    """``preexec_fn`` that makes a child process receive SIGKILL when its parent dies (Linux).

    Hand-written because no maintained library offers it: a SIGKILLed flow or Dask worker must not
    leave a Prefect server or a simulation running as an orphan. Elsewhere this does nothing.
    """
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)

"""Where mfsbi keeps its own state on a machine: ``$MFSBI_HOME``, default ``~/.mfsbi``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["mfsbi_home"]


def mfsbi_home() -> Path:
    """Where embedded services and SLURM clusters keep their state (``MFSBI_HOME``, default ``~/.mfsbi``)."""
    return Path(os.environ.get("MFSBI_HOME", Path.home() / ".mfsbi"))

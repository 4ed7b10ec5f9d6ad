"""mfsbi: multifidelity simulation-based inference as a workflow-orchestrated service.

Subpackages:
    simulators  pure simulators (LF/HF pairs, priors, reference posteriors). No Prefect, no storage.
    storage     the zarr simulation store. No Prefect.
    inference   estimators, MF training, metrics (torch + sbi). No Prefect.
    flows       Prefect flows and tasks composing the three; the ``mfsbi`` CLI.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mfsbi")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

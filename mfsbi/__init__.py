"""mfsbi: multifidelity simulation-based inference as a workflow-orchestrated service.

Subpackages:
    simulators  pure simulators (LF/HF pairs, priors, reference posteriors). No Prefect, no storage.
    storage     the zarr simulation store. No Prefect.
    inference   estimators, MF training, metrics (torch + sbi). No Prefect.
    runtime     what runs on the Dask workers (jobs, isolation, the executor, the cluster).
    flows       Prefect flows composing the libraries on the runtime.
    app         the ``mfsbi`` CLI, deployments and the service stack.

``mfsbi.load_posterior(store)`` gives a finished run's posterior as an sbi object.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mfsbi")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "load_posterior"]


def __getattr__(name: str):
    # Lazy (PEP 562): `import mfsbi.simulators` must not import torch, sbi or the store for this.
    if name == "load_posterior":
        from mfsbi.app.results import load_posterior

        return load_posterior
    raise AttributeError(f"module 'mfsbi' has no attribute {name!r}")

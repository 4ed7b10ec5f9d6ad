"""A finished run's posterior as a plain sbi object: ``mfsbi.load_posterior(store)``.

What a notebook user wants after ``mfsbi run``: a ``DirectPosterior`` (or sbi's
``EnsemblePosterior`` for an ensemble) that ``sample``, ``log_prob``, ``sbi.analysis.pairplot`` and
sbi's diagnostics accept, without reading the store's layout. A run at one observation (sequential)
has that x_o set as the posterior's default x.

Security: a store names its run's task; a built-in task is loaded by name, but a user's
``module:attribute`` task is imported only when the caller names it (``task=``): opening a store
must never import code the store's files point at.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RunNotFoundError", "load_posterior", "run_summary"]


class RunNotFoundError(LookupError):
    """The store holds no such run, or the run has no posterior density (MF-ABC gives samples)."""


def _store(store: str | Path):
    from mfsbi.storage import SimulationStore, StoreError  # deferred: zarr, 0.4 s at every CLI start (app.inputs)

    try:
        return SimulationStore(str(store), mode="r")
    except (StoreError, FileNotFoundError) as error:
        raise RunNotFoundError(f"{str(store)!r} is not an mfsbi store ({error})") from None


def run_summary(store: str | Path, run: str | None = None) -> tuple[str, dict[str, Any]]:
    """The run's ``TASK/RUN`` name and its ``summary.json``.

    Arguments:
        store: the store folder or URL.
        run: ``TASK/RUN`` inside ``artifacts/`` (as ``mfsbi run`` printed); default the latest run
            that saved an estimator.
    """
    handle = _store(store)
    try:
        prefix = run or json.loads(handle.read_artifact("latest.json"))["run"]
    except (FileNotFoundError, KeyError, ValueError):
        raise RunNotFoundError(f"{str(store)!r} holds no trained posterior yet (no latest.json)") from None
    try:
        return prefix, json.loads(handle.read_artifact(f"{prefix}/summary.json"))
    except (FileNotFoundError, ValueError):
        raise RunNotFoundError(f"{str(store)!r} holds no run {prefix!r} (expected TASK/RUN, e.g. "
                               "ou2/mf-npe-lf10000-hf100-seed0)") from None


def _task(spec: str, given: str | None):
    from mfsbi.simulators import get_task  # deferred: torch, 1.5 s at every CLI start (app.inputs)

    if given is not None:
        return get_task(given)
    if ":" in spec:
        raise RunNotFoundError(f"the run's task is your own {spec!r}: pass task={spec!r} (`--task {spec}` on "
                               "the command line); mfsbi imports no module because a store names it")
    return get_task(spec)


def load_posterior(store: str | Path, run: str | None = None, *, task: str | None = None,
                   device: str = "cpu") -> Any:
    """The trained posterior of a run, as an sbi posterior.

    Arguments:
        store: the store folder or URL a run wrote.
        run: ``TASK/RUN`` (default: the latest run that saved an estimator, as ``mfsbi sample``).
        task: the task, when the run used your own ``module:attribute`` task (its prior is needed).
        device: where the network goes.

    Returns:
        ``DirectPosterior`` for one estimator, ``EnsemblePosterior`` for an ensemble (A-MF-TSNPE, or
        ``--ensemble N``); a sequential run's posterior has its x_o as default x.

    Raises:
        RunNotFoundError: no such store or run, or a run without a density (MF-ABC).
    """
    from mfsbi.inference import Ensemble, estimator_from_bytes  # deferred: torch+sbi, 3.6 s at every CLI start

    prefix, summary = run_summary(store, run)
    paths = summary.get("posterior")
    paths = [paths] if isinstance(paths, str) else list(paths or [])
    if not paths or not all(p.endswith(".pt") for p in paths):
        raise RunNotFoundError(f"run {prefix!r} ({summary.get('method')}) stored samples, not a posterior density: "
                               f"read {paths[0] if paths else 'samples.npy'} instead")
    task_obj = _task(summary["config"]["task"], task)
    handle = _store(store)
    members = [estimator_from_bytes(handle.read_artifact(p.removeprefix("artifacts/")), task_obj.prior, device=device)
               for p in paths]
    weights = summary.get("posterior_weights")  # MF-NPE's stacked mixture; else equal
    posterior = members[0].posterior() if len(members) == 1 else Ensemble(members, weights).posterior()
    x_o = _run_observation(handle, summary, task_obj)
    if x_o is not None:
        import torch  # deferred: as above

        posterior.set_default_x(torch.as_tensor(x_o, dtype=torch.float32))
    return posterior


def _run_observation(handle, summary: dict[str, Any], task_obj) -> np.ndarray | None:
    """The x_o a run at one observation conditioned on (``None`` for amortised runs)."""
    config = summary["config"]
    if "rounds" not in summary:
        return None
    if config.get("observation") is not None:
        return np.asarray(config["observation"], dtype=np.float64)
    table = handle.table(f"{task_obj.name}-test", "hf")
    rows = table.rows("ok")
    _, x = table.read("ok")
    keep = np.flatnonzero(rows == config["observation_index"])
    return x[keep[0]] if len(keep) else None

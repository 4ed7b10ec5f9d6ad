"""What an inference pass will do, decided before anything is spent (no Prefect, no writes).

:class:`InferConfig` is a pass's parameters (the ``mfsbi-infer`` deployment's ``config``, ``mfsbi infer``'s
options); :func:`plan_inference` names the run whose posterior it uses and sorts the folder's files into
new, done (a result with this run in the store) and unreadable. :mod:`mfsbi.app.nightly` runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from mfsbi.app.inputs import UsageError
from mfsbi.app.observations import ObservationFile, observation_files
from mfsbi.app.results import RunNotFoundError, run_summary

__all__ = ["InferConfig", "InferPlan", "ROOT", "plan_inference", "result_folder", "store_handle"]

# Where results live under artifacts/.
ROOT = "inference"


class InferConfig(BaseModel):
    """The parameters of one inference pass (the deployment's ``config``; ``mfsbi infer``'s options).

    Arguments:
        observations: the folder of ``.npy``/``.nwb`` observations (absolute for a deployment).
        store: the store holding the trained run; run: ``TASK/RUN`` (default: the latest run).
        task: the run's task when it is your own ``module:attribute``.
        num_samples: posterior samples per observation; ppc_sims: posterior draws simulated at HF (and
            LF) by the predictive check of each observation (0: no check); seed: samples' and draws' seed.
        series: the NWB current-clamp series (default: each file's only one).
        dask_address, n_workers, cluster: where the check simulates, as for ``mfsbi run``.
        lock_wait: seconds to wait for a store another run holds (a scheduled training) before failing.
    """

    model_config = ConfigDict(extra="forbid")

    observations: str
    store: str
    run: Optional[str] = None
    task: Optional[str] = None
    num_samples: int = Field(1000, ge=1, le=1_000_000)
    ppc_sims: int = Field(20, ge=0, le=100_000)
    seed: int = Field(0, ge=0)
    series: Optional[str] = None
    dask_address: Optional[str] = None
    n_workers: Optional[int] = Field(None, ge=1)
    cluster: Optional[str] = None
    lock_wait: float = Field(0.0, ge=0)


class InferPlan(BaseModel):
    """What a pass will do, decided before anything is spent: the run, and the folder's files by state."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    run: str
    task: str
    chunk_size: int
    config: dict[str, Any]
    new: list[ObservationFile]
    done: list[ObservationFile]
    unreadable: list[tuple[Path, str]]


def result_folder(observation_id: str, run: str) -> str:
    """``inference/<observation id>/<task>/<run>``: one observation's result with one run's posterior."""
    return f"{ROOT}/{observation_id}/{run}"


def store_handle(store: str, mode: str = "r"):
    """The store, opened read-only by default."""
    from mfsbi.storage import SimulationStore  # deferred: zarr costs 0.4 s on mfsbi runs/submit (through app.deployments)

    return SimulationStore(store, mode=mode)


def _has_result(handle, observation_id: str, run: str) -> bool:
    try:
        handle.read_artifact(f"{result_folder(observation_id, run)}/result.json")
    except FileNotFoundError:
        return False
    return True


def plan_inference(config: InferConfig) -> InferPlan:
    """The run to use and the folder's files: new, done (a result with this run), unreadable.

    Raises:
        UsageError: one line naming the option (``--observations``, ``--store``, ``--run``).
    """
    try:
        prefix, summary = run_summary(config.store, config.run)
    except RunNotFoundError as error:
        raise UsageError(f"--store: {error}") from None
    if "rounds" in summary:
        raise UsageError(f"--run: {prefix} was trained at one observation ({summary.get('method')}); infer needs an "
                         "amortized run (npe, mf-npe): give --run TASK/RUN of one")
    paths = summary.get("posterior")
    if not paths or not all(p.endswith(".pt") for p in ([paths] if isinstance(paths, str) else paths)):
        raise UsageError(f"--run: {prefix} ({summary.get('method')}) stored samples, not a posterior to sample from")
    files, unreadable = observation_files(Path(config.observations))
    handle = store_handle(config.store)
    done = [f for f in files if _has_result(handle, f.id, prefix)]
    new = [f for f in files if f not in done]
    run_config = summary["config"]
    return InferPlan(run=prefix, task=config.task or run_config["task"],
                     chunk_size=int(run_config.get("hf_chunk_size") or 10), config=run_config, new=new, done=done,
                     unreadable=unreadable)



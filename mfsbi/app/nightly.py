"""The nightly inference pipeline: every new observation of a folder, through the latest amortized posterior.

:func:`infer_flow` (deployment ``mfsbi-infer``; ``mfsbi infer`` runs it from the command line) reads
the folder (:mod:`mfsbi.app.observations`), and for each observation not yet inferred with the run's
posterior: draws posterior samples (no training), runs the posterior predictive check of
:mod:`mfsbi.flows.ppc` at a small budget, and writes the result under
``artifacts/inference/<observation id>/<task>/<run>/`` of the store: ``samples.npy``, ``posterior.png``
and, last, ``result.json`` (present = done: a crash before it leaves the observation to the next run,
whose check reuses every stored simulation). The night's report goes to
``artifacts/inference/reports/<date>.json`` and to one Prefect markdown artifact per night.

It lives in the app layer because it loads a stored posterior (:mod:`mfsbi.app.results`, with its rule
about users' tasks), which the flows layer does not (docs/decisions.md, "mfsbi ppc").
"""

from __future__ import annotations

import io
import json
import logging
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run

from mfsbi import __version__
from mfsbi.app.infer_report import posterior_png, publish_night, write_night
from mfsbi.app.infer_plan import InferConfig, InferPlan, plan_inference, result_folder, store_handle
from mfsbi.app.inputs import UsageError
from mfsbi.app.observations import ObservationError, ObservationFile, read_statistics
from mfsbi.app.results import load_posterior
from mfsbi.runtime.cluster import dask_client
from mfsbi.runtime.seeds import derive_seed
from mfsbi.storage import StoreError, StoreLock, StoreLockedError

__all__ = ["infer_flow", "run_inference"]

def _ppc_plan(config: InferConfig, plan: InferPlan, posterior, x_o: np.ndarray):
    from mfsbi.flows.ppc_plan import PpcPlan, draw_theta  # deferred: as in _infer_one

    theta = draw_theta(posterior, x_o, config.ppc_sims, plan.chunk_size, config.seed)
    return PpcPlan(store=config.store, run=plan.run, task=plan.task, x_o=[float(v) for v in x_o],
                   theta=theta.tolist(), budget=config.ppc_sims, seed=config.seed, chunk_size=plan.chunk_size,
                   max_failure_fraction=float(plan.config.get("max_failure_fraction", 0.2)),
                   simulation_timeout=plan.config.get("simulation_timeout"),
                   run_hf_table=None, dask_address=config.dask_address, n_workers=config.n_workers,
                   cluster=config.cluster)


def _infer_one(config: InferConfig, plan: InferPlan, task, posterior, item: ObservationFile, executor) -> dict:
    """One observation: samples, check, files; returns its report row. ``result.json`` is written last."""
    # deferred: torch+sbi (4 s, flows.ppc) only when a file is new: `mfsbi infer` with nothing new loads this module
    from mfsbi.flows.evaluation import sample_posterior
    from mfsbi.flows.ppc import run_ppc

    started = time.monotonic()
    x_o = read_statistics(item.path, task, config.series)
    seed = derive_seed(config.seed, "infer/samples", int(item.id.rsplit("-", 1)[1], 16))
    samples = sample_posterior(posterior, x_o, config.num_samples, seed)
    check = run_ppc(_ppc_plan(config, plan, posterior, x_o), executor) if config.ppc_sims else None
    names = list(task.parameter_names)
    folder = result_folder(item.id, plan.run)
    handle = store_handle(config.store, "a")
    buffer = io.BytesIO()
    np.save(buffer, samples, allow_pickle=False)
    handle.write_artifact(f"{folder}/samples.npy", buffer.getvalue())
    handle.write_artifact(f"{folder}/posterior.png", posterior_png(samples, names, f"{item.path.name} · {plan.run}"))
    result = {
        "observation": item.id, "file": item.path.name, "kind": item.path.suffix.lstrip(".").lower(),
        "x_o": [float(v) for v in x_o], "run": plan.run, "task": task.name, "parameters": names,
        "num_samples": config.num_samples, "seed": config.seed,
        "mean": [float(v) for v in samples.mean(axis=0)], "sd": [float(v) for v in samples.std(axis=0, ddof=1)],
        "samples": f"artifacts/{folder}/samples.npy", "plot": f"artifacts/{folder}/posterior.png",
        "ppc": None if check is None else {
            "verdict": check["verdict"], "status": check["status"], "num_draws": check["num_draws"],
            "summary": check["plot"].removesuffix(".png") + ".json", "plot": check["plot"], "tables": check["tables"],
            "simulated_now": check["simulated_now"]},
        "series": config.series if item.path.suffix.lower() == ".nwb" else None,
        "seconds": round(time.monotonic() - started, 3), "mfsbi_version": __version__,
        "inferred_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    handle.write_artifact(f"{folder}/result.json", json.dumps(result, indent=2).encode())
    return {"status": "new", "result": f"artifacts/{folder}/result.json", **result}


def _logger():
    """The flow run's logger; outside a flow (a pass with nothing new, from the CLI) the module's."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def _done_row(config: InferConfig, plan: InferPlan, item: ObservationFile) -> dict:
    """A file inferred before with this run: its stored result, read back (nothing recomputed)."""
    path = f"{result_folder(item.id, plan.run)}/result.json"
    return {"status": "done", "result": f"artifacts/{path}",
            **json.loads(store_handle(config.store).read_artifact(path))}


def _lock(config: InferConfig, owner: str):
    """The store's lock, waiting up to ``lock_wait`` seconds for another run (a scheduled training) to end."""
    deadline = time.monotonic() + config.lock_wait
    while True:
        lock = StoreLock(config.store, owner=owner)
        try:
            lock.__enter__()
            return lock
        except StoreLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(min(10.0, max(0.5, deadline - time.monotonic())))


def run_inference(config: InferConfig, plan: InferPlan | None = None) -> dict:
    """The body of :func:`infer_flow`: infers the plan's new observations; returns the pass's report.

    Returns:
        ``{"night", "run", "store", "observations": rows, "counts", "report"}``; a row per file: status
        ``new`` (inferred now), ``done`` (inferred before with this run) or ``failed`` (``error``: one line).
    """
    plan = plan or plan_inference(config)
    logger = _logger()
    rows = [{"status": "failed", "file": path.name, "error": message} for path, message in plan.unreadable]
    rows += [_done_row(config, plan, f) for f in plan.done]
    if plan.new:
        from mfsbi.simulators import get_task  # deferred: as in _infer_one

        task = get_task(plan.task)
        posterior = load_posterior(config.store, plan.run, task=config.task)
        with ExitStack() as stack:
            lock = _lock(config, owner=f"infer {plan.run}")
            stack.callback(lock.__exit__, None, None, None)
            executor = None
            if config.ppc_sims:
                from mfsbi.runtime.executor import DaskExecutor  # deferred: torch; as in _infer_one

                client = stack.enter_context(dask_client(config.dask_address, config.n_workers, config.cluster))
                executor = DaskExecutor(client)
            for item in plan.new:
                try:
                    rows.append(_infer_one(config, plan, task, posterior, item, executor))
                    logger.info("%s: inferred with %s", item.path.name, plan.run)
                except StoreError:
                    raise  # the store itself (full, locked, corrupt): no other observation can be written
                except Exception as error:  # noqa: BLE001 -- one file's failure is its row; the others go on
                    message = str(error) if isinstance(error, ObservationError) else (
                        f"{item.path.name}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
                    rows.append({"status": "failed", "file": item.path.name, "observation": item.id,
                                 "error": message})
                    logger.warning("%s", message)
    rows.sort(key=lambda row: row["file"])
    counts = {status: sum(row["status"] == status for row in rows) for status in ("new", "done", "failed")}
    report = {"night": datetime.now(timezone.utc).date().isoformat(), "store": config.store, "run": plan.run,
              "observations_folder": config.observations, "observations": rows, "counts": counts, "report": None}
    if counts["new"] or counts["failed"]:
        night = write_night(store_handle(config.store, "a"), report)
        report["report"] = night["path"]
        publish_night(night, store_handle(config.store), [r for r in rows if r["status"] == "new"])
    logger.info("infer: %d new, %d done before, %d failed", counts["new"], counts["done"], counts["failed"])
    return report


def _check_location(config: InferConfig) -> None:
    """A deployment run refuses a relative store or folder (the worker runs in a temporary folder)."""
    from mfsbi.flows.run import check_store_location  # deferred: torch+sbi; as in _infer_one

    check_store_location(config.store)
    flow_run = getattr(FlowRunContext.get(), "flow_run", None)
    if getattr(flow_run, "deployment_id", None) is not None and not Path(config.observations).is_absolute():
        raise UsageError(f"observations: {config.observations!r} is relative, which a deployment run reads in the "
                         "worker's temporary folder; give an absolute path")


def _flow_run_name() -> str:
    config = flow_run.parameters.get("config")
    folder = config.observations if isinstance(config, InferConfig) else (config or {}).get("observations")
    return f"infer {folder}"


@flow(name="mfsbi-infer", flow_run_name=_flow_run_name, validate_parameters=False)
def infer_flow(config: InferConfig | dict) -> dict:
    """Infers each new observation of a folder with the latest amortized posterior (no training).

    Arguments:
        config: :class:`InferConfig` (or its fields, as a deployment passes them).

    Returns:
        The pass's report (also ``artifacts/inference/reports/<night>.json`` when anything happened).
    """
    config = config if isinstance(config, InferConfig) else InferConfig(**config)
    _check_location(config)
    return run_inference(config)

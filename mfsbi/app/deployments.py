"""``mfsbi deploy``, ``submit`` and ``runs``: the flows as Prefect deployments, and their runs.

One deployment per family of methods (:data:`mfsbi.flows.methods.FAMILIES`): its name, flow,
description and default method come from the method registry, as do the methods it accepts. And
``mfsbi-infer`` (:func:`mfsbi.app.nightly.infer_flow`): each new observation of a folder through the
latest amortized posterior, nightly (docs/infer.md). They run on the process work pool of ``mfsbi serve`` (:mod:`mfsbi.app.stack`) or of
``docker-compose.yml``; their entrypoints are module paths of the installed package.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mfsbi.app.infer_plan import InferConfig
from mfsbi.app.prefect_server import mfsbi_home
from mfsbi.app.stack import WORK_POOL, ensure_work_pool, resolve_dask_address
from mfsbi.flows.config import RunConfig, describe_validation_error
from mfsbi.flows.methods import FAMILIES, Family, methods_of

__all__ = [
    "EXAMPLE_CRON", "INFER_DEPLOYMENT", "INFER_DESCRIPTION", "INFER_ENTRYPOINT", "ParamError", "absolute_store", "amortized_schedules", "build_submit_config", "check_cron",
    "deployment_families", "deployment_flow", "deployment_full_name", "deployment_names", "follow_run",
    "infer_schedules", "parse_params", "recent_runs", "register_deployments", "scheduled_observations",
    "scheduled_store", "submit_run",
]

# The example nightly run of deploy/prefect.yaml (UTC), registered inactive unless `--cron` is given.
EXAMPLE_CRON = "0 3 * * *"

# The nightly inference pipeline: not a family of methods (it trains nothing), a deployment of its own.
INFER_DEPLOYMENT = "mfsbi-infer"
INFER_ENTRYPOINT = "mfsbi.app.nightly:infer_flow"
INFER_DESCRIPTION = "Each new observation of a folder through the latest amortized posterior: samples, a check, a report."
# A scheduled pass waits this long for the store's lock: the nightly training of the same store may hold it.
INFER_LOCK_WAIT = 3600.0


def deployment_families() -> dict[str, Family]:
    """Deployment name -> the family of methods it runs."""
    return {family.deployment: family for family in FAMILIES}


def deployment_names() -> list[str]:
    """Every deployment ``mfsbi deploy`` registers: one per family, then ``mfsbi-infer``."""
    return [*deployment_families(), INFER_DEPLOYMENT]


def deployment_flow(name: str):
    """The flow object a deployment runs."""
    if name == INFER_DEPLOYMENT:
        from mfsbi.app.nightly import infer_flow  # deferred: nightly imports Prefect (1.2 s) and zarr

        return infer_flow
    return deployment_families()[name].load_flow()


def check_cron(expression: str) -> str:
    """The cron expression if Prefect accepts it; else ParamError with one line naming ``--cron``."""
    from prefect.schedules import Cron  # deferred: Prefect costs 1.2 s on `mfsbi status`, which loads this module

    try:
        Cron(expression, timezone="UTC")
    except ValueError:
        raise ParamError(f"--cron: {expression!r} is not a cron expression "
                         '(five fields: minute hour day-of-month month day-of-week, e.g. "0 2 * * *")') from None
    return expression


def scheduled_store() -> str:
    """The store of the scheduled run: ``$MFSBI_HOME/stores/ou2``, absolute (a worker has no useful cwd)."""
    return os.path.abspath(mfsbi_home().expanduser() / "stores" / "ou2")


def scheduled_observations() -> str:
    """The folder the scheduled ``mfsbi-infer`` reads: ``$MFSBI_HOME/observations``, absolute."""
    return os.path.abspath(mfsbi_home().expanduser() / "observations")


def infer_schedules(with_schedule: bool = True, cron: str | None = None) -> list | None:
    """The schedules of ``mfsbi-infer``: as :func:`amortized_schedules` (same cron), on its store.

    The pass reads ``$MFSBI_HOME/observations`` and the store the scheduled training writes, waiting
    up to an hour for that training's lock when both start at once.
    """
    from prefect.schedules import Cron  # deferred: as in check_cron

    if cron is not None and not with_schedule:
        raise ParamError("--cron: cannot be combined with --no-schedule (drop one of them)")
    if cron is None and not with_schedule:
        return None
    parameters = {"config": {"observations": scheduled_observations(), "store": scheduled_store(),
                             "lock_wait": INFER_LOCK_WAIT}}
    if cron is not None:
        return [Cron(check_cron(cron), timezone="UTC", active=True, parameters=parameters)]
    return [Cron(EXAMPLE_CRON, timezone="UTC", active=False, parameters=parameters)]


def amortized_schedules(with_schedule: bool = True, cron: str | None = None) -> list | None:
    """The schedules of ``mfsbi-amortized``: ``cron`` active, else the example inactive, else none.

    Raises:
        ParamError: ``cron`` is not a cron expression, or is given with ``with_schedule=False``.
    """
    from prefect.schedules import Cron  # deferred: as in check_cron

    if cron is not None and not with_schedule:
        raise ParamError("--cron: cannot be combined with --no-schedule (drop one of them)")
    if cron is None and not with_schedule:
        return None
    parameters = {"config": {"task": "ou2", "method": "mf-npe", "lf_sims": 10000, "hf_sims": 100,
                             "store": scheduled_store()}}
    if cron is not None:
        return [Cron(check_cron(cron), timezone="UTC", active=True, parameters=parameters)]
    # The example of deploy/prefect.yaml: nightly, inactive until switched on in the UI.
    return [Cron(EXAMPLE_CRON, timezone="UTC", active=False, parameters=parameters)]


def register_deployments(names: list[str] | None = None, with_schedule: bool = True,
                         cron: str | None = None) -> list[tuple[str, str]]:
    """Registers the deployments on the current API for the process work pool; returns (name, id).

    The entrypoints are module paths (``mfsbi.flows.amortized.amortized_flow``): the worker imports the
    pip-installed package, so no code storage and no image build is needed.

    Arguments:
        names: deployment names (default: all, :func:`deployment_names`).
        with_schedule: add the example nightly schedule (inactive) to ``mfsbi-amortized`` and ``mfsbi-infer``.
        cron: instead, an active cron schedule (UTC) of this expression for both.
    """
    from prefect.types.entrypoint import EntrypointType  # deferred: as in check_cron

    schedules = {"mfsbi-amortized": amortized_schedules(with_schedule, cron),  # a bad cron fails before the API
                 INFER_DEPLOYMENT: infer_schedules(with_schedule, cron)}
    unknown = sorted(set(names or ()) - set(deployment_names()))
    if unknown:
        raise ParamError(f"--deployment: {unknown[0]!r} is not a deployment of mfsbi ({', '.join(deployment_names())})")
    ensure_work_pool()
    registered = []
    families = deployment_families()
    for name in names or deployment_names():
        flow_obj = deployment_flow(name)
        own = schedules.get(name)
        if own:
            # A deployment run refuses a store whose parent folder is missing: make the folders it will use.
            try:
                Path(scheduled_store()).parent.mkdir(parents=True, exist_ok=True)
                if name == INFER_DEPLOYMENT:
                    Path(scheduled_observations()).mkdir(parents=True, exist_ok=True)
            except OSError:
                pass  # e.g. another machine's layout: the scheduled run then says which folder is missing
        deployment = flow_obj.to_deployment(
            name=name, work_pool_name=WORK_POOL, entrypoint_type=EntrypointType.MODULE_PATH,
            description=families[name].description if name in families else INFER_DESCRIPTION,
            tags=["mfsbi"], schedules=own,
        )
        registered.append((f"{flow_obj.name}/{name}", str(deployment.apply())))
    return registered


# --------------------------------------------------------------------------------------------
# submit
# --------------------------------------------------------------------------------------------

class ParamError(ValueError):
    """A bad ``--param``; its message is the one line the user sees."""


def parse_params(params: list[str]) -> dict[str, Any]:
    """``key=value`` pairs into a dict; ``-`` in keys reads as ``_``; ``[...]``/``{...}``/``null`` as JSON.

    Other values stay strings and are converted by the RunConfig (``300`` → int, ``true`` → bool).
    """
    values: dict[str, Any] = {}
    for item in params:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise ParamError(f"--param: {item!r} is not KEY=VALUE (e.g. --param hf_sims=100)")
        text = value.strip()
        if text[:1] in "[{" and text or text == "null":
            try:
                values[key] = json.loads(text)
            except ValueError:
                raise ParamError(f"--{key.replace('_', '-')}: {text!r} is not valid JSON") from None
        else:
            values[key] = text
    return values


def deployment_full_name(name: str) -> tuple[str, str]:
    """``mfsbi-amortized`` or ``FLOW/DEPLOYMENT`` → (full name, short deployment name)."""
    if "/" in name:
        return name, name.split("/", 1)[1]
    return f"{name}/{name}", name


def absolute_store(store: str) -> str:
    """A relative local store made absolute against the current folder; URLs (``s3://``) unchanged."""
    if "://" in store:
        return store
    return os.path.normpath(Path.cwd() / Path(store).expanduser())


def build_submit_config(short_name: str, values: dict[str, Any]):
    """Validates the params into a RunConfig for ``short_name``; raises ParamError with one line.

    A relative ``store`` (the default too) is taken from the submitter's current folder: the worker
    runs the flow in a temporary folder of its own, deleted when the run ends.
    """
    if short_name == INFER_DEPLOYMENT:
        return _infer_submit_config(values)
    unknown = sorted(set(values) - set(RunConfig.model_fields))
    if unknown:
        raise ParamError(f"--param: {unknown[0]!r} is not a run setting (see `mfsbi run --help`; "
                         f"settings: {', '.join(RunConfig.model_fields)})")
    store = values.get("store", RunConfig.model_fields["store"].default)
    if isinstance(store, str) and store:  # anything else is refused by the validation below
        values["store"] = absolute_store(store)
    family = deployment_families().get(short_name)
    methods = None
    if family is not None:
        values.setdefault("method", family.default_method)
        methods = methods_of(family)
    if not values.get("dask_address"):
        values["dask_address"] = resolve_dask_address()
    try:
        config = RunConfig(**values)
    except ValidationError as error:
        raise ParamError(describe_validation_error(error)) from None
    if methods is not None and config.method not in methods:
        raise ParamError(f"--method: {config.method} is not run by {short_name} "
                         f"(it runs {', '.join(sorted(methods))})")
    from mfsbi.simulators import TaskNotFoundError, get_task  # deferred: torch, 1.5 s on mfsbi status

    try:
        get_task(config.task)
    except TaskNotFoundError as error:
        raise ParamError(f"--task: {error}") from None
    return config


def _infer_submit_config(values: dict[str, Any]):
    """Validates ``mfsbi-infer``'s params into an InferConfig (folders made absolute, as a run's store)."""
    unknown = sorted(set(values) - set(InferConfig.model_fields))
    if unknown:
        raise ParamError(f"--param: {unknown[0]!r} is not a setting of {INFER_DEPLOYMENT} "
                         f"(settings: {', '.join(InferConfig.model_fields)})")
    for key in ("store", "observations"):
        if isinstance(values.get(key), str) and values[key]:
            values[key] = absolute_store(values[key])
    if not values.get("dask_address"):
        values["dask_address"] = resolve_dask_address()
    try:
        return InferConfig(**values)
    except ValidationError as error:
        raise ParamError(describe_validation_error(error)) from None


FINAL_OK = "COMPLETED"


def submit_run(full_name: str, config) -> Any:
    """Creates a flow run of the deployment with ``config``; returns the FlowRun (not waited for)."""
    from prefect.deployments import run_deployment  # deferred: as in check_cron

    return run_deployment(name=full_name, parameters={"config": config.model_dump(mode="json")}, timeout=0)


def follow_run(flow_run_id, console, timeout: float | None = None, poll: float = 2.0):
    """Polls a flow run with a spinner until a final state; returns the final FlowRun, or None on timeout."""
    from prefect.client.orchestration import get_client  # deferred: as in check_cron

    started = time.monotonic()
    with get_client(sync_client=True) as client, console.status("waiting for the run") as spinner:
        last = None
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            state = flow_run.state
            label = f"{flow_run.name}: {state.name if state else 'Pending'}"
            elapsed = time.monotonic() - started
            spinner.update(f"{label} · {elapsed:.0f} s")
            if label != last:
                console.print(f"  {time.strftime('%H:%M:%S')}  {label}", highlight=False)
                last = label
            if state is not None and state.is_final():
                return flow_run
            if timeout is not None and elapsed > timeout:
                return None
            time.sleep(poll)


def recent_runs(limit: int = 20) -> list[dict]:
    """The latest flow runs (newest expected start first) with flow and deployment names."""
    from prefect.client.orchestration import get_client  # deferred: as in check_cron
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit)
        flow_names = {f.id: f.name for f in client.read_flows(limit=200)}
        rows = []
        for run in runs:
            start, end = run.start_time, run.end_time
            if start and end:
                duration = f"{(end - start).total_seconds():.0f} s"
            elif start:
                duration = "running"
            else:
                duration = "-"
            config = (run.parameters or {}).get("config")
            rows.append({"id": str(run.id), "flow": flow_names.get(run.flow_id, "?"), "name": run.name,
                         "store": config.get("store") if isinstance(config, dict) else None,
                         "state": run.state.name if run.state else "-",
                         "start": start.astimezone().strftime("%Y-%m-%d %H:%M:%S") if start else "-",
                         "duration": duration})
    return rows

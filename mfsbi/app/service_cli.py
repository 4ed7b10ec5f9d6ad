"""The service commands: ``serve``, ``deploy``, ``submit``, ``runs``, and the flow runs ``status`` shows.

The logic lives in :mod:`mfsbi.app.stack` (the local processes of ``mfsbi serve``, where the API is)
and :mod:`mfsbi.app.deployments`; these functions are the commands' options and output. They are
registered on the ``mfsbi`` app by :mod:`mfsbi.app.cli`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from mfsbi.app.console import console, fail, name_column, print_json, print_table
from mfsbi.app.inputs import UsageError, check_cluster
from mfsbi.app.prefect_server import ServiceError, healthy

__all__ = ["deploy", "print_store_runs", "require_api", "runs", "serve", "submit"]


def print_store_runs(store: str, show: bool = True) -> list[dict] | None:
    """The flow runs of this store, from the Prefect API when one is reachable (else None).

    ``show=False``: only returns them (``status --json``).
    """
    # deferred: app.deployments and app.stack cost 14 ms (-X importtime) at every CLI start
    from mfsbi.app import deployments
    from mfsbi.app import stack as serve_stack

    api_url = serve_stack.resolve_api_url()
    if not api_url or not healthy(api_url):
        if show:
            console.print("no Prefect API reachable (PREFECT_API_URL or `mfsbi serve`): flow-run states not shown")
        return None
    _use_api(api_url)
    runs = [run for run in deployments.recent_runs(200) if _same_store(run.get("store"), store)]
    if not show:
        return runs
    table = Table(title=f"flow runs on this store ({serve_stack.ui_url(api_url)})")
    name_column(table, "flow run")
    for column in ("state", "start", "duration"):
        table.add_column(column)
    for run in runs:
        table.add_row(run["name"], run["state"], run["start"], run["duration"])
    if runs:
        print_table(table)
    else:
        console.print("no flow run of this store in the Prefect API")
    return runs


def _same_store(a: str | None, b: str) -> bool:
    if not a:
        return False
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def require_api() -> str:
    from mfsbi.app import stack as serve_stack  # deferred: as in print_store_runs

    api_url = serve_stack.resolve_api_url()
    if not api_url:
        fail("no Prefect API: start one with `mfsbi serve` (or docker compose) or set PREFECT_API_URL", code=1)
    _use_api(api_url)
    return api_url


def _use_api(api_url: str) -> None:
    """Points Prefect at ``api_url`` with this user's auth string; a non-private auth file: one line, exit 1."""
    from mfsbi.app import stack as serve_stack  # deferred: as in print_store_runs

    try:
        serve_stack.use_api(api_url)
    except ServiceError as error:
        fail(str(error), code=1)


def serve(
    workers: Annotated[Optional[int], typer.Option(min=1, max=512, help="Dask workers (default: one per core)")] = None,
    prefect_port: Annotated[int, typer.Option(min=0, max=65535, help="Prefect API/UI port (0: any free)")] = 4200,
    dask_port: Annotated[int, typer.Option(min=0, max=65535, help="Dask scheduler port (0: any free)")] = 8786,
    dashboard_port: Annotated[int, typer.Option(min=0, max=65535, help="Dask dashboard port (0: any free)")] = 8787,
    timeout: Annotated[float, typer.Option(min=1, help="seconds to wait for each service")] = 180.0,
    cluster: Annotated[Optional[str], typer.Option(
        help="'slurm' or FILE.yaml: Dask workers as SLURM jobs, scaled with the work, instead of local ones")] = None,
    tls: Annotated[bool, typer.Option(
        help="mutual TLS between the local Dask scheduler, its workers and clients (certificates made once "
             "in $MFSBI_HOME/tls): other users of a shared machine cannot connect. A --cluster's TLS is "
             "its config's `tls`")] = True,
) -> None:
    """Start a single-machine stack as local processes on 127.0.0.1, until Ctrl-C.

    A Prefect server (SQLite under $MFSBI_HOME/prefect, or PostgreSQL when
    PREFECT_API_DATABASE_CONNECTION_URL is set), a Dask scheduler and workers, the process work pool
    mfsbi-process and a Prefect worker on it. Addresses go to $MFSBI_HOME/serve.json.
    """
    from mfsbi.app import stack as serve_stack  # deferred: as in print_store_runs

    def say(message: str) -> None:
        console.print(message, highlight=False)

    if cluster:
        try:
            check_cluster(cluster, None)
        except UsageError as error:
            fail(str(error))
    try:
        stack = serve_stack.start_stack(workers or max(1, os.cpu_count() or 1), prefect_port, dask_port,
                                        dashboard_port, timeout, say=say, cluster=cluster, tls=tls)
    except serve_stack.ServeError as error:
        fail(str(error), code=1)
    except Exception as error:  # noqa: BLE001 -- e.g. ClusterStartError: one line, exit 1
        fail(f"the stack did not start: {type(error).__name__}: {error}", code=1)
    console.print(f"[bold]Prefect UI[/]   {stack.ui}\n[bold]Prefect API[/]  {stack.prefect_api_url}\n"
                  f"[bold]Dask[/]         {stack.dask_address}  (dashboard {stack.dashboard or 'off'})\n"
                  f"[bold]work pool[/]    {serve_stack.WORK_POOL}\n"
                  f"logs in {stack.home / 'logs'}; addresses in {serve_stack.serve_file()}\n"
                  "next: `mfsbi deploy`, then `mfsbi submit mfsbi-amortized --param task=ou2 --follow`. "
                  "Ctrl-C stops everything.", highlight=False)
    raise typer.Exit(serve_stack.run_until_stopped(stack, say=say))


def deploy(
    schedule: Annotated[bool, typer.Option("--schedule/--no-schedule",
                                           help="add the example nightly cron (inactive) to mfsbi-amortized "
                                                "and mfsbi-infer")] = True,
    cron: Annotated[Optional[str], typer.Option(
        help='instead, run mfsbi-amortized and mfsbi-infer on this cron (UTC), active: "0 2 * * *"')] = None,
    deployment: Annotated[Optional[list[str]], typer.Option(
        "--deployment", help="register only this deployment (repeat), e.g. mfsbi-infer [default: all]")] = None,
) -> None:
    """Register the deployments mfsbi-amortized, mfsbi-sequential, mfsbi-mf-abc and mfsbi-infer on the
    work pool mfsbi-process.

    The scheduled run of mfsbi-amortized (OU2, MF-NPE) keeps its store in $MFSBI_HOME/stores/ou2; the
    scheduled mfsbi-infer reads the observations in $MFSBI_HOME/observations and infers them with that
    store's latest run (docs/infer.md).
    """
    from mfsbi.app import deployments  # deferred: as in print_store_runs

    try:  # bad input is refused before any API is needed
        deployments.amortized_schedules(schedule, cron)
        unknown = sorted(set(deployment or ()) - set(deployments.deployment_names()))
        if unknown:
            raise deployments.ParamError(f"--deployment: {unknown[0]!r} is not a deployment of mfsbi "
                                         f"({', '.join(deployments.deployment_names())})")
    except deployments.ParamError as error:
        fail(str(error))
    api_url = require_api()
    from mfsbi.app import stack as serve_stack  # deferred: as in print_store_runs

    try:
        chosen = {"names": deployment} if deployment else {}
        registered = deployments.register_deployments(**chosen, with_schedule=schedule, cron=cron)
    except Exception as error:  # noqa: BLE001 -- one line, exit 1
        fail(f"could not register the deployments on {api_url}: {type(error).__name__}: {error}", code=1)
    table = Table(title=f"deployments on {api_url} (work pool {serve_stack.WORK_POOL})")
    table.add_column("deployment")
    table.add_column("id")
    for name, deployment_id in registered:
        table.add_row(name, deployment_id)
    console.print(table)
    if cron is not None:
        names = [name.split("/")[-1] for name, _ in registered]
        for name in ("mfsbi-amortized", deployments.INFER_DEPLOYMENT):
            if name in names:
                where = (f"store {deployments.scheduled_store()}" if name == "mfsbi-amortized" else
                         f"observations {deployments.scheduled_observations()}, store {deployments.scheduled_store()}")
                console.print(f"schedule: {name} at {cron!r} (UTC), active; {where}", highlight=False)


def submit(
    deployment: Annotated[str, typer.Argument(help="mfsbi-amortized, mfsbi-sequential, mfsbi-mf-abc or FLOW/DEPLOYMENT")],
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="a RunConfig field: KEY=VALUE (repeat)")] = None,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="wait for a final state, showing progress")] = False,
    timeout: Annotated[Optional[float], typer.Option(min=0, help="--follow: give up waiting after this many seconds")] = None,
) -> None:
    """Trigger a run of a deployment through the Prefect API (parameters validated as for `mfsbi run`)."""
    from mfsbi.app import deployments  # deferred: as in print_store_runs
    from mfsbi.app import stack as serve_stack

    full_name, short_name = deployments.deployment_full_name(deployment)
    try:
        config = deployments.build_submit_config(short_name, deployments.parse_params(param or []))
    except deployments.ParamError as error:
        fail(str(error))
    api_url = require_api()
    from prefect.exceptions import ObjectNotFound  # deferred: Prefect, 1.2 s at every CLI start

    try:
        flow_run = deployments.submit_run(full_name, config)
    except ObjectNotFound:
        fail(f"DEPLOYMENT: no deployment {full_name!r} on {api_url}; run `mfsbi deploy` first")
    except Exception as error:  # noqa: BLE001 -- one line, exit 1
        fail(f"could not trigger {full_name}: {type(error).__name__}: {error}", code=1)
    url = f"{serve_stack.ui_url(api_url)}/runs/flow-run/{flow_run.id}"
    console.print(f"flow run {flow_run.id} ({flow_run.name})\n{url}\nstore: {config.store}", highlight=False)
    if config.dask_address is None:
        console.print("note: no Dask address (MFSBI_DASK_ADDRESS, serve.json): the run starts a local cluster "
                      "where the worker runs it", highlight=False)
    if not follow:
        return
    final = deployments.follow_run(flow_run.id, console, timeout=timeout)
    if final is None:
        fail(f"the run was not finished after {timeout:.0f} s (it goes on; see {url})", code=1)
    state = final.state
    if state.type.value != deployments.FINAL_OK:
        fail(f"the run ended {state.name}: {state.message or ''}".rstrip(": "), code=1)
    console.print(f"[bold green]{state.name}[/]", highlight=False)


def runs(
    limit: Annotated[int, typer.Option(min=1, max=200, help="how many flow runs")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print the flow runs as one JSON document on stdout")] = False,
) -> None:
    """List recent flow runs from the Prefect API: name, state, start, duration."""
    api_url = require_api()
    from mfsbi.app import deployments  # deferred: as in print_store_runs

    try:
        rows = deployments.recent_runs(limit)
    except Exception as error:  # noqa: BLE001 -- one line, exit 1
        fail(f"could not read the flow runs from {api_url}: {type(error).__name__}: {error}", code=1)
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"flow runs on {api_url}")
    for column in ("flow", "name"):
        name_column(table, column)
    for column in ("state", "start", "duration"):
        table.add_column(column, overflow="fold")
    name_column(table, "id")
    for row in rows:
        table.add_row(row["flow"], row["name"], row["state"], row["start"], row["duration"], row["id"])
    print_table(table)

"""The ``mfsbi`` command line: run, sample, tasks, status."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand

from mfsbi.flows.config_file import one_line
from mfsbi.flows.inputs import UsageError, build_config, load_observation
from mfsbi.flows.services import quiet_prefect_environment

__all__ = ["UsageError", "app", "build_config", "load_observation", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multifidelity simulation-based inference, orchestrated by Prefect and Dask.")
console = Console(stderr=False)
errors = Console(stderr=True)

# Exit code of bad input: the convention of argparse and click.
USAGE_ERROR = 2


def _fail(message: str, code: int = USAGE_ERROR) -> None:
    # A Text is printed as is: a message quoting user input ("[/x]", ":smile:") is not rich markup.
    errors.print(Text.assemble(("error:", "bold red"), " ", one_line(message)), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# typer re-exports only BadParameter; its base is click's UsageError (typer vendors click lately).
_ClickUsageError: type[Exception] = typer.BadParameter.__mro__[1]


def _usage_line(error: Exception) -> str:
    """One line for a command line click could not parse: the option first, then the problem."""
    param = getattr(error, "param", None)
    option = getattr(error, "option_name", None)
    if param is not None and getattr(param, "opts", None):
        return f"{param.opts[0]}: {getattr(error, 'message', error)}"
    if option is not None:
        possible = getattr(error, "possibilities", None)
        if possible is not None:
            hint = f"; did you mean {sorted(possible)[0]}?" if possible else ""
            return f"{option}: no such option of `mfsbi run`{hint} (see `mfsbi run --help`)"
        return f"{option}: {getattr(error, 'message', error)}"
    return f"{error.format_message() if hasattr(error, 'format_message') else error} (see `mfsbi run --help`)"


class _OneLineCommand(TyperCommand):
    """``mfsbi run`` refuses a malformed command line (no such option, a value of the wrong type)
    with one line and exit code 2, like every other bad input, instead of a usage box."""

    def make_context(self, info_name, args, parent=None, **extra):  # noqa: ANN001, ANN201 -- click's signature
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _ClickUsageError as error:
            _fail(_usage_line(error))


@app.command(cls=_OneLineCommand)
def run(
    ctx: typer.Context,
    config_file: Annotated[Optional[Path], typer.Option(
        "--config", help="a .toml, .json or .yaml file of RunConfig fields; options given here win")] = None,
    task: Annotated[str, typer.Option(help="task name (see `mfsbi tasks`) or package.module:attribute")] = "ou2",
    method: Annotated[str, typer.Option(help="npe or mf-npe")] = "mf-npe",
    lf_sims: Annotated[int, typer.Option(help="low-fidelity simulations (mf-npe)")] = 10_000,
    hf_sims: Annotated[int, typer.Option(help="high-fidelity simulation budget")] = 100,
    store: Annotated[str, typer.Option(help="zarr store: a folder or a zarr store URL")] = "mfsbi-store",
    seed: Annotated[int, typer.Option(help="run seed: same seed, same simulations and numbers")] = 0,
    observation: Annotated[Optional[Path], typer.Option(help="x_o as a .npy file")] = None,
    dask_address: Annotated[Optional[str], typer.Option(help="existing Dask scheduler address")] = None,
    n_workers: Annotated[Optional[int], typer.Option(help="local Dask workers (default: one per core)")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    num_test_observations: Annotated[int, typer.Option(help="held-out HF observations for C2ST")] = 5,
    num_nltp_pairs: Annotated[int, typer.Option(help="held-out HF pairs for NLTP")] = 100,
    max_num_epochs: Annotated[int, typer.Option(help="cap on training epochs (early stopping first)")] = 2**31 - 1,
    rounds: Annotated[int, typer.Option(help="sequential methods: rounds R")] = 5,
    observation_index: Annotated[int, typer.Option(help="sequential methods without --observation: held-out test observation")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="continue a sequential run already in the store")] = False,
    truncation_quantile: Annotated[float, typer.Option(help="ε of the truncated region (TSNPE)")] = 1e-6,
    ensemble_size: Annotated[int, typer.Option(help="A-MF-TSNPE ensemble members E")] = 5,
    acquisition_fraction: Annotated[float, typer.Option(help="A-MF-TSNPE share B of a round chosen by acquisition")] = 0.2,
    pool_size: Annotated[Optional[int], typer.Option(help="A-MF-TSNPE acquisition pool (default by budget)")] = None,
    max_failure_fraction: Annotated[float, typer.Option(help="stop the run when more simulations than this fraction fail")] = 0.2,
    simulation_timeout: Annotated[Optional[float], typer.Option(help="seconds one simulation may take (hangs are killed, rows failed)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's logs")] = False,
) -> None:
    """Run a method end to end: simulate, store, train, evaluate.

    Methods: npe, mf-npe (amortised); tsnpe, mf-tsnpe, a-mf-tsnpe (sequential, at one observation);
    mf-abc (multifidelity rejection ABC).
    """
    options = dict(task=task, method=method, lf_sims=lf_sims, hf_sims=hf_sims, store=store,
                   seed=seed, observation=observation, dask_address=dask_address,
                   n_workers=n_workers, device=device, num_test_observations=num_test_observations,
                   num_nltp_pairs=num_nltp_pairs, max_num_epochs=max_num_epochs, rounds=rounds,
                   observation_index=observation_index, resume=resume,
                   truncation_quantile=truncation_quantile, ensemble_size=ensemble_size,
                   acquisition_fraction=acquisition_fraction, pool_size=pool_size,
                   max_failure_fraction=max_failure_fraction, simulation_timeout=simulation_timeout)
    # Given on the command line (or by environment): these override --config; defaults do not.
    explicit = {name for name in options
                if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}
    try:
        config = build_config(config_file=config_file, explicit=explicit, **options)
    except UsageError as error:
        _fail(str(error))
    summary = _run_with_services(config, verbose)
    _print_summary(summary)


def _run_with_services(config, verbose: bool) -> dict:
    import logging
    import os

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mfsbi.flows import progress as progress_events
    from mfsbi.flows.services import ServiceError, prefect_api

    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    try:
        with prefect_api() as api_url:
            console.print(f"Prefect API: {api_url}", highlight=False)
            flow_function = _flow_for(config.method)

            if not verbose:
                logging.getLogger("distributed").setLevel(logging.ERROR)
            with Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=console, transient=False) as bars:
                ids: dict[str, object] = {}

                def listener(step: str, done: int, total: int) -> None:
                    if step not in ids:
                        ids[step] = bars.add_task(step, total=total)
                    bars.update(ids[step], completed=done, total=total)

                progress_events.listen(listener)
                try:
                    return flow_function(config)
                finally:
                    progress_events.listen(None)
    except ServiceError as error:
        _fail(str(error), code=1)
    except Exception as error:  # noqa: BLE001 -- a failed run ends with its reason on one line, exit 1
        _fail(f"the run failed: {type(error).__name__}: {error}", code=1)


def _flow_for(method: str):
    from mfsbi.flows.config import AMORTIZED, SEQUENTIAL

    if method in AMORTIZED:
        from mfsbi.flows.amortized import amortized_flow

        return amortized_flow
    if method in SEQUENTIAL:
        from mfsbi.flows.sequential import sequential_flow

        return sequential_flow
    from mfsbi.flows.abc import abc_flow

    return abc_flow


def _print_rounds(summary: dict) -> None:
    table = Table(title=f"{summary['task']} · {summary['run']} · rounds")
    references = sorted({k for row in summary["rounds"] for k in row if k.startswith("c2st_")})
    for column in ("round", "HF this round", "HF total", "truncated-prior acceptance", "acquired", *references):
        table.add_column(column.replace("c2st_", "C2ST vs "), justify="right")
    for row in summary["rounds"]:
        rate = row.get("acceptance_rate")
        table.add_row(str(row["round"] + 1), str(row["new_simulations"]), str(row["total_simulations"]),
                      "-" if rate is None else f"{rate:.3f}", str(row.get("acquired", 0)),
                      *(f"{row[r]:.3f}" for r in references))
    console.print(table)


def _print_summary(summary: dict) -> None:
    if "rounds" in summary:
        _print_rounds(summary)
    metrics = summary["metrics"]
    table = Table(title=f"{summary['task']} · {summary['run']} · {summary['wall_seconds']:.0f} s")
    table.add_column("result")
    table.add_column("value", justify="right")
    where = (f"{metrics['num_c2st_observations']} held-out obs." if "rounds" not in summary
             else "at x_o")
    for name, value in metrics["c2st"].items():
        table.add_row(f"C2ST vs {name} reference ({where})", f"{value:.3f}")
    if metrics.get("nltp") is not None:
        table.add_row(f"NLTP ({metrics['num_nltp_pairs']} held-out pairs)", f"{metrics['nltp']:.3f}")
    if metrics.get("nrmse") is not None:
        table.add_row("NRMSE", f"{metrics['nrmse']:.3f}")
    if "lf" in summary:
        table.add_row("LF simulations stored ok", str(summary["lf"]["stored_ok"]))
    table.add_row("HF simulations stored ok", str(summary["hf"]["stored_ok"]))
    table.add_row("training device", summary["device"])
    posterior = summary["posterior"]
    table.add_row("posterior", posterior if isinstance(posterior, str) else f"{posterior[0]} (+{len(posterior) - 1})")
    table.add_row("pair plot", summary.get("pair_plot", "-"))
    console.print(table)


@app.command()
def sample(
    store: Annotated[str, typer.Option(help="the store a run wrote")],
    observation: Annotated[Path, typer.Option(help="x_o as a .npy file")],
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", min=1, max=10_000_000)] = 1000,
    out: Annotated[Path, typer.Option(help="where to write the samples (.npy)")] = Path("samples.npy"),
    run_name: Annotated[Optional[str], typer.Option("--run", help="TASK/RUN inside artifacts/ (default: latest)")] = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Draw posterior samples at an observation from a stored posterior."""
    import numpy as np

    from mfsbi.flows.evaluation import sample_posterior
    from mfsbi.inference import estimator_from_bytes
    from mfsbi.simulators import TaskNotFoundError, get_task
    from mfsbi.storage import SimulationStore, StoreError

    try:
        handle = SimulationStore(store, mode="r")
        latest = json.loads(handle.read_artifact("latest.json"))
        prefix = run_name or latest["run"]
        task_obj = get_task(latest["task"] if run_name is None else _run_task(handle, prefix))
        x_o = np.asarray(load_observation(observation, task_obj.x_dim))
        checkpoint = handle.read_artifact(f"{prefix}/posterior.pt")
    except (StoreError, KeyError, FileNotFoundError) as error:
        _fail(f"--store: {store!r} holds no trained posterior ({error})")
    except (UsageError, TaskNotFoundError) as error:
        _fail(str(error))
    if out.suffix != ".npy":
        _fail(f"--out: {str(out)!r} must end in .npy")
    posterior = estimator_from_bytes(checkpoint, task_obj.prior).posterior()
    samples = sample_posterior(posterior, x_o, num_samples, seed)
    np.save(out, samples, allow_pickle=False)
    console.print(f"wrote {num_samples} samples of {prefix} to {out}")


def _run_task(handle, prefix: str) -> str:
    return json.loads(handle.read_artifact(f"{prefix}/summary.json"))["config"]["task"]


@app.command()
def tasks() -> None:
    """List the available tasks."""
    from mfsbi.simulators import available_tasks, get_task

    table = Table(title="mfsbi tasks (costs: seconds per simulation measured on 2 cores, see docs/)")
    for column in ("task", "θ", "x size", "LF uses", "references", "LF s/sim", "HF s/sim"):
        table.add_column(column, overflow="fold")
    for name in available_tasks():
        task_obj = get_task(name)
        lf_uses = ", ".join(task_obj.parameter_names[i] for i in task_obj.low_fidelity_parameters)
        costs = [task_obj.cost_seconds.get(f) for f in ("lf", "hf")]
        table.add_row(name, str(task_obj.theta_dim), str(task_obj.x_dim),
                      lf_uses if len(lf_uses) < 30 else f"{len(task_obj.low_fidelity_parameters)} of {task_obj.theta_dim}",
                      ", ".join(task_obj.references) or "-", *("-" if c is None else f"{c:.2g}" for c in costs))
    console.print(table)


@app.command()
def status(store: Annotated[str, typer.Argument(help="the store folder or URL")]) -> None:
    """Show what a store holds: rows by status, HF budget, runs."""
    from mfsbi.storage import SimulationStore, StoreError

    try:
        handle = SimulationStore(store, mode="r")
    except (StoreError, FileNotFoundError) as error:
        _fail(f"STORE: {error}")
    table = Table(title=f"store {store}")
    for column in ("task", "fidelity", "ok", "failed", "pending", "HF budget used / total"):
        table.add_column(column, justify="right" if column not in ("task", "fidelity") else "left")
    for task_name, fidelity in handle.tables():
        sim_table = handle.table(task_name, fidelity)
        counts = sim_table.counts()
        budget = sim_table.budget()
        table.add_row(task_name, fidelity, str(counts["ok"]), str(counts["failed"]), str(counts["pending"]),
                      f"{budget.reserved} / {budget.total}" if budget else "-")
    console.print(table)
    _print_store_runs(store)


def _print_store_runs(store: str) -> None:
    """The flow runs of this store, from the Prefect API when one is reachable."""
    from mfsbi.flows import deployments
    from mfsbi.flows import stack as serve_stack
    from mfsbi.flows.services import _healthy

    api_url = serve_stack.resolve_api_url()
    if not api_url or not _healthy(api_url):
        console.print("no Prefect API reachable (PREFECT_API_URL or `mfsbi serve`): flow-run states not shown")
        return
    serve_stack.use_api(api_url)
    runs = [run for run in deployments.recent_runs(200) if _same_store(run.get("store"), store)]
    table = Table(title=f"flow runs on this store ({serve_stack.ui_url(api_url)})")
    for column in ("flow run", "state", "start", "duration"):
        table.add_column(column)
    for run in runs:
        table.add_row(run["name"], run["state"], run["start"], run["duration"])
    console.print(table if runs else "no flow run of this store in the Prefect API")


def _same_store(a: str | None, b: str) -> bool:
    if not a:
        return False
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


# --------------------------------------------------------------------------------------------
# The service: serve, deploy, submit, runs (logic in mfsbi/flows/stack.py and deployments.py)
# --------------------------------------------------------------------------------------------

def _require_api() -> str:
    from mfsbi.flows import stack as serve_stack

    api_url = serve_stack.resolve_api_url()
    if not api_url:
        _fail("no Prefect API: start one with `mfsbi serve` (or docker compose) or set PREFECT_API_URL", code=1)
    serve_stack.use_api(api_url)
    return api_url


@app.command()
def serve(
    workers: Annotated[Optional[int], typer.Option(min=1, max=512, help="Dask workers (default: one per core)")] = None,
    prefect_port: Annotated[int, typer.Option(min=0, max=65535, help="Prefect API/UI port (0: any free)")] = 4200,
    dask_port: Annotated[int, typer.Option(min=0, max=65535, help="Dask scheduler port (0: any free)")] = 8786,
    dashboard_port: Annotated[int, typer.Option(min=0, max=65535, help="Dask dashboard port (0: any free)")] = 8787,
    timeout: Annotated[float, typer.Option(min=1, help="seconds to wait for each service")] = 180.0,
) -> None:
    """Start a single-machine stack as local processes on 127.0.0.1, until Ctrl-C.

    A Prefect server (SQLite under $MFSBI_HOME/prefect, or PostgreSQL when
    PREFECT_API_DATABASE_CONNECTION_URL is set), a Dask scheduler and workers, the process work pool
    mfsbi-process and a Prefect worker on it. Addresses go to $MFSBI_HOME/serve.json.
    """
    import os

    from mfsbi.flows import stack as serve_stack

    def say(message: str) -> None:
        console.print(message, highlight=False)

    try:
        stack = serve_stack.start_stack(workers or max(1, os.cpu_count() or 1), prefect_port, dask_port,
                                        dashboard_port, timeout, say=say)
    except serve_stack.ServeError as error:
        _fail(str(error), code=1)
    console.print(f"[bold]Prefect UI[/]   {stack.ui}\n[bold]Prefect API[/]  {stack.prefect_api_url}\n"
                  f"[bold]Dask[/]         {stack.dask_address}  (dashboard {stack.dashboard})\n"
                  f"[bold]work pool[/]    {serve_stack.WORK_POOL}\n"
                  f"logs in {stack.home / 'logs'}; addresses in {serve_stack.serve_file()}\n"
                  "next: `mfsbi deploy`, then `mfsbi submit mfsbi-amortized --param task=ou2 --follow`. "
                  "Ctrl-C stops everything.", highlight=False)
    raise typer.Exit(serve_stack.run_until_stopped(stack, say=say))


@app.command()
def deploy(
    schedule: Annotated[bool, typer.Option("--schedule/--no-schedule",
                                           help="add the example nightly cron (inactive) to mfsbi-amortized")] = True,
) -> None:
    """Register the deployments mfsbi-amortized, mfsbi-sequential, mfsbi-mf-abc on the work pool mfsbi-process."""
    api_url = _require_api()
    from mfsbi.flows import deployments
    from mfsbi.flows import stack as serve_stack

    try:
        registered = deployments.register_deployments(with_schedule=schedule)
    except Exception as error:  # noqa: BLE001 -- one line, exit 1
        _fail(f"could not register the deployments on {api_url}: {type(error).__name__}: {error}", code=1)
    table = Table(title=f"deployments on {api_url} (work pool {serve_stack.WORK_POOL})")
    table.add_column("deployment")
    table.add_column("id")
    for name, deployment_id in registered:
        table.add_row(name, deployment_id)
    console.print(table)


@app.command()
def submit(
    deployment: Annotated[str, typer.Argument(help="mfsbi-amortized, mfsbi-sequential, mfsbi-mf-abc or FLOW/DEPLOYMENT")],
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="a RunConfig field: KEY=VALUE (repeat)")] = None,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="wait for a final state, showing progress")] = False,
    timeout: Annotated[Optional[float], typer.Option(min=0, help="--follow: give up waiting after this many seconds")] = None,
) -> None:
    """Trigger a run of a deployment through the Prefect API (parameters validated as for `mfsbi run`)."""
    from mfsbi.flows import deployments
    from mfsbi.flows import stack as serve_stack

    full_name, short_name = deployments.deployment_full_name(deployment)
    try:
        config = deployments.build_submit_config(short_name, deployments.parse_params(param or []))
    except deployments.ParamError as error:
        _fail(str(error))
    api_url = _require_api()
    from prefect.exceptions import ObjectNotFound

    try:
        flow_run = deployments.submit_run(full_name, config)
    except ObjectNotFound:
        _fail(f"DEPLOYMENT: no deployment {full_name!r} on {api_url}; run `mfsbi deploy` first")
    except Exception as error:  # noqa: BLE001 -- one line, exit 1
        _fail(f"could not trigger {full_name}: {type(error).__name__}: {error}", code=1)
    url = f"{serve_stack.ui_url(api_url)}/runs/flow-run/{flow_run.id}"
    console.print(f"flow run {flow_run.id} ({flow_run.name})\n{url}", highlight=False)
    if config.dask_address is None:
        console.print("note: no Dask address (MFSBI_DASK_ADDRESS, serve.json): the run starts a local cluster "
                      "where the worker runs it", highlight=False)
    if not follow:
        return
    final = deployments.follow_run(flow_run.id, console, timeout=timeout)
    if final is None:
        _fail(f"the run was not finished after {timeout:.0f} s (it goes on; see {url})", code=1)
    state = final.state
    if state.type.value != deployments.FINAL_OK:
        _fail(f"the run ended {state.name}: {state.message or ''}".rstrip(": "), code=1)
    console.print(f"[bold green]{state.name}[/]", highlight=False)


@app.command()
def runs(limit: Annotated[int, typer.Option(min=1, max=200, help="how many flow runs")] = 20) -> None:
    """List recent flow runs from the Prefect API: name, state, start, duration."""
    api_url = _require_api()
    from mfsbi.flows import deployments

    try:
        rows = deployments.recent_runs(limit)
    except Exception as error:  # noqa: BLE001 -- one line, exit 1
        _fail(f"could not read the flow runs from {api_url}: {type(error).__name__}: {error}", code=1)
    table = Table(title=f"flow runs on {api_url}")
    for column in ("flow", "name", "state", "start", "duration", "id"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["flow"], row["name"], row["state"], row["start"], row["duration"], row["id"])
    console.print(table)


@app.command()
def verify(store: Annotated[str, typer.Argument(help="the store folder or URL")]) -> None:
    """Check a store's consistency without changing it: shapes, statuses, budget, attributes, lock.

    Exit code 0: consistent; 1: problems found (listed); 2: not a store.
    """
    from mfsbi.storage import StoreError, verify_store

    try:
        report = verify_store(store)
    except (StoreError, FileNotFoundError) as error:
        _fail(f"STORE: {error}")
    if report.ok:
        console.print(f"store OK: {report.tables} tables, {report.rows} rows", highlight=False)
        return
    table = Table(title=f"store {store}: {len(report)} problems ({report.tables} tables, {report.rows} rows)")
    for column in ("table", "field", "severity", "problem"):
        table.add_column(column, overflow="fold")
    for problem in report:
        table.add_row(problem.table, problem.field, problem.severity, problem.message)
    console.print(table)
    raise typer.Exit(1)


def main() -> None:
    """Entry point of the ``mfsbi`` console script."""
    quiet_prefect_environment()
    app()


if __name__ == "__main__":
    sys.exit(main())

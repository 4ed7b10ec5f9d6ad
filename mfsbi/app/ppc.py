"""``mfsbi ppc``: a posterior predictive check of a stored run at an observation.

The command makes the check's plan before anything starts: the run, the task, x_o, the posterior
draws (seeded) and the hard PPC budget, refused in one line when ``-n`` exceeds it; it prints what the
HF simulations will cost, then runs :func:`mfsbi.flows.ppc.ppc_flow` with the Prefect API and the
Dask workers ``mfsbi run`` uses, and prints the per-statistic table and the verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from mfsbi.app.console import console, fail, name_column, print_json, print_table, stdout_to_stderr
from mfsbi.app.inputs import stored_posterior_at

__all__ = ["DEFAULT_DRAWS", "ppc_command", "print_check"]

# Posterior draws by default: enough for OU2's 10 statistics to be judged at the verdict's level
# (mfsbi.inference.predictive.minimum_draws(10) = 399).
DEFAULT_DRAWS = 400


def _plan(store: str, observation: Path, num_draws: int, budget: int, run_name: str | None, seed: int,
          task: str | None, where: dict[str, Any]):
    """The check's plan (draws made), or a one-line exit on bad input."""
    from mfsbi.flows.ppc_plan import PpcPlan, draw_theta  # deferred: torch+zarr, 1.9 s at every CLI start

    prefix, summary, posterior, task_obj, x_o = stored_posterior_at(store, run_name, task, observation)
    config = summary["config"]
    chunk = int(config.get("hf_chunk_size") or 10)
    theta = draw_theta(posterior, x_o, num_draws, chunk, seed)
    return PpcPlan(
        store=store, run=prefix, task=task or config["task"], x_o=[float(v) for v in x_o],
        theta=theta.tolist(), budget=budget, seed=seed, chunk_size=chunk,
        max_failure_fraction=float(config.get("max_failure_fraction", 0.2)),
        simulation_timeout=config.get("simulation_timeout"), run_hf_table=(summary.get("hf") or {}).get("table"),
        **where,
    ), task_obj


def _check(plan) -> dict[str, Any]:  # noqa: ANN001 -- a PpcPlan
    """Runs the check's flow. Prefect is imported here, inside the CLI's services: importing it earlier
    would set up its logging before the CLI quiets it."""
    from mfsbi.flows.ppc import ppc_flow  # deferred: Prefect must be imported after the CLI quiets it (above)

    return ppc_flow(plan)


def ppc_command(run_with_services: Callable[..., Any]) -> Callable[..., None]:
    """The ``mfsbi ppc`` command, running its flow through ``run_with_services`` (the CLI's Prefect and Dask)."""

    def ppc(
        store: Annotated[str, typer.Option(help="the store a run wrote")],
        observation: Annotated[Path, typer.Option(help="x_o as a .npy file")],
        num_draws: Annotated[int, typer.Option(
            "--num-draws", "-n", min=1, max=1_000_000,
            help="posterior draws simulated at HF (and LF); the verdict needs 2 × statistics / 0.05 − 1")] = DEFAULT_DRAWS,
        budget: Annotated[Optional[int], typer.Option(
            min=1, help="hard PPC budget: HF simulations this check may hold [default: -n]")] = None,
        run_name: Annotated[Optional[str], typer.Option("--run", help="TASK/RUN inside artifacts/ (default: latest)")] = None,
        seed: Annotated[int, typer.Option(min=0, help="seed of the draws and simulations: same seed, same check")] = 0,
        task: Annotated[Optional[str], typer.Option(help="the run's task when it is your own module:attribute")] = None,
        dask_address: Annotated[Optional[str], typer.Option(help="existing Dask scheduler address")] = None,
        n_workers: Annotated[Optional[int], typer.Option(help="local Dask workers (default: one per core)")] = None,
        cluster: Annotated[Optional[str], typer.Option(help="'slurm' or FILE.yaml, as for `mfsbi run`")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's logs")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="print the check's summary as one JSON document")] = False,
    ) -> None:
        """Posterior predictive check: simulate posterior draws at HF and LF, compare with x_o.

        The draws go into a table of their own (`mfsbi status`: role ppc) under a hard HF budget, printed
        with its estimated cost before anything is spent; a rerun reuses the stored rows. Output: per
        statistic the predictive p-value and distance, a one-line verdict, a plot (docs/ppc.md).
        """
        from mfsbi.flows.ppc_plan import DrawsMismatchError, estimate  # deferred: as in _plan

        limit = num_draws if budget is None else budget
        if num_draws > limit:
            fail(f"-n: {num_draws} draws exceed the PPC budget of {limit} HF simulations (--budget); "
                 f"lower -n or raise --budget")
        where = dict(dask_address=dask_address, n_workers=n_workers, cluster=cluster)
        plan, task_obj = _plan(store, observation, num_draws, limit, run_name, seed, task, where)
        try:
            line = estimate(plan, task_obj).line(plan)
        except DrawsMismatchError as error:
            fail(str(error))
        if as_json:
            with stdout_to_stderr():
                console.print(line, highlight=False, soft_wrap=True)
                summary = run_with_services(plan, verbose, _check)
            print_json(summary)
            return
        console.print(line, highlight=False, soft_wrap=True)
        print_check(store, run_with_services(plan, verbose, _check))

    return ppc


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def print_check(store: str, summary: dict[str, Any]) -> None:
    """The check's table (per statistic: x_o, HF and LF predictive numbers), then the verdict line."""
    table = Table(title=f"{summary['run']} · posterior predictive check · {summary['num_draws']} draws · "
                        f"seed {summary['seed']}")
    name_column(table, "statistic")
    for column in ("x_o", "HF median", "HF interval", "distance", "p", "LF median", "LF p"):
        table.add_column(column, justify="right")
    for s in summary["statistics"]:
        low, high = s["interval"]
        mark = "[bold red]" if s["flagged"] else ""
        table.add_row(f"{mark}{s['name']}", _number(s["x_o"]), _number(s["median"]),
                      f"{_number(low)} – {_number(high)}", _number(s["distance"]), f"{mark}{_number(s['p_value'])}",
                      _number(s["lf"]["median"]), _number(s["lf"]["p_value"]))
    print_table(table)
    budget, now = summary["budget"], summary["simulated_now"]
    seconds = summary["simulator_seconds_now"]
    console.print(f"simulated now: {now['hf']} HF ({seconds['hf']:.3g} s), {now['lf']} LF ({seconds['lf']:.3g} s); "
                  f"PPC budget used / total {budget['reserved']} / {budget['total']}; tables {summary['tables']['hf']}, "
                  f"{summary['tables']['lf']}", highlight=False, soft_wrap=True)
    plausible = summary.get("plausible_fraction")
    if plausible:
        low, high = plausible["range"]
        console.print(f"plausible draws (every rate in {low:g}–{high:g} Hz): HF {_number(plausible['hf'])}, "
                      f"LF {_number(plausible['lf'])}", highlight=False, soft_wrap=True)
    console.print(f"plot: {store.rstrip('/')}/{summary['plot']}", highlight=False, soft_wrap=True)
    console.print(f"[bold]verdict:[/bold] {summary['verdict']}", highlight=False, soft_wrap=True)

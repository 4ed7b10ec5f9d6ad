"""``mfsbi infer``: every new observation of a folder through the latest amortized posterior, from the CLI.

What the ``mfsbi-infer`` deployment runs each night (:func:`mfsbi.app.nightly.infer_flow`), with the
CLI's Prefect API and Dask workers. The plan (the run, the new files) is made first, so that bad input
ends in one line before anything starts, and a pass with nothing new starts nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from mfsbi.app.console import console, fail, name_column, print_json, print_table, stdout_to_stderr
from mfsbi.app.infer_report import row_cells
from mfsbi.app.inputs import UsageError

__all__ = ["DEFAULT_PPC_SIMS", "infer_command", "print_report"]

# Posterior draws a nightly check simulates per observation: cheap, and enough to see a gross misfit's
# size (distance) in the plot; its verdict stays "inconclusive" below the task's minimum (docs/infer.md).
DEFAULT_PPC_SIMS = 20


def _flow(config) -> dict:  # noqa: ANN001 -- an InferConfig
    """The pass as a flow run (it plans again: the folder may have changed). Prefect is imported here,
    inside the CLI's services: importing it earlier would set up its logging before the CLI quiets it."""
    from mfsbi.app.nightly import infer_flow  # deferred: Prefect must be imported after the CLI quiets it (above)

    return infer_flow(config)


def infer_command(run_with_services: Callable[..., Any]) -> Callable[..., None]:
    """The ``mfsbi infer`` command, running its flow through ``run_with_services`` (the CLI's Prefect and Dask)."""

    def infer(
        observations: Annotated[Path, typer.Option(help="folder of observations: .npy statistics or .nwb recordings")],
        store: Annotated[str, typer.Option(help="the store a run wrote")] = "mfsbi-store",
        run_name: Annotated[Optional[str], typer.Option(
            "--run", help="TASK/RUN inside artifacts/ (default: the latest run, as `mfsbi sample`)")] = None,
        num_samples: Annotated[int, typer.Option("--num-samples", "-n", min=1, max=1_000_000,
                                                 help="posterior samples per observation")] = 1000,
        ppc_sims: Annotated[int, typer.Option(
            min=0, max=100_000, help="posterior draws each observation's predictive check simulates at HF and LF "
                                     "(its own budget, outside the run's); 0: no check")] = DEFAULT_PPC_SIMS,
        seed: Annotated[int, typer.Option(min=0, help="seed of the samples and the check's draws")] = 0,
        series: Annotated[Optional[str], typer.Option(
            help="the current-clamp series of the .nwb files (default: each file's only one)")] = None,
        task: Annotated[Optional[str], typer.Option(help="the run's task when it is your own module:attribute")] = None,
        dask_address: Annotated[Optional[str], typer.Option(help="existing Dask scheduler address")] = None,
        n_workers: Annotated[Optional[int], typer.Option(help="local Dask workers (default: one per core)")] = None,
        cluster: Annotated[Optional[str], typer.Option(help="'slurm' or FILE.yaml, as for `mfsbi run`")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's logs")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="print the pass's report as one JSON document")] = False,
    ) -> None:
        """Infer each new observation of a folder with the latest amortized posterior (no training).

        Per observation: posterior samples, a predictive check at a small budget, and the result in the
        store (artifacts/inference/<observation>/<run>/). An observation already inferred with the run is
        skipped: a second pass does nothing new. Exit 1 if any file failed (its row says why).
        """
        from mfsbi.app.infer_plan import InferConfig, plan_inference  # deferred: 8 ms (-X importtime) at every CLI start

        # Absolute: the report and its Prefect artifact name the store the same way from any folder.
        config = InferConfig(observations=os.path.abspath(observations),
                             store=store if "://" in store else os.path.abspath(store), run=run_name, task=task,
                             num_samples=num_samples, ppc_sims=ppc_sims, seed=seed, series=series,
                             dask_address=dask_address, n_workers=n_workers, cluster=cluster)
        try:
            plan = plan_inference(config)
        except UsageError as error:
            fail(str(error))
        line = (f"infer: {len(plan.new)} new, {len(plan.done)} inferred before with {plan.run}, "
                f"{len(plan.unreadable)} unreadable; predictive check: "
                + (f"{ppc_sims} HF and {ppc_sims} LF simulations per new observation, outside the run's budget"
                   if ppc_sims else "off"))
        if as_json:
            with stdout_to_stderr():
                console.print(line, highlight=False, soft_wrap=True)
                report = _report(config, plan, verbose, run_with_services)
            print_json(report)
        else:
            console.print(line, highlight=False, soft_wrap=True)
            report = _report(config, plan, verbose, run_with_services)
            print_report(report)
        if report["counts"]["failed"]:
            raise typer.Exit(1)

    return infer


def _report(config, plan, verbose: bool, run_with_services) -> dict:  # noqa: ANN001
    """The pass's report: through the services when a file is new or failed, else from the store alone."""
    if plan.new or plan.unreadable:
        return run_with_services(config, verbose, _flow)
    from mfsbi.app.nightly import run_inference  # deferred: nightly imports Prefect (1.2 s) and zarr; as in _flow

    # Nothing to sample, simulate or report: no Prefect API, no Dask, nothing written.
    return run_inference(config, plan)


def print_report(report: dict) -> None:
    """The pass's table (observation, run, posterior mean ± sd, ppc verdict), then where its report is."""
    counts = report["counts"]
    table = Table(title=f"mfsbi infer · {report['night']} · {counts['new']} new, {counts['done']} done before, "
                        f"{counts['failed']} failed")
    table.add_column("status")
    name_column(table, "observation")
    name_column(table, "run")
    table.add_column("posterior mean ± sd", overflow="fold")
    table.add_column("ppc", overflow="fold")
    for row in report["observations"]:
        mark = {"new": "[green]", "failed": "[bold red]"}.get(row["status"], "")
        table.add_row(f"{mark}{row['status']}", *row_cells(row))
    print_table(table)
    if report["report"]:
        console.print(f"report: {report['store'].rstrip('/')}/{report['report']}", highlight=False, soft_wrap=True)
    else:
        console.print("nothing new: every observation was inferred before with this run; nothing written",
                      highlight=False)

"""The ``mfsbi`` command line: run, sample, tasks, status, verify, and the service commands."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.table import Table

from mfsbi import __version__
from mfsbi.app import listings, service_cli
from mfsbi.app.infer import infer_command
from mfsbi.app.observe import observe
from mfsbi.app.ppc import ppc_command
from mfsbi.app.console import Choices, OneLineCommand, console, fail, name_column, print_json, print_table
from mfsbi.app.console import stdout_to_stderr
from mfsbi.app.inputs import UsageError, build_config, load_observation, parse_costs, parse_sims, stored_posterior_at
from mfsbi.app.prefect_server import ServiceError, prefect_api, quiet_prefect_environment
from mfsbi.app.report import print_summary
from mfsbi.app.service_cli import print_store_runs
from mfsbi.flows.methods import FAMILIES, available_methods, methods_of
from mfsbi.flows.options import Device

__all__ = ["UsageError", "app", "build_config", "load_observation", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multifidelity simulation-based inference, orchestrated by Prefect and Dask.")


def _methods_help() -> str:
    """The registered methods, by family (a method of a family outside FAMILIES last)."""
    groups = [f"{', '.join(methods_of(family))} ({family.name})" for family in FAMILIES if methods_of(family)]
    listed = {name for family in FAMILIES for name in methods_of(family)}
    others = [name for name in available_methods() if name not in listed]
    return "one of " + "; ".join(groups + ([", ".join(others)] if others else []))


# Read from the registry when the command line is parsed: a method registered after import counts.
METHODS = Choices(available_methods, describe=_methods_help)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mfsbi {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """The options of ``mfsbi`` itself, before a command (the app's help is the Typer's)."""


@app.command(cls=OneLineCommand)
def run(
    ctx: typer.Context,
    config_file: Annotated[Optional[Path], typer.Option(
        "--config", help="a .toml, .json or .yaml file of RunConfig fields; options given here win")] = None,
    task: Annotated[str, typer.Option(help="task name (see `mfsbi tasks`) or package.module:attribute")] = "ou2",
    method: Annotated[str, typer.Option(callback=METHODS.check, help=_methods_help())] = "mf-npe",
    lf_sims: Annotated[int, typer.Option(help="low-fidelity simulations (mf-npe)")] = 10_000,
    hf_sims: Annotated[int, typer.Option(help="high-fidelity simulation budget")] = 100,
    sims: Annotated[Optional[str], typer.Option(
        help="budgets along the task's chain of fidelities, e.g. lf=100000,mf=2000,hf=100 (see `mfsbi tasks`): "
             "MF methods pretrain on LF and fine-tune through each level in turn")] = None,
    compute_budget: Annotated[Optional[str], typer.Option(
        help="mf-npe: seconds of compute (simulation + training), e.g. 2h or 90m, instead of counts: start at the "
             "--sims counts, grow the fidelity with the most expected gain per second (fitted learning curves)")] = None,
    simulation_cost: Annotated[Optional[str], typer.Option(
        help="with --compute-budget: declared seconds per simulation, e.g. hf=60 (plan as if it were that slow)")] = None,
    store: Annotated[str, typer.Option(help="zarr store: a folder or a zarr store URL")] = "mfsbi-store",
    seed: Annotated[int, typer.Option(help="run seed: same seed, same simulations and numbers")] = 0,
    observation: Annotated[Optional[Path], typer.Option(help="x_o as a .npy file")] = None,
    dask_address: Annotated[Optional[str], typer.Option(help="existing Dask scheduler address")] = None,
    n_workers: Annotated[Optional[int], typer.Option(help="local Dask workers (default: one per core)")] = None,
    cluster: Annotated[Optional[str], typer.Option(
        help="'slurm' or FILE.yaml: Dask workers as SLURM jobs, scaled with the work (mfsbi/runtime/slurm.yaml)")] = None,
    device: Annotated[Device, typer.Option(help="where to train (auto: cuda when visible)")] = "auto",
    num_test_observations: Annotated[Optional[int], typer.Option(
        help="held-out HF observations for C2ST, outside the budget [default: 5 with an exact reference, else 0]")] = None,
    num_nltp_pairs: Annotated[Optional[int], typer.Option(
        "--test-pairs", "--num-nltp-pairs",
        help="held-out HF test pairs for NLTP and calibration, simulated outside the HF budget (their estimated "
             "cost is printed first) [default: 100 with an exact reference, else 0: out-of-fold only]")] = None,
    max_num_epochs: Annotated[int, typer.Option(help="cap on training epochs (early stopping first)")] = 2**31 - 1,
    rounds: Annotated[int, typer.Option(help="sequential methods: rounds R")] = 5,
    observation_index: Annotated[int, typer.Option(help="sequential methods without --observation: held-out test observation")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="continue a sequential run already in the store")] = False,
    truncation_quantile: Annotated[float, typer.Option(help="ε of the truncated region (TSNPE)")] = 1e-6,
    ensemble: Annotated[int, typer.Option(help="NPE / MF-NPE: train N estimators (seeds differ) and use their "
                                               "mixture, sbi's EnsemblePosterior; 1: one estimator")] = 1,
    ensemble_size: Annotated[int, typer.Option(help="A-MF-TSNPE ensemble members E")] = 5,
    transfer_guard: Annotated[str, typer.Option(help="MF methods: choose inside the HF budget. MF-NPE cross-validates "
                                                     "its candidates on the budget's rows; stack (keep their mixture "
                                                     "weighted by stacking), select (keep one: the fine-tuning unless "
                                                     "another is clearly better), report (keep the fine-tuning) or "
                                                     "off (fine-tune once). Sequential: from scratch against the chain "
                                                     "on the last round's new rows")] = "stack",
    scratch_check: Annotated[str, typer.Option(help="sequential MF: after the last round, train from scratch on "
                                                   "the run's HF rows and compare at x_o; correct (keep from scratch "
                                                   "when the marginals disagree), mix (keep the equal mixture of "
                                                   "both), report (keep the chain) or off")
                             ] = "report",
    acquisition_fraction: Annotated[float, typer.Option(help="A-MF-TSNPE share B of a round chosen by acquisition")] = 0.2,
    pool_size: Annotated[Optional[int], typer.Option(help="A-MF-TSNPE acquisition pool (default by budget)")] = None,
    max_failure_fraction: Annotated[float, typer.Option(help="stop the run when more simulations than this fraction fail")] = 0.2,
    simulation_timeout: Annotated[Optional[float], typer.Option(help="seconds one simulation may take (hangs are killed, rows failed)")] = None,
    training_memory: Annotated[Optional[str], typer.Option(
        help="training data one training may hold, e.g. 512MiB or 4GiB; more streams from the store "
             "(default: half the worker's memory)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's logs")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print the run's summary as one JSON document on stdout (progress, notes: stderr)")] = False,
) -> None:
    """Run a method end to end: simulate, store, train, evaluate.

    Methods: amortised (npe, mf-npe), sequential at one observation (tsnpe, mf-tsnpe, a-mf-tsnpe),
    and multifidelity rejection ABC (mf-abc); `--method` lists every registered one.
    """
    options = dict(task=task, method=method, lf_sims=lf_sims, hf_sims=hf_sims, store=store,
                   seed=seed, observation=observation, dask_address=dask_address,
                   cluster=cluster, n_workers=n_workers, device=device, num_test_observations=num_test_observations,
                   num_nltp_pairs=num_nltp_pairs, max_num_epochs=max_num_epochs, rounds=rounds,
                   observation_index=observation_index, resume=resume,
                   truncation_quantile=truncation_quantile, ensemble=ensemble, ensemble_size=ensemble_size,
                   transfer_guard=transfer_guard, scratch_check=scratch_check,
                   acquisition_fraction=acquisition_fraction, pool_size=pool_size,
                   max_failure_fraction=max_failure_fraction, simulation_timeout=simulation_timeout,
                   training_memory=training_memory, compute_budget=compute_budget)
    # Given on the command line (or by environment): these override --config; defaults do not.
    explicit = {name for name in options
                if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}
    try:
        if sims is not None:
            chain = parse_sims(sims)
            both = sorted(name for name in chain if name in explicit)
            if both:
                raise UsageError(f"--sims: sets {both[0].replace('_sims', '').upper()} too, as does "
                                 f"--{both[0].replace('_', '-')}; give it once")
            options.update(chain)
            explicit |= set(chain)
        if simulation_cost is not None:
            options["simulation_cost"] = parse_costs(simulation_cost)
            explicit.add("simulation_cost")
        config = build_config(config_file=config_file, explicit=explicit, **options)
    except UsageError as error:
        fail(str(error))
    if not as_json:
        print_summary(_run_with_services(config, verbose))
        return
    with stdout_to_stderr():  # the progress, the notes, what workers print
        summary = _run_with_services(config, verbose)
    print_json(summary.to_dict())


def _run_with_services(config, verbose: bool, flow_function=None, *arguments):
    """Runs a flow (default: the config's method) with the Prefect API and its progress shown; exits 1 on failure."""
    # deferred: progress_display brings torch (1.7 s) through runtime.executor; only a run needs it
    from mfsbi.app.progress_display import progress_display, progress_interval

    interval = progress_interval()  # a bad value ends the command here, before the run's try
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    try:
        with prefect_api() as api_url:
            console.print(f"Prefect API: {api_url}", highlight=False)
            flow_function = flow_function or config.method_spec.family.load_flow()

            if not verbose:
                logging.getLogger("distributed").setLevel(logging.ERROR)
                # A full disk ends the run with its own line (below): not also Prefect's traceback of it.
                for name in ("prefect.flow_runs", "prefect.task_runs"):
                    logging.getLogger(name).addFilter(_not_a_full_disk)
            with progress_display(console, interval, getattr(config, "max_num_epochs", None)):
                return flow_function(config, *arguments)
    except ServiceError as error:
        fail(str(error), code=1)
    except Exception as error:  # noqa: BLE001 -- a failed run ends with its reason on one line, exit 1
        from mfsbi.storage import StoreFullError  # deferred: zarr (mfsbi.storage) costs 0.4 s at every CLI start

        # A full disk names the store, the space it needed and the fix; its type adds nothing.
        fail(str(error) if isinstance(error, StoreFullError) else f"the run failed: {type(error).__name__}: {error}",
             code=1)


def _not_a_full_disk(record) -> bool:  # noqa: ANN001 -- a logging.LogRecord
    """A logging filter: drops Prefect's records of a StoreFullError (the CLI prints it as one line)."""
    from mfsbi.storage import StoreFullError  # deferred: zarr (mfsbi.storage) costs 0.4 s at every CLI start

    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, StoreFullError) and "StoreFullError" not in record.getMessage()


@app.command("check-transfer", cls=OneLineCommand)
def check_transfer(
    task: Annotated[str, typer.Option(help="task name (see `mfsbi tasks`) or package.module:attribute")] = "ou2",
    lf_sims: Annotated[int, typer.Option(help="low-fidelity simulations to pretrain on (as the MF-NPE run will)")] = 10_000,
    pilot_hf: Annotated[int, typer.Option(help="HF pilot simulations: the first of the HF budget, reused by "
                                               "`mfsbi run --method mf-npe` with the same store, task and seed")] = 40,
    store: Annotated[str, typer.Option(help="zarr store: a folder or a zarr store URL")] = "mfsbi-store",
    seed: Annotated[int, typer.Option(help="run seed: the MF-NPE run's")] = 0,
    dask_address: Annotated[Optional[str], typer.Option(help="existing Dask scheduler address")] = None,
    n_workers: Annotated[Optional[int], typer.Option(help="local Dask workers (default: one per core)")] = None,
    cluster: Annotated[Optional[str], typer.Option(help="'slurm' or FILE.yaml, as for `mfsbi run`")] = None,
    max_num_epochs: Annotated[int, typer.Option(help="cap on training epochs (early stopping first)")] = 2**31 - 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's logs")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON document on stdout")] = False,
) -> None:
    """Before the HF budget goes: will the LF model help? A pilot of paired simulations decides.

    Verdict helps / no-evidence / harmful from how well the LF-pretrained estimator tells the
    pilots' θ apart on their HF outputs, and fine-tuned vs from-scratch estimators cross-validated
    on the pilot (docs/calibration.md says how it was validated).
    """
    # deferred: the flow brings Prefect, which must be imported after the CLI quiets it, and torch+sbi (several s)
    from mfsbi.flows.transfer_check import transfer_check_flow

    if pilot_hf < 10:
        fail(f"--pilot-hf: {pilot_hf} is too few for a 10-fold check; give at least 10")
    try:
        config = build_config(task=task, method="mf-npe", lf_sims=lf_sims, hf_sims=pilot_hf, store=store, seed=seed,
                              dask_address=dask_address, n_workers=n_workers, cluster=cluster,
                              max_num_epochs=max_num_epochs, num_test_observations=0, num_nltp_pairs=0)
    except UsageError as error:
        fail(str(error))
    if as_json:
        with stdout_to_stderr():
            report = _run_with_services(config, verbose, transfer_check_flow, pilot_hf)
        print_json(report)
        return
    report = _run_with_services(config, verbose, transfer_check_flow, pilot_hf)
    table = Table(title=f"{report['task']} · transfer check · LF {lf_sims} · HF pilot {pilot_hf}")
    table.add_column("quantity")
    name_column(table, "value", justify="right")
    table.add_row("verdict", f"[bold]{report['verdict']}[/bold]")
    table.add_row("mean log q(θ|x_HF) on the pilot: prior", f"{report['log_prob_prior']:.3f}")
    table.add_row("  LF-pretrained as it is", f"{report['log_prob_pretrained']:.3f}")
    table.add_row("  LF-pretrained, x z-scoring refit on the pilot", f"{report['log_prob_restandardized']:.3f}")
    table.add_row(f"  from scratch ({report['folds']}-fold cross-validated)", f"{report['log_prob_scratch']:.3f}")
    table.add_row(f"  fine-tuned ({report['folds']}-fold cross-validated)", f"{report['log_prob_fine_tuned']:.3f}")
    table.add_row("ranking AUC of the pilot's θ (90 % interval; permutation p)",
                  f"{report['ranking_auc']:.3f} ({report['ranking_auc_lower']:.3f}–{report['ranking_auc_upper']:.3f}; "
                  f"p={report['ranking_pvalue']:.3g})")
    table.add_row("fine-tuned − scratch: median, Wilcoxon p",
                  f"{report['median_difference']:+.3f}, p={report['wilcoxon_pvalue']:.3g}")
    correlations = [c for c in report["output_correlation"] if c == c]
    table.add_row("corr(LF, HF) per output at the same θ: min / median / max",
                  " / ".join(f"{v:.2f}" for v in np.percentile(correlations, [0, 50, 100])) if correlations else "-")
    table.add_row("HF budget reserved / total", f"{report['hf_budget']['reserved']} / {report['hf_budget']['total']}")
    table.add_row("report", report["report"])
    print_table(table)
    console.print(report["reason"], highlight=False)
    if report["verdict"] == "no-evidence":
        console.print("no evidence either way is not evidence of no transfer: a larger --pilot-hf narrows the "
                      "ranking's interval and spends no extra HF (the run reuses the pilot; docs/calibration.md).",
                      highlight=False)


@app.command()
def sample(
    store: Annotated[str, typer.Option(help="the store a run wrote")],
    observation: Annotated[Path, typer.Option(help="x_o as a .npy file")],
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", min=1, max=10_000_000)] = 1000,
    out: Annotated[Path, typer.Option(help="where to write the samples (.npy)")] = Path("samples.npy"),
    run_name: Annotated[Optional[str], typer.Option("--run", help="TASK/RUN inside artifacts/ (default: latest)")] = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    task: Annotated[Optional[str], typer.Option(help="the run's task when it is your own module:attribute "
                                                     "(never imported because a store names it)")] = None,
) -> None:
    """Draw posterior samples at an observation from a stored posterior (see `mfsbi.load_posterior`)."""
    from mfsbi.flows.evaluation import sample_posterior  # deferred: torch+sbi cost 3.6 s at every CLI start

    prefix, _, posterior, _, x_o = stored_posterior_at(store, run_name, task, observation)
    if out.suffix != ".npy":
        fail(f"--out: {str(out)!r} must end in .npy")
    samples = sample_posterior(posterior, x_o, num_samples, seed)
    np.save(out, samples, allow_pickle=False)
    console.print(f"wrote {num_samples} samples of {prefix} to {out}")


app.command(cls=OneLineCommand)(observe)
# Through the module's _run_with_services at call time (tests replace it).
app.command("ppc", cls=OneLineCommand)(ppc_command(lambda *arguments: _run_with_services(*arguments)))
app.command("infer", cls=OneLineCommand)(infer_command(lambda *arguments: _run_with_services(*arguments)))


@app.command()
def tasks(
    as_json: Annotated[bool, typer.Option("--json", help="print the tasks as one JSON document on stdout")] = False,
) -> None:
    """List the available tasks."""
    records = listings.task_records()
    if as_json:
        print_json(records)
    else:
        listings.print_tasks(records)


@app.command()
def status(
    store: Annotated[str, typer.Argument(help="the store folder or URL")],
    as_json: Annotated[bool, typer.Option(
        "--json", help="print the tables and flow runs (null: no API) as one JSON document on stdout")] = False,
) -> None:
    """Show what a store holds: rows by status, HF budget, runs."""
    from mfsbi.storage import SimulationStore, StoreError  # deferred: zarr (mfsbi.storage) costs 0.4 s at every CLI start

    try:
        handle = SimulationStore(store, mode="r")
    except (StoreError, FileNotFoundError) as error:
        fail(f"STORE: {error}")
    rows = listings.store_tables(handle)
    if as_json:
        print_json({"store": store, "tables": rows, "flow_runs": print_store_runs(store, show=False)})
        return
    listings.print_store_tables(store, rows)
    print_store_runs(store)


# serve, deploy, submit, runs: mfsbi/app/service_cli.py (registered here, in the order `--help` lists them).
for _command in (service_cli.serve, service_cli.deploy, service_cli.submit, service_cli.runs):
    app.command()(_command)


@app.command()
def verify(
    store: Annotated[str, typer.Argument(help="the store folder or URL")],
    repair: Annotated[bool, typer.Option(
        "--repair", help="make the rows of corrupt x/status chunks pending: the same `mfsbi run` simulates "
                         "them again with their stored θ and seeds (no new HF budget)")] = False,
) -> None:
    """Check a store's consistency without changing it: shapes, statuses, budget, attributes, lock,
    and that every chunk decodes (its checksum).

    Exit code 0: consistent (or every corrupt chunk repaired); 1: problems found (listed); 2: not a store.
    """
    from mfsbi.storage import StoreError, verify_store  # deferred: zarr (mfsbi.storage) costs 0.4 s at every CLI start

    try:
        report = _repair(store) if repair else verify_store(store)
    except (StoreError, FileNotFoundError) as error:
        fail(f"STORE: {error}")
    if report.without_checksums:
        console.print(f"note: {len(report.without_checksums)} tables were written before chunk checksums "
                      f"({', '.join(report.without_checksums)}): a corrupt chunk there is found only if it "
                      "fails to decompress", highlight=False)
    if report.ok:
        console.print(f"store OK: {report.tables} tables, {report.rows} rows", highlight=False)
        return
    table = Table(title=f"store {store}: {len(report)} problems ({report.tables} tables, {report.rows} rows)")
    name_column(table, "table")
    name_column(table, "field")
    for column in ("severity", "problem"):
        table.add_column(column, overflow="fold")
    for problem in report:
        table.add_row(problem.table, problem.field, problem.severity, problem.message)
    print_table(table)
    raise typer.Exit(1)


def _repair(store: str):
    """Repairs the corrupt chunks, prints one line per chunk, and returns the store's report after."""
    from mfsbi.storage import repair_store, verify_store  # deferred: zarr (mfsbi.storage) costs 0.4 s at every CLI start

    done = repair_store(store)
    for chunk in done.repaired:
        cost = "" if chunk.seconds is None else f", about {chunk.seconds:.3g} s of simulator time again"
        budget = "; HF budget unchanged: the rows stay reserved" if chunk.budgeted else ""
        console.print(f"repaired {chunk.table} chunk {chunk.chunk} (rows {chunk.rows[0]}..{chunk.rows[1] - 1}): "
                      f"{chunk.num_rows} rows pending again, simulated by the next `mfsbi run` with their "
                      f"stored θ and seeds{cost}{budget}", highlight=False)
    if not done.repaired and not done.not_repaired:
        console.print("no corrupt chunk to repair", highlight=False)
    return verify_store(store)


def main() -> None:
    """Entry point of the ``mfsbi`` console script."""
    quiet_prefect_environment()
    app()


if __name__ == "__main__":
    sys.exit(main())

"""Checks run before anything is written: a bad store is refused while it is still untouched."""

from __future__ import annotations

from pathlib import Path

from mfsbi.flows.config import RunConfig
from mfsbi.flows.methods import ABC, AMORTIZED, SEQUENTIAL, available_methods, get_method
from mfsbi.flows.plan import RunPlan
from mfsbi.runtime.simulation import provenance
from mfsbi.simulators import Task
from mfsbi.storage import SimulationStore, StoreError

__all__ = ["PreflightError", "check_levels", "check_method", "check_store"]


class PreflightError(ValueError):
    """The store cannot take this run; the message names the option and the fix."""


def check_levels(config: RunConfig, task: Task) -> None:
    """Refuses intermediate-level budgets the task or the method cannot use (``--sims``)."""
    if not config.level_sims:
        return
    unknown = [level for level in config.level_sims if level not in task.fidelities[1:-1]]
    if unknown:
        chain = ", ".join(task.fidelities)
        raise PreflightError(f"--level-sims: task {task.name!r} has no intermediate fidelity {unknown[0]!r} "
                             f"(its chain: {chain}); give lf, hf and its intermediate levels only")
    method = config.method_spec
    if not method.uses_lf or method.family is ABC:
        chained = [name for name in available_methods()
                   if get_method(name).uses_lf and get_method(name).family is not ABC]
        raise PreflightError(f"--level-sims: {config.method} does not fine-tune through fidelities; intermediate "
                             f"levels need one of {', '.join(chained)} (or leave them out)")


def check_method(config: RunConfig, task: Task) -> None:
    """Refuses settings the method cannot run: its own check (:attr:`~mfsbi.flows.methods.Method.check`),
    and a compute budget given to a method that takes counts."""
    method = config.method_spec
    if method.check is not None:
        try:
            method.check(config, task)
        except ValueError as error:  # the method's one line, as every other preflight refusal
            raise PreflightError(str(error)) from None
    if config.compute_budget is not None and "compute_budget" not in method.option_names:
        raise PreflightError(f"--compute-budget: {config.method} takes counts (--sims); a compute budget is planned "
                             "for mf-npe")


def check_store(config: RunConfig, task: Task) -> None:
    """Refuses a store that is not an mfsbi store, or holds tables made with other settings.

    Opens the store read-only: a store that does not exist yet is fine and is not created here.
    """
    run = RunPlan.of(config, task)
    check_levels(config, task)
    check_method(config, task)
    if run.method.family is SEQUENTIAL and config.hf_sims < config.rounds:
        raise PreflightError(f"--hf-sims: {config.hf_sims} cannot fill {config.rounds} rounds; use --hf-sims >= --rounds")

    local = Path(config.store)
    if "://" not in config.store and (not local.exists() or (local.is_dir() and not any(local.iterdir()))):
        return  # nothing there yet (an empty folder made for the run is fine): the run creates the store
    try:
        store = SimulationStore(config.store, mode="r")
    except (StoreError, FileNotFoundError) as error:
        raise PreflightError(f"--store: {error}") from None
    for planned in run.planned_tables():
        table, fidelity, chunk_size, seed = planned.table, planned.fidelity, planned.chunk_size, planned.seed
        try:
            exists = store.check_table(
                table, fidelity, theta_dim=task.theta_dim, x_dim=task.x_dim, chunk_size=chunk_size,
                provenance=provenance(task, fidelity, config.simulation_hash(fidelity, chunk_size, task.version, seed)),
            )
        except StoreError as error:
            raise PreflightError(
                f"--store: {config.store!r} cannot continue this run ({error}); "
                "use another --store, or the --seed, --task and chunk sizes it was made with"
            ) from None
        own_run = run.method.family is not AMORTIZED and table == run.own_table
        if own_run and exists and store.table(table, fidelity).num_rows and not config.resume:
            raise PreflightError(
                f"--resume: {config.store!r} already holds rounds of {config.run_name}; "
                "pass --resume to continue it, or use another --store or --seed"
            )

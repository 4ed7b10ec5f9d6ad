"""Checks run before anything is written: a bad store is refused while it is still untouched."""

from __future__ import annotations

from pathlib import Path

from mfsbi.flows.config import RunConfig
from mfsbi.flows.methods import AMORTIZED, SEQUENTIAL
from mfsbi.flows.plan import RunPlan
from mfsbi.runtime.simulation import provenance
from mfsbi.simulators import Task
from mfsbi.storage import SimulationStore, StoreError

__all__ = ["PreflightError", "check_store"]


class PreflightError(ValueError):
    """The store cannot take this run; the message names the option and the fix."""


def check_store(config: RunConfig, task: Task) -> None:
    """Refuses a store that is not an mfsbi store, or holds tables made with other settings.

    Opens the store read-only: a store that does not exist yet is fine and is not created here.
    """
    run = RunPlan.of(config, task)
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

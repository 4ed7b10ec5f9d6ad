"""Checks run before anything is written: a bad store is refused while it is still untouched."""

from __future__ import annotations

from pathlib import Path

from mfsbi.flows.config import RunConfig
from mfsbi.simulators import Task
from mfsbi.storage import SimulationStore, StoreError

__all__ = ["PreflightError", "check_store", "planned_tables"]


class PreflightError(ValueError):
    """The store cannot take this run; the message names the option and the fix."""


def planned_tables(config: RunConfig, task: Task) -> list[tuple[str, str, int, int]]:
    """The tables a run writes, as ``(table, fidelity, chunk_size, seed)``."""
    from mfsbi.flows.config import AMORTIZED

    tables = []
    if config.method in AMORTIZED:
        tables.append((task.name, "hf", config.chunk_rows("hf", task), config.seed))
    else:
        tables.append((f"{task.name}.{config.run_name}", "hf", config.chunk_rows("hf", task), config.seed))
    if config.uses_lf:
        tables.append((task.name, "lf", config.chunk_rows("lf", task), config.seed))
    if max(config.num_test_observations, config.num_nltp_pairs) or config.observation is None:
        tables.append((f"{task.name}-test", "hf", config.chunk_rows("hf", task), config.test_seed))
    return tables


def check_store(config: RunConfig, task: Task) -> None:
    """Refuses a store that is not an mfsbi store, or holds tables made with other settings.

    Opens the store read-only: a store that does not exist yet is fine and is not created here.
    """
    from mfsbi.flows.config import AMORTIZED
    from mfsbi.flows.simulation import provenance

    if config.method in ("tsnpe", "mf-tsnpe", "a-mf-tsnpe") and config.hf_sims < config.rounds:
        raise PreflightError(f"--hf-sims: {config.hf_sims} cannot fill {config.rounds} rounds; use --hf-sims >= --rounds")

    local = Path(config.store)
    if "://" not in config.store and (not local.exists() or (local.is_dir() and not any(local.iterdir()))):
        return  # nothing there yet (an empty folder made for the run is fine): the run creates the store
    try:
        store = SimulationStore(config.store, mode="r")
    except (StoreError, FileNotFoundError) as error:
        raise PreflightError(f"--store: {error}") from None
    for table, fidelity, chunk_size, seed in planned_tables(config, task):
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
        own_run = config.method not in AMORTIZED and table != task.name and not table.endswith("-test")
        if own_run and exists and store.table(table, fidelity).num_rows and not config.resume:
            raise PreflightError(
                f"--resume: {config.store!r} already holds rounds of {config.run_name}; "
                "pass --resume to continue it, or use another --store or --seed"
            )

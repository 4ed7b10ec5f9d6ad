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
    tables = [(task.name, "hf", config.hf_chunk_size, config.seed)]
    if config.method == "mf-npe":
        tables.append((task.name, "lf", config.lf_chunk_size, config.seed))
    if max(config.num_test_observations, config.num_nltp_pairs):
        tables.append((f"{task.name}-test", "hf", config.hf_chunk_size, config.test_seed))
    return tables


def check_store(config: RunConfig, task: Task) -> None:
    """Refuses a store that is not an mfsbi store, or holds tables made with other settings.

    Opens the store read-only: a store that does not exist yet is fine and is not created here.
    """
    from mfsbi.flows.simulation import provenance

    local = Path(config.store)
    if "://" not in config.store and not local.exists():
        return
    try:
        store = SimulationStore(config.store, mode="r")
    except (StoreError, FileNotFoundError) as error:
        raise PreflightError(f"--store: {error}") from None
    for table, fidelity, chunk_size, seed in planned_tables(config, task):
        try:
            store.check_table(
                table, fidelity, theta_dim=task.theta_dim, x_dim=task.x_dim, chunk_size=chunk_size,
                provenance=provenance(task, fidelity, config.simulation_hash(fidelity, chunk_size, task.version, seed)),
            )
        except StoreError as error:
            raise PreflightError(
                f"--store: {config.store!r} cannot continue this run ({error}); "
                "use another --store, or the --seed, --task and chunk sizes it was made with"
            ) from None

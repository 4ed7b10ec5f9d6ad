"""A toy table for the store tests: a deterministic stand-in simulator and a store holding its table."""

from __future__ import annotations

import numpy as np

from mfsbi.storage import SimulationStore, SimulationTable

__all__ = ["PROVENANCE", "make", "run_all", "toy"]

PROVENANCE = {"simulator": "toy.hf", "simulator_version": "1.0", "config_hash": "abc123"}


def toy(theta: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic stand-in simulator, (n, 3) -> (n, 4)."""

    return np.concatenate([2 * theta, theta.sum(axis=1, keepdims=True) + seed], axis=1)


def make(tmp_path, fidelity="lf", chunk_size=10, **kwargs) -> tuple[SimulationStore, SimulationTable]:
    store = SimulationStore(tmp_path / "store")
    table = store.require_table(
        "toy",
        fidelity,
        theta_dim=3,
        x_dim=4,
        chunk_size=chunk_size,
        provenance=kwargs.pop("provenance", PROVENANCE),
    )
    return store, table


def run_all(table: SimulationTable) -> None:
    for batch in table.pending_batches():
        theta, seed = table.theta_rows(*batch.rows)
        assert np.all(seed == batch.seed)
        table.write_batch(*batch.rows, x=toy(theta, batch.seed), elapsed=0.5)

"""The run configuration shared by the CLI, the flows and (later) the deployments."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:
    from mfsbi.simulators import Task

__all__ = ["AMORTIZED", "ConfigError", "RunConfig", "SEQUENTIAL", "USES_LF", "describe_validation_error"]

Method = Literal["npe", "mf-npe", "tsnpe", "mf-tsnpe", "a-mf-tsnpe", "mf-abc"]
AMORTIZED = frozenset({"npe", "mf-npe"})
SEQUENTIAL = frozenset({"tsnpe", "mf-tsnpe", "a-mf-tsnpe"})
USES_LF = frozenset({"mf-npe", "mf-tsnpe", "a-mf-tsnpe", "mf-abc"})
Device = Literal["auto", "cpu", "cuda"]

# A budget above this is almost surely a typo, and would allocate more than memory holds.
MAX_SIMULATIONS = 100_000_000
# A chunk is the unit a worker holds in memory and writes at once: images must not make it huge.
MAX_CHUNK_BYTES = 64 * 2**20
# LF rows per chunk unless set, and what decides a larger one for a cheap simulator: a zarr write
# costs milliseconds whatever its size, so a chunk of a microsecond simulator's outputs should hold
# megabytes; it also should not hold more than about a second of simulation (docs/decisions.md).
LF_CHUNK_ROWS = 1000
CHUNK_BYTES = 8 * 2**20
CHUNK_SECONDS = 1.0


class ConfigError(ValueError):
    """Bad user input: one line naming the field and the fix."""


class RunConfig(BaseModel):
    """Everything that defines one amortised run (NPE or MF-NPE).

    The same config and seed give the same simulations and the same numbers.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field(description="registry name (see `mfsbi tasks`) or package.module:attribute")
    method: Method = "mf-npe"
    lf_sims: int = Field(10_000, ge=1, le=MAX_SIMULATIONS, description="low-fidelity simulations")
    hf_sims: int = Field(100, ge=1, le=MAX_SIMULATIONS, description="high-fidelity budget")
    store: str = Field("mfsbi-store", description="zarr store: a folder or a zarr store URL")
    seed: int = Field(0, ge=0, lt=2**63)
    device: Device = "auto"
    dask_address: str | None = Field(None, description="an existing Dask scheduler; default: a local cluster")
    n_workers: int | None = Field(None, ge=1, le=512, description="local cluster workers; default: one per core")
    lf_chunk_size: int | None = Field(
        None, ge=1, le=1_000_000,
        description="LF rows per zarr chunk; default 1000, more for simulators faster than 1 ms (~8 MiB of x)",
    )
    hf_chunk_size: int = Field(10, ge=1, le=100_000, description="HF rows per zarr chunk")
    num_test_observations: int = Field(5, ge=0, le=10_000, description="held-out HF observations for C2ST")
    num_nltp_pairs: int = Field(100, ge=0, le=1_000_000, description="held-out HF pairs for NLTP")
    test_seed: int = Field(2026, ge=0, lt=2**63, description="seed of the held-out test set, fixed across run seeds")
    posterior_samples: int = Field(1000, ge=10, le=10_000_000)
    max_num_epochs: int = Field(2**31 - 1, ge=1, description="cap on epochs (early stopping ends training before)")
    lf_learning_rate: float = Field(5e-4, gt=0, lt=1)
    hf_learning_rate: float = Field(5e-4, gt=0, lt=1)
    max_failure_fraction: float = Field(0.2, ge=0, le=1, description="stop when more simulations fail")
    simulation_timeout: float | None = Field(
        None, gt=0, le=7 * 24 * 3600,
        description="seconds one simulation may take; batches then run in their own process, killed on overrun",
    )
    observation: list[float] | None = Field(None, description="an observation to condition on (x_o)")
    observation_index: int = Field(0, ge=0, le=100_000,
                                   description="sequential methods without --observation: this held-out test observation")
    resume: bool = Field(False, description="continue a sequential run whose rounds are already in the store")
    # Sequential methods (PAPER.md defaults).
    rounds: int = Field(5, ge=1, le=1000, description="rounds R of the sequential methods")
    truncation_quantile: float = Field(1e-6, gt=0, lt=1, description="ε of the highest-probability region")
    ensemble_size: int = Field(5, ge=2, le=100, description="members E of the A-MF-TSNPE ensemble")
    acquisition_fraction: float = Field(0.2, ge=0, le=1, description="share B of a round's budget chosen by acquisition")
    acquisition: Literal["log-variance", "density-variance"] = "log-variance"
    pool_size: int | None = Field(None, ge=1, le=10_000_000, description="acquisition pool; default by budget (PAPER.md)")
    evaluate_rounds: bool = Field(True, description="C2ST after every round (when the task has a reference)")
    # MF-ABC (Prescott & Baker 2020).
    abc_proposals: int | None = Field(None, ge=1, le=MAX_SIMULATIONS, description="MF-ABC LF proposals; default --lf-sims")
    abc_quantile: float = Field(0.05, gt=0, le=1, description="MF-ABC ε as a quantile of the LF distances")
    abc_eta_accept: float = Field(1.0, gt=0, le=1, description="MF-ABC continuation probability when LF accepts")
    abc_eta_reject: float = Field(0.1, gt=0, le=1, description="MF-ABC continuation probability when LF rejects")

    @field_validator("observation")
    @classmethod
    def _finite(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not all(v == v and abs(v) != float("inf") for v in value):
            raise ValueError("observation holds NaN or inf; give finite values")
        return value

    @property
    def uses_lf(self) -> bool:
        return self.method in USES_LF

    @property
    def observation_tag(self) -> str:
        """``obs<i>`` for a held-out test observation, else a short hash of the given x_o."""
        if self.observation is None:
            return f"obs{self.observation_index}"
        digest = hashlib.sha256(json.dumps(self.observation).encode()).hexdigest()[:8]
        return f"x{digest}"

    @property
    def run_name(self) -> str:
        """A readable, deterministic name used for artifacts, tables and the Prefect flow run."""
        lf = f"lf{self.lf_sims}-" if self.uses_lf else ""
        name = f"{self.method}-{lf}hf{self.hf_sims}"
        if self.method in SEQUENTIAL:
            name += f"-r{self.rounds}-{self.observation_tag}"
        elif self.method == "mf-abc":
            name += f"-{self.observation_tag}"
        return f"{name}-seed{self.seed}"

    def chunk_rows(self, fidelity: str, task: "Task") -> int:
        """Rows per chunk of a table, capped so that a chunk of x stays ≤ 64 MiB.

        Arguments:
            fidelity: ``"lf"`` or ``"hf"``.
            task: the task; its ``x_dim`` and documented cost (``cost_seconds``) decide: without
                an ``lf_chunk_size``, an LF simulator faster than 1 ms gets chunks of up to
                :data:`CHUNK_BYTES` of x and :data:`CHUNK_SECONDS` of simulation.

        Returns:
            The rows per chunk, fixed when the table is created.
        """
        x_dim = task.x_dim
        seconds_per_row = (getattr(task, "cost_seconds", None) or {}).get(fidelity)
        if fidelity == "hf":
            requested = self.hf_chunk_size
        elif self.lf_chunk_size is not None:
            requested = self.lf_chunk_size
        else:
            requested = LF_CHUNK_ROWS
            if seconds_per_row and seconds_per_row > 0:
                wide = min(CHUNK_BYTES // (8 * x_dim), int(CHUNK_SECONDS / seconds_per_row))
                requested = max(requested, _round_down(wide))
        return max(1, min(requested, MAX_CHUNK_BYTES // (8 * x_dim), 1_000_000))

    def simulation_hash(self, fidelity: str, chunk_size: int, task_version: str, seed: int) -> str:
        """Hash of what decides a table's rows: a store is never continued with other settings."""
        payload = {"task": self.task, "version": task_version, "fidelity": fidelity,
                   "seed": seed, "chunk_size": chunk_size}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _round_down(rows: int) -> int:
    """The largest of 1, 2 and 5 times a power of ten that is at most ``rows`` (readable chunk sizes)."""
    if rows < 1:
        return 1
    power = 10 ** (len(str(rows)) - 1)
    return max(step * power for step in (1, 2, 5) if step * power <= rows)


def describe_validation_error(error: ValidationError) -> str:
    """One line naming the first bad field and what is wrong with it."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "config"
    flag = "--" + field.replace("_", "-")
    return f"{flag}: {first['msg']} (got {first.get('input')!r})"

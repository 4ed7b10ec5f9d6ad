"""The run configuration shared by the CLI, config files, the flows and the deployments."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from pydantic import ConfigDict, ValidationError, field_validator

from mfsbi.flows.methods import Method, MethodNotFoundError, get_method
from mfsbi.flows.options import (
    FINE_TUNING_LEARNING_RATE, HF_LEARNING_RATE, MAX_SIMULATIONS, ABCOptions, AcquisitionOptions, CommonOptions,
    ComputeBudgetOptions, EnsembleOptions, SequentialOptions, TransferGuardOptions,
)

if TYPE_CHECKING:
    from mfsbi.simulators import Task

__all__ = ["ConfigError", "MAX_SIMULATIONS", "RunConfig", "describe_validation_error"]
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


# Bases in reverse: pydantic lists the fields of the last base first (the common ones lead).
class RunConfig(ComputeBudgetOptions, EnsembleOptions, TransferGuardOptions, ABCOptions, AcquisitionOptions,
                SequentialOptions, CommonOptions):
    """Everything that defines one run: the common settings and those of every family's methods.

    The same config and seed give the same simulations and the same numbers. Which fields a method
    reads is its options model (:attr:`~mfsbi.flows.methods.Method.option_groups`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("method")
    @classmethod
    def _registered(cls, value: str) -> str:
        try:
            get_method(value)
        except MethodNotFoundError as error:
            raise ValueError(str(error)) from None
        return value

    @property
    def method_spec(self) -> Method:
        """The registered :class:`~mfsbi.flows.methods.Method` this config names."""
        return get_method(self.method)

    def hf_training_rate(self, fine_tuning_from_lf: bool) -> float:
        """The HF learning rate: ``hf_learning_rate`` if given, else the measured default of the step.

        Arguments:
            fine_tuning_from_lf: the step fine-tunes the LF-pretrained estimator (MF-NPE's HF step).
        """
        if self.hf_learning_rate is not None:
            return self.hf_learning_rate
        return FINE_TUNING_LEARNING_RATE if fine_tuning_from_lf else HF_LEARNING_RATE

    @property
    def uses_lf(self) -> bool:
        return self.method_spec.uses_lf

    @property
    def observation_tag(self) -> str:
        """``obs<i>`` for a held-out test observation, else a short hash of the given x_o."""
        if self.observation is None:
            return f"obs{self.observation_index}"
        digest = hashlib.sha256(json.dumps(self.observation).encode()).hexdigest()[:8]
        return f"x{digest}"

    @property
    def run_name(self) -> str:
        """A readable, deterministic name used for artifacts, tables and the Prefect flow run.

        ``<method>-[lf<n>-][<level><n>-]hf<n><the method's suffix>-seed<seed>``.
        """
        lf = f"lf{self.lf_sims}-" if self.uses_lf else ""
        # Intermediate levels in the name only when given: two-level runs keep their names.
        levels = "".join(f"{level}{count}-" for level, count in self.level_sims.items())
        # What follows the counts is the method's (its family's by default: an ensemble, a compute
        # budget, the rounds and the observation): tests/test_run_names.py holds the built-ins' names.
        suffix = self.method_spec.run_name_suffix(self)
        return f"{self.method}-{lf}{levels}hf{self.hf_sims}{suffix}-seed{self.seed}"

    def chunk_rows(self, fidelity: str, task: "Task") -> int:
        """Rows per chunk of a table, capped so that a chunk of x stays ≤ 64 MiB.

        Arguments:
            fidelity: ``"lf"``, an intermediate level (chunked like HF) or ``"hf"``.
            task: the task; its ``x_dim`` and documented cost (``cost_seconds``) decide: without
                an ``lf_chunk_size``, an LF simulator faster than 1 ms gets chunks of up to
                :data:`CHUNK_BYTES` of x and :data:`CHUNK_SECONDS` of simulation.

        Returns:
            The rows per chunk, fixed when the table is created.
        """
        x_dim = task.x_dim
        seconds_per_row = (getattr(task, "cost_seconds", None) or {}).get(fidelity)
        if fidelity != "lf":  # HF and the budgeted intermediate levels
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
    message = first["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's own message
    return f"{flag}: {message} (got {first.get('input')!r})"

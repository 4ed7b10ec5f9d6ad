"""What a run is called, which tables it writes and which seeds it draws: known before it starts.

No Prefect and no store here: the checks made before a run starts (:mod:`mfsbi.app.preflight`)
read the same names the run then writes (:class:`~mfsbi.flows.run.Run` extends the plan).
"""

from __future__ import annotations

from dataclasses import dataclass

from mfsbi.flows.config import RunConfig
from mfsbi.flows.methods import AMORTIZED, Method
from mfsbi.runtime.seeds import derive_seed
from mfsbi.simulators import Task, get_task

__all__ = ["PlannedTable", "RunPlan"]


@dataclass(frozen=True)
class PlannedTable:
    """A table a run writes: its name, fidelity, rows per chunk and the seed its rows derive from."""

    table: str
    fidelity: str
    chunk_size: int
    seed: int


@dataclass
class RunPlan:
    """What a run is called and what it writes, known before anything starts (no Prefect, no store).

    Arguments:
        config: the validated settings.
        method: the registered method the config names.
        task: the resolved task.
    """

    config: RunConfig
    method: Method
    task: Task

    @classmethod
    def of(cls, config: RunConfig, task: Task | None = None) -> RunPlan:
        """The plan of ``config`` (the task resolved unless given)."""
        return cls(config, config.method_spec, task if task is not None else get_task(config.task))

    # ---- names -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.run_name

    @property
    def prefix(self) -> str:
        """The run's folder inside the store's ``artifacts/``."""
        return f"{self.task.name}/{self.name}"

    def artifact(self, name: str) -> str:
        """Where a file of this run is, as summaries name it (``artifacts/<prefix>/<name>``)."""
        return f"artifacts/{self.prefix}/{name}"

    @property
    def shared_table(self) -> str:
        """The task's table of prior draws, shared by every run of the task (LF, and amortised HF)."""
        return self.task.name

    @property
    def test_table(self) -> str:
        """The held-out HF test pairs, fixed by ``test_seed``."""
        return f"{self.task.name}-test"

    @property
    def own_table(self) -> str:
        """The HF table of a run at one observation (its rows depend on x_o and on the run)."""
        return f"{self.task.name}.{self.name}"

    @property
    def hf_table(self) -> str:
        """The table the run's HF budget is spent in."""
        return self.shared_table if self.method.family is AMORTIZED else self.own_table

    @property
    def levels(self) -> list[tuple[str, int]]:
        """The intermediate fidelities the run fine-tunes through, in the chain's order, with their budgets.

        Empty for a two-level run and for methods that do not pretrain (they train on HF alone).
        """
        if not self.method.uses_lf:
            return []
        given = self.config.level_sims
        return [(level, given[level]) for level in self.task.fidelities[1:-1] if level in given]

    def planned_tables(self) -> list[PlannedTable]:
        """Every table the run writes."""
        config, hf_chunk = self.config, self.config.chunk_rows("hf", self.task)
        tables = [PlannedTable(self.hf_table, "hf", hf_chunk, config.seed)]
        if self.method.uses_lf:
            tables.append(PlannedTable(self.shared_table, "lf", config.chunk_rows("lf", self.task), config.seed))
        for level, _ in self.levels:
            tables.append(PlannedTable(self.shared_table, level, config.chunk_rows(level, self.task), config.seed))
        if self.evaluation_pairs or config.observation is None:
            tables.append(PlannedTable(self.test_table, "hf", hf_chunk, config.test_seed))
        return tables

    @property
    def num_test_observations(self) -> int:
        """Held-out observations for C2ST: as given, else 5 where the task has an exact reference, else 0."""
        given = self.config.num_test_observations
        return given if given is not None else (5 if self.task.references else 0)

    @property
    def num_test_pairs(self) -> int:
        """Held-out HF pairs for NLTP: as given, else 100 where the task has an exact reference, else 0.

        They are simulated outside the HF budget: a task without a reference spends no HF on
        evaluation unless asked (``--test-pairs``); the run reports out of fold instead.
        """
        given = self.config.num_nltp_pairs
        return given if given is not None else (100 if self.task.references else 0)

    @property
    def evaluation_pairs(self) -> int:
        """The held-out HF test pairs an amortised run simulates to report on (C2ST's and NLTP's)."""
        return max(self.num_test_observations, self.num_test_pairs)

    def config_hash(self, fidelity: str, chunk_size: int, seed: int) -> str:
        return self.config.simulation_hash(fidelity, chunk_size, self.task.version, seed)

    # ---- seeds -------------------------------------------------------------------------------

    def seed(self, purpose: str, *keys: int) -> int:
        """A seed for one purpose of this run (:func:`~mfsbi.runtime.seeds.derive_seed` of the run seed)."""
        return derive_seed(self.config.seed, purpose, *keys)

    def test_seed(self, purpose: str, *keys: int) -> int:
        """A seed of the evaluation, the same for every run seed (runs compare on equal terms)."""
        return derive_seed(self.config.test_seed, purpose, *keys)

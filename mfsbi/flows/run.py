"""A run: its plan (names, tables, seeds), its store and executor, and the steps every flow composes.

A :class:`Run` is made once per flow run from the validated config. It owns what used to be
passed around by hand as ``(executor, store, task, config)``: where the run's rows and files live
(``prefix``, the tables) and the seeds derived from the run seed (both from its
:class:`~mfsbi.flows.plan.RunPlan`). Each job is done by a part that knows only what it needs:
:class:`~mfsbi.flows.run_simulation.RunSimulation` (what it simulates),
:class:`~mfsbi.flows.run_training.RunTraining` (what it trains),
:class:`~mfsbi.flows.run_artifacts.RunArtifacts` (what it writes, ``summary.json``, ``latest.json``),
and :mod:`mfsbi.flows.pretraining` (the multifidelity chain). The run's methods of the same names
hand over to them, so flows and methods keep calling ``run.simulate(...)``, ``run.train(...)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prefect.context import FlowRunContext

from mfsbi import __version__
from mfsbi.flows import pretraining
from mfsbi.flows.config import RunConfig
from mfsbi.flows.plan import RunPlan
from mfsbi.flows.pretraining import ChainStep
from mfsbi.flows.run_artifacts import RunArtifacts
from mfsbi.flows.run_simulation import RunSimulation
from mfsbi.flows.run_training import RunTraining, resolve_device, training_resources
from mfsbi.flows.summary import RunSummary
from mfsbi.runtime.executor import BatchExecutor
from mfsbi.runtime.multilevel_jobs import MultilevelJob
from mfsbi.runtime.simulation import SimulationReport
from mfsbi.runtime.training_jobs import TrainJob, TrainResult
from mfsbi.storage import SimulationStore, StoreError

__all__ = ["ChainStep", "Run", "check_store_location", "resolve_device", "training_resources"]


def check_store_location(store: str) -> None:
    """Refuses, in a deployment run, a local store that is relative or whose parent folder is missing.

    A worker runs each flow run in a temporary folder it deletes afterwards: a relative store would be
    lost with it, and a missing parent is a typo or another machine's folder. ``mfsbi run`` (no
    deployment) runs in the user's own folder and creates the store wherever it is asked to.

    Raises:
        StoreError: one line naming ``store`` and the fix.
    """
    context = FlowRunContext.get()
    # The context, not the API (prefect.runtime asks the server when the context lacks the id).
    flow_run = getattr(context, "flow_run", None)
    if getattr(flow_run, "deployment_id", None) is None or "://" in store:
        return
    path = Path(store).expanduser()
    if not path.is_absolute():
        raise StoreError(f"store: {store!r} is relative, which a deployment run would keep in the worker's "
                         "temporary folder (deleted after the run); give an absolute path or a URL")
    if not path.parent.is_dir():
        raise StoreError(f"store: the folder {path.parent} does not exist where the worker runs; create it "
                         "or give a store under an existing folder")


@dataclass
class Run(RunPlan):
    """One run of one method on one task, in progress: its plan, its store, where its jobs run.

    Arguments:
        store: the simulation store; executor: where jobs run; device: where training runs.
    """

    store: SimulationStore | None = None
    executor: BatchExecutor | None = None
    device: str = "cpu"
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, config: RunConfig, executor: BatchExecutor, *, device: str | None = None) -> Run:
        """Opens the store and resolves the device: the run begins (its wall clock too).

        Arguments:
            device: a device already chosen (ABC trains nothing: ``cpu``); default from the config.
        """
        check_store_location(config.store)
        run = cls.of(config)
        run.store = SimulationStore(config.store)
        run.executor = executor
        run.device = device or resolve_device(config.device, executor)
        return run

    # ---- its parts: each knows the plan and the resources of its job, never the run ---------

    @property
    def plan(self) -> RunPlan:
        """The run's names, tables and seeds alone."""
        return RunPlan(self.config, self.method, self.task)

    @property
    def artifacts(self) -> RunArtifacts:
        """What the run writes in its store and shows in the UI."""
        return RunArtifacts(self.plan, self.store, self.started)

    @property
    def simulation(self) -> RunSimulation:
        """What the run simulates, on its executor into its store."""
        return RunSimulation(self.plan, self.store, self.executor)

    @property
    def training(self) -> RunTraining:
        """What the run trains, on its executor's workers on the device."""
        return RunTraining(self.plan, self.store, self.executor, self.device, self.artifacts)

    def new_summary(self) -> RunSummary:
        """The summary's header; the flow fills in the rest."""
        return RunSummary(task=self.task.name, method=self.config.method, run=self.name, seed=self.config.seed,
                          device=self.device, mfsbi_version=__version__)

    # ---- steps, each handed to its part (documented there) ------------------------------------

    def simulate(self, *, table: str, fidelity: str, num_rows: int, seed: int,
                 budget: int | None) -> SimulationReport:
        """Reserves prior draws until ``table`` holds ``num_rows``, then simulates the pending ones."""
        return self.simulation.simulate(table=table, fidelity=fidelity, num_rows=num_rows, seed=seed, budget=budget)

    def simulate_pending(self, sim_table, *, table: str, fidelity: str) -> SimulationReport:
        """Simulates a table's pending rows on the executor, in jobs of whole chunks."""
        return self.simulation.simulate_pending(sim_table, table=table, fidelity=fidelity)

    def require_own_table(self):
        return self.simulation.require_own_table()

    def test_pairs(self, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The held-out HF test pairs (fixed by ``test_seed``, shared by every run)."""
        """The run's own HF table (runs at one observation), created with the run's HF budget."""
        return self.simulation.test_pairs(num_rows)

    def target_observation(self) -> tuple[np.ndarray, np.ndarray | None]:
        """x_o of a run at one observation and, for a held-out test observation, its true θ."""
        return self.simulation.target_observation()

    def train_job(self, *, table: str, fidelity: str, limit: int, learning_rate: float, seed: int,
                  pretrained: bytes | None, refit_x_zscore: bool = True, batch_size: int = 200,
                  anchor_penalty: float = 0.0, exclude_rows: tuple[int, ...] = (),
                  validate_on_excluded: bool = False) -> TrainJob:
        """A training job on the first ``limit`` rows of a table, with the paper's estimator."""
        return self.training.train_job(
            table=table, fidelity=fidelity, limit=limit, learning_rate=learning_rate, seed=seed,
            pretrained=pretrained, refit_x_zscore=refit_x_zscore, batch_size=batch_size,
            anchor_penalty=anchor_penalty, exclude_rows=exclude_rows, validate_on_excluded=validate_on_excluded)

    def estimator_config(self) -> dict:
        """The paper's estimator for this task, as a job carries it."""
        return self.training.estimator_config()

    def training_config(self, learning_rate: float, seed: int, batch_size: int = 200,
                        anchor_penalty: float = 0.0) -> dict:
        """The training settings of a job, as it carries them."""
        return self.training.training_config(learning_rate, seed, batch_size, anchor_penalty)

    def train(self, jobs: list[TrainJob | MultilevelJob], label: str) -> list[TrainResult]:
        """Trains one estimator per job on the workers; stores and shows the loss curves."""
        return self.training.train(jobs, label)

    def pretrained_through_chain(self, summary: RunSummary) -> bytes:
        """What an MF method fine-tunes on HF: pretrained on LF, then through the levels."""
        return pretraining.pretrained_through_chain(self, summary)

    def chain_checkpoint(self, lf_sims: int, levels: list[tuple[str, int]]) -> tuple[bytes, list[ChainStep]]:
        """The chain below HF at these counts: its last checkpoint and its steps."""
        return pretraining.chain_checkpoint(self, lf_sims, levels)

    def location(self, path: str) -> str:
        """Where a stored file is, absolute."""
        return self.artifacts.location(path)

    def publish_image(self, path: str, png: bytes, what: str) -> None:
        """Publishes a stored PNG as an image artifact of the flow run."""
        self.artifacts.publish_image(path, png, what)

    def record_calibration(self, summary: RunSummary, result, on: str) -> None:
        """Puts a calibration in the summary, its plot in the store and the UI."""
        self.artifacts.record_calibration(summary, result, on)

    def read_artifact(self, name: str) -> bytes | None:
        """A file of this run, or ``None`` when it is not stored (yet)."""
        return self.artifacts.read_artifact(name)

    def write_artifact(self, name: str, data: bytes) -> str:
        """Stores a file of this run; returns its path as summaries name it."""
        return self.artifacts.write_artifact(name, data)

    def finish(self, summary: RunSummary, samples: np.ndarray | None, truth: np.ndarray | None,
               where: str) -> None:
        """Saves the run's outputs: samples, pair plot, ``summary.json``, and ``latest.json``."""
        self.artifacts.finish(summary, samples, truth, where)

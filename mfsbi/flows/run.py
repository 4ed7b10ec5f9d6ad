"""A run: its names, its seeds, and the steps every flow composes (simulate, train, finish).

A :class:`Run` is made once per flow run from the validated config. It owns what used to be
passed around by hand as ``(executor, store, task, config)``: where the run's rows and files live
(``prefix``, the tables) and the seeds derived from the run seed (both from its
:class:`~mfsbi.flows.plan.RunPlan`), and the coarse Prefect tasks that simulate on and train on the
executor.

Caching is off on every task: the store is the cache. Rows already stored are never simulated
again whatever Prefect remembers, and Prefect's own caching mis-handles killed Dask workers.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_image_artifact
from prefect.cache_policies import NONE as NO_CACHE
from prefect.context import FlowRunContext

from mfsbi import __version__
from mfsbi.flows.config import RunConfig
from mfsbi.flows.evaluation import calibration_png, loss_curves_png, pair_plot_png
from mfsbi.flows.methods import AMORTIZED
from mfsbi.flows.plan import RunPlan
from mfsbi.flows.summary import RunSummary
from mfsbi.flows.training_progress import epoch_progress
from mfsbi.inference import EstimatorConfig, TrainingConfig
from mfsbi.runtime import progress
from mfsbi.runtime.executor import BatchExecutor, DaskExecutor
from mfsbi.runtime.simulation import SimulationReport, ensure_rows, provenance, run_pending
from mfsbi.runtime.multilevel_jobs import MultilevelJob, train_multilevel
from mfsbi.runtime.training_jobs import TrainJob, TrainResult, train_estimator
from mfsbi.storage import SimulationStore, StoreError

__all__ = ["ChainStep", "Run", "check_store_location", "resolve_device", "training_resources"]


def resolve_device(device: str, executor: BatchExecutor) -> str:
    """``auto`` → ``cuda`` when a worker of the executor has a GPU, else ``cpu`` (and says so)."""
    if device != "auto":
        return device
    if executor.gpu_workers():
        return "cuda"
    get_run_logger().info("device auto: no GPU worker found, training on CPU")
    return "cpu"


def training_resources(device: str, executor: BatchExecutor) -> dict[str, float] | None:
    """Dask resources of a training job: CUDA training goes to a worker advertising ``GPU``."""
    if device == "cuda" and isinstance(executor, DaskExecutor) and executor.gpu_workers():
        return {"GPU": 1}
    return None


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


@dataclass(frozen=True)
class ChainStep:
    """One step of the chain below HF: the table it trained on, its checkpoint, its training if run now."""

    fidelity: str
    count: int
    simulations: SimulationReport
    checkpoint: str                      # where it is in the store (``artifacts/...``)
    train: TrainResult | None = None     # None: the checkpoint was in the store already
    budget: object | None = None         # the level's budget (levels above LF)

    def record(self) -> dict:
        """What ``summary.json`` keeps of an intermediate level."""
        out = {"fidelity": self.fidelity, "simulations": dataclasses.asdict(self.simulations),
               "checkpoint": self.checkpoint}
        if self.budget is not None:
            out["budget"] = dataclasses.asdict(self.budget)
        if self.train is not None:
            out["train"] = self.train.record()
        return out


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

    # ---- steps -------------------------------------------------------------------------------

    def new_summary(self) -> RunSummary:
        """The summary's header; the flow fills in the rest."""
        return RunSummary(task=self.task.name, method=self.config.method, run=self.name, seed=self.config.seed,
                          device=self.device, mfsbi_version=__version__)

    def simulate(self, *, table: str, fidelity: str, num_rows: int, seed: int,
                 budget: int | None) -> SimulationReport:
        """Reserves prior draws until ``table`` holds ``num_rows``, then simulates the pending ones."""
        return simulate_table(self, table=table, fidelity=fidelity, num_rows=num_rows,
                              chunk_size=self.config.chunk_rows(fidelity, self.task), seed=seed, budget=budget)

    def simulate_pending(self, sim_table, *, table: str, fidelity: str) -> SimulationReport:
        """Simulates a table's pending rows on the executor, in jobs of whole chunks."""
        step = f"simulate {fidelity.upper()} ({table})"
        report = run_pending(
            self.executor, self.store.url, self.config.task, sim_table, table=table, fidelity=fidelity,
            max_failure_fraction=self.config.max_failure_fraction, timeout=self.config.simulation_timeout,
            seconds_per_row=self.task.cost_seconds.get(fidelity),
            progress=lambda done, total: progress.report(step, done, total),
        )
        get_run_logger().info("%s/%s: simulated %d now (%d failed), %d ok in the store", table, fidelity,
                              report.simulated, report.failed, report.stored_ok)
        return report

    def require_own_table(self):
        """The run's own HF table (runs at one observation), created with the run's HF budget."""
        chunk = self.config.chunk_rows("hf", self.task)
        sim_table = self.store.require_table(
            self.own_table, "hf", theta_dim=self.task.theta_dim, x_dim=self.task.x_dim, chunk_size=chunk,
            provenance=provenance(self.task, "hf", self.config_hash("hf", chunk, self.config.seed)),
            parameter_names=self.task.parameter_names,
        )
        if sim_table.budget() is None:
            sim_table.set_budget(self.config.hf_sims)
        return sim_table

    def train_job(self, *, table: str, fidelity: str, limit: int, learning_rate: float, seed: int,
                  pretrained: bytes | None, refit_x_zscore: bool = True, batch_size: int = 200,
                  anchor_penalty: float = 0.0, exclude_rows: tuple[int, ...] = (),
                  validate_on_excluded: bool = False) -> TrainJob:
        """A training job on the first ``limit`` rows of a table (but ``exclude_rows``, which stop it
        with ``validate_on_excluded``), with the paper's estimator."""
        return TrainJob(self.store.url, self.config.task, table, fidelity, limit, self.estimator_config(),
                        self.training_config(learning_rate, seed, batch_size, anchor_penalty), pretrained, self.device,
                        refit_x_zscore=refit_x_zscore, training_memory=self.config.training_memory,
                        exclude_rows=exclude_rows, validate_on_excluded=validate_on_excluded)

    def estimator_config(self) -> dict:
        """The paper's estimator for this task, as a job carries it."""
        task = self.task
        if task.embedding:  # a CNN for images, its input z-scored as one block
            return EstimatorConfig(embedding=task.embedding, x_shape=task.x_shape, z_score_x="structured").to_dict()
        return EstimatorConfig().to_dict()

    def training_config(self, learning_rate: float, seed: int, batch_size: int = 200,
                        anchor_penalty: float = 0.0) -> dict:
        """The training settings of a job, as it carries them."""
        return TrainingConfig(learning_rate=learning_rate, max_num_epochs=self.config.max_num_epochs, seed=seed,
                              batch_size=batch_size, anchor_penalty=anchor_penalty).to_dict()

    def train(self, jobs: list[TrainJob | MultilevelJob], label: str) -> list[TrainResult]:
        """Trains one estimator per job (ensemble members in parallel across workers), in job order.

        The members' loss curves are stored with the run and shown on the flow run's page.
        """
        results = train_jobs(self.executor, jobs, label=label)
        curves = [r.validation_losses for r in results if r.validation_losses]
        if curves:
            name = f"loss-{_slug(label)}.png"
            png = loss_curves_png(curves, f"{self.task.name} {self.name}: {label}")
            self.publish_image(self.write_artifact(name, png), png, f"{label}: validation loss per epoch")
        return results

    def location(self, path: str) -> str:
        """Where a stored file is, absolute (the store's folder or URL, then ``artifacts/...``)."""
        return f"{self.store.url.rstrip('/')}/{path}"

    def publish_image(self, path: str, png: bytes, what: str) -> None:
        """Publishes a stored PNG as an image artifact of the flow run (a data URL: the UI draws it offline).

        The artifact's page shows the picture; the flow run's page lists the artifact
        (benchmarks/ui_screenshot.py checks both with headless Chromium).
        """
        key = _slug(f"{self.name}-{path.rsplit('/', 1)[-1]}")[:100]
        create_image_artifact(image_url="data:image/png;base64," + base64.b64encode(png).decode(), key=key,
                              description=f"{self.task.name} {self.name}: {what} ({self.location(path)})")

    def record_calibration(self, summary: RunSummary, result, on: str) -> None:
        """Puts a :class:`~mfsbi.inference.Calibration` in the summary, its plot in the store and the UI."""
        summary.calibration = {**result.to_dict(), "on": on}
        png = calibration_png(result, self.task.parameter_names, f"{self.task.name} {self.name}: {on}")
        summary.calibration_plot = self.write_artifact("calibration.png", png)
        self.publish_image(summary.calibration_plot, png, f"calibration: {result.verdict} ({on})")
        get_run_logger().info("calibration on %s: %s (%s)", on, result.verdict, result.test)

    def pretrained_through_chain(self, summary: RunSummary) -> bytes:
        """The estimator an MF method starts its HF training from: LF-pretrained, then fine-tuned
        through each intermediate fidelity the run gives a budget (``--sims lf=..,mf=..,hf=..``).

        Records the tables, checkpoints and (when trained now) the trainings in ``summary``.
        """
        checkpoint, steps = self.chain_checkpoint(self.config.lf_sims, self.levels)
        pretrain, *levels = steps
        summary.lf = dataclasses.asdict(pretrain.simulations)
        summary.pretrained = pretrain.checkpoint
        if pretrain.train is not None:
            summary.pretrain = pretrain.train.record()
        if levels:
            summary.levels = [step.record() for step in levels]
        return checkpoint

    def chain_checkpoint(self, lf_sims: int, levels: list[tuple[str, int]]) -> tuple[bytes, list[ChainStep]]:
        """Simulates and trains the chain below HF: pretrain on ``lf_sims`` LF rows, then fine-tune on
        the first ``count`` rows of each ``(level, count)`` in turn.

        Every step's checkpoint is kept in the store under a name that holds the chain up to it, so
        it is shared by every method and run with the same task, counts and seed, and a run killed
        mid-chain continues from the last level it finished.

        Returns:
            The last checkpoint, and one :class:`ChainStep` per step (LF first).
        """
        config = self.config
        report = self.simulate(table=self.shared_table, fidelity="lf", num_rows=lf_sims, seed=config.seed, budget=None)
        # The batch is in the name: a checkpoint pretrained with another batch is another estimator.
        chain = f"pretrained-lf{lf_sims}"
        name = f"{self.task.name}/{chain}-seed{config.seed}-b{config.lf_batch_size}.pt"
        checkpoint, result = self._stored_checkpoint(name), None
        if checkpoint is None:
            (result,) = self.train([self.train_job(
                table=self.shared_table, fidelity="lf", limit=lf_sims, learning_rate=config.lf_learning_rate,
                seed=self.seed("pretrain"), pretrained=None, batch_size=config.lf_batch_size,
            )], label=f"pretrain on {lf_sims} LF")
            self.store.write_artifact(name, result.checkpoint)
            checkpoint = result.checkpoint
        steps = [ChainStep("lf", lf_sims, report, f"artifacts/{name}", result)]
        for level, count in levels:
            chain += f"-{level}{count}"
            # A given --hf-learning-rate also fine-tunes the levels: it is in the name, as the batch is.
            rate = "" if config.hf_learning_rate is None else f"-lr{config.hf_learning_rate:g}"
            name = f"{self.task.name}/{chain}-seed{config.seed}-b{config.lf_batch_size}{rate}.pt"
            report = self.simulate(table=self.shared_table, fidelity=level, num_rows=count, seed=config.seed,
                                   budget=count)
            stored, result = self._stored_checkpoint(name), None
            if stored is None:
                (result,) = self.train([self.train_job(
                    table=self.shared_table, fidelity=level, limit=count, learning_rate=config.hf_training_rate(True),
                    seed=self.seed("fine-tune", len(steps) - 1), pretrained=checkpoint,
                )], label=f"fine-tune on {count} {level.upper()}")
                self.store.write_artifact(name, result.checkpoint)
                stored = result.checkpoint
            checkpoint = stored
            steps.append(ChainStep(level, count, report, f"artifacts/{name}", result,
                                   self.store.table(self.shared_table, level).budget()))
        return checkpoint, steps

    def _stored_checkpoint(self, name: str) -> bytes | None:
        try:
            return self.store.read_artifact(name)
        except FileNotFoundError:
            return None

    def test_pairs(self, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The held-out HF test pairs (fixed by ``test_seed``, shared by every run; not part of any budget)."""
        task = self.task
        if num_rows <= 0:
            return np.zeros((0, task.theta_dim)), np.zeros((0, task.x_dim))
        chunk = self.config.chunk_rows("hf", task)
        # Whole chunks: a batch's random stream depends on its rows, so a half-filled chunk would give
        # other observations than a full one, and the held-out set would depend on its requested size.
        requested = -(-num_rows // chunk) * chunk
        self._announce_evaluation(requested)
        self.simulate(table=self.test_table, fidelity="hf", num_rows=requested, seed=self.config.test_seed,
                      budget=None)
        sim_table = self.store.table(self.test_table, "hf")
        rows = sim_table.rows("ok")
        theta, x = sim_table.read("ok")
        keep = rows < num_rows
        return theta[keep], x[keep]

    def _announce_evaluation(self, requested: int) -> None:
        """Says, before any is simulated, how many HF simulations evaluation spends outside the budget and
        what they are expected to cost (the median measured HF simulation, else the task's documented cost)."""
        existing = self.store.table(self.test_table, "hf")
        missing = max(0, requested - (existing.num_rows if existing is not None else 0))
        if missing == 0:
            return
        measured = [t.seconds_per_row() for t in (existing, self.store.table(self.hf_table, "hf")) if t is not None]
        measured = [s for s in measured if s is not None]
        if measured:
            each, how = measured[0], "measured"
        else:
            each, how = (getattr(self.task, "cost_seconds", None) or {}).get("hf"), "documented"
        cost = "cost unknown" if each is None else f"about {missing * each:.0f} s of HF simulation ({each:.3g} s each, {how})"
        get_run_logger().warning("evaluation: simulating %d held-out HF test pairs outside the HF budget, %s; "
                                 "--test-pairs 0 skips them", missing, cost)

    def target_observation(self) -> tuple[np.ndarray, np.ndarray | None]:
        """x_o of a run at one observation and, for a held-out test observation, its true θ."""
        config = self.config
        if config.observation is not None:
            return np.asarray(config.observation, dtype=np.float64), None
        theta, x = self.test_pairs(config.observation_index + 1)
        if len(x) <= config.observation_index:
            raise RuntimeError(f"held-out observation {config.observation_index} failed to simulate; pick another index")
        return x[config.observation_index], theta[config.observation_index]

    def read_artifact(self, name: str) -> bytes | None:
        """A file of this run, or ``None`` when it is not stored (yet)."""
        try:
            return self.store.read_artifact(f"{self.prefix}/{name}")
        except FileNotFoundError:
            return None

    def write_artifact(self, name: str, data: bytes) -> str:
        """Stores a file of this run; returns its path as summaries name it."""
        self.store.write_artifact(f"{self.prefix}/{name}", data)
        return self.artifact(name)

    def finish(self, summary: RunSummary, samples: np.ndarray | None, truth: np.ndarray | None,
               where: str) -> None:
        """Saves the run's outputs: samples, pair plot, ``summary.json``, and ``latest.json``.

        Arguments:
            summary: completed in place with the artifact locations, wall time and config.
            samples: posterior samples at the run's observation (``None``: no plot).
            truth: the true θ to mark in the plot, when known.
            where: what the samples condition on, for the plot's title.
        """
        config = self.config
        if samples is not None:
            if config.observation is not None or self.method.family is not AMORTIZED:
                buffer = io.BytesIO()
                np.save(buffer, samples, allow_pickle=False)
                summary.samples = self.write_artifact("samples.npy", buffer.getvalue())
            title = f"{self.task.name} {self.name}: {where}"
            png = pair_plot_png(samples, self.task, truth, title)
            summary.pair_plot = self.write_artifact("pairplot.png", png)
            self.publish_image(summary.pair_plot, png, f"posterior pair plot at {where}")
        summary.wall_seconds = round(time.perf_counter() - self.started, 2)
        summary.finished_at = datetime.now(timezone.utc).isoformat()
        summary.config = config.model_dump()
        self.write_artifact("summary.json", json.dumps(summary.to_dict(), indent=2).encode())
        if self.method.family is AMORTIZED:
            # `mfsbi sample` and `mfsbi.load_posterior` load the latest amortised run by default.
            self.store.write_artifact("latest.json", json.dumps({"task": config.task, "run": self.prefix}).encode())


# Internal objects (the run's executor, store and task) are passed through: no validation of them.
@task(name="simulate", cache_policy=NO_CACHE, task_run_name="simulate {fidelity} ×{num_rows} ({table})")
def simulate_table(run: Run, *, table: str, fidelity: str, num_rows: int, chunk_size: int, seed: int,
                   budget: int | None) -> SimulationReport:
    """Reserves rows drawn from the prior until the table holds ``num_rows``, then simulates the pending ones."""
    sim_table = ensure_rows(
        run.store, run.task, table=table, fidelity=fidelity, num_rows=num_rows, chunk_size=chunk_size,
        seed=seed, config_hash=run.config_hash(fidelity, chunk_size, seed), budget=budget,
    )
    return run.simulate_pending(sim_table, table=table, fidelity=fidelity)


@task(name="train", cache_policy=NO_CACHE, task_run_name="{label}")
def train_jobs(executor: BatchExecutor, jobs: list[TrainJob | MultilevelJob], label: str) -> list[TrainResult]:
    """Trains one estimator per job (ensemble members in parallel across workers), in job order."""
    progress.report(label, 0, len(jobs))
    # Each job's epochs are reported under this label, as its member of the ensemble.
    indexed = [(i, dataclasses.replace(job, label=label, member=i)) for i, job in enumerate(jobs)]
    results: dict[int, TrainResult] = {}
    resources = training_resources(jobs[0].device, executor) if jobs else None
    with epoch_progress(executor, label, len(jobs)):
        for done, (i, result) in enumerate(executor.map_unordered(_train_indexed, indexed, resources), start=1):
            results[i] = result
            progress.report(label, done, len(jobs))
    for result in results.values():
        get_run_logger().info("%s: %d simulations, %d epochs, %.1f s on %s (worker %s)", label,
                              result.num_simulations, result.epochs, result.seconds, result.device, result.worker)
    return [results[i] for i in range(len(jobs))]


def _slug(text: str) -> str:
    """Lowercase letters, digits and dashes: what Prefect artifact keys (and tidy file names) allow."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _train_indexed(item: tuple[int, TrainJob | MultilevelJob]) -> tuple[int, TrainResult]:
    job = item[1]
    return item[0], train_multilevel(job) if isinstance(job, MultilevelJob) else train_estimator(job)

"""What a run trains: its training jobs (the paper's estimator), trained on the executor's workers.

:class:`RunTraining` is the part of a :class:`~mfsbi.flows.run.Run` that builds and trains jobs; the
Prefect task :func:`train_jobs` takes the executor and the jobs, never the run. Caching is off: a
trained checkpoint is stored by whoever asked for it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NONE as NO_CACHE

from mfsbi.flows.evaluation import loss_curves_png
from mfsbi.flows.plan import RunPlan
from mfsbi.flows.run_artifacts import RunArtifacts, slug
from mfsbi.flows.training_progress import epoch_progress
from mfsbi.inference import EstimatorConfig, TrainingConfig
from mfsbi.runtime import progress
from mfsbi.runtime.executor import BatchExecutor, DaskExecutor
from mfsbi.runtime.multilevel_jobs import MultilevelJob, train_multilevel
from mfsbi.runtime.training_jobs import TrainJob, TrainResult, train_estimator
from mfsbi.storage import SimulationStore

__all__ = ["RunTraining", "resolve_device", "train_jobs", "training_resources"]


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


def _train_indexed(item: tuple[int, TrainJob | MultilevelJob]) -> tuple[int, TrainResult]:
    job = item[1]
    return item[0], train_multilevel(job) if isinstance(job, MultilevelJob) else train_estimator(job)


@dataclass
class RunTraining:
    """The trainings of one run: jobs on its tables, trained on its executor, loss curves with its files.

    Arguments:
        plan: the run's settings and task; store: where the jobs read their rows; executor: where they run;
        device: where training runs; artifacts: where the loss curves go.
    """

    plan: RunPlan
    store: SimulationStore
    executor: BatchExecutor
    device: str
    artifacts: RunArtifacts

    def train_job(self, *, table: str, fidelity: str, limit: int, learning_rate: float, seed: int,
                  pretrained: bytes | None, refit_x_zscore: bool = True, batch_size: int = 200,
                  anchor_penalty: float = 0.0, exclude_rows: tuple[int, ...] = (),
                  validate_on_excluded: bool = False) -> TrainJob:
        """A training job on the first ``limit`` rows of a table (but ``exclude_rows``, which stop it
        with ``validate_on_excluded``), with the paper's estimator."""
        config = self.plan.config
        return TrainJob(self.store.url, config.task, table, fidelity, limit, self.estimator_config(),
                        self.training_config(learning_rate, seed, batch_size, anchor_penalty), pretrained, self.device,
                        refit_x_zscore=refit_x_zscore, training_memory=config.training_memory,
                        exclude_rows=exclude_rows, validate_on_excluded=validate_on_excluded)

    def estimator_config(self) -> dict:
        """The paper's estimator for this task, as a job carries it."""
        task = self.plan.task
        if task.embedding:  # a CNN for images, its input z-scored as one block
            return EstimatorConfig(embedding=task.embedding, x_shape=task.x_shape, z_score_x="structured").to_dict()
        return EstimatorConfig().to_dict()

    def training_config(self, learning_rate: float, seed: int, batch_size: int = 200,
                        anchor_penalty: float = 0.0) -> dict:
        """The training settings of a job, as it carries them."""
        return TrainingConfig(learning_rate=learning_rate, max_num_epochs=self.plan.config.max_num_epochs,
                              seed=seed, batch_size=batch_size, anchor_penalty=anchor_penalty).to_dict()

    def train(self, jobs: list[TrainJob | MultilevelJob], label: str) -> list[TrainResult]:
        """Trains one estimator per job (ensemble members in parallel across workers), in job order.

        The members' loss curves are stored with the run and shown on the flow run's page.
        """
        results = train_jobs(self.executor, jobs, label=label)
        curves = [r.validation_losses for r in results if r.validation_losses]
        if curves:
            name = f"loss-{slug(label)}.png"
            png = loss_curves_png(curves, f"{self.plan.task.name} {self.plan.name}: {label}")
            self.artifacts.publish_image(self.artifacts.write_artifact(name, png), png,
                                         f"{label}: validation loss per epoch")
        return results

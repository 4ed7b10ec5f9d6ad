"""Where a run writes: its files under ``artifacts/<task>/<run>/``, its pictures in the UI, ``latest.json``.

:class:`RunArtifacts` is the part of a :class:`~mfsbi.flows.run.Run` that stores and publishes; it
knows the run's plan (its names) and its store, nothing of simulation or training.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from prefect import get_run_logger
from prefect.artifacts import create_image_artifact

from mfsbi.flows.evaluation import calibration_png, pair_plot_png
from mfsbi.flows.methods import AMORTIZED
from mfsbi.flows.plan import RunPlan
from mfsbi.flows.summary import RunSummary
from mfsbi.storage import SimulationStore

__all__ = ["RunArtifacts", "slug"]


def slug(text: str) -> str:
    """Lowercase letters, digits and dashes: what Prefect artifact keys (and tidy file names) allow."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@dataclass
class RunArtifacts:
    """The files of one run in the store, and their publication on the flow run's page.

    Arguments:
        plan: the run's names (its folder is ``plan.prefix``).
        store: the simulation store the files go in.
        started: when the run began (``time.perf_counter``), for its wall time.
    """

    plan: RunPlan
    store: SimulationStore
    started: float

    def location(self, path: str) -> str:
        """Where a stored file is, absolute (the store's folder or URL, then ``artifacts/...``)."""
        return f"{self.store.url.rstrip('/')}/{path}"

    def read_artifact(self, name: str) -> bytes | None:
        """A file of this run, or ``None`` when it is not stored (yet)."""
        try:
            return self.store.read_artifact(f"{self.plan.prefix}/{name}")
        except FileNotFoundError:
            return None

    def write_artifact(self, name: str, data: bytes) -> str:
        """Stores a file of this run; returns its path as summaries name it."""
        self.store.write_artifact(f"{self.plan.prefix}/{name}", data)
        return self.plan.artifact(name)

    def publish_image(self, path: str, png: bytes, what: str) -> None:
        """Publishes a stored PNG as an image artifact of the flow run (a data URL: the UI draws it offline).

        The artifact's page shows the picture; the flow run's page lists the artifact
        (benchmarks/ui_screenshot.py checks both with headless Chromium).
        """
        plan = self.plan
        key = slug(f"{plan.name}-{path.rsplit('/', 1)[-1]}")[:100]
        create_image_artifact(image_url="data:image/png;base64," + base64.b64encode(png).decode(), key=key,
                              description=f"{plan.task.name} {plan.name}: {what} ({self.location(path)})")

    def record_calibration(self, summary: RunSummary, result, on: str) -> None:
        """Puts a :class:`~mfsbi.inference.Calibration` in the summary, its plot in the store and the UI."""
        plan = self.plan
        summary.calibration = {**result.to_dict(), "on": on}
        png = calibration_png(result, plan.task.parameter_names, f"{plan.task.name} {plan.name}: {on}")
        summary.calibration_plot = self.write_artifact("calibration.png", png)
        self.publish_image(summary.calibration_plot, png, f"calibration: {result.verdict} ({on})")
        get_run_logger().info("calibration on %s: %s (%s)", on, result.verdict, result.test)

    def finish(self, summary: RunSummary, samples: np.ndarray | None, truth: np.ndarray | None,
               where: str) -> None:
        """Saves the run's outputs: samples, pair plot, ``summary.json``, and ``latest.json``.

        Arguments:
            summary: completed in place with the artifact locations, wall time and config.
            samples: posterior samples at the run's observation (``None``: no plot).
            truth: the true θ to mark in the plot, when known.
            where: what the samples condition on, for the plot's title.
        """
        plan, config = self.plan, self.plan.config
        if samples is not None:
            if config.observation is not None or plan.method.family is not AMORTIZED:
                buffer = io.BytesIO()
                np.save(buffer, samples, allow_pickle=False)
                summary.samples = self.write_artifact("samples.npy", buffer.getvalue())
            title = f"{plan.task.name} {plan.name}: {where}"
            png = pair_plot_png(samples, plan.task, truth, title)
            summary.pair_plot = self.write_artifact("pairplot.png", png)
            self.publish_image(summary.pair_plot, png, f"posterior pair plot at {where}")
        summary.wall_seconds = round(time.perf_counter() - self.started, 2)
        summary.finished_at = datetime.now(timezone.utc).isoformat()
        summary.config = config.model_dump()
        self.write_artifact("summary.json", json.dumps(summary.to_dict(), indent=2).encode())
        if plan.method.family is AMORTIZED:
            # `mfsbi sample` and `mfsbi.load_posterior` load the latest amortised run by default.
            self.store.write_artifact("latest.json", json.dumps({"task": config.task, "run": plan.prefix}).encode())

"""Evaluating a trained posterior on held-out high-fidelity observations."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch

from mfsbi.flows.seeds import derive_seed
from mfsbi.simulators import Task

__all__ = ["Evaluation", "evaluate_posterior", "pair_plot_png", "sample_posterior"]


@dataclass
class Evaluation:
    """Metrics of one posterior; C2ST per reference, averaged over the test observations."""

    c2st: dict[str, float] = field(default_factory=dict)
    c2st_per_observation: dict[str, list[float]] = field(default_factory=dict)
    mmd: dict[str, float] = field(default_factory=dict)
    nltp: float | None = None
    nrmse: float | None = None
    num_c2st_observations: int = 0
    num_nltp_pairs: int = 0

    def as_rows(self) -> list[tuple[str, str]]:
        """(metric, value) rows for tables: CLI, Prefect artifacts."""
        rows = []
        for name, value in self.c2st.items():
            rows.append((f"C2ST vs {name} reference (mean of {self.num_c2st_observations} obs.)", f"{value:.3f}"))
        for name, value in self.mmd.items():
            rows.append((f"MMD² vs {name} reference", f"{value:.4f}"))
        if self.nltp is not None:
            rows.append((f"NLTP ({self.num_nltp_pairs} held-out pairs)", f"{self.nltp:.3f}"))
        if self.nrmse is not None:
            rows.append(("NRMSE", f"{self.nrmse:.3f}"))
        return rows


def sample_posterior(posterior, x_o: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """Seeded samples of ``posterior`` at one observation, float64 ``(num_samples, d)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        samples = posterior.sample((num_samples,), x=torch.as_tensor(x_o, dtype=torch.float32),
                                   show_progress_bars=False)
    return samples.detach().cpu().double().numpy()


def evaluate_posterior(posterior, task: Task, test_theta: np.ndarray, test_x: np.ndarray, *,
                       num_c2st: int, num_samples: int, seed: int) -> Evaluation:
    """C2ST and MMD against each exact reference (when the task has one), NLTP and NRMSE.

    Arguments:
        posterior: an sbi posterior (``.sample``, ``.log_prob``).
        task: the task (its references and prior bounds).
        test_theta, test_x: held-out HF pairs; the first ``num_c2st`` serve C2ST and NRMSE, all NLTP.
        num_c2st: observations used for C2ST.
        num_samples: posterior and reference samples per observation.
        seed: the evaluation seed (fixed across run seeds, so runs are compared on equal terms).
    """
    from mfsbi.inference import c2st, mmd_squared, nltp, nrmse

    result = Evaluation(num_c2st_observations=min(num_c2st, len(test_x)), num_nltp_pairs=len(test_x))
    low, high = task.parameter_ranges()
    samples = [sample_posterior(posterior, test_x[i], num_samples, derive_seed(seed, "posterior", i))
               for i in range(result.num_c2st_observations)]
    if samples:
        result.nrmse = float(np.mean([nrmse(samples[i], test_theta[i], low, high) for i in range(len(samples))]))
    for name, reference in task.references.items():
        scores, mmds = [], []
        for i, own in enumerate(samples):
            ref = reference(test_x[i], num_samples, derive_seed(seed, f"reference/{name}", i))
            scores.append(c2st(own, ref, seed=derive_seed(seed, "c2st", i) % 2**31))
            mmds.append(mmd_squared(own, ref))
        if scores:
            result.c2st_per_observation[name] = [float(s) for s in scores]
            result.c2st[name] = float(np.mean(scores))
            result.mmd[name] = float(np.mean(mmds))
    if len(test_x):
        result.nltp = float(nltp(posterior, torch.as_tensor(test_theta, dtype=torch.float32),
                                 torch.as_tensor(test_x, dtype=torch.float32)))
    return result


def pair_plot_png(samples: np.ndarray, task: Task, truth: np.ndarray | None, title: str) -> bytes:
    """A pair plot of posterior samples (sbi's ``pairplot``), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sbi.analysis import pairplot

    low, high = task.parameter_ranges()
    fig, _ = pairplot(
        samples, points=None if truth is None else truth[None, :],
        limits=list(zip(low.tolist(), high.tolist())), labels=list(task.parameter_names), figsize=(6, 6),
        # Fixed bins: sbi's default Freedman-Diaconis width is 0 for degenerate samples (ABC with
        # few accepted rows) and its np.arange then explodes.
        diag_kwargs={"mpl_kwargs": {"bins": 50, "histtype": "step", "density": False}},
    )
    fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()

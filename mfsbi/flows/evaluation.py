"""Evaluating a posterior: one metrics function for every family, samples, and the pair plot."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from sbi.analysis import pairplot, sbc_rank_plot

from mfsbi.flows.summary import Metrics
from mfsbi.inference import c2st, calibration, calibration_at, mmd_squared, nltp, nrmse
from mfsbi.runtime.seeds import derive_seed
from mfsbi.simulators import Task

__all__ = ["CALIBRATION_MAX_SAMPLES", "CALIBRATION_REFERENCE_DRAWS", "calibration_at_reference",
           "calibration_on_pairs", "calibration_png", "evaluate_posterior", "loss_curves_png", "pair_plot_png", "posterior_metrics", "sample_posterior"]


# Posterior samples per calibration pair (at most; fewer when the run asks for fewer posterior
# samples), and the exact-posterior draws a sequential run's local calibration ranks.
CALIBRATION_MAX_SAMPLES = 1000
CALIBRATION_REFERENCE_DRAWS = 200


def calibration_on_pairs(posterior, theta: np.ndarray, x: np.ndarray, *, num_samples: int, seed: int,
                         max_bytes: int | None = None):
    """SBC + TARP of an amortised posterior on held-out pairs, with ``on`` (what it ran on); None under 2 pairs.

    ``max_bytes`` bounds one sampling call's memory (the run's ``--training-memory``; default 256 MiB).
    """
    if len(theta) < 2:
        return None, ""
    bound = {} if max_bytes is None else {"max_batch_bytes": max_bytes}
    result = calibration(posterior, theta, x, num_posterior_samples=min(num_samples, CALIBRATION_MAX_SAMPLES),
                         seed=seed, **bound)
    return result, f"{len(theta)} held-out HF pairs"


def calibration_at_reference(posterior, task: Task, x_o: np.ndarray, *, num_samples: int, seed: int):
    """SBC + TARP at x_o against draws of the task's first exact reference, with ``on``; None without one."""
    if not task.references:
        return None, ""
    name, reference = next(iter(task.references.items()))
    draws = reference(x_o, CALIBRATION_REFERENCE_DRAWS, derive_seed(seed, f"reference/{name}"))
    result = calibration_at(posterior, x_o, draws, num_posterior_samples=min(num_samples, CALIBRATION_MAX_SAMPLES),
                            seed=seed)
    return result, f"x_o, {CALIBRATION_REFERENCE_DRAWS} draws of the {name} reference"


def sample_posterior(posterior, x_o: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """Seeded samples of ``posterior`` at one observation, float64 ``(num_samples, d)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        samples = posterior.sample((num_samples,), x=torch.as_tensor(x_o, dtype=torch.float32),
                                   show_progress_bars=False)
    return samples.detach().cpu().double().numpy()


def posterior_metrics(task: Task, samples: Sequence[np.ndarray], x_o: Sequence[np.ndarray], *, num_samples: int,
                      reference_seed: Callable[[str, int], int], c2st_seed: Callable[[int], int],
                      theta_true: Sequence[np.ndarray] | None = None,
                      nrmse_samples: Sequence[np.ndarray] | None = None, nltp: float | None = None,
                      num_nltp_pairs: int = 0, per_observation: bool = True) -> Metrics:
    """The metrics of every family: C2ST and MMD against each exact reference, NRMSE, and NLTP.

    Arguments:
        task: the task (its references and prior bounds).
        samples: posterior samples at each observation (an estimator's, or ABC's weighted draws).
        x_o: the observations.
        num_samples: reference samples per observation.
        reference_seed: ``(reference name, observation index) -> seed`` of the reference samples.
        c2st_seed: ``observation index -> seed`` of the C2ST classifier.
        theta_true: the true parameters of the observations, when known (NRMSE).
        nrmse_samples: other samples for NRMSE (default ``samples``).
        nltp: the NLTP, computed by the caller on its held-out pairs; num_nltp_pairs: how many.
        per_observation: also record each observation's C2ST.

    Returns:
        The metrics; a task without references gets no C2ST or MMD.
    """
    metrics = Metrics(num_c2st_observations=len(samples), num_nltp_pairs=num_nltp_pairs, nltp=nltp,
                      c2st_per_observation={} if per_observation else None)
    if theta_true is not None and len(samples):
        low, high = task.parameter_ranges()
        own = samples if nrmse_samples is None else nrmse_samples
        metrics.nrmse = float(np.mean([nrmse(own[i], theta_true[i], low, high) for i in range(len(own))]))
    for name, reference in task.references.items():
        scores, mmds = [], []
        for i, drawn in enumerate(samples):
            ref = reference(x_o[i], num_samples, reference_seed(name, i))
            scores.append(c2st(drawn, ref, seed=c2st_seed(i)))
            mmds.append(mmd_squared(drawn, ref))
        if scores:
            if per_observation:
                metrics.c2st_per_observation[name] = [float(s) for s in scores]
            metrics.c2st[name] = float(np.mean(scores))
            metrics.mmd[name] = float(np.mean(mmds))
    return metrics


def evaluate_posterior(posterior, task: Task, test_theta: np.ndarray, test_x: np.ndarray, *,
                       num_c2st: int, num_samples: int, seed: int) -> Metrics:
    """An amortised posterior on held-out HF pairs: the first ``num_c2st`` for C2ST and NRMSE, all for NLTP.

    Arguments:
        posterior: an sbi posterior (``.sample``, ``.log_prob``).
        task: the task.
        test_theta, test_x: held-out HF pairs.
        num_c2st: observations used for C2ST.
        num_samples: posterior and reference samples per observation.
        seed: the evaluation seed (fixed across run seeds, so runs are compared on equal terms).
    """
    count = min(num_c2st, len(test_x))
    samples = [sample_posterior(posterior, test_x[i], num_samples, derive_seed(seed, "posterior", i))
               for i in range(count)]
    value = None
    if len(test_x):
        value = float(nltp(posterior, torch.as_tensor(test_theta, dtype=torch.float32),
                           torch.as_tensor(test_x, dtype=torch.float32)))
    return posterior_metrics(
        task, samples, test_x, num_samples=num_samples,
        reference_seed=lambda name, i: derive_seed(seed, f"reference/{name}", i),
        c2st_seed=lambda i: derive_seed(seed, "c2st", i) % 2**31,
        theta_true=test_theta, nltp=value, num_nltp_pairs=len(test_x),
    )


def pair_plot_png(samples: np.ndarray, task: Task, truth: np.ndarray | None, title: str) -> bytes:
    """A pair plot of posterior samples (sbi's ``pairplot``), as PNG bytes."""
    matplotlib.use("Agg")

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


def loss_curves_png(curves: Sequence[Sequence[float]], title: str) -> bytes:
    """Validation loss per epoch of each trained estimator (one line per ensemble member), as PNG bytes."""
    matplotlib.use("Agg")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for member, losses in enumerate(curves):
        epochs = np.arange(1, len(losses) + 1)
        ax.plot(epochs, losses, lw=1, label=f"member {member}" if len(curves) > 1 else "validation")
        best = int(np.argmin(losses))
        ax.plot(epochs[best], losses[best], "o", ms=4, color=ax.lines[-1].get_color())
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss, -log q(θ | x)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def calibration_png(result, parameter_names: Sequence[str], title: str) -> bytes:
    """SBC rank CDFs per parameter (sbi's ``sbc_rank_plot``) beside TARP's coverage curve, as PNG bytes."""
    matplotlib.use("Agg")

    fig, (ranks_ax, tarp_ax) = plt.subplots(1, 2, figsize=(9, 4))
    # sbi bins num_pairs // 20 by default: 0 bins (an error) under 20 pairs.
    sbc_rank_plot(np.asarray(result.ranks), result.num_posterior_samples, plot_type="cdf",
                  num_bins=max(2, result.num_pairs // 20),
                  parameter_labels=list(parameter_names), fig=fig, ax=ranks_ax)
    ranks_ax.set_title(f"SBC ranks ({result.num_pairs} pairs)", fontsize=9)
    tarp_ax.plot(result.credibility, result.coverage, label="TARP")
    tarp_ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    tarp_ax.set_xlabel("credibility level α")
    tarp_ax.set_ylabel("expected coverage")
    tarp_ax.set_title(f"TARP: ATC {result.tarp_atc:+.3f}, KS p {result.tarp_ks_pvalue:.3g}", fontsize=9)
    tarp_ax.legend(fontsize=7)
    fig.suptitle(f"{title}: {result.verdict}", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()

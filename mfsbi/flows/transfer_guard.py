"""The transfer guard of the MF methods: the fine-tuned estimator against one trained from scratch.

Both are scored by their log probability log q(θ | x) on HF pairs neither trained on; the amortised
flow scores them on its held-out test pairs (the NLTP pairs), the sequential flow on the last
round's new rows before it trains on them. ``select`` keeps the better, ``report`` the fine-tuned;
either way the comparison goes into the summary, and a worse fine-tuned estimator is a warning.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["compare_with_scratch", "not_compared", "warn_on_negative_transfer"]


def not_compared(reason: str) -> dict[str, Any]:
    """The guard's record when it could not compare (the run keeps the fine-tuned estimator)."""
    return {"compared": False, "kept": "fine-tuned", "reason": reason}


def compare_with_scratch(tuned: np.ndarray, scratch: np.ndarray, *, mode: str, on: str,
                         scratch_train: Any) -> dict[str, Any]:
    """The guard's record from per-pair log probabilities of both estimators on the same held-out pairs.

    Arguments:
        tuned: log q(θ_i | x_i) of the fine-tuned estimator, one per pair.
        scratch: the same for the estimator trained from scratch.
        mode: ``select`` (keep the better by mean log q) or ``report`` (keep the fine-tuned).
        on: what the pairs are, for the reader.
        scratch_train: the from-scratch training's record(s).

    Returns:
        A JSON-ready dict: both means, their difference with its standard error and Wilcoxon's
        signed-rank p-value, which scored better and which the run kept.
    """
    from scipy.stats import wilcoxon

    d = np.asarray(tuned, dtype=np.float64) - np.asarray(scratch, dtype=np.float64)
    better = "fine-tuned" if d.mean() >= 0 else "from scratch"
    return {
        "compared": True, "on": on, "num_pairs": len(d), "log_prob_fine_tuned": float(np.mean(tuned)),
        "log_prob_scratch": float(np.mean(scratch)), "difference": float(d.mean()),
        "standard_error": float(d.std(ddof=1) / np.sqrt(len(d))),
        "wilcoxon_pvalue": float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0,
        "better": better, "kept": better if mode == "select" else "fine-tuned", "mode": mode,
        "scratch_train": scratch_train,
    }


def warn_on_negative_transfer(guard: dict[str, Any]) -> None:
    """Logs a warning on the flow run when the estimator from scratch scored better."""
    if not guard.get("compared") or guard["better"] != "from scratch":
        return
    from prefect import get_run_logger

    get_run_logger().warning(
        "negative transfer: on %d %s the estimator trained from scratch scored %.3f, the fine-tuned one %.3f "
        "(mean log q); kept the %s%s", guard["num_pairs"], guard["on"], guard["log_prob_scratch"],
        guard["log_prob_fine_tuned"], guard["kept"], "" if guard["kept"] == "from scratch" else " (--transfer-guard report)")

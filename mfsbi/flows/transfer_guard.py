"""The transfer guard of the MF methods: the fine-tuned estimator against one trained from scratch.

Both are scored by their log probability log q(θ | x) on HF rows neither trained on: the sequential
flow scores them on the last round's new rows (inside the HF budget) before it trains on them.
``select`` keeps the fine-tuned estimator unless the one from scratch is *clearly* better, by the
rule MF-NPE's selection uses (:func:`mfsbi.inference.selection.choose`): the 95 % bootstrap lower
bound of the mean paired difference above :data:`GUARD_MARGIN` nats. The old rule kept whichever
mean was higher and flipped on noise: 0.920 against 0.868 mean log q on 20 rows trained the last
round of an A-MF-TSNPE run from scratch and cost 0.13 C2ST (issue 34). ``report`` keeps the
fine-tuned estimator; either way the comparison goes into the summary, and a from-scratch estimator
that scored better is a warning.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import get_run_logger
from scipy.stats import wilcoxon

from mfsbi.flows.selection import SELECTION_MARGIN
from mfsbi.inference.selection import choose

__all__ = ["GUARD_MARGIN", "compare_with_scratch", "not_compared", "warn_on_negative_transfer"]

#: Nats of mean log q the estimator from scratch must clearly gain before it replaces the fine-tuned
#: chain: the margin MF-NPE's selection fixed on its development seeds (docs/selection.md), taken as
#: it is (docs/decisions.md, "The sequential guard's margin").
GUARD_MARGIN = SELECTION_MARGIN


def not_compared(reason: str) -> dict[str, Any]:
    """The guard's record when it could not compare (the run keeps the fine-tuned estimator)."""
    return {"compared": False, "kept": "fine-tuned", "reason": reason}


def compare_with_scratch(tuned: np.ndarray, scratch: np.ndarray, *, mode: str, on: str,
                         scratch_train: Any, seed: int = 0) -> dict[str, Any]:
    """The guard's record from per-pair log probabilities of both estimators on the same held-out pairs.

    Arguments:
        tuned: log q(θ_i | x_i) of the fine-tuned estimator, one per pair.
        scratch: the same for the estimator trained from scratch.
        mode: ``select`` or ``stack`` (keep the fine-tuned unless from scratch is clearly better: a
            sequential run has no candidates to stack) or ``report`` (keep the fine-tuned).
        on: what the pairs are, for the reader.
        scratch_train: the from-scratch training's record(s).
        seed: seeds the bootstrap.

    Returns:
        A JSON-ready dict: both means, their difference with its standard error, 90 % bootstrap
        interval and Wilcoxon's signed-rank p-value, which scored better by mean, which the rule
        chose (``chosen``, with its ``reason`` and ``margin``) and which the run kept.
    """
    d = np.asarray(tuned, dtype=np.float64) - np.asarray(scratch, dtype=np.float64)
    better = "fine-tuned" if d.mean() >= 0 else "from scratch"
    choice = choose({"fine-tuned": tuned, "from scratch": scratch}, default="fine-tuned", margin=GUARD_MARGIN,
                    seed=seed)
    scratch_row = choice.scores["from scratch"]
    return {
        "compared": True, "on": on, "num_pairs": len(d), "log_prob_fine_tuned": float(np.mean(tuned)),
        "log_prob_scratch": float(np.mean(scratch)), "difference": float(d.mean()),
        "standard_error": float(d.std(ddof=1) / np.sqrt(len(d))),
        "wilcoxon_pvalue": float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0,
        "scratch_gain_interval": [scratch_row["vs_default_lower"], scratch_row["vs_default_upper"]],
        "margin": GUARD_MARGIN, "better": better, "chosen": choice.kept, "reason": choice.reason,
        "kept": choice.kept if mode in ("stack", "select") else "fine-tuned", "mode": mode,
        "scratch_train": scratch_train,
    }


def warn_on_negative_transfer(guard: dict[str, Any]) -> None:
    """Logs a warning on the flow run when the estimator from scratch scored better (clearly or not)."""
    if not guard.get("compared") or guard["better"] != "from scratch":
        return
    clearly = guard.get("chosen", guard["better"]) == "from scratch"
    why = ("" if guard["kept"] == "from scratch" else " (--transfer-guard report)" if clearly
           else f": not clearly ({guard.get('reason', '')})")
    get_run_logger().warning(
        "%s: on %d %s the estimator trained from scratch scored %.3f, the fine-tuned one %.3f (mean log q); "
        "kept the %s%s", "negative transfer" if clearly else "possible negative transfer", guard["num_pairs"],
        guard["on"], guard["log_prob_scratch"], guard["log_prob_fine_tuned"], guard["kept"], why)

"""The posterior predictive check's figure: per statistic, HF and LF draws against x_o."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from mfsbi.flows.ppc_traces import Trace
from mfsbi.inference.predictive import PredictiveCheck

__all__ = ["ppc_png"]

# Statistics per row of panels.
COLUMNS = 4


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def ppc_png(check: PredictiveCheck, hf: np.ndarray, lf: np.ndarray | None, title: str,
            plausible: tuple[float, float] | None = None, traces: Sequence[Trace] = ()) -> bytes:
    """One histogram per statistic: the HF draws (filled), the LF twins (outline), the HF interval and x_o.

    Arguments:
        check: the HF check (names, x_o, intervals, p-values).
        hf, lf: statistics simulated at the posterior draws, shape ``(N, d)`` (LF: None when none).
        title: the figure's title (the verdict is added below it).
        plausible: the range of a plausible statistic to shade (the network's 1-50 Hz), if any.
        traces: raw traces of a few draws (:func:`~mfsbi.flows.ppc_traces.traces_of`), drawn in a bottom row.

    Returns:
        PNG bytes.
    """
    matplotlib.use("Agg")

    d = len(check.names)
    rows = math.ceil(d / COLUMNS)
    columns = min(d, COLUMNS)
    fig = plt.figure(figsize=(3.2 * max(columns, 3), 2.6 * (rows + bool(traces)) + 0.8))
    grid = fig.add_gridspec(rows + bool(traces), columns)
    axes = [[fig.add_subplot(grid[r, c]) for c in range(columns)] for r in range(rows)]
    for j, name in enumerate(check.names):
        ax = axes[j // COLUMNS][j % COLUMNS]
        shown = [_finite(hf[:, j])] + ([_finite(lf[:, j])] if lf is not None else [])
        values = np.concatenate(shown + [check.x_o[j:j + 1][np.isfinite(check.x_o[j:j + 1])]])
        # Shared bins: HF and LF are compared at a glance; a constant statistic still gets one bin.
        bins = np.histogram_bin_edges(values, bins=30) if values.size and np.ptp(values) > 0 else 10
        ax.hist(shown[0], bins=bins, color="tab:blue", alpha=0.6, label="HF")
        if lf is not None:
            ax.hist(shown[1], bins=bins, histtype="step", color="tab:orange", lw=1.5, label="LF")
        if np.isfinite(check.low[j]):
            ax.axvspan(check.low[j], check.high[j], color="tab:blue", alpha=0.08)
        if plausible is not None:
            for edge in plausible:
                ax.axvline(edge, color="grey", ls=":", lw=1)
        ax.axvline(check.x_o[j], color="black" if name not in check.flagged else "red", lw=2, label="x_o")
        p = check.p_value[j]
        ax.set_title(f"{name}: p={p:.3g}" if np.isfinite(p) else name, fontsize=9,
                     color="red" if name in check.flagged else "black")
        ax.tick_params(labelsize=7)
    for k in range(d, rows * columns):
        axes[k // COLUMNS][k % COLUMNS].axis("off")
    axes[0][0].legend(fontsize=7)
    if traces:
        _draw_traces(fig.add_subplot(grid[rows, :]), traces)
    fig.suptitle(f"{title}\n{check.verdict}", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _draw_traces(ax, traces: Sequence[Trace]) -> None:  # noqa: ANN001 -- a matplotlib Axes
    """HF traces solid, their LF twins dashed, one colour per draw."""
    colours = {}
    for row, fidelity, times, voltage, _ in traces:
        colour = colours.setdefault(row, f"C{len(colours)}")
        ax.plot(times, voltage, color=colour, lw=0.8, ls="-" if fidelity == "hf" else "--",
                label=f"draw {row} {fidelity.upper()}")
    ax.set_xlabel("time (ms)", fontsize=8)
    ax.set_ylabel("somatic voltage (mV)", fontsize=8)
    ax.set_title("raw traces at posterior draws (HF solid, LF dashed)", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, ncol=len(colours))

"""A finished run's summary on the terminal: the rounds table of a sequential run, then the results."""

from __future__ import annotations

from rich.table import Table

from mfsbi.app.console import name_column, print_table
from mfsbi.flows.summary import RunSummary

__all__ = ["print_summary"]


def _print_rounds(summary: RunSummary) -> None:
    table = Table(title=f"{summary.task} · {summary.run} · rounds")
    references = sorted({name for row in summary.rounds for name in row.c2st})
    for column in ("round", "HF this round", "HF total", "truncated-prior acceptance", "acquired",
                   "previous posterior on these rows", *(f"C2ST vs {r}" for r in references)):
        table.add_column(column, justify="right")
    for row in summary.rounds:
        rate = row.acceptance_rate
        coverage = "-" if row.coverage is None else f"{row.coverage.get('verdict') or '-'} ({row.coverage['used']} rows)"
        table.add_row(str(row.round + 1), str(row.new_simulations), str(row.total_simulations),
                      "-" if rate is None else f"{rate:.3f}", str(row.acquired or 0), coverage,
                      *(f"{row.c2st[r]:.3f}" for r in references))
    print_table(table)


def _selection_rows(table: Table, summary: RunSummary) -> None:
    """One row per candidate MF-NPE cross-validated (score and interval), then what it kept and why."""
    selection = summary.selection
    if summary.out_of_fold is not None:
        table.add_row(f"NLTP out of fold ({summary.out_of_fold['rows']} HF budget rows)",
                      f"{summary.out_of_fold['nltp']:.3f}")
        if summary.out_of_fold.get("calibration"):
            table.add_row(f"calibration out of fold (SBC + TARP, {summary.out_of_fold['rows']} HF budget rows)",
                          summary.out_of_fold["calibration"])
    if not selection:
        return
    weights = selection.get("weights") or {}
    for name, row in selection["scores"].items():
        mark = " (kept)" if name == selection["kept"] else ""
        calibrated = (selection.get("calibration") or {}).get(name)
        table.add_row(f"candidate {name}{mark}: out-of-fold mean log q" + (", mixture weight" if weights else ""),
                      f"{row['mean']:.3f} [{row['lower']:.3f}, {row['upper']:.3f}]"
                      + (f", {calibrated['verdict']}" if calibrated else "")
                      + (f", {weights.get(name, 0.0):.2f}" if weights else ""))
    table.add_row("kept", selection["reason"])


def print_summary(summary: RunSummary) -> None:
    """Prints what a run gave: metrics, simulations stored, where the posterior and the plot are."""
    if summary.rounds is not None:
        _print_rounds(summary)
    metrics = summary.metrics
    table = Table(title=f"{summary.task} · {summary.run} · {summary.wall_seconds:.0f} s")
    table.add_column("result")
    name_column(table, "value", justify="right")  # the posterior's and the plot's paths stay whole
    where = f"{metrics.num_c2st_observations} held-out obs." if summary.rounds is None else "at x_o"
    for name, value in metrics.c2st.items():
        table.add_row(f"C2ST vs {name} reference ({where})", f"{value:.3f}")
    if metrics.nltp is not None:
        table.add_row(f"NLTP ({metrics.num_nltp_pairs} held-out pairs)", f"{metrics.nltp:.3f}")
    if metrics.nrmse is not None:
        table.add_row("NRMSE", f"{metrics.nrmse:.3f}")
    _selection_rows(table, summary)
    guard = summary.transfer_guard
    if guard and guard.get("compared"):
        gain = guard.get("scratch_gain_interval")
        interval = f" (from scratch − fine-tuned: 90 % {gain[0]:+.3f} … {gain[1]:+.3f}, margin {guard['margin']:g})" if gain else ""
        table.add_row("transfer guard: mean log q, fine-tuned / from scratch",
                      f"{guard['log_prob_fine_tuned']:.3f} / {guard['log_prob_scratch']:.3f}{interval}, kept {guard['kept']}")
    coverage = summary.coverage_at_x_o
    if coverage is not None:
        table.add_row(f"coverage near x_o, no reference (truncated SBC + TARP, {coverage['used']} of "
                      f"{coverage['pairs']} rows of {coverage['on']})", str(coverage.get("verdict") or "-"))
    check = summary.scratch_check
    if check is not None and check.get("compared"):
        table.add_row(f"from-scratch cross-check at x_o (largest marginal shift, rule > {check['threshold']:g} sd)",
                      f"{max(check['shift']):.2f}: kept {check['kept']}")
    if summary.calibration is not None:
        table.add_row(f"calibration (SBC + TARP on {summary.calibration['on']})", summary.calibration["verdict"])
    elif summary.abc is None:
        table.add_row("calibration", "- (no held-out pairs)" if summary.rounds is None else "- (no exact reference at x_o)")
    if summary.lf is not None:
        table.add_row("LF simulations stored ok", str(summary.lf["stored_ok"]))
    table.add_row("HF simulations stored ok", str(summary.hf_stored_ok))
    table.add_row("training device", summary.device)
    posterior = summary.posterior
    table.add_row("posterior", posterior if isinstance(posterior, str) else f"{posterior[0]} (+{len(posterior) - 1})")
    table.add_row("pair plot", summary.pair_plot or "-")
    print_table(table)

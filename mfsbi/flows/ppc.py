"""The posterior predictive check: posterior draws simulated at HF and LF into tables of their own.

A :class:`PpcPlan` is made before anything is spent (the posterior draws, the table, the budget); its
:func:`estimate` says what simulating it will cost, from the HF seconds per simulation the store has
measured. :func:`ppc_flow` then reserves the draws as rows of ``<task>-ppc.<run>.<x_o>.seed<s>`` at HF
(under a hard budget: the table's own) and their twins at LF (same θ and seeds), simulates the pending
rows on the Dask workers as a run does (:func:`~mfsbi.runtime.simulation.run_pending`), and checks x_o
against them (:mod:`mfsbi.inference.predictive`). Stored rows are never simulated again: a rerun of
the same command spends nothing, a larger ``-n`` only the new rows.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timezone

import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import create_image_artifact, create_markdown_artifact

from mfsbi import __version__
from mfsbi.flows.ppc_plan import PpcPlan, check_draws, plausible_range, statistic_names
from mfsbi.flows.ppc_plot import ppc_png
from mfsbi.flows.ppc_traces import traces_of
from mfsbi.inference.predictive import FAMILY_LEVEL, PredictiveCheck, minimum_draws, predictive_check
from mfsbi.runtime import progress
from mfsbi.runtime.cluster import dask_client
from mfsbi.runtime.executor import BatchExecutor, DaskExecutor
from mfsbi.runtime.seeds import derive_seed
from mfsbi.runtime.simulation import SimulationReport, provenance, reserve_twins, run_pending
from mfsbi.simulators import Task, get_task
from mfsbi.storage import SimulationStore, StoreLock

__all__ = ["ppc_flow", "run_ppc"]


def _reserve_draws(store: SimulationStore, task: Task, plan: PpcPlan):
    """The check's HF table, holding the plan's draws as its first rows (reserved now where missing)."""
    theta = np.asarray(plan.theta, dtype=np.float64)
    chunk = plan.chunk_size
    sim_table = store.require_table(
        plan.table, "hf", theta_dim=task.theta_dim, x_dim=task.x_dim, chunk_size=chunk,
        provenance={**provenance(task, "hf", plan.config_hash(task, "hf")), "role": "ppc", "run": plan.run},
        parameter_names=task.parameter_names,
    )
    check_draws(plan, sim_table)
    current = sim_table.budget()
    if current is None or current.total < plan.budget:
        sim_table.set_budget(plan.budget)
    have = sim_table.num_rows
    if have >= len(theta):
        return sim_table
    seeds = [derive_seed(plan.seed, f"sim/{plan.table}/hf", c, max(have, c * chunk))
             for c in range(have // chunk, -(-len(theta) // chunk))]
    # One seed per chunk's new rows, as ensure_rows gives them: a batch is a run of one seed.
    row_seeds = np.array([seeds[r // chunk - have // chunk] for r in range(have, len(theta))], dtype=np.int64)
    sim_table.reserve(theta[have:], row_seeds, round=0)
    return sim_table


def _simulate(executor: BatchExecutor, plan: PpcPlan, task: Task, sim_table, fidelity: str) -> SimulationReport:
    step = f"ppc {fidelity.upper()} ({plan.table})"
    report = run_pending(executor, SimulationStore(plan.store, mode="r").url, plan.task, sim_table, table=plan.table,
                         fidelity=fidelity, max_failure_fraction=plan.max_failure_fraction,
                         timeout=plan.simulation_timeout, seconds_per_row=task.cost_seconds.get(fidelity),
                         progress=lambda done, total: progress.report(step, done, total))
    get_run_logger().info("%s/%s: simulated %d now (%d failed), %d ok in the store", plan.table, fidelity,
                          report.simulated, report.failed, report.stored_ok)
    return report


def _first_rows(sim_table, num_rows: int) -> np.ndarray:
    """x of the first ``num_rows`` rows, NaN where a row failed (a larger earlier check's rows left out)."""
    rows = sim_table.rows("ok")
    _, x = sim_table.read("ok")
    out = np.full((num_rows, sim_table.x_dim), np.nan)
    keep = rows < num_rows
    out[rows[keep]] = x[keep]
    return out


def _fraction_plausible(x: np.ndarray, bounds: tuple[float, float] | None) -> float | None:
    ok = np.isfinite(x).all(axis=1)
    if bounds is None or not ok.any():
        return None
    inside = ((x[ok] >= bounds[0]) & (x[ok] <= bounds[1])).all(axis=1)
    return float(inside.mean())


def run_ppc(plan: PpcPlan, executor: BatchExecutor) -> dict:
    """The body of :func:`ppc_flow` on a given executor; returns the check's summary (also stored)."""
    task = get_task(plan.task)
    store = SimulationStore(plan.store)
    hf_table = _reserve_draws(store, task, plan)
    lf_table = reserve_twins(store, task, source_table=plan.table, source_fidelity="hf", table=plan.table,
                             fidelity="lf", config_hash=plan.config_hash(task, "lf"))
    reports = {"hf": _simulate(executor, plan, task, hf_table, "hf"),
               "lf": _simulate(executor, plan, task, lf_table, "lf")}
    x_o = np.asarray(plan.x_o, dtype=np.float64)
    names = statistic_names(task)
    hf_x, lf_x = _first_rows(hf_table, plan.num_draws), _first_rows(lf_table, plan.num_draws)
    check = predictive_check(hf_x, x_o, names)
    lf_check = predictive_check(lf_x, x_o, names)
    bounds = plausible_range(task)
    traces = traces_of(executor, plan.task, task, hf_table, np.flatnonzero(np.isfinite(hf_x).all(axis=1)))
    png = ppc_png(check, hf_x, lf_x, f"{plan.run}: posterior predictive at {plan.tag}, {plan.num_draws} draws",
                  plausible=bounds, traces=traces)
    plot = f"{plan.run}/{plan.stem}.png"
    store.write_artifact(plot, png)
    summary = _summary(plan, task, check, lf_check, reports, hf_table, hf_x, lf_x, bounds, f"artifacts/{plot}")
    if traces:
        summary["traces"] = {"rows": sorted({t[0] for t in traces}),
                             "re_simulated": {f: sum(t[1] == f for t in traces) for f in ("hf", "lf")},
                             "seconds": round(sum(t[4] for t in traces), 3)}
    store.write_artifact(f"{plan.run}/{plan.stem}.json", json.dumps(summary, indent=2).encode())
    _publish(plan, store, summary, png)
    return summary


def _summary(plan: PpcPlan, task: Task, check: PredictiveCheck, lf_check: PredictiveCheck,
             reports: dict[str, SimulationReport], hf_table, hf_x: np.ndarray, lf_x: np.ndarray,
             bounds: tuple[float, float] | None, plot: str) -> dict:
    """The check's summary JSON: per statistic HF (and LF) numbers, the verdict, the budget and the spending."""
    statistics = check.statistics()
    for record, lf_record in zip(statistics, lf_check.statistics()):
        record["lf"] = {key: lf_record[key] for key in ("median", "interval", "distance", "p_value")}
    budget = hf_table.budget()
    summary = {
        "run": plan.run, "task": task.name, "observation": plan.x_o, "observation_tag": plan.tag,
        "num_draws": plan.num_draws, "seed": plan.seed, "verdict": check.verdict, "status": check.status,
        "level": check.level, "minimum_draws": minimum_draws(len(check.names), FAMILY_LEVEL),
        "statistics": statistics, "lf_verdict": lf_check.verdict, "lf_status": lf_check.status,
        "budget": {"total": budget.total, "reserved": budget.reserved},
        "tables": {"hf": f"{plan.table}/hf", "lf": f"{plan.table}/lf"},
        "ok": {"hf": int(np.isfinite(hf_x).all(axis=1).sum()), "lf": int(np.isfinite(lf_x).all(axis=1).sum())},
        "simulated_now": {f: reports[f].simulated for f in reports},
        "failed_now": {f: reports[f].failed for f in reports},
        "simulator_seconds_now": {f: round(reports[f].simulator_seconds, 6) for f in reports},
        "plot": plot, "mfsbi_version": __version__, "finished_at": datetime.now(timezone.utc).isoformat(),
    }
    if bounds is not None:
        summary["plausible_fraction"] = {"hf": _fraction_plausible(hf_x, bounds),
                                         "lf": _fraction_plausible(lf_x, bounds), "range": list(bounds)}
    return summary


def _publish(plan: PpcPlan, store: SimulationStore, summary: dict, png: bytes) -> None:
    """The plot as an image artifact, the per-statistic table as a markdown artifact, on the flow run's page."""
    key = re.sub(r"[^a-z0-9]+", "-", f"ppc-{plan.run}-{plan.tag}-seed{plan.seed}".lower()).strip("-")[:90]
    where = f"{store.url.rstrip('/')}/{summary['plot']}"
    create_image_artifact(image_url="data:image/png;base64," + base64.b64encode(png).decode(), key=f"{key}-plot",
                          description=f"{plan.run}: posterior predictive check ({where})")
    lines = [f"**{summary['verdict']}**", "", "| statistic | x_o | HF median | distance | p | LF median | LF p |",
             "|---|---|---|---|---|---|---|"]
    for s in summary["statistics"]:
        lines.append(f"| {s['name']}{' ⚠' if s['flagged'] else ''} | {_fmt(s['x_o'])} | {_fmt(s['median'])} | "
                     f"{_fmt(s['distance'])} | {_fmt(s['p_value'])} | {_fmt(s['lf']['median'])} | "
                     f"{_fmt(s['lf']['p_value'])} |")
    lines += ["", f"{summary['num_draws']} draws, HF budget {summary['budget']['reserved']} / "
                  f"{summary['budget']['total']}, simulated now: {summary['simulated_now']}; plot `{where}`"]
    create_markdown_artifact(key=f"{key}-table", markdown="\n".join(lines),
                             description=f"{plan.run}: posterior predictive check")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@flow(name="mfsbi-ppc", flow_run_name="ppc {plan.run} n={plan.num_draws} seed={plan.seed}", validate_parameters=False)
def ppc_flow(plan: PpcPlan) -> dict:
    """A posterior predictive check of a stored run at one observation, simulated on Dask workers.

    Arguments:
        plan: the check (:class:`PpcPlan`), its draws made and its budget checked.

    Returns:
        The check's summary (also in the store beside the run).
    """
    with dask_client(plan.dask_address, plan.n_workers, plan.cluster) as client:
        with StoreLock(plan.store, owner=f"ppc {plan.run}"):
            return run_ppc(plan, DaskExecutor(client))


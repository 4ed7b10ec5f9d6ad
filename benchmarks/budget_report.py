"""The budget-allocation benchmark's tables, the planner's goal and its decisions, from the document
``budget_allocation.py`` writes::

    python benchmarks/budget_allocation.py report --out docs/budget-allocation.json
"""

from __future__ import annotations

import statistics

__all__ = ["PRIMARY", "TOLERANCE", "chain_text", "fmt", "goal", "report", "table"]

# The planner's goal: within this of the best fixed cell (C2ST on OU2; NLTP in nats on the pyramidal
# cell, fixed before any pyramidal result was seen: 0.05 nats per held-out pair).
TOLERANCE = {"ou2": 0.02, "pyramidal": 0.05}
PRIMARY = {"ou2": "c2st", "ou2-euler": "c2st", "pyramidal": "nltp"}


def chain_text(counts: dict[str, int]) -> str:
    """Counts by fidelity as `mfsbi run --sims` spells them: lf=1000,hf=50."""
    return ",".join(f"{f}={counts[f]}" for f in ("lf", "mf", "hf") if f in counts)


def fmt(value, digits: int = 3) -> str:
    """A number to `digits` decimals, or - when there is none."""
    return "-" if value is None else f"{value:.{digits}f}"


def _mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(values: list[float], digits: int = 3) -> str:
    m, s = _mean_sd(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _label(row: dict) -> str:
    if row["budget"]:
        return f"planner (B = {row['budget']:g} s)"
    return f"{row['method']} {chain_text(row['counts'])}"


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(_label(row), []).append(row)
    return out


def table(rows: list[dict], metrics: list[str]) -> list[str]:
    header = "| allocation | seeds | compute (s) | " + " | ".join(metrics) + " |"
    lines = [header, "|" + "---|" * (3 + len(metrics))]
    for label, group in _groups(rows).items():
        cells = [label, str(len(group)), _pm([r["compute"]["total_seconds"] for r in group], 0)]
        cells += [_pm([r[m] for r in group]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def goal(rows: list[dict], planner_rows: list[dict], task: str) -> list[str]:
    """The planner against the best fixed cell within its budget (on the mean, and per seed)."""
    if not planner_rows:
        return ["(no planner runs)"]
    metric, tolerance = PRIMARY[task], TOLERANCE[task]
    budget = planner_rows[0]["budget"]
    groups = _groups(rows)
    within = {label: g for label, g in groups.items()
              if _mean_sd([r["compute"]["total_seconds"] for r in g])[0] <= budget}
    lines = [f"budget B = {budget:g} s; {len(within)} of {len(groups)} fixed cells have mean compute <= B"]
    if not within:
        return lines
    best_label = min(within, key=lambda label: _mean_sd([r[metric] for r in within[label]])[0])
    best = {r["seed"]: r[metric] for r in within[best_label]}
    planner = {r["seed"]: r for r in planner_rows}
    best_mean = _mean_sd(list(best.values()))[0]
    planner_mean = _mean_sd([r[metric] for r in planner_rows])[0]
    lines.append(f"best fixed cell within B (by mean {metric}): {best_label}: {best_mean:.3f}; planner "
                 f"{planner_mean:.3f}; difference {planner_mean - best_mean:+.3f} (goal <= {tolerance}): "
                 f"{'met' if planner_mean - best_mean <= tolerance else 'NOT met'}")
    for seed in sorted(planner):
        r = planner[seed]
        seed_cells = {label: [x for x in g if x["seed"] == seed] for label, g in groups.items()}
        seed_within = {label: g[0] for label, g in seed_cells.items() if g and g[0]["compute"]["total_seconds"] <= budget}
        oracle_label = min(seed_within, key=lambda label: seed_within[label][metric]) if seed_within else None
        ref = best.get(seed)
        text = (f"seed {seed}: planner {r[metric]:.3f} (chose {chain_text(r['planner']['chosen'])}, spent "
                f"{r['compute']['total_seconds']:.0f} s); best cell on the mean {best_label} "
                f"{'-' if ref is None else f'{ref:.3f}'}")
        if ref is not None:
            text += f" -> {r[metric] - ref:+.3f} ({'met' if r[metric] - ref <= tolerance else 'NOT met'})"
        if oracle_label is not None:
            o = seed_within[oracle_label][metric]
            text += (f"; best cell of this seed {oracle_label} {o:.3f} -> {r[metric] - o:+.3f} "
                     f"({'met' if r[metric] - o <= tolerance else 'NOT met'})")
        lines.append(text)
    return lines


def report(document: dict) -> None:
    """Prints the tables, the planner's goal and its decisions from the document `budget_allocation.py` writes."""
    rows = list(document["runs"].values())
    by_part: dict[str, list[dict]] = {}
    for row in rows:
        by_part.setdefault(row["part"], []).append(row)
    def fixed(row: dict) -> bool:
        return not row["budget"]

    sections = [
        ("OU2: fixed allocations and the planner", ["c2st", "nltp", "nrmse"],
         lambda r: r["task"] == "ou2"),
        ("ou2-euler: three levels against two (MF-NPE, LF 1e4)", ["c2st", "nltp", "nrmse"],
         lambda r: r["task"] == "ou2-euler" and r["method"] == "mf-npe" and ("mf" in r["counts"] or r["counts"]["hf"] == 100)),
        ("ou2-euler: ml-npe against MF-NPE (LF 1e4)", ["c2st", "nltp", "nrmse"],
         lambda r: r["task"] == "ou2-euler" and "mf" not in r["counts"]),
        ("pyramidal: fixed allocations and the planner", ["nltp", "nrmse"],
         lambda r: r["task"] == "pyramidal" and r["part"] in ("pyr-grid", "pyr-planner")),
        ("pyramidal: three levels against two (MF-NPE, LF 1000)", ["nltp", "nrmse"],
         lambda r: r["task"] == "pyramidal" and fixed(r) and r["method"] == "mf-npe" and r["counts"].get("lf") == 1000
         and ("mf" in r["counts"] or r["counts"]["hf"] == 200)),
        ("pyramidal: ml-npe against MF-NPE (LF 1000, HF 200)", ["nltp", "nrmse"],
         lambda r: r["task"] == "pyramidal" and fixed(r) and r["method"] in ("ml-npe", "mf-npe")
         and r["counts"].get("lf") == 1000 and r["counts"]["hf"] == 200 and "mf" not in r["counts"]),
    ]
    for title, metrics, keep in sections:
        chosen = [r for r in rows if keep(r)]
        if not chosen:
            continue
        print(f"\n### {title}\n")
        order = {"npe": 0, "mf-npe": 1, "ml-npe": 2}
        print("\n".join(table(sorted(chosen, key=lambda r: (bool(r["budget"]), order[r["method"]],
                                                           *(r["counts"].get(f, 0) for f in ("lf", "mf", "hf")),
                                                           r["seed"])), metrics)))
    for grid, planner, task in (("ou2-grid", "ou2-planner", "ou2"), ("pyr-grid", "pyr-planner", "pyramidal")):
        if grid in by_part:
            print(f"\n### goal, {task}\n")
            print("\n".join("- " + line for line in goal(by_part[grid], by_part.get(planner, []), task)))
    for part in ("ou2-planner", "pyr-planner"):
        for row in sorted(by_part.get(part, []), key=lambda r: r["seed"]):
            print(f"\n#### {row['task']} planner, seed {row['seed']}: chose {chain_text(row['planner']['chosen'])}, "
                  f"spent {row['compute']['total_seconds']:.0f} of {row['budget']:g} s "
                  f"(overrun {row['planner']['overrun_seconds']:.0f} s); stop: {row['planner']['stop_reason']}\n")
            for d in row["planner"]["decisions"]:
                gain = d.get("expected_gain")
                print(f"- {chain_text(d['counts'])}: expected gain {'-' if gain is None else f'{gain:.3g}'}, "
                      f"expected {fmt(d.get('expected_seconds'), 0)} s, measured {fmt(d.get('measured_seconds'), 0)} s, "
                      f"loss {fmt(d.get('measured_loss'))}: {d['reason']}")
    walls = [r["wall_seconds"] for r in rows]
    print(f"\n{len(rows)} runs, {sum(walls) / 3600:.2f} h of wall time in all")

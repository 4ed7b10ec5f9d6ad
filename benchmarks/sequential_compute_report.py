"""The tables of benchmarks/sequential_compute.py: A-MF-TSNPE's settings in nats, HF counts and CPU seconds.

Beside the NPE curve of docs/pyramidal-table.json at the same three held-out pairs: for each
seed, the NPE HF count (and its CPU seconds: HF × the HF cost measured with the sequential runs
+ NPE's training CPU, scaled to this machine) at
which NPE's mean −log q over seeds first matches that seed's A-MF-TSNPE value, interpolated on
log budget between grid points ("how many fewer HF", "how many fewer CPU seconds"); intervals are
the range over seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pyramidal_protocol import NPE_BUDGETS
from pyramidal_report import _mean_sd

OBSERVATIONS = (0, 1, 2)
TABLE = Path(__file__).resolve().parents[1] / "docs" / "pyramidal-table.json"


def _median_cost(document: dict, name: str) -> float:
    """One measured cost, the median of the document's measurements (a document may hold only some names)."""
    return float(np.median([c[name] for c in document["costs"]]))


def npe_curve(table: dict, variant: str, hf_cost: float) -> dict[int, dict]:
    """NPE (task ``pyramidal``, scored on ``variant``'s pairs) per budget: −log q at the observed pairs, CPU.

    CPU is charged at this machine's speed: the HF at ``hf_cost`` (measured where the sequential
    runs ran), the training CPU that table recorded scaled by the ratio of the two machines' HF costs.
    """
    speed = hf_cost / _median_cost(table, "hf")
    curve = {}
    for m in NPE_BUDGETS:
        rows = [e for e in table["runs"].values() if e["method"] == "npe" and e["hf"] == m and e["task"] == "pyramidal"]
        scored = [e for e in rows if variant in e.get("posthoc", {})]
        if not scored:
            continue
        per_seed = [-float(np.mean([e["posthoc"][variant]["log_q"][i] for i in OBSERVATIONS])) for e in scored]
        train = [e["summary"]["train"]["cpu_seconds"] for e in scored]
        curve[m] = {"nltp": float(np.mean(per_seed)), "cpu": m * hf_cost + speed * float(np.mean(train)),
                    "log_q": {e["seed"]: [e["posthoc"][variant]["log_q"][i] for i in OBSERVATIONS] for e in scored}}
    return curve


def matching(curve: dict[int, dict], target: float, what: str) -> float:
    """The NPE budget (``what`` = "hf") or CPU (``what`` = "cpu") at which the curve first reaches ``target``.

    Linear in NLTP against log budget between the grid points around the first crossing; ``nan``
    beyond the grid's end, the first point's value when already below at the smallest budget.
    """
    budgets = sorted(curve)
    if curve[budgets[0]]["nltp"] <= target:
        return curve[budgets[0]][what] if what == "cpu" else float(budgets[0])
    for low, high in zip(budgets, budgets[1:]):
        if curve[high]["nltp"] <= target:
            a, b = curve[low]["nltp"], curve[high]["nltp"]
            w = (a - target) / (a - b)
            x_low, x_high = (low, high) if what == "hf" else (curve[low]["cpu"], curve[high]["cpu"])
            return float(np.exp(np.log(x_low) + w * (np.log(x_high) - np.log(x_low))))
    return float("nan")


def break_even_hf_cost(cpu: float, hf: int, npe_cpu: float, npe_hf: float, hf_cost: float) -> float:
    """The CPU seconds per HF simulation at which a run and the NPE that matches it cost the same.

    Everything but the HF simulations is held fixed: ``cpu − hf·hf_cost + hf·c = npe_cpu −
    npe_hf·hf_cost + npe_hf·c``. Above ``c`` the run is cheaper. ``nan`` unless NPE needs more HF.
    """
    if not npe_hf > hf:
        return float("nan")
    return ((cpu - hf * hf_cost) - (npe_cpu - npe_hf * hf_cost)) / (npe_hf - hf)


def _pretrain_cpu(document: dict, seed: int, lf: int) -> float:
    for e in document["runs"].values():
        if e["seed"] == seed and e["pretrain_cpu_now"] and e["lf"] == lf:
            return e["pretrain_cpu_now"]
    return float("nan")


def run_cpu(document: dict, entry: dict) -> dict:
    """A sequential run's CPU seconds, by part (the module docstring of sequential_compute.py says how)."""
    lf = entry["lf"]
    parts = {"lf_simulation": lf * _median_cost(document, f"lf_{document['variant']}"),
             "pretraining": _pretrain_cpu(document, entry["seed"], lf) if lf else 0.0,
             "hf_and_rounds": entry["run_own_cpu_seconds"], "command": entry["command_cpu_seconds"]}
    parts["total"] = float(sum(parts.values()))
    return parts


def _fmt(values: list[float], digits: int = 2) -> str:
    return _mean_sd([v for v in values if np.isfinite(v)], digits)


def _range(values: list[float], digits: int = 0) -> str:
    if all(not np.isfinite(v) for v in values):
        return "—"
    if any(not np.isfinite(v) for v in values):
        return "beyond the grid for " + f"{sum(not np.isfinite(v) for v in values)} of {len(values)} seeds"
    return f"{np.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def report(document: dict) -> str:
    variant = document.get("variant", "pyramidal-reduced")
    table = json.loads(TABLE.read_text())
    hf_cost = _median_cost(document, "hf")
    curve = npe_curve(table, variant, hf_cost)
    seeds = sorted({e["seed"] for e in document["runs"].values()})
    lines = [f"# A-MF-TSNPE's settings at equal compute on {variant} (held-out observations 0-2, seeds "
             f"{', '.join(map(str, seeds))})", "",
             "NPE's curve at the same pairs (docs/pyramidal-table.json): " + ", ".join(
                 f"{m}: {c['nltp']:.2f} ({c['cpu']:.0f} CPU s)" for m, c in curve.items()), "",
             "| setting | HF | seeds | −log q(θ_o given x_o), mean over obs 0-2 | CPU s: LF sim + pretrain + HF and rounds + command (the command's) "
             "| NPE HF to match: median (range) | HF ratio | NPE CPU s to match | CPU ratio (NPE / this) "
             "| HF CPU s per simulation at which the CPU is equal |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    runs = [e for e in document["runs"].values() if e["method"] == "a-mf-tsnpe"]
    # (name, HF, per seed: −log q averaged over the observations, CPU in all, the command's CPU)
    rows = []
    for setting, hf in sorted({(e["setting"], e["hf"]) for e in runs}, key=lambda k: (k[1], k[0] != "paper", k[0])):
        by_seed = {}
        for e in runs:
            if e["setting"] == setting and e["hf"] == hf:
                by_seed.setdefault(e["seed"], []).append(e)
        complete = [es for _, es in sorted(by_seed.items()) if len(es) == len(OBSERVATIONS)]
        parts = [[run_cpu(document, e) for e in es] for es in complete]
        rows.append((f"A-MF-TSNPE {setting}", hf, [float(np.mean([e["summary"]["metrics"]["nltp"] for e in es])) for es in complete],
                     [float(np.mean([p["total"] for p in ps])) for ps in parts],
                     [float(np.mean([p["command"] for p in ps])) for ps in parts]))
    amortised = [e for e in document["runs"].values() if e["method"] in ("npe", "mf-npe")]
    for setting, hf in sorted({(e["setting"], e["hf"]) for e in amortised}):
        chosen = sorted((e for e in amortised if (e["setting"], e["hf"]) == (setting, hf)), key=lambda e: e["seed"])
        name = {"npe-pyramidal-rows": "NPE on `pyramidal`'s HF rows"}.get(setting, setting.upper())
        parts = [run_cpu(document, e) for e in chosen]
        rows.append((f"{name} (this code, amortised)", hf, [-float(np.mean(e["log_q_at_observations"])) for e in chosen],
                     [p["total"] for p in parts], [p["command"] for p in parts]))
    for name, hf, nltp, cpu, command in rows:
        if not nltp:
            continue
        if name.startswith("NPE"):  # NPE against NPE's own curve: the check of that curve, not a comparison
            npe_hf = npe_cpu = even = [float("nan")] * len(nltp)
        else:
            npe_hf = [matching(curve, v, "hf") for v in nltp]
            npe_cpu = [matching(curve, v, "cpu") for v in nltp]
            even = [break_even_hf_cost(c, hf, n, m, hf_cost) for c, n, m in zip(cpu, npe_cpu, npe_hf)]
        lines.append(f"| {name} | {hf} | {len(nltp)} | {_fmt(nltp)} | {_fmt(cpu, 0)} ({_fmt(command, 0)}) | {_range(npe_hf)} | "
                     f"{_range([h / hf for h in npe_hf], 1)} | {_range(npe_cpu)} | "
                     f"{_range([n / c for n, c in zip(npe_cpu, cpu)], 2)} | {_range(even, 2)} |")
    # The paper's setting against the same runs at the same seeds and pairs in docs/pyramidal-table.json
    # (the code of 2026-12-06): what the code changes since then did to A-MF-TSNPE.
    earlier = {(e["hf"], e["seed"], e["obs"]): e["summary"]["metrics"]["nltp"] for e in table["runs"].values()
               if e["method"] == "a-mf-tsnpe" and e["task"] == variant}
    pairs = [(earlier[(e["hf"], e["seed"], e["obs"])], e["summary"]["metrics"]["nltp"]) for e in runs
             if e["setting"] == "paper" and (e["hf"], e["seed"], e["obs"]) in earlier]
    if pairs:
        change = [new - old for old, new in pairs]
        lines += ["", f"A-MF-TSNPE (paper's setting) against the same seed, budget and pair in docs/pyramidal-table.json "
                      f"(earlier code): −log q this code minus then, {len(pairs)} runs: mean {np.mean(change):+.2f}, "
                      f"standard error {np.std(change, ddof=1) / np.sqrt(len(change)) if len(change) > 1 else float('nan'):.2f}, "
                      f"worse now on {sum(c > 0 for c in change)} of {len(change)}"]
    parts = [run_cpu(document, e) for e in runs]
    if parts:
        lines += ["", "CPU seconds by part, mean over every A-MF-TSNPE run: " + ", ".join(
            f"{k} {np.nanmean([p[k] for p in parts]):.0f}" for k in parts[0])]
    for e in sorted((e for e in amortised if e["method"] == "npe"), key=lambda e: (e["setting"], e["seed"])):
        old = curve.get(e["hf"], {}).get("log_q", {}).get(e["seed"])
        lines.append(f"\nNPE {e['hf']} HF ({e['setting']}), seed {e['seed']}, this code: log q at obs 0-2 {e['log_q_at_observations']}; "
                     f"docs/pyramidal-table.json: {old}")
    return "\n".join(lines)

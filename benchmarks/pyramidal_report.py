"""The neuron headline table's tables and plot, from the document ``pyramidal_table.py`` writes.

    python benchmarks/pyramidal_table.py --out docs/pyramidal-table.json --report-only --plot docs/img/pyramidal-nltp.png
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pyramidal_protocol import AMF_BUDGETS, AMF_OBSERVATIONS, LF_SIMS, MF_BUDGETS, PAPER, VARIANTS

__all__ = ["cost_per_simulation", "draw", "report"]


def cost_per_simulation(document: dict) -> dict[str, float]:
    costs = document.get("costs", [])
    if not costs:
        return {}
    return {name: float(np.median([c[name] for c in costs])) for name in ("hf", "lf_pyramidal", "lf_pyramidal-reduced")}


def _mean_sd(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _amortised_view(entry: dict, variant: str) -> dict | None:
    """NLTP, NRMSE, calibration and per-pair log q of an amortised run, on ``variant``'s held-out pairs."""
    summary = entry["summary"]
    if entry["task"] == variant:
        scored = entry.get("posthoc", {}).get(variant, {})
        return {"nltp": summary["metrics"]["nltp"], "nrmse": summary["metrics"]["nrmse"],
                "calibration": summary.get("calibration") or {}, "log_q": scored.get("log_q")}
    scored = entry.get("posthoc", {}).get(variant)
    if scored is None or "nrmse" not in scored:
        return None
    return {"nltp": scored["nltp"], "nrmse": scored["nrmse"], "calibration": scored["calibration"],
            "log_q": scored["log_q"]}


def _pretrain_cpu(document: dict, task: str, seed: int) -> float | None:
    """The LF pretraining's CPU seconds of a store (recorded by the run that trained it)."""
    for entry in document["runs"].values():
        if entry["task"] == task and entry["seed"] == seed and (entry["summary"].get("pretrain") or {}).get("cpu_seconds"):
            return entry["summary"]["pretrain"]["cpu_seconds"]
    return None


def pipeline_hf_cost(document: dict) -> tuple[list[float], list[float]]:
    """Per NPE run: the workers' CPU per HF simulation (less the training), and the simulator's wall per simulation."""
    per_sim, wall_per_sim = [], []
    for entry in document["runs"].values():
        hf = entry["summary"].get("hf") or {}
        if entry["method"] == "npe" and hf.get("simulated", 0) >= 50 and entry.get("worker_cpu_seconds") is not None:
            simulated = hf["simulated"] + (100 if entry["hf"] == 50 else 0)  # the first run also simulated the test pairs
            per_sim.append((entry["worker_cpu_seconds"] - entry["summary"]["train"]["cpu_seconds"]) / simulated)
            wall_per_sim.append(hf["simulator_seconds"] / hf["simulated"])
    return per_sim, wall_per_sim


def _sequential_training_cpu(entry: dict, costs: dict) -> float | None:
    """A-MF-TSNPE's round trainings: the workers' CPU during the run less its HF simulations.

    The simulations are charged at the workers' CPU per HF simulation measured on the NPE runs
    (``costs["hf_pipeline"]``), which includes what a simulation costs a worker beyond the simulator.
    """
    if entry.get("worker_cpu_seconds") is None:
        return None
    simulated = sum(r.get("simulated_now", 0) for r in entry["summary"].get("rounds") or [])
    lf = (entry["summary"].get("lf") or {}).get("simulated", 0)
    pretrain = (entry["summary"].get("pretrain") or {}).get("cpu_seconds", 0.0)
    return (entry["worker_cpu_seconds"] - simulated * costs.get("hf_pipeline", costs["hf"])
            - lf * costs[f"lf_{entry['task']}"] - pretrain)


def _cpu_parts(document: dict, entry: dict, costs: dict) -> tuple[float, float]:
    """(simulation, training) CPU seconds of a row, as the paper counts them (LF pretraining charged to every MF row)."""
    lf_cost = costs[f"lf_{entry['task']}"]
    simulation = entry["hf"] * costs["hf"] + entry["lf"] * lf_cost
    if entry["method"] == "npe":
        return simulation, entry["summary"]["train"]["cpu_seconds"]
    pretrain = _pretrain_cpu(document, entry["task"], entry["seed"]) or float("nan")
    if entry["method"] == "mf-npe":
        return simulation, pretrain + entry["summary"]["train"]["cpu_seconds"]
    rounds = _sequential_training_cpu(entry, costs)
    return simulation, pretrain + (rounds if rounds is not None else float("nan"))


def _verdicts(calibrations: list[dict]) -> str:
    names = {"calibrated": "cal", "over-confident": "over", "under-confident": "under", "biased": "biased"}
    counts: dict[str, int] = {}
    for c in calibrations:
        counts[names.get(c.get("verdict"), str(c.get("verdict")))] = counts.get(names.get(c.get("verdict"), str(c.get("verdict"))), 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _curve(document: dict, variant: str, method: str) -> dict[int, dict]:
    """Per HF budget: the amortised rows of a method scored on ``variant``'s pairs, over seeds."""
    source = "pyramidal" if method == "npe" else variant
    rows: dict[int, dict] = {}
    for entry in document["runs"].values():
        if entry["method"] != method or entry["task"] != source:
            continue
        view = _amortised_view(entry, variant)
        if view is None:
            continue
        rows.setdefault(entry["hf"], {"entries": [], "views": []})
        rows[entry["hf"]]["entries"].append(entry)
        rows[entry["hf"]]["views"].append(view)
    return dict(sorted(rows.items()))


def _score(view: dict, statistic: str) -> float:
    return view["nltp"] if statistic == "mean" else -float(np.median(view["log_q"]))


def _match_budget(curve: dict[int, dict], target: float, statistic: str = "mean") -> str:
    """The smallest NPE budget whose NLTP (mean over seeds) is ≤ target (log-budget interpolation between grid points)."""
    points = [(m, float(np.mean([_score(v, statistic) for v in row["views"]]))) for m, row in curve.items()]
    previous = None
    for m, value in points:
        if value <= target:
            if previous is None:
                return f"≤ {m} (already at the smallest budget: {value:.2f})"
            (m0, v0) = previous
            fraction = (v0 - target) / (v0 - value)
            interpolated = math.exp(math.log(m0) + fraction * (math.log(m) - math.log(m0)))
            return f"{m} on the grid ({m0}: {v0:.2f}, {m}: {value:.2f}); ≈ {interpolated:.0f} interpolated on log budget"
        previous = (m, value)
    if not points:
        return "—"
    return f"never within {points[-1][0]} (NPE at {points[-1][0]}: {points[-1][1]:.2f})"


def report(document: dict, plot: Path | None) -> str:
    costs = cost_per_simulation(document)
    if not costs or not document.get("runs"):
        return "no runs yet"
    lines = ["## Cost per simulation (CPU s, time.process_time in the benchmark process; median of "
             f"{len(document['costs'])} measurements)", "",
             "| simulator | CPU s / simulation | HF / this |", "|---|---|---|"]
    for name in ("hf", "lf_pyramidal", "lf_pyramidal-reduced"):
        lines.append(f"| {name} | {costs[name]:.4f} | {costs['hf'] / costs[name]:.1f} |")
    # In the pipeline: workers' CPU per HF simulation, from NPE runs (workers' CPU less the training).
    per_sim, wall_per_sim = pipeline_hf_cost(document)
    if per_sim:
        costs["hf_pipeline"] = float(np.median(per_sim))
        lines.append(f"\nIn the pipeline (NPE runs, workers' CPU less training, per HF simulation): "
                     f"median {np.median(per_sim):.3f} s (range {min(per_sim):.3f}–{max(per_sim):.3f}); "
                     f"simulator wall seconds per HF simulation inside the workers: median {np.median(wall_per_sim):.3f} s.")

    for variant in VARIANTS:
        lines += ["", f"## {variant}: amortised rows (NLTP and NRMSE: mean ± sd over seeds; "
                  f"on the 100 held-out HF pairs of {variant})", "",
                  "| method | LF | HF | seeds | NLTP | median −log q | NRMSE | SBC min p (per seed) | verdicts | sim CPU s | train CPU s | total CPU s | paper (sim + train, NLTP) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for method in ("npe", "mf-npe"):
            for m, row in _curve(document, variant, method).items():
                views, entries = row["views"], row["entries"]
                parts = [_cpu_parts(document, e, costs) for e in entries]
                sim, train = np.mean([p[0] for p in parts]), np.mean([p[1] for p in parts])
                pmin = " / ".join(f"{min(v['calibration']['sbc_ks_pvalues']):.2g}" for v in views)
                paper = PAPER.get(method)
                paper_cell = (f"{paper['simulation']} + {paper['training']}, {paper['nltp']}"
                              if paper and paper["hf"] == m else "")
                lf = 0 if method == "npe" else LF_SIMS
                medians = [-float(np.median(v["log_q"])) for v in views if v["log_q"]]
                lines.append(f"| {method} | {lf} | {m} | {len(views)} | {_mean_sd([v['nltp'] for v in views])} | "
                             f"{_mean_sd(medians)} | {_mean_sd([v['nrmse'] for v in views], 3)} | {pmin} | "
                             f"{_verdicts([v['calibration'] for v in views])} | {sim:.0f} | {train:.0f} | "
                             f"{sim + train:.0f} | {paper_cell} |")
        npe = _curve(document, variant, "npe")
        mf = _curve(document, variant, "mf-npe")
        lines += ["", f"How many HF simulations NPE needs to match MF-NPE (mean NLTP over seeds, {variant}'s pairs):", ""]
        for statistic in ("mean", "median"):
            for m in (50, 100, 1000):
                if m in mf:
                    target = float(np.mean([_score(v, statistic) for v in mf[m]["views"]]))
                    lines.append(f"- by the {statistic} −log q over pairs: MF-NPE at {m} HF: {target:.2f} → NPE: "
                                 f"{_match_budget(npe, target, statistic)}")
        # The guard's estimator from scratch: NPE on this variant's own HF rows, the same pairs.
        guard = [(e["hf"], e["summary"]["transfer_guard"]) for e in document["runs"].values()
                 if e["task"] == variant and e["method"] == "mf-npe" and (e["summary"].get("transfer_guard") or {}).get("compared")]
        if guard:
            lines += ["", "Transfer guard (report): mean log q on the held-out pairs, fine-tuned vs from scratch on the same HF rows", "",
                      "| HF | seeds | fine-tuned | from scratch | difference ± SE (per seed) | better |", "|---|---|---|---|---|---|"]
            for m in sorted({g[0] for g in guard}):
                gs = [g[1] for g in guard if g[0] == m]
                lines.append(f"| {m} | {len(gs)} | {_mean_sd([g['log_prob_fine_tuned'] for g in gs])} | "
                             f"{_mean_sd([g['log_prob_scratch'] for g in gs])} | "
                             + " / ".join(f"{g['difference']:+.2f} ± {g['standard_error']:.2f}" for g in gs)
                             + f" | {', '.join(g['better'] for g in gs)} |")

    # The LF-pretrained estimator as it is, and MF-NPE with the LF x z-scoring kept (refit_diagnostic).
    pretrained, refit = document.get("pretrained", {}), document.get("refit_diagnostic", {})
    if pretrained or refit:
        lines += ["", "## Diagnostic: MF-NPE's HF step with the x z-scoring refitted on the HF rows (the runs) "
                  "or kept from the LF pretraining; the pretrained estimator as it is (0 HF). NLTP, mean ± sd over seeds", "",
                  "| variant | HF | seeds | refitted (= the runs) | LF z-scoring kept | epochs refitted / kept (mean) |",
                  "|---|---|---|---|---|---|"]
        for variant in VARIANTS:
            as_is = [v["nltp"] for k, v in pretrained.items() if k.split("/")[0] == variant]
            if as_is:
                lines.append(f"| {variant} | 0 (pretrained as is) | {len(as_is)} | {_mean_sd(as_is)} | | |")
            for m in MF_BUDGETS:
                rows = [v for k, v in refit.items() if k.split("/")[0] == variant and k.split("/")[1] == f"hf{m}"]
                if rows:
                    matches = all(r["matches_run"] for r in rows)
                    lines.append(f"| {variant} | {m} | {len(rows)} | {_mean_sd([r['refit']['nltp'] for r in rows])}"
                                 f"{'' if matches else ' (≠ run!)'} | {_mean_sd([r['kept']['nltp'] for r in rows])} | "
                                 f"{np.mean([r['refit']['epochs'] for r in rows]):.0f} / {np.mean([r['kept']['epochs'] for r in rows]):.0f} |")

    # A-MF-TSNPE at single observations, beside the amortised rows at the same pairs.
    sequential = [e for e in document["runs"].values() if e["method"] == "a-mf-tsnpe"]
    if sequential:
        lines += ["", "## A-MF-TSNPE (1e4 LF, 5 rounds, ε = 1e-3): −log q(θ_o | x_o) at held-out observations, "
                  "beside the amortised estimators' −log q at the same pairs (mean ± sd over seeds)", "",
                  "| variant | HF | obs | seeds | A-MF-TSNPE | NRMSE | MF-NPE 50 | MF-NPE 100 | MF-NPE 1000 | NPE 50 | NPE 100 | NPE 10000 | sim CPU s | train CPU s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for variant in VARIANTS:
            curves = {"mf-npe": _curve(document, variant, "mf-npe"), "npe": _curve(document, variant, "npe")}

            def at(method: str, m: int, obs: list[int]) -> str:
                row = curves[method].get(m)
                if row is None:
                    return "—"
                return _mean_sd([-float(np.mean([v["log_q"][i] for i in obs])) for v in row["views"] if v["log_q"]])

            for m in AMF_BUDGETS:
                groups = [[i] for i in AMF_OBSERVATIONS] + [list(AMF_OBSERVATIONS)]
                for obs in groups:
                    chosen = [e for e in sequential if e["task"] == variant and e["hf"] == m and e["obs"] in obs]
                    if not chosen:
                        continue
                    seeds = sorted({e["seed"] for e in chosen})
                    complete = [s for s in seeds if len([e for e in chosen if e["seed"] == s]) == len(obs)]
                    values = [float(np.mean([e["summary"]["metrics"]["nltp"] for e in chosen if e["seed"] == s]))
                              for s in complete]
                    nrmse = [float(np.mean([e["summary"]["metrics"]["nrmse"] for e in chosen if e["seed"] == s]))
                             for s in complete]
                    parts = [_cpu_parts(document, e, costs) for e in chosen]
                    label = str(obs[0]) if len(obs) == 1 else "mean 0–2"
                    lines.append(f"| {variant} | {m} | {label} | {len(complete)} | {_mean_sd(values)} | {_mean_sd(nrmse, 3)} | "
                                 f"{at('mf-npe', 50, obs)} | {at('mf-npe', 100, obs)} | {at('mf-npe', 1000, obs)} | "
                                 f"{at('npe', 50, obs)} | {at('npe', 100, obs)} | {at('npe', 10000, obs)} | "
                                 f"{np.mean([p[0] for p in parts]):.0f} | {np.nanmean([p[1] for p in parts]):.0f} |")

    # The workers' CPU against what the rows charge (checks the accounting used for A-MF-TSNPE's training).
    ratios = []
    for entry in document["runs"].values():
        if entry["method"] == "a-mf-tsnpe" or entry.get("worker_cpu_seconds") is None:
            continue
        s = entry["summary"]
        accounted = (s["hf"]["simulated"] * costs["hf"] + (s.get("lf") or {}).get("simulated", 0) * costs[f"lf_{entry['task']}"]
                     + s["train"]["cpu_seconds"] + (s.get("pretrain") or {}).get("cpu_seconds", 0)
                     + ((s.get("transfer_guard") or {}).get("scratch_train") or {}).get("cpu_seconds", 0)
                     + (100 * costs["hf"] if entry["hf"] == 50 else 0))
        if accounted > 20:
            ratios.append(entry["worker_cpu_seconds"] / accounted)
    if ratios:
        lines.append(f"\nWorkers' CPU over the CPU the amortised rows account for (simulations × measured cost + "
                     f"trainings): median {np.median(ratios):.2f} (range {min(ratios):.2f}–{max(ratios):.2f}, {len(ratios)} runs).")
    walls = sum(e["command_wall_seconds"] for e in document["runs"].values())
    lines.append(f"\nRuns: {len(document['runs'])}; their commands' wall time: {walls / 3600:.2f} h; "
                 f"invocations: " + "; ".join(f"{i['started_at']} → {i.get('finished_at', 'running')} "
                                              f"({i.get('wall_seconds', 0) / 3600:.2f} h)" for i in document["invocations"]))
    if plot is not None:
        draw(document, plot)
        lines.append(f"\nPlot: {plot}")
    return "\n".join(lines)


def draw(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, variant in zip(axes, VARIANTS):
        for method, colour, label in (("npe", "tab:blue", "NPE (HF only; one curve for both)"),
                                      ("mf-npe", "tab:orange", "MF-NPE, 1e4 LF")):
            curve = _curve(document, variant, method)
            if not curve:
                continue
            budgets = np.array(list(curve))
            values = [[v["nltp"] for v in row["views"]] for row in curve.values()]
            mean = np.array([np.mean(v) for v in values])
            sd = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
            ax.plot(budgets, mean, marker="o", color=colour, label=f"{label} (100 pairs)")
            ax.fill_between(budgets, mean - sd, mean + sd, color=colour, alpha=0.2)
            # The same estimators at the A-MF-TSNPE observations, for the points below.
            obs = [float(np.mean([-np.mean([v["log_q"][i] for i in AMF_OBSERVATIONS]) for v in row["views"]]))
                   for row in curve.values()]
            ax.plot(budgets, obs, linestyle=":", color=colour, alpha=0.8, label=f"{method.upper()} at obs 0–2 only")
        seq = [e for e in document["runs"].values() if e["method"] == "a-mf-tsnpe" and e["task"] == variant]
        for m in AMF_BUDGETS:
            per_seed = {}
            for e in seq:
                if e["hf"] == m:
                    per_seed.setdefault(e["seed"], []).append(e["summary"]["metrics"]["nltp"])
            values = [np.mean(v) for v in per_seed.values() if len(v) == len(AMF_OBSERVATIONS)]
            if values:
                ax.errorbar([m], [np.mean(values)], yerr=[np.std(values, ddof=1) if len(values) > 1 else 0],
                            marker="D", color="tab:green", capsize=3,
                            label="A-MF-TSNPE at obs 0–2 (mean over obs; ± sd over seeds)" if m == AMF_BUDGETS[0] else None)
        for method, marker in (("npe", "*"), ("mf-npe", "*"), ("a-mf-tsnpe", "*")):
            p = PAPER[method]
            colour = {"npe": "tab:blue", "mf-npe": "tab:orange", "a-mf-tsnpe": "tab:green"}[method]
            ax.scatter([p["hf"]], [p["nltp"]], marker=marker, s=160, color=colour, edgecolor="black", zorder=5,
                       label="paper (jaxley cell; shape only, not absolute)" if method == "npe" else None)
        ax.set_xscale("log")
        ax.set_xlabel("HF simulations")
        ax.set_title(variant + (" (LF nseg 1)" if variant == "pyramidal" else " (LF ball-and-stick, dt 0.1 ms)"))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("NLTP  (−log q(θ_o | x_o), lower is better)")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)

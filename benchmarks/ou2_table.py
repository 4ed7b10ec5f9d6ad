"""Reproduce the OU2 table of PAPER.md: C2ST of every method against HF budget.

Every run goes through the real pipeline (Prefect flow runs, Dask workers, zarr store). Amortised
methods are trained once per (budget, seed) and scored on N held-out observations; sequential
methods run once per (budget, seed, observation). C2ST and MMD² are measured against both exact
references ("paper": continuous-time OU; "euler-maruyama": the simulator's own transition).

Writes a JSON file (updated after every run, so a long run can be read while it goes) and a plot
of C2ST against HF budget with the paper's numbers drawn dashed.

    python benchmarks/ou2_table.py --hf-budgets 100 1000 --observations 5 --seeds 0 1 --out docs/ou2

--hf-learning-rate sets `hf_learning_rate` for every run (a learning-rate measurement; use one store
folder per rate, since the rate is not part of a run's name).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

PAPER = {  # PAPER.md, mean C2ST over 10 test observations, columns are HF budgets.
    "npe": {50: 0.795, 100: 0.783, 1000: 0.629, 10000: 0.543},
    "mf-npe lf1000": {50: 0.748, 100: 0.723, 1000: 0.617, 10000: 0.542},
    "mf-npe lf10000": {50: 0.740, 100: 0.719, 1000: 0.604, 10000: 0.542},
    "mf-npe lf100000": {50: 0.731, 100: 0.694, 1000: 0.590, 10000: 0.540},
    "tsnpe": {50: 0.843, 100: 0.773, 1000: 0.674, 10000: 0.569},
    "mf-tsnpe lf10000": {50: 0.805, 100: 0.781, 1000: 0.654, 10000: 0.564},
    "a-mf-tsnpe lf10000": {50: 0.788, 100: 0.752, 1000: 0.636, 10000: 0.559},
}
REFERENCES = ("paper", "euler-maruyama")


def _row_name(method: str, lf: int) -> str:
    return method if method in ("npe", "tsnpe") else f"{method} lf{lf}"


def _plan(args) -> list[dict]:
    runs = []
    for seed in args.seeds:
        for hf in args.hf_budgets:
            if "npe" in args.methods:
                runs.append({"method": "npe", "lf": 0, "hf": hf, "seed": seed, "obs": None})
            if "mf-npe" in args.methods:
                for lf in args.mf_npe_lf:
                    runs.append({"method": "mf-npe", "lf": lf, "hf": hf, "seed": seed, "obs": None})
            for method in ("tsnpe", "mf-tsnpe", "a-mf-tsnpe"):
                if method in args.methods:
                    for obs in range(args.observations):
                        runs.append({"method": method, "lf": args.lf_sims if method != "tsnpe" else 0,
                                     "hf": hf, "seed": seed, "obs": obs})
    return runs


def _config(args, run: dict):
    from mfsbi.flows.config import RunConfig

    return RunConfig(
        task="ou2", method=run["method"], lf_sims=max(run["lf"], 1), hf_sims=run["hf"],
        store=str(Path(args.store) / f"seed{run['seed']}"), seed=run["seed"],
        num_test_observations=args.observations, num_nltp_pairs=args.observations,
        observation_index=run["obs"] or 0, rounds=args.rounds, posterior_samples=1000,
        hf_chunk_size=10, lf_chunk_size=1000, evaluate_rounds=False, resume=True,
        hf_learning_rate=args.hf_learning_rate,
    )


def _scores(run: dict, summary: dict) -> dict[str, list[float]]:
    metrics = summary["metrics"]
    if run["obs"] is None:
        out = {f"c2st_{r}": metrics["c2st_per_observation"][r] for r in REFERENCES}
        out.update({f"mmd_{r}": [metrics["mmd"][r]] for r in REFERENCES})  # mean over observations
        return out
    out = {f"c2st_{r}": [metrics["c2st"][r]] for r in REFERENCES}
    out.update({f"mmd_{r}": [metrics["mmd"][r]] for r in REFERENCES})
    return out


def _table(results: list[dict], budgets: list[int]) -> dict:
    table: dict = {}
    for result in results:
        name = _row_name(result["method"], result["lf"])
        cell = table.setdefault(name, {}).setdefault(str(result["hf"]), {})
        for key, values in result["scores"].items():
            cell.setdefault(key, []).extend(values)
    summary = {}
    for name, row in table.items():
        summary[name] = {}
        for hf, cell in row.items():
            entry = {}
            for key, values in cell.items():
                values = np.asarray(values)
                half = 1.96 * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
                entry[key] = {"mean": float(values.mean()), "ci95": float(half), "n": int(len(values))}
            entry["paper"] = PAPER.get(name, {}).get(int(hf))
            summary[name][hf] = entry
    return summary


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, reference in zip(axes, REFERENCES):
        for i, (name, row) in enumerate(sorted(summary.items())):
            budgets = sorted(int(b) for b in row)
            means = [row[str(b)][f"c2st_{reference}"]["mean"] for b in budgets]
            errors = [row[str(b)][f"c2st_{reference}"]["ci95"] for b in budgets]
            color = colors[i % len(colors)]
            ax.errorbar(budgets, means, yerr=errors, marker="o", color=color, label=f"{name} (mfsbi)", capsize=3)
            if name in PAPER:
                paper_budgets = [b for b in sorted(PAPER[name]) if min(budgets) <= b <= max(budgets)]
                ax.plot(paper_budgets, [PAPER[name][b] for b in paper_budgets], "--", color=color, alpha=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("HF simulations")
        ax.set_title(f"C2ST vs {reference} reference (dashed: paper)")
        ax.axhline(0.5, color="grey", lw=0.5)
    axes[0].set_ylabel("C2ST (0.5 is perfect)")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["npe", "mf-npe", "tsnpe", "mf-tsnpe", "a-mf-tsnpe"])
    parser.add_argument("--hf-budgets", nargs="+", type=int, default=[100, 1000])
    parser.add_argument("--lf-sims", type=int, default=10_000, help="LF simulations of the sequential MF methods")
    parser.add_argument("--mf-npe-lf", nargs="+", type=int, default=[1_000, 10_000], help="LF sizes of the MF-NPE rows")
    parser.add_argument("--observations", type=int, default=5)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--hf-learning-rate", type=float, default=None,
                        help="HF learning rate of every run (default: each method's own default)")
    parser.add_argument("--store", default="benchmarks/stores/ou2")
    parser.add_argument("--out", default="docs/ou2", help="prefix of the .json and .png written")
    args = parser.parse_args()

    from prefect import flow

    from mfsbi.flows.amortized import run_amortized
    from mfsbi.runtime.executor import DaskExecutor
    from mfsbi.flows.sequential import run_sequential
    from mfsbi.app.prefect_server import prefect_api
    from mfsbi.runtime.cluster import dask_client

    out_json, out_png = Path(f"{args.out}.json"), Path(f"{args.out}.png")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    runs = _plan(args)
    results: list[dict] = []
    started = time.perf_counter()

    @flow(name="mfsbi-benchmark-ou2")
    def benchmark(executor) -> None:
        for i, run in enumerate(runs, start=1):
            t0 = time.perf_counter()
            config = _config(args, run)
            summary = (run_amortized if run["obs"] is None else run_sequential)(config, executor).to_dict()
            results.append({**run, "scores": _scores(run, summary), "seconds": time.perf_counter() - t0})
            table = _table(results, args.hf_budgets)
            protocol = {k: v for k, v in vars(args).items()}
            out_json.write_text(json.dumps({"protocol": protocol, "runs_done": i, "runs_planned": len(runs),
                                            "wall_seconds": time.perf_counter() - started, "table": table,
                                            "runs": results}, indent=1))
            name = _row_name(run["method"], run["lf"])
            c2st = np.mean(results[-1]["scores"]["c2st_paper"])
            print(f"[{i}/{len(runs)}] {name} hf={run['hf']} seed={run['seed']} obs={run['obs']}: "
                  f"C2ST(paper) {c2st:.3f} in {results[-1]['seconds']:.0f} s", flush=True)

    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Prefect read its settings when imported above: point this process at the server explicitly,
    # or the flow would start an ephemeral server of its own (as tests/conftest.py does).
    with prefect_api() as url, temporary_settings(updates={PREFECT_API_URL: url}), \
            dask_client(None, args.workers) as client:
        benchmark(DaskExecutor(client))
    _plot(_table(results, args.hf_budgets), out_png)
    print(f"done: {len(runs)} runs in {time.perf_counter() - started:.0f} s; wrote {out_json} and {out_png}")
    for name, row in sorted(_table(results, args.hf_budgets).items()):
        cells = "  ".join(f"hf={hf}: {c['c2st_paper']['mean']:.3f}±{c['c2st_paper']['ci95']:.3f} "
                          f"(paper {c['paper']})" for hf, c in sorted(row.items(), key=lambda kv: int(kv[0])))
        print(f"{name:22s} {cells}")


if __name__ == "__main__":
    main()

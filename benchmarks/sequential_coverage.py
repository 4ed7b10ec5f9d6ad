"""Coverage at x_o of stored sequential runs, against the exact reference (issue 34, item 2).

A verdict (calibrated / biased / ...) from 200 exact draws at x_o flags almost every estimate at
HF 100, the baseline's included (docs/sequential.md), so it cannot say whether an MF method's
coverage *breaks* where TSNPE's holds. This reads how much of the exact posterior at x_o each
estimate's credible intervals hold: for every parameter and level, the fraction of exact draws
inside the estimate's central marginal interval (read from SBC ranks against ``--draws`` exact
draws, each ranked among ``--samples`` posterior samples), and TARP's expected coverage at those levels.
An exact estimate holds each level; a narrower or shifted one holds less (coverage breaks), a wider
one more (safe, less informative).

Every run's posterior is loaded from its store (``mfsbi.load_posterior``, its own x_o as default
x); nothing is simulated or trained. One row per run found under ``--stores`` (all
``*/artifacts/TASK/RUN/summary.json`` of sequential methods):

    python benchmarks/sequential_coverage.py --stores benchmarks/stores/sequential-coverage \
        benchmarks/stores/sequential-guard --out docs/sequential-coverage-levels.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from _runner import code_state
from mfsbi import load_posterior
from mfsbi.inference.calibration import calibration_at
from mfsbi.runtime.seeds import derive_seed
from mfsbi.simulators import get_task

SEQUENTIAL = ("tsnpe", "mf-tsnpe", "a-mf-tsnpe")
LEVELS = (0.5, 0.8, 0.95)


def marginal_coverage(ranks: np.ndarray, num_samples: int, level: float) -> np.ndarray:
    """Per parameter, the fraction of true values inside the estimate's central ``level`` interval.

    Arguments:
        ranks: ``(n, d)`` SBC ranks (posterior samples below the true value).
        num_samples: posterior samples each rank was taken among.
        level: the interval's credibility, in (0, 1).

    Returns:
        ``(d,)`` fractions: ``level`` for an exact estimate, up to the draws' noise.
    """
    u = (np.asarray(ranks, dtype=float) + 0.5) / num_samples
    return (np.abs(u - 0.5) <= level / 2).mean(axis=0)


def sequential_runs(stores: list[Path]):
    """``(store, "TASK/RUN", summary)`` of every sequential run that kept a posterior, in every store under ``stores``."""
    for root in stores:
        for summary_path in sorted(root.glob("*/artifacts/*/*/summary.json")):
            summary = json.loads(summary_path.read_text())
            if summary.get("method") in SEQUENTIAL and summary.get("posterior"):
                yield summary_path.parents[3], f"{summary_path.parent.parent.name}/{summary_path.parent.name}", summary


def _check(summary: dict) -> str | None:
    """The verdict of the run's own check near x_o, which needs no reference (issue 34, item 1)."""
    return (summary.get("coverage_at_x_o") or {}).get("verdict")


def coverage_at(posterior, x_o: np.ndarray, task, seed: int, draws: int, samples: int) -> dict:
    """Coverage of ``draws`` exact-reference draws at ``x_o`` by ``posterior``'s intervals (one run's reading).

    Arguments:
        posterior: an sbi posterior.
        x_o: the observation.
        task: the task (its first exact reference is used).
        seed: seeds the reference draws and the posterior samples.
        draws, samples: exact draws, and posterior samples each is ranked among.

    Returns:
        The reference's name, the verdict, and the marginal and TARP coverage per level.
    """
    name, reference = next(iter(task.references.items()))
    theta = reference(x_o, draws, derive_seed(seed, f"coverage-levels/{name}"))
    result = calibration_at(posterior, x_o, theta, num_posterior_samples=samples, seed=seed)
    ranks = np.asarray(result.ranks)
    alpha, ecp = np.asarray(result.credibility), np.asarray(result.coverage)
    return {
        "reference": name, "draws": draws, "posterior_samples": samples, "verdict": result.verdict,
        "marginal_coverage": {str(level): [round(float(v), 4) for v in marginal_coverage(ranks, samples, level)]
                              for level in LEVELS},
        "tarp_coverage": {str(level): round(float(np.interp(level, alpha, ecp)), 4) for level in LEVELS},
    }


def coverage_row(store: Path, run: str, summary: dict, draws: int, samples: int) -> dict:
    posterior = load_posterior(store, run)
    x_o = posterior.default_x.numpy().reshape(-1)
    task = get_task(summary["config"]["task"])
    return {
        "store": str(store), "run": run, "task": summary["config"]["task"], "method": summary["method"],
        "seed": summary["config"]["seed"], "observation": summary["config"].get("observation_index"),
        "c2st": (summary.get("metrics") or {}).get("c2st"), "check": _check(summary),
        **coverage_at(posterior, x_o, task, summary["config"]["seed"], draws, samples),
    }


def summarise(rows: list[dict]) -> dict:
    """Per task and method: runs, and each level's coverage per parameter, mean and lowest over the runs."""
    out: dict = {}
    for row in rows:
        out.setdefault(row["task"], {}).setdefault(row["method"], []).append(row)
    return {task: {method: {"runs": len(group), **{level: {
                "mean": [round(float(v), 3) for v in np.mean([r["marginal_coverage"][level] for r in group], axis=0)],
                "lowest": [round(float(v), 3) for v in np.min([r["marginal_coverage"][level] for r in group], axis=0)]}
                for level in map(str, LEVELS)}}
                   for method, group in sorted(by_method.items())}
            for task, by_method in sorted(out.items())}


def paired_with_tsnpe(rows: list[dict], level: str = "0.95") -> dict:
    """Per task and MF method: its ``level`` coverage against TSNPE's at the same seeds and observations.

    The rule of docs/decisions.md ("How coverage at x_o is read"): coverage *breaks* when, for some
    parameter, TSNPE's coverage minus the method's is above 0.05 on average and its one-sided 95 %
    interval (mean - 1.645 standard errors) lies above 0.

    Arguments:
        rows: rows of :func:`coverage_row`.
        level: the credibility level compared.

    Returns:
        ``{task: {method: {pairs, tsnpe_minus_method: {mean, se}, breaks}}}`` where TSNPE ran.
    """
    key = lambda r: (r["task"], r["seed"], r["observation"])  # noqa: E731
    tsnpe = {key(r): r for r in rows if r["method"] == "tsnpe"}
    out: dict = {}
    for method in sorted({r["method"] for r in rows} - {"tsnpe"}):
        for task in sorted({r["task"] for r in rows}):
            pairs = [(tsnpe[key(r)], r) for r in rows if r["method"] == method and r["task"] == task and key(r) in tsnpe]
            if len(pairs) < 2:
                continue
            diff = np.array([np.subtract(t["marginal_coverage"][level], m["marginal_coverage"][level]) for t, m in pairs])
            mean, se = diff.mean(axis=0), diff.std(axis=0, ddof=1) / np.sqrt(len(diff))
            out.setdefault(task, {})[method] = {
                "pairs": len(pairs), "level": level,
                "tsnpe_minus_method": {"mean": [round(float(v), 3) for v in mean], "se": [round(float(v), 3) for v in se]},
                "breaks": bool(np.any((mean > 0.05) & (mean - 1.645 * se > 0)))}
    return out


def check_against_under_coverage(rows: list[dict], level: str = "0.95", floor: float = 0.85) -> dict:
    """How the check near x_o agrees with material under-coverage (docs/decisions.md, second reading).

    The check *flags* when its verdict is biased or over-confident; a run *under-covers* when some
    parameter's ``level`` intervals hold less than ``floor`` of the exact posterior.

    Arguments:
        rows: rows of :func:`coverage_row` (those without a check are left out: TSNPE before the check).
        level, floor: the under-coverage reading.

    Returns:
        The four counts and the agreement.
    """
    counts = {"flags_and_under_covers": 0, "flags_only": 0, "under_covers_only": 0, "neither": 0}
    for row in rows:
        if row.get("check") is None:
            continue
        flags = row["check"] in ("biased", "over-confident")
        under = min(row["marginal_coverage"][level]) < floor
        counts["flags_and_under_covers" if flags and under else "flags_only" if flags
               else "under_covers_only" if under else "neither"] += 1
    runs = sum(counts.values())
    return {**counts, "runs": runs, "agree": counts["flags_and_under_covers"] + counts["neither"],
            "level": level, "floor": floor}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", type=Path, nargs="+", required=True)
    parser.add_argument("--draws", type=int, default=500, help="exact reference draws at x_o per run")
    parser.add_argument("--samples", type=int, default=500, help="posterior samples each draw is ranked among")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reuse", type=Path, help="a JSON this script wrote: its rows of the same runs, draws and "
                                                     "samples are taken as they are (every row is seeded)")
    args = parser.parse_args()
    done = {(r["store"], r["run"], r["draws"], r["posterior_samples"]): r
            for r in (json.loads(args.reuse.read_text())["rows"] if args.reuse else [])}
    started, rows = time.perf_counter(), []
    for store, run, summary in sequential_runs(args.stores):
        key = (str(store), run, args.draws, args.samples)
        rows.append(done[key] if key in done else coverage_row(store, run, summary, args.draws, args.samples))
        print(json.dumps({k: rows[-1][k] for k in ("run", "c2st", "verdict", "marginal_coverage")}), flush=True)
    args.out.write_text(json.dumps({"command": "python benchmarks/sequential_coverage.py --stores "
                                               + " ".join(map(str, args.stores)) + f" --draws {args.draws} --samples {args.samples}",
                                    **code_state(), "levels": list(LEVELS), "rows": rows, "summary": summarise(rows),
                                    "against_tsnpe": paired_with_tsnpe(rows),
                                    "check_against_under_coverage": check_against_under_coverage(rows),
                                    "wall_seconds": round(time.perf_counter() - started, 1)}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""The sequential transfer guard's record over seeds (issue 34, item 3): what it keeps and what that costs.

Per task and seed, one A-MF-TSNPE run (default: LF 1e4, HF 100, 5 rounds) with
``--transfer-guard report``: it keeps the fine-tuned chain and stores the guard's comparison on the
last round's new rows, with what the rule (``select``, the default) would choose. Where the rule
chooses from scratch, the same run again with ``--transfer-guard select`` (a store of its own) gives
the C2ST of what the default keeps; elsewhere the default's run is the report run itself (the guard's
scratch training has seeds of its own and changes nothing else: a select run that keeps the chain
is the report run). The old rule (the higher mean) is read from the same record (``better``).
Observation: held-out test observation ``seed`` (``--observation-index``; with
``--observation-offsets 0 5 10`` also ``seed + 5`` and ``seed + 10``, one run each), C2ST against the exact
reference at it; per-round C2ST is off (``evaluate_rounds = false``: it only reports). Each run also
records the check near x_o that needs no reference (``coverage_at_x_o``) beside the verdict of the
calibration against the exact reference at x_o, for the check's validation (docs/sequential.md).

    python benchmarks/sequential_guard.py --tasks ou2 ou2-lf-noise --seeds 0 1 2 3 4 --out docs/sequential-guard.json

With ``--method tsnpe`` or ``mf-tsnpe`` the same runs give those methods' C2ST and calibration at
the same observations (issue 34, item 2: coverage at x_o against TSNPE); TSNPE has no guard.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from _runner import code_state, protocol, run


def _one(task: str, seed: int, observation: int, mode: str, args, store: Path, config: Path) -> dict:
    rec = run(["run", "--config", config, "--task", task, "--method", args.method, "--lf-sims", args.lf,
               "--hf-sims", args.hf, "--seed", seed, "--observation-index", observation, "--transfer-guard", mode,
               *(["--scratch-check", args.scratch_check] if args.method != "tsnpe" else []),
               "--store", store, "--n-workers", args.workers, "--json"], log=store.with_suffix(".log"), append=True)
    out = {"mode": mode, "command": rec.text, "returncode": rec.returncode, "wall_seconds": rec.wall_seconds,
           "cpu_seconds": rec.cpu_seconds}
    if rec.returncode != 0:
        out["stderr_tail"] = rec.stderr[-2000:]
        return out
    summary = rec.summary
    out["c2st"] = summary["metrics"]["c2st"]
    # The check near x_o without a reference, beside the reference's own calibration at x_o (issue 34, item 1).
    out["coverage_at_x_o"] = summary.get("coverage_at_x_o")
    out["round_coverage"] = [r.get("coverage") for r in summary.get("rounds", [])]
    out["reference_calibration"] = (summary.get("calibration") or {}).get("verdict")
    out["transfer_guard"] = {k: v for k, v in (summary.get("transfer_guard") or {}).items() if k != "scratch_train"}
    # The from-scratch cross-check at the end (issue 34, item 2): the chain's marginals against from scratch's.
    out["scratch_check"] = {k: v for k, v in (summary.get("scratch_check") or {}).items() if k != "posterior"} or None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["ou2", "ou2-lf-noise"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--method", default="a-mf-tsnpe")
    parser.add_argument("--lf", type=int, default=10_000)
    parser.add_argument("--hf", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scratch-check", default="report", help="MF methods: the from-scratch cross-check's mode")
    parser.add_argument("--observation-offsets", nargs="+", type=int, default=[0],
                        help="seed s runs at held-out observations s + offset (issue 34: 3 observations per seed)")
    parser.add_argument("--stores", type=Path, default=Path("benchmarks/stores/sequential-guard"))
    parser.add_argument("--out", type=Path, default=Path("docs/sequential-guard.json"))
    args = parser.parse_args()

    args.stores.mkdir(parents=True, exist_ok=True)
    config = args.stores / "no-round-c2st.toml"
    config.write_text("evaluate_rounds = false\n")
    results = {"protocol": protocol(args),
               **code_state(), "runs": []}
    started = time.perf_counter()
    for task in args.tasks:
        for seed, offset in ((s, o) for s in args.seeds for o in args.observation_offsets):
            observation = seed + offset
            # Offset 0 keeps the store names of the runs made before observations had offsets.
            name = f"{task}-seed{seed}" + (f"-obs{observation}" if offset else "")
            row: dict = {"task": task, "seed": seed, "observation": observation}
            row["report"] = report = _one(task, seed, observation, "report", args, args.stores / name, config)
            guard = report.get("transfer_guard") or {}
            if guard.get("chosen") == "from scratch":
                row["select"] = _one(task, seed, observation, "select", args, args.stores / f"{name}-select", config)
            kept = row.get("select", report)
            row["default_c2st"] = kept.get("c2st")
            row["chain_c2st"] = report.get("c2st")
            print(f"{task} seed {seed} observation {observation}: chosen {guard.get('chosen')} (old rule: {guard.get('better')}, difference "
                  f"{guard.get('difference')}), C2ST default {row['default_c2st']} chain {row['chain_c2st']}", flush=True)
            results["runs"].append(row)
            results["wall_seconds"] = round(time.perf_counter() - started, 1)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    summary = {}
    for task in args.tasks:
        rows = [r for r in results["runs"] if r["task"] == task and r.get("chain_c2st")]
        chosen = [(r["report"].get("transfer_guard") or {}).get("chosen") for r in rows]  # TSNPE has no guard
        old = [(r["report"].get("transfer_guard") or {}).get("better") for r in rows]
        first = lambda c: next(iter(c.values())) if isinstance(c, dict) else c  # noqa: E731 (the first reference's C2ST)
        diff = [first(r["default_c2st"]) - first(r["chain_c2st"]) for r in rows]
        chain = [first(r["chain_c2st"]) for r in rows]
        summary[task] = {"runs": len(rows), "chosen_from_scratch": chosen.count("from scratch"),
                         "old_rule_from_scratch": old.count("from scratch"),
                         "default_minus_chain_c2st": diff, "chain_c2st_sd_over_seeds": float(np.std(chain, ddof=1))
                         if len(chain) > 1 else None}
    results["summary"] = summary
    args.out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

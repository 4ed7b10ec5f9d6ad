"""Calibration of what `mfsbi run` reports (issue 17), for every task with an exact reference.

    python benchmarks/calibration_table.py --tasks ou2 ou3 ou4 slcp --seeds 0 1 2 --out docs/calibration.json

Runs ``mfsbi run --task T --method M --seed S --json`` (the defaults: 1e4 LF, 100 HF, 100 held-out
HF pairs) in a fresh store per seed and collects, from each summary, the calibration on the
held-out pairs (SBC KS p-values, TARP ATC and KS p-value, the verdict and its rule), the C2ST
against the reference and the transfer guard's choice. The commands run one after another; each
brings up its own Prefect API and Dask cluster, as a user's run does.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import _runner as runner


def one(task: str, method: str, seed: int, store: Path) -> dict:
    done = runner.run(["run", "--task", task, "--method", method, "--seed", seed, "--store", store, "--json"])
    if done.returncode != 0:
        raise SystemExit(f"{done.text} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    summary = done.summary
    calibration = summary["calibration"]
    guard = summary.get("transfer_guard") or {}
    row = {"task": task, "method": method, "seed": seed, "verdict": calibration["verdict"],
           "test": calibration["test"], "tarp_atc": round(calibration["tarp_atc"], 4),
           "tarp_ks_pvalue": round(calibration["tarp_ks_pvalue"], 4),
           "sbc_ks_pvalues": [round(p, 5) for p in calibration["sbc_ks_pvalues"]],
           "num_pairs": calibration["num_pairs"], "c2st": {k: round(v, 4) for k, v in summary["metrics"]["c2st"].items()},
           "nltp": round(summary["metrics"]["nltp"], 4), "guard_kept": guard.get("kept"),
           "seconds": round(done.wall_seconds, 1), "cpu_seconds": round(done.cpu_seconds, 1)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["ou2", "ou3", "ou4", "slcp"])
    parser.add_argument("--methods", nargs="+", default=["mf-npe"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            for task in args.tasks:
                for method in args.methods:
                    rows.append(one(task, method, seed, Path(folder) / f"store-seed{seed}"))
    document = {"command": "python " + " ".join(sys.argv), "machine": platform.platform(), **runner.code_state(),
                "rows": rows}
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()

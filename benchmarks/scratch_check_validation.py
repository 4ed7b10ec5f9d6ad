"""The from-scratch cross-check and its corrections on fresh runs, against TSNPE (issue 34, item 2).

Reads a ``sequential_coverage.py`` JSON (TSNPE's and the MF chains' coverage at x_o) and a
``sequential_correction.py`` JSON of the same stores (per MF run: the chain, the run's own
from-scratch cross-check estimators, and their equal mixture, each read against the exact posterior),
and reports for each way of keeping an estimate (the chain; from scratch; the mixture; what the
cross-check's rule keeps with ``--scratch-check correct``) its 95 % coverage against TSNPE's at the same
observations with the break rule of docs/decisions.md, and its C2ST; plus how often the rule flagged.

    python benchmarks/scratch_check_validation.py --coverage docs/scratch-check-coverage.json \\
        --correction docs/scratch-check-correction.json --out docs/scratch-check-validation.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from _runner import code_state
from mfsbi.inference.agreement import DISAGREEMENT_SHIFT
from scratch_check_rule import shift
from sequential_coverage import paired_with_tsnpe

SIDES = ("chain", "from_scratch", "mixture", "rule")


def _flagged(row: dict) -> bool:
    """The run's own cross-check's verdict; for a run made before it, the rule on this script's estimates."""
    check = row.get("scratch_check")
    return bool(check["disagree"]) if check else shift(row) > DISAGREEMENT_SHIFT


def _side(row: dict, side: str) -> dict:
    if side == "rule":  # --scratch-check correct: from scratch where the rule flagged, else the chain
        side = "from_scratch" if _flagged(row) else "chain"
    return row[side]


def validation(coverage_rows: list[dict], correction_rows: list[dict]) -> dict:
    """Per kept side, task and MF method: coverage against TSNPE, mean C2ST and the rule's flags.

    Runs in a ``-select`` store (``sequential_guard.py``'s rerun where the transfer guard chose from
    scratch: its last round trained from scratch, so no cross-check) are left out; the report run at
    the same seed and observation holds the chain and its cross-check.
    """
    coverage_rows = [r for r in coverage_rows if not r["store"].endswith("-select")]
    correction_rows = [r for r in correction_rows if not r["store"].endswith("-select")]
    tsnpe = [r for r in coverage_rows if r["method"] == "tsnpe"]
    out: dict = {}
    for side in SIDES:
        rows = [{"task": r["task"], "method": r["method"], "seed": r["seed"], "observation": r["observation"],
                 "marginal_coverage": _side(r, side)["marginal_coverage"], "c2st": _side(r, side)["c2st"]}
                for r in correction_rows]
        paired = paired_with_tsnpe(tsnpe + rows)
        for task in sorted({r["task"] for r in rows}):
            for method in sorted({r["method"] for r in rows if r["task"] == task}):
                group = [r for r in rows if r["task"] == task and r["method"] == method]
                out.setdefault(task, {}).setdefault(method, {})[side] = {
                    "runs": len(group),
                    "coverage_95_mean": [round(float(v), 3) for v in
                                         np.mean([g["marginal_coverage"]["0.95"] for g in group], axis=0)],
                    "c2st_mean": round(float(np.mean([g["c2st"] for g in group])), 4),
                    "c2st_sd": round(float(np.std([g["c2st"] for g in group], ddof=1)), 4) if len(group) > 1 else None,
                    "against_tsnpe": (paired.get(task) or {}).get(method)}
    for task in out:
        for method in out[task]:
            group = [r for r in correction_rows if r["task"] == task and r["method"] == method]
            out[task][method]["flagged"] = f"{sum(_flagged(r) for r in group)} of {len(group)}"
            out[task][method]["shifts"] = [round(max(r["scratch_check"]["shift"]) if r.get("scratch_check")
                                                 else shift(r), 3) for r in group]
    for task in sorted({r["task"] for r in tsnpe}):
        group = [r for r in tsnpe if r["task"] == task]
        out.setdefault(task, {})["tsnpe"] = {
            "runs": len(group), "c2st_mean": round(float(np.mean([r["c2st"]["euler-maruyama"] for r in group])), 4),
            "coverage_95_mean": [round(float(v), 3) for v in
                                 np.mean([r["marginal_coverage"]["0.95"] for r in group], axis=0)]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coverage", type=Path, required=True)
    parser.add_argument("--correction", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = validation(json.loads(args.coverage.read_text())["rows"], json.loads(args.correction.read_text())["rows"])
    args.out.write_text(json.dumps({"command": f"python benchmarks/scratch_check_validation.py --coverage "
                                               f"{args.coverage} --correction {args.correction} --out {args.out}",
                                    **code_state(), "validation": result}, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""False alarms and power of the calibration verdict, on posteriors known exactly or distorted by known amounts.

    python benchmarks/calibration_power.py --out docs/calibration-power.json
    python benchmarks/calibration_power.py --report docs/calibration-power.json   # the tables, in markdown

The model is conjugate (tests/known_posteriors.py): theta ~ N(0, I_d), x = theta + N(0, I_d), exact
posterior N(x / 2, I / 2). Per setting (dimension d, pairs n, posterior samples L) and per
distortion, ``--sets`` independent pair sets of n prior draws are each given to
:func:`mfsbi.inference.calibration` (the function a run calls on its held-out pairs), with a
posterior that is exact, over-confident (SD times s < 1), under-confident (s > 1) or shifted (each
parameter's location moved by delta posterior SDs). Reported per row: the fraction of sets not
called *calibrated* (on the exact posterior: the false-alarm rate; otherwise the power), the
fraction given the right name, the verdicts' counts and which test decided. Pair set k is drawn
from seed ``pair_seed0 + k`` and its posterior samples from ``sample_seed0 + k``; the same pair sets
serve every distortion of a setting.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binomtest

from mfsbi.inference.calibration import BIASED, CALIBRATED, OVER_CONFIDENT, UNDER_CONFIDENT, calibration

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from known_posteriors import ConjugateGaussianModel  # noqa: E402  (tests/ holds the known posteriors)

# (kind, the verdict a posterior of that kind should get, amounts): scale for over/under, shift in SDs.
DISTORTIONS = [
    ("exact", CALIBRATED, [None]),
    ("over-confident", OVER_CONFIDENT, [0.5, 0.7, 0.85]),
    ("under-confident", UNDER_CONFIDENT, [1.3, 1.6, 2.0]),
    ("shifted", BIASED, [0.25, 0.5, 1.0]),
]


def interval(successes: int, trials: int) -> list[float]:
    """Wilson 95 % interval of a binomial proportion (scipy), rounded."""
    ci = binomtest(successes, trials).proportion_ci(0.95, method="wilson")
    return [round(ci.low, 4), round(ci.high, 4)]


def one_row(model: ConjugateGaussianModel, kind: str, right: str, amount: float | None, num_pairs: int,
            num_samples: int, sets: int, pair_seed0: int, sample_seed0: int, level: float) -> dict:
    if kind == "exact":
        posterior = model.posterior()
    elif kind == "shifted":
        posterior = model.posterior(shift=amount)
    else:
        posterior = model.posterior(scale=amount)
    verdicts, deciders = Counter(), Counter()
    started = time.perf_counter()
    for k in range(sets):
        theta, x = model.pairs(num_pairs, pair_seed0 + k)
        result = calibration(posterior, theta, x, num_posterior_samples=num_samples, level=level,
                             seed=sample_seed0 + k)
        verdicts[result.verdict] += 1
        if result.verdict != CALIBRATED:
            deciders["tarp" if result.test.startswith("TARP") else "sbc"] += 1
    flagged = sets - verdicts[CALIBRATED]
    row = {"dim": model.dim, "prior": "normal" if model.box is None else f"box {model.box:g}",
           "num_pairs": num_pairs, "num_posterior_samples": num_samples, "kind": kind, "amount": amount,
           "sets": sets, "flagged": round(flagged / sets, 4), "flagged_interval": interval(flagged, sets),
           "right_verdict": round(verdicts[right] / sets, 4), "verdicts": dict(verdicts),
           "decided_by": dict(deciders), "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(row), flush=True)
    return row


def cell(row: dict) -> str:
    """'flagged (right name)' of one row, as percentages; the exact posterior's with its 95 % interval."""
    if row["kind"] == "exact":
        low, high = row["flagged_interval"]
        return f"{100 * row['flagged']:.1f} ({100 * low:.1f}-{100 * high:.1f})"
    return f"{100 * row['flagged']:.0f} ({100 * row['right_verdict']:.0f})"


def report(path: Path) -> None:
    """Print each run of ``path`` as a markdown table: one line per setting, one column per posterior."""
    columns = [(kind, amount) for kind, _, amounts in DISTORTIONS for amount in amounts]
    names = {"exact": "exact: false alarms % (95 % CI)", "over-confident": "SD x", "under-confident": "SD x",
             "shifted": "shift (SDs)"}
    for run in json.loads(path.read_text())["runs"]:
        print(f"\n**{run['label']}** (`{run['command']}`)\n")
        present = [c for c in columns if any((r["kind"], r["amount"]) == c for r in run["rows"])]
        print("| d | prior | pairs | samples | " + " | ".join(
            names[k] if a is None else f"{names[k]} {a:g}" for k, a in present) + " |")
        print("|---" * (4 + len(present)) + "|")
        settings = dict.fromkeys((r["dim"], r["prior"], r["num_pairs"], r["num_posterior_samples"]) for r in run["rows"])
        for setting in settings:
            rows = {(r["kind"], r["amount"]): r for r in run["rows"]
                    if (r["dim"], r["prior"], r["num_pairs"], r["num_posterior_samples"]) == setting}
            print("| " + " | ".join(str(v) for v in setting) + " | "
                  + " | ".join(cell(rows[c]) if c in rows else "-" for c in present) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--pairs", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--samples", type=int, nargs="+", default=[100, 200, 1000])
    parser.add_argument("--sets", type=int, default=200, help="pair sets per distorted posterior")
    parser.add_argument("--exact-sets", type=int, default=400, help="pair sets for the exact posterior")
    parser.add_argument("--box", type=float, default=None, help="a uniform prior on [-box, box]^d instead of N(0, I)")
    parser.add_argument("--exact-only", action="store_true", help="only the exact posterior (false alarms)")
    parser.add_argument("--pair-seed0", type=int, default=0)
    parser.add_argument("--sample-seed0", type=int, default=1_000_000)
    parser.add_argument("--level", type=float, default=0.05)
    parser.add_argument("--label", default="", help="what this run is (development, validation), kept in the JSON")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--report", type=Path, help="print the tables of this JSON file and stop")
    parser.add_argument("--append", action="store_true", help="add the rows to --out's rows instead of replacing")
    args = parser.parse_args()
    if args.report:
        return report(args.report)
    if args.out is None:
        parser.error("--out is required (the JSON file to write), unless --report")
    # One thread: the arrays are small and the machine is shared.
    torch.set_num_threads(1)
    rows = []
    for dim in args.dims:
        model = ConjugateGaussianModel(dim=dim, box=args.box)
        for num_pairs in args.pairs:
            for num_samples in args.samples:
                for kind, right, amounts in DISTORTIONS[:1] if args.exact_only else DISTORTIONS:
                    sets = args.exact_sets if kind == "exact" else args.sets
                    rows += [one_row(model, kind, right, amount, num_pairs, num_samples, sets, args.pair_seed0,
                                     args.sample_seed0, args.level) for amount in amounts]
    run = {"label": args.label, "command": "python " + shlex.join(sys.argv), "pair_seed0": args.pair_seed0,
           "sample_seed0": args.sample_seed0, "level": args.level, "machine": platform.platform(),
           "torch": torch.__version__, "numpy": np.__version__, "rows": rows}
    document = json.loads(args.out.read_text()) if args.append and args.out.exists() else {"runs": []}
    document["runs"].append(run)
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()

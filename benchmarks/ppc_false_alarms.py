"""False alarms of `mfsbi ppc`'s verdict where the model and the posterior are both right, on OU2.

    python benchmarks/ppc_false_alarms.py --out docs/ppc-false-alarms.json

OU2's Euler-Maruyama reference is the exact posterior of its HF simulator. Each of ``--observations``
x_o is simulated at HF from a prior draw; ``--draws`` exact posterior draws at x_o are simulated at HF
and given, with x_o, to :func:`mfsbi.inference.predictive.predictive_check` (the rule `mfsbi ppc`
applies). A verdict of misfit there is a false alarm. The same draws simulated at LF (the cheap
model, which misses OU2's early transient) show whether the check sees a model that is wrong.
Observation k: θ from seed ``seed + k``, x_o from seed ``10**6 + seed + k``, posterior draws from
seed ``2 * 10**6 + seed + k``, their HF and LF simulations from seed ``3 * 10**6 + seed + k``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from mfsbi.inference.predictive import FAMILY_LEVEL, minimum_draws, predictive_check
from mfsbi.simulators import get_task


def _rate(count: int, trials: int) -> dict:
    interval = binomtest(count, trials).proportion_ci(confidence_level=0.95, method="exact")
    return {"count": count, "trials": trials, "rate": count / trials,
            "interval_95": [round(interval.low, 4), round(interval.high, 4)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="ou2")
    parser.add_argument("--observations", type=int, default=500)
    parser.add_argument("--draws", type=int, default=400, help="posterior draws per observation (mfsbi ppc -n)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/ppc-false-alarms.json"))
    args = parser.parse_args()

    task = get_task(args.task)
    name, reference = next(iter(task.references.items()))
    started = time.perf_counter()
    statuses = {"hf": [], "lf": []}
    flagged = {"hf": np.zeros(task.x_dim, dtype=int), "lf": np.zeros(task.x_dim, dtype=int)}
    smallest_p = []
    for k in range(args.observations):
        seed = args.seed + k
        theta = task.sample_prior(1, seed)
        x_o = task.high_fidelity(theta, 10**6 + seed)[0]
        draws = reference(x_o, args.draws, 2 * 10**6 + seed)
        for fidelity in ("hf", "lf"):
            x = task.simulator(fidelity)(draws, 3 * 10**6 + seed)
            check = predictive_check(x[0] if isinstance(x, tuple) else x, x_o)
            statuses[fidelity].append(check.status)
            flagged[fidelity] += np.isin(check.names, check.flagged)
            if fidelity == "hf":
                smallest_p.append(float(np.nanmin(check.p_value)))
    seconds = time.perf_counter() - started
    result = {
        "command": "python " + shlex.join(sys.argv),
        "protocol": {**vars(args), "out": str(args.out), "reference": name, "level": FAMILY_LEVEL,
                     "statistics": task.x_dim, "minimum_draws": minimum_draws(task.x_dim),
                     "rule": "misfit when a statistic's two-sided rank p-value <= level / statistics (Bonferroni)"},
        "false_alarms": _rate(statuses["hf"].count("misfit"), args.observations),
        "inconclusive": statuses["hf"].count("inconclusive"),
        "flagged_per_statistic": flagged["hf"].tolist(),
        "smallest_p_quantiles": dict(zip(("5%", "50%", "95%"), np.quantile(smallest_p, [0.05, 0.5, 0.95]).round(4).tolist())),
        "lf_model_flagged": _rate(statuses["lf"].count("misfit"), args.observations),
        "lf_flagged_per_statistic": flagged["lf"].tolist(),
        "seconds": round(seconds, 1),
        "machine": platform.platform(),
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("false_alarms", "inconclusive", "lf_model_flagged", "seconds")}))


if __name__ == "__main__":
    main()

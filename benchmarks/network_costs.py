"""What the plastic network costs per simulation, and what the paper's protocol would cost on N cores.

    python benchmarks/network_costs.py --out docs/network-costs.json

Measured here (CPU seconds, ``time.process_time``; Brian2's cython code runs in this process):
the mean-field LF per row, the HF at the default scale (400 + 100 neurons, 10 s) on prior draws,
and the HF at the paper's size (4 096 + 1 024 neurons) over two short durations, from which the
cost per simulated second is fitted (``a + b * duration``, on the means over prior draws: a budget
pays the expected cost) and extrapolated to the paper's 120 s.
The extrapolation is a lower bound: plasticity raises the rates over a long run and Brian2's cost
grows with the spikes. Every simulation is timed after a warm-up run of the same size (Brian2
compiles its code objects on the first run).

The table prices PAPER.md's network protocol (MF-NPE: 1e5 LF + 1e3 HF; NPE: 1e3 HF) on N cores,
one simulation per core at a time (mfsbi's Dask workers run one simulation per thread), as
``ceil(count / N) * seconds per simulation``: simulations only, no training, no scheduling overhead
(docs/performance.md measures that: about 5 ms per task on LocalCluster and on SLURM).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from mfsbi.simulators.network_brian2 import PlasticNetworkHighFidelity
from mfsbi.simulators.network_model import NetworkScale
from mfsbi.simulators.registry import get_task

CORES = (2, 16, 64, 256, 1024)
PAPER_PROTOCOL = {"mf-npe": {"lf": 100_000, "hf": 1_000}, "npe": {"hf": 1_000}}


def _draws(prior, n: int, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    return prior.sample((n,)).double().numpy()


def _timed(simulator, theta: np.ndarray, seed: int) -> list[float]:
    seconds = []
    for i, row in enumerate(theta):
        start = time.process_time()
        simulator(row[None, :], seed + i)
        seconds.append(time.process_time() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--default-draws", type=int, default=3)
    parser.add_argument("--paper-draws", type=int, default=2)
    parser.add_argument("--paper-durations", type=float, nargs=2, default=(2.0, 4.0))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = get_task("plastic-network")
    load_before = os.getloadavg()

    theta_lf = _draws(task.prior, 2000, args.seed)
    start = time.process_time()
    task.low_fidelity(theta_lf, args.seed)
    lf_seconds = (time.process_time() - start) / len(theta_lf)

    default = PlasticNetworkHighFidelity(scale=NetworkScale.default())
    theta = _draws(task.prior, args.default_draws + 1, args.seed + 1)
    _timed(default, theta[:1], args.seed)  # warm-up: compiles
    default_seconds = _timed(default, theta[1:], args.seed + 100)

    paper = NetworkScale.paper()
    per_duration = {}
    for duration in args.paper_durations:
        scale = dataclasses.replace(paper, duration=duration, window=min(paper.window, duration / 2))
        simulator = PlasticNetworkHighFidelity(scale=scale)
        theta = _draws(task.prior, args.paper_draws + 1, args.seed + 2)
        _timed(simulator, theta[:1], args.seed)
        per_duration[duration] = _timed(simulator, theta[1:], args.seed + 200)
    (d1, d2) = args.paper_durations
    # Means, not medians: a budget pays the expected cost over the prior (it varies with θ by 10x:
    # near-silent networks are cheap, runaway ones stop early at the runaway check).
    m1, m2 = float(np.mean(per_duration[d1])), float(np.mean(per_duration[d2]))
    slope = (m2 - m1) / (d2 - d1)
    intercept = m1 - slope * d1
    paper_hf = intercept + slope * paper.duration

    costs = {"lf_mean_field": lf_seconds, "hf_default": float(np.mean(default_seconds)),
             "hf_paper_extrapolated": paper_hf}
    table = []
    for method, counts in PAPER_PROTOCOL.items():
        for cores in CORES:
            seconds = sum(math.ceil(n / cores) * (costs["lf_mean_field"] if level == "lf" else costs["hf_paper_extrapolated"])
                          for level, n in counts.items())
            table.append({"method": method, "counts": counts, "cores": cores, "simulation_hours": seconds / 3600})
    document = {
        "command": "python benchmarks/network_costs.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
            for k, v in vars(args).items()),
        "machine": f"{platform.platform()}, {os.cpu_count()} cores (shared)", "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpu_seconds_per_simulation": costs,
        "hf_default_each": default_seconds,
        "hf_paper_each_by_duration": {str(k): v for k, v in per_duration.items()},
        "hf_paper_fit": {"seconds_at_0": intercept, "seconds_per_simulated_second": slope,
                         "duration": paper.duration},
        "paper_protocol_on_n_cores": table,
    }
    print(json.dumps(document, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()

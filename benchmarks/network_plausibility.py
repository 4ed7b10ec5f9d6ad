"""MF-NPE vs NPE on the plastic network at equal HF budget: NLTP and plausible posterior samples.

PAPER.md: MF-NPE (1e5 LF, 1e3 HF) gave ~94 % plausible posterior samples against ~64 % for NPE with
the same HF budget (both E and I rates in 1–50 Hz when the posterior samples are simulated). This
script measures the same two quantities through the real pipeline (Prefect, Dask, zarr): both
methods share the HF rows and the held-out pairs (one store, one seed); the observation x_o is the
first held-out HF simulation whose rates are plausible; posterior samples at x_o are simulated with
the HF model on the Dask workers.

    python benchmarks/network_plausibility.py --task plastic-network-tiny --lf-sims 100000 \
        --hf-sims 100 --samples 40 --out docs/network
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

PAPER = {"npe": 0.64, "mf-npe": 0.94}


def _simulate_chunk(item):
    from mfsbi.simulators import get_task

    task_spec, theta, seed = item
    output = get_task(task_spec).high_fidelity(theta, seed)
    return output[0] if isinstance(output, tuple) else output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="plastic-network-tiny")
    parser.add_argument("--lf-sims", type=int, default=100_000)
    parser.add_argument("--hf-sims", type=int, default=100)
    parser.add_argument("--test-pairs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=40, help="posterior samples simulated per method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", default="benchmarks/stores/network")
    parser.add_argument("--out", default="docs/network")
    args = parser.parse_args()

    from prefect import flow

    from mfsbi.flows.amortized import run_amortized
    from mfsbi.flows.config import RunConfig
    from mfsbi.flows.evaluation import sample_posterior
    from mfsbi.runtime.executor import DaskExecutor
    from mfsbi.app.prefect_server import prefect_api
    from mfsbi.runtime.cluster import dask_client
    from mfsbi.inference import Ensemble, estimator_from_bytes
    from mfsbi.simulators import get_task
    from mfsbi.simulators.plastic_network import is_plausible
    from mfsbi.storage import SimulationStore

    task = get_task(args.task)
    results: dict = {"protocol": vars(args), "paper_plausible_fraction": PAPER, "methods": {}}
    started = time.perf_counter()

    @flow(name="mfsbi-benchmark-network")
    def benchmark(executor) -> None:
        for method in ("mf-npe", "npe"):
            t0 = time.perf_counter()
            config = RunConfig(task=args.task, method=method, lf_sims=args.lf_sims, hf_sims=args.hf_sims,
                               store=args.store, seed=args.seed, num_test_observations=0,
                               num_nltp_pairs=args.test_pairs, hf_chunk_size=2)
            summary = run_amortized(config, executor).to_dict()
            store = SimulationStore(args.store)
            test_theta, test_x = store.table(f"{task.name}-test", "hf").read("ok")
            plausible = np.flatnonzero(is_plausible(test_x))
            if not len(plausible):
                raise SystemExit("no held-out simulation is plausible: raise --test-pairs")
            x_o = test_x[plausible[0]]
            paths = summary["posterior"] if isinstance(summary["posterior"], list) else [summary["posterior"]]
            members = [estimator_from_bytes(store.read_artifact(p.removeprefix("artifacts/")), task.prior)
                       for p in paths]  # MF-NPE keeps its fold-stopped ensemble
            posterior = members[0].posterior() if len(members) == 1 else Ensemble(members).posterior()
            samples = sample_posterior(posterior, x_o, args.samples, seed=args.seed)
            chunks = [(args.task, samples[i:i + 2], 10_000 + i) for i in range(0, len(samples), 2)]
            x_samples = np.concatenate(list(executor.map_unordered(_simulate_chunk, chunks)))
            results["methods"][method] = {
                "nltp": summary["metrics"]["nltp"], "num_nltp_pairs": summary["metrics"]["num_nltp_pairs"],
                "x_o": x_o.tolist(), "plausible_fraction": float(is_plausible(x_samples).mean()),
                "posterior_samples_simulated": int(len(x_samples)), "seconds": time.perf_counter() - t0,
            }
            print(method, results["methods"][method], flush=True)

    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Prefect read its settings at import: point it at the server explicitly (tests/conftest.py).
    with prefect_api() as url, temporary_settings(updates={PREFECT_API_URL: url}), dask_client(None, None) as client:
        benchmark(DaskExecutor(client))
    results["wall_seconds"] = time.perf_counter() - started
    Path(f"{args.out}.json").write_text(json.dumps(results, indent=1))
    for method, r in results["methods"].items():
        print(f"{method:7s} NLTP {r['nltp']:.3f}  plausible {r['plausible_fraction']:.2f} "
              f"(paper {PAPER[method]:.2f})")


if __name__ == "__main__":
    main()

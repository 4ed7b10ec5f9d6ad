"""A candidate correction for lost coverage: the last round trained from scratch (issue 34, item 2).

With the small LF bias the MF methods' intervals at x_o held less of the exact posterior than
TSNPE's (docs/sequential.md, "Coverage at x_o at every bias"). One correction the issue names is the
transfer guard's own: train the last round from scratch on the run's HF rows (drawn from the
truncated priors of the rounds, which TSNPE's argument allows training on) instead of fine-tuning
the chain. This measures what that would give, on the stored runs, without simulating anything:
for every MF run found under ``--stores`` at ``--tasks``, as many estimators as the run kept are
trained from scratch with the library on all its HF rows (``train_npe`` at the run's own HF
learning rate of a sequential round, 5e-4 by default; seeds derived from the run's), or, for a run
that made the from-scratch cross-check (``mfsbi/flows/scratch_check.py``), its own estimators are
read. The chain the run kept, the from-scratch estimate and their equal mixture (``--scratch-check
mix``) are each read at the run's x_o: coverage of the exact posterior
(:func:`sequential_coverage.coverage_at`) and C2ST against 1 000 exact draws; the chain's and from
scratch's marginals too (what the cross-check's rule reads, ``scratch_check_rule.py``).

    python benchmarks/sequential_correction.py --stores benchmarks/stores/sequential-coverage \\
        benchmarks/stores/sequential-guard --tasks ou2-lf-biased-small --out docs/sequential-correction-small.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from _runner import code_state
from mfsbi import load_posterior
from mfsbi.flows.config import RunConfig
from mfsbi.flows.plan import RunPlan
from mfsbi.inference import Ensemble, TrainingConfig, c2st, estimator_from_bytes, train_npe
from mfsbi.runtime.seeds import derive_seed
from mfsbi.storage import SimulationStore
from sequential_coverage import coverage_at, sequential_runs


def _c2st_at(posterior, x_o: np.ndarray, task, seed: int, n: int = 1000) -> float:
    name, reference = next(iter(task.references.items()))
    exact = reference(x_o, n, derive_seed(seed, f"correction-c2st/{name}"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        drawn = posterior.sample((n,), x=torch.as_tensor(x_o, dtype=torch.float32), show_progress_bars=False)
    return round(c2st(exact, drawn.numpy(), seed=seed), 4)


def marginals_at(posterior, x_o: np.ndarray, seed: int, n: int = 2000) -> dict:
    """The posterior's marginals at ``x_o``: per parameter the 2.5, 50 and 97.5 % quantiles and the sd of ``n`` draws."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        drawn = posterior.sample((n,), x=torch.as_tensor(x_o, dtype=torch.float32), show_progress_bars=False).numpy()
    q = np.quantile(drawn, [0.025, 0.5, 0.975], axis=0)
    return {key: [round(float(v), 5) for v in values]
            for key, values in zip(("q025", "median", "q975", "sd"), (*q, drawn.std(axis=0)))}


def correction_row(store: Path, run: str, summary: dict, draws: int, samples: int) -> dict:
    plan = RunPlan.of(RunConfig.model_validate(summary["config"]))  # the run's own table and settings
    task, seed = plan.task, plan.config.seed
    chain = load_posterior(store, run)
    x_o = chain.default_x.numpy().reshape(-1)
    handle = SimulationStore(store, mode="r")
    theta, x = handle.table(plan.own_table, "hf").read("ok")
    check = summary.get("scratch_check") or {}
    if check.get("kept", "chain") != "chain":
        raise ValueError(f"{run}: the run kept from scratch at its cross-check; its chain is not its posterior")
    if check.get("posterior"):  # the run's own cross-check trained them: read, do not train again
        members = [estimator_from_bytes(handle.read_artifact(p.removeprefix("artifacts/")), task.prior)
                   for p in check["posterior"]]
    else:
        rate = plan.config.hf_training_rate(False)  # a sequential round's, as the guard's from-scratch training
        members = [train_npe(task.prior, theta, x,
                             training=TrainingConfig(learning_rate=rate, seed=derive_seed(seed, "correction", e)))
                   for e in range(len(summary["posterior"]))]
    scratch = members[0].posterior() if len(members) == 1 else Ensemble(members).posterior()
    chain_members = [estimator_from_bytes(handle.read_artifact(p.removeprefix("artifacts/")), task.prior)
                     for p in summary["posterior"]]
    mixture = Ensemble(chain_members + members).posterior()  # half chain, half from scratch
    return {"store": str(store), "run": run, "task": task.name, "method": summary["method"], "seed": seed,
            "observation": plan.config.observation_index, "hf_rows": len(theta), "members": len(members),
            "from_scratch_trained_by": "the run's cross-check" if check.get("posterior") else "this script",
            "scratch_check": {k: check[k] for k in ("shift", "threshold", "disagree", "kept") if k in check} or None,
            "chain": {"c2st": _c2st_at(chain, x_o, task, seed), "marginals": marginals_at(chain, x_o, seed),
                      **coverage_at(chain, x_o, task, seed, draws, samples)},
            "from_scratch": {"c2st": _c2st_at(scratch, x_o, task, seed), "marginals": marginals_at(scratch, x_o, seed),
                             **coverage_at(scratch, x_o, task, seed, draws, samples)},
            "mixture": {"c2st": _c2st_at(mixture, x_o, task, seed), **coverage_at(mixture, x_o, task, seed, draws, samples)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", type=Path, nargs="+", required=True)
    parser.add_argument("--tasks", nargs="+", default=["ou2-lf-biased-small"])
    parser.add_argument("--methods", nargs="+", default=["mf-tsnpe", "a-mf-tsnpe"])
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started, rows = time.perf_counter(), []
    for store, run, summary in sequential_runs(args.stores):
        if summary["config"]["task"] in args.tasks and summary["method"] in args.methods:
            rows.append(correction_row(store, run, summary, args.draws, args.samples))
            print(json.dumps({k: rows[-1][k] for k in ("run", "hf_rows")} | {
                side: {"c2st": rows[-1][side]["c2st"], "95": rows[-1][side]["marginal_coverage"]["0.95"]}
                for side in ("chain", "from_scratch", "mixture")}), flush=True)
    args.out.write_text(json.dumps({"command": "python benchmarks/sequential_correction.py --stores "
                                               + " ".join(map(str, args.stores)) + " --tasks " + " ".join(args.tasks)
                                               + " --methods " + " ".join(args.methods),
                                    **code_state(), "rows": rows,
                                    "wall_seconds": round(time.perf_counter() - started, 1)}, indent=1) + "\n")


if __name__ == "__main__":
    main()

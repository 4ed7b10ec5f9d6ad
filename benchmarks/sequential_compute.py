"""The sequential headline at equal compute (issue 34, item 4): A-MF-TSNPE's settings per CPU second.

    nice -n 5 python benchmarks/sequential_compute.py --root /tmp/seqc --variant pyramidal-reduced --seeds 0 1 2 \
        --out docs/sequential-compute-reduced.json
    python benchmarks/sequential_compute.py --out docs/sequential-compute-reduced.json --report-only

Protocol, fixed before the runs (docs/decisions.md, "The sequential headline at equal compute"):

- A-MF-TSNPE at held-out observations 0, 1, 2 (the observation is held-out HF pair i of the
  variant's test table, test seed 2026, the same pairs as docs/pyramidal-table.json), seeds 0-2,
  ε = 1e-3, ``--transfer-guard off``, in these settings:
  ``paper`` (1e4 LF, 5 rounds, 5 members) at 50 and 100 HF; at 50 HF, ``small-ensemble``
  (1e4 LF, 5 rounds, 2 members) and ``fewer-lf-more-rounds`` (2e3 LF, 10 rounds, 5 members).
  The checks a default run adds (``--coverage-folds 5``, ``--scratch-check report``) are off:
  they report, they do not change the posterior, and their training would be charged to the method.
- NPE at 500 HF (seed 0-2) through the same code, scored at the same three pairs: it says whether
  the NPE curve of docs/pyramidal-table.json (an earlier commit) is still what this code gives.
- NPE at 500 HF trained on task ``pyramidal``'s HF table (the rows docs/pyramidal-table.json's NPE
  trained on: θ are drawn per table name, so ``pyramidal-reduced``'s HF table holds other rows),
  scored at the variant's three pairs: whether this code gives that table's NPE on the same rows
  (added after the NPE runs above differed from it).
- Amortised MF-NPE as a user gets it (1e4 LF, the default cross-validated choice) at 50 and 100 HF,
  seeds 0-2, scored at the same three pairs (added after the A-MF-TSNPE runs had started; it
  chooses nothing about them).
- CPU seconds of a run = LF simulations × the LF's measured CPU cost + the LF pretraining's CPU
  (recorded by the run that trained it; every run on the store reuses it, and each is charged it
  in full, as a user with one observation would pay it) + the Dask workers' CPU during the run
  less what that run spent on the LF, the pretraining and the held-out test pairs (the HF
  simulations and every round's training: the workers' counters, ``os.times``, are the only
  record of a sequential run's training CPU) + the ``mfsbi`` command's own CPU (its imports and
  the truncated proposals it samples).

One store per seed (``ROOT/<variant>-seed<s>``), one long-lived Dask cluster (two single-threaded
workers) and Prefect server (benchmarks/_runner.py). Every finished run is written to ``--out`` at
once and skipped when the script runs again.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import _runner as runner
from pyramidal_table import _slim_summary, invocation, load, measure_costs, now, save

SETTINGS = {  # name: (LF simulations, rounds, ensemble members)
    "paper": (10000, 5, 5),
    "small-ensemble": (10000, 5, 2),
    "fewer-lf-more-rounds": (2000, 10, 5),
}
OBSERVATIONS = (0, 1, 2)
NO_CHECKS = "no-check-near-xo.toml"  # coverage_folds has no CLI option; a --config file sets it


def plan(seeds: list[int]) -> list[dict]:
    """The runs, in the order they run: the paper's setting first, then the others, NPE last."""
    runs = []
    for setting, budgets in (("paper", (50, 100)), ("small-ensemble", (50,)), ("fewer-lf-more-rounds", (50,))):
        for hf in budgets:
            runs += [{"method": "a-mf-tsnpe", "setting": setting, "lf": SETTINGS[setting][0], "hf": hf, "seed": s, "obs": i}
                     for s in seeds for i in OBSERVATIONS]
    runs += [{"method": "npe", "setting": "npe", "lf": 0, "hf": 500, "seed": s, "obs": None} for s in seeds]
    runs += [{"method": "mf-npe", "setting": "mf-npe", "lf": 10000, "hf": hf, "seed": s, "obs": None}
             for hf in (50, 100) for s in seeds]
    runs += [{"method": "npe", "setting": "npe-pyramidal-rows", "task": "pyramidal", "lf": 0, "hf": 500, "seed": s,
              "obs": None} for s in seeds]
    return runs


def key_of(run: dict) -> str:
    obs = "" if run["obs"] is None else f"/obs{run['obs']}"
    return f"{run['setting']}/hf{run['hf']}/seed{run['seed']}{obs}"


def task_of(run: dict, variant: str) -> str:
    """The task a run trains on: the variant, or ``pyramidal``'s HF table for the NPE check (docstring)."""
    return run.get("task", variant)


def command_of(run: dict, variant: str, root: Path, dask_address: str) -> list[str]:
    task = task_of(run, variant)
    store = root / f"{task}-seed{run['seed']}"
    # An NPE run on the other task's rows is scored here, at the variant's pairs: it needs no test pairs of its own.
    pairs = "100" if task == variant else "0"
    command = ["run", "--task", task, "--method", run["method"], "--hf-sims", str(run["hf"]),
               "--seed", str(run["seed"]), "--store", str(store), "--num-nltp-pairs", pairs,
               "--dask-address", dask_address, "--json"]
    if task != variant:
        command += ["--num-test-observations", "0"]
    if run["method"] == "mf-npe":
        command += ["--lf-sims", str(run["lf"])]
    if run["method"] == "a-mf-tsnpe":
        lf, rounds, members = SETTINGS[run["setting"]]
        command += ["--lf-sims", str(lf), "--rounds", str(rounds), "--ensemble-size", str(members),
                    "--observation-index", str(run["obs"]), "--truncation-quantile", "1e-3",
                    "--transfer-guard", "off", "--scratch-check", "off", "--config", str(root / NO_CHECKS)]
    return command


def test_rows(store: Path, variant: str) -> int:
    """How many held-out test pairs the store holds (their HF is evaluation, not the method's)."""
    from mfsbi.storage import SimulationStore

    if not store.exists():
        return 0
    table = SimulationStore(str(store)).table(f"{variant}-test", "hf")
    return 0 if table is None else len(table.rows("ok"))


def log_q_at_observations(store: Path, task: str, run_name: str, pairs_store: Path, variant: str) -> list[float]:
    """log q(θ_i | x_i) of an amortised run (in ``store``, of ``task``) at the held-out pairs the sequential runs observe."""
    import mfsbi
    from mfsbi.inference import pair_log_probs
    from mfsbi.storage import SimulationStore

    posterior = mfsbi.load_posterior(str(store), run=f"{task}/{run_name}")
    table = SimulationStore(str(pairs_store)).table(f"{variant}-test", "hf")
    rows = table.rows("ok")
    theta, x = table.read("ok")
    order = np.argsort(rows)[: len(OBSERVATIONS)]
    assert list(rows[order]) == list(OBSERVATIONS), "the test table lacks one of the observed pairs"
    return [round(float(v), 4) for v in pair_log_probs(posterior, theta[order], x[order]).numpy()]


def execute(run: dict, args, services: runner.Services, costs: dict) -> dict:
    task = task_of(run, args.variant)
    store, pairs_store = args.root / f"{task}-seed{run['seed']}", args.root / f"{args.variant}-seed{run['seed']}"
    command = command_of(run, args.variant, args.root, services.dask_address)
    log = args.root / "logs" / (key_of(run).replace("/", "_") + ".log")
    tests_before = test_rows(store, args.variant)
    before, started, started_at = services.worker_cpu(), time.perf_counter(), now()
    done = runner.run(command, env={**os.environ, "PREFECT_API_URL": services.api}, log=log)
    wall = round(time.perf_counter() - started, 1)
    worker_cpu = services.cpu_delta(before, services.worker_cpu())
    if done.returncode != 0:
        raise RuntimeError(f"{done.text} failed ({done.returncode}); see {log}")
    summary = done.summary
    lf_now = (summary.get("lf") or {}).get("simulated", 0)
    pretrain_now = (summary.get("pretrain") or {}).get("cpu_seconds", 0.0)
    tests_now = test_rows(store, args.variant) - tests_before
    own = worker_cpu - lf_now * costs[f"lf_{args.variant}"] - pretrain_now - tests_now * costs["hf"]
    entry = {**run, "key": key_of(run), "command": done.text, "started_at": started_at, "commit": done.commit["git_commit"],
             "git_dirty": done.commit.get("git_dirty"), "command_wall_seconds": wall, "worker_cpu_seconds": worker_cpu,
             "lf_simulated_now": lf_now, "pretrain_cpu_now": pretrain_now, "test_pairs_simulated_now": tests_now,
             "run_own_cpu_seconds": round(own, 1), "command_cpu_seconds": round(done.cpu_seconds, 1),
             "loadavg_after": [round(v, 2) for v in os.getloadavg()],
             "summary": _slim_summary(summary)}
    if run["method"] in ("npe", "mf-npe"):
        entry["log_q_at_observations"] = log_q_at_observations(store, task, summary["run"], pairs_store, args.variant)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/seqc"), help="stores, logs and services (outside the repo)")
    parser.add_argument("--variant", default="pyramidal-reduced", choices=["pyramidal", "pyramidal-reduced"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", default=None, help="run only these keys (setting/hf/seed[/obs])")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cost-draws", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("docs/sequential-compute-reduced.json"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()

    document = load(args.out)
    if not args.report_only:
        run_all(args, document)
    from sequential_compute_report import report

    print(report(document))


def run_all(args, document: dict) -> None:
    with invocation(document, args.out, __doc__ or ""):
        document["variant"] = args.variant
        document.setdefault("costs", []).append(measure_costs(args.cost_draws))
        costs = document["costs"][-1]
        save(args.out, document)
        print("cost per simulation (CPU s):", costs, flush=True)
        (args.root / "logs").mkdir(parents=True, exist_ok=True)
        (args.root / NO_CHECKS).write_text("coverage_folds = 0\n")
        runs = [r for r in plan(args.seeds) if args.only is None or key_of(r) in args.only]
        todo = [r for r in runs if key_of(r) not in document["runs"]]
        print(f"{len(runs)} runs planned, {len(todo)} to do", flush=True)
        with runner.services(args.root / "services", args.workers) as services:
            for run in todo:
                entry = execute(run, args, services, costs)
                document["runs"][entry["key"]] = entry
                save(args.out, document)
                nltp = entry["summary"]["metrics"].get("nltp")  # None where the run scored no pairs of its own
                print(f"{now()} {entry['key']}: NLTP {nltp if nltp is None else round(nltp, 3)}, "
                      f"{entry['command_wall_seconds']} s wall, run's own {entry['run_own_cpu_seconds']} CPU s",
                      flush=True)


if __name__ == "__main__":
    main()

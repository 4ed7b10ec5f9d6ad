"""The neuron headline table (issue 19, item 2): NLTP, NRMSE and SBC against HF budget on both pyramidal tasks.

    nice -n 5 python benchmarks/pyramidal_table.py --root /tmp/pyr --seeds 0 1 2 --phase core --out docs/pyramidal-table.json
    nice -n 5 python benchmarks/pyramidal_table.py --root /tmp/pyr --seeds 0 1 2 --phase npe-large a-mf-tsnpe --out docs/pyramidal-table.json
    python benchmarks/pyramidal_table.py --out docs/pyramidal-table.json --report-only --plot docs/img/pyramidal-nltp.png

Methods, budgets and protocol (docs/benchmark-neuron.md says why):

- NPE on task ``pyramidal`` at 50 … 10 000 HF (``--phase core``: ≤ 2 000; ``--phase npe-large``:
  5 000 and 10 000). NPE never touches the LF, and ``pyramidal`` and ``pyramidal-reduced`` share the
  HF simulator (nseg 8, same prior, noise and seeds), so this one NPE curve serves both variants:
  each NPE posterior is also scored here, in this process, on the held-out HF pairs of
  ``pyramidal-reduced`` (its test table draws other θ), so that every comparison on that variant is
  on the same 100 pairs.
- MF-NPE on both variants, 1e4 LF, 50 … 1 000 HF, ``--transfer-guard off`` on ``pyramidal`` (the NPE
  run at the same budget trains on the same HF rows of the same store) and ``report`` on
  ``pyramidal-reduced`` (the guard's estimator from scratch is NPE on that variant's own HF rows);
  either way the estimator reported is MF-NPE's.
- A-MF-TSNPE on both variants (``--phase a-mf-tsnpe``): 1e4 LF, 50 and 100 HF, 5 rounds, ε = 1e-3
  (the paper's neuron setting), ``--transfer-guard off``, at held-out observations 0, 1, 2; its NLTP
  is −log q(θ_o | x_o) at that observation only, compared with the amortised runs' log q at the
  same pairs (computed here).

One store per variant and seed (``ROOT/<variant>-seed<s>``): tables are prefix-stable, so a larger
NPE budget reuses the rows of the smaller ones and every MF run of a store reuses the LF table and
the LF-pretrained checkpoint. All runs go through ``mfsbi run --json`` against one long-lived Dask
cluster (a scheduler and two single-threaded workers, ``--dask-address``) and one Prefect server
(``PREFECT_API_URL``): the services of ``mfsbi serve``, started here by benchmarks/_runner.py, so no
run pays for bringing them up. The workers' CPU time (``os.times`` in each worker process) is read
before and after every run: it is the only record of a sequential run's training CPU (its summary
keeps the rounds' wall seconds only); ``command_cpu_seconds`` is the ``mfsbi`` process's own.

CPU seconds per simulation are measured here, in this process, with ``time.process_time`` on fresh
prior draws (``--cost-draws``), at the start of every invocation; the table uses the median of all
measurements. Every finished run is written to ``--out`` at once and skipped when the script is
run again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import _runner as runner
from pyramidal_protocol import AMF_BUDGETS, AMF_OBSERVATIONS, LF_SIMS, MF_BUDGETS, NPE_BUDGETS, TEST_SEED, VARIANTS
from pyramidal_report import report

# ---- the plan ---------------------------------------------------------------------------------

def key_of(run: dict) -> str:
    obs = "" if run.get("obs") is None else f"/obs{run['obs']}"
    return f"{run['task']}/{run['method']}/lf{run['lf']}/hf{run['hf']}/seed{run['seed']}{obs}"


def plan(seeds: list[int], phases: list[str]) -> list[dict]:
    """The runs, in the order they run: one seed's core first, so partial results are whole."""
    runs = []
    if "core" in phases:
        for seed in seeds:
            runs += [{"task": "pyramidal", "method": "npe", "lf": 0, "hf": m, "seed": seed, "obs": None}
                     for m in NPE_BUDGETS if m <= 2000]
            for task in VARIANTS:
                runs += [{"task": task, "method": "mf-npe", "lf": LF_SIMS, "hf": m, "seed": seed, "obs": None}
                         for m in MF_BUDGETS]
    for seed in seeds:
        if "npe-large" in phases:
            runs += [{"task": "pyramidal", "method": "npe", "lf": 0, "hf": m, "seed": seed, "obs": None}
                     for m in NPE_BUDGETS if m > 2000]
        if "a-mf-tsnpe" in phases:
            runs += [{"task": task, "method": "a-mf-tsnpe", "lf": LF_SIMS, "hf": m, "seed": seed, "obs": i}
                     for task in VARIANTS for m in AMF_BUDGETS for i in AMF_OBSERVATIONS]
    return runs


def command_of(run: dict, root: Path, dask_address: str) -> list[str]:
    """The arguments after ``mfsbi`` of one planned run."""
    store = root / f"{run['task']}-seed{run['seed']}"
    command = ["run", "--task", run["task"], "--method", run["method"], "--hf-sims", str(run["hf"]),
               "--seed", str(run["seed"]), "--store", str(store), "--num-nltp-pairs", "100",
               "--dask-address", dask_address, "--json"]
    if run["method"] != "npe":
        command += ["--lf-sims", str(run["lf"])]
    if run["method"] == "mf-npe":
        command += ["--transfer-guard", "off" if run["task"] == "pyramidal" else "report"]
    if run["method"] == "a-mf-tsnpe":
        command += ["--rounds", "5", "--observation-index", str(run["obs"]), "--truncation-quantile", "1e-3",
                    "--transfer-guard", "off"]
    return command


# ---- simulation cost, measured here -------------------------------------------------------------

def measure_costs(draws: int) -> dict:
    """CPU seconds (time.process_time) per simulation: HF, the LF of each variant, in this process."""
    from mfsbi.simulators import get_task

    out = {"measured_at": now(), "loadavg_before": list(os.getloadavg())}
    full, reduced = get_task("pyramidal"), get_task("pyramidal-reduced")
    theta = full.sample_prior(4 * draws, seed=97531)
    for name, simulator, n in (("hf", full.high_fidelity, draws), ("lf_pyramidal", full.low_fidelity, 2 * draws),
                               ("lf_pyramidal-reduced", reduced.low_fidelity, 4 * draws)):
        simulator(theta[:1], seed=1)  # builds the cell for this fidelity (not timed)
        started = time.process_time()
        simulator(theta[:n], seed=2)
        out[name] = round((time.process_time() - started) / n, 5)
        out[f"{name}_draws"] = n
    out["loadavg_after"] = list(os.getloadavg())
    return out


# ---- one run --------------------------------------------------------------------------------------

def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _slim_summary(summary: dict) -> dict:
    """The run's summary.json without its config (the command is kept) and the acquisition score dumps."""
    out = {k: v for k, v in summary.items() if k != "config"}
    if out.get("rounds"):
        out["rounds"] = [{k: v for k, v in r.items() if k not in ("pool_scores", "selected_scores")}
                         for r in out["rounds"]]
    return out


def execute(run: dict, root: Path, services: runner.Services, logs: Path) -> dict:
    command = command_of(run, root, services.dask_address)
    env = {**os.environ, "PREFECT_API_URL": services.api}
    log = logs / (key_of(run).replace("/", "_") + ".log")
    before, started, started_at = services.worker_cpu(), time.perf_counter(), now()
    done = runner.run(command, env=env, log=log)
    cpu = done.cpu_seconds
    if done.returncode != 0 and run["method"] == "a-mf-tsnpe" and "--resume" in log.read_text():
        # A sequential run killed earlier: continue it (nothing stored is proposed, simulated or trained again).
        command.append("--resume")
        done = runner.run(command, env=env, log=log, append=True)
        cpu += done.cpu_seconds
    wall = round(time.perf_counter() - started, 1)
    after = services.worker_cpu()
    if done.returncode != 0:
        raise RuntimeError(f"{done.text} failed ({done.returncode}); see {log}")
    return {**run, "key": key_of(run), "command": done.text, "started_at": started_at,
            "command_wall_seconds": wall, "worker_cpu_seconds": services.cpu_delta(before, after),
            "command_cpu_seconds": round(cpu, 1), "commit": done.commit["git_commit"],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()], "summary": _slim_summary(done.summary)}


# ---- scoring amortised posteriors on held-out pairs, here -------------------------------------------

def test_pairs(store: Path, task: str) -> tuple[np.ndarray, np.ndarray] | None:
    from mfsbi.storage import SimulationStore

    if not store.exists():
        return None
    table = SimulationStore(str(store)).table(f"{task}-test", "hf")
    if table is None:  # not simulated yet
        return None
    rows = table.rows("ok")
    theta, x = table.read("ok")
    keep = rows < 100
    return (theta[keep], x[keep]) if keep.sum() == 100 else None


def posthoc(entry: dict, root: Path) -> None:
    """Per-pair log q of an amortised run on its variant's held-out pairs; NPE also on the other variant's.

    For an NPE run on the other variant's pairs also NRMSE and the calibration, computed with the
    run's own evaluation functions and seeds (so the same numbers a run on those pairs reports).
    """
    import torch  # noqa: F401

    import mfsbi
    from mfsbi.flows.evaluation import calibration_on_pairs, evaluate_posterior
    from mfsbi.inference import pair_log_probs
    from mfsbi.runtime.seeds import derive_seed
    from mfsbi.simulators import get_task

    store = root / f"{entry['task']}-seed{entry['seed']}"
    posterior = mfsbi.load_posterior(str(store), run=f"{entry['task']}/{entry['summary']['run']}")
    targets = [entry["task"]] + (["pyramidal-reduced"] if entry["method"] == "npe" else [])
    scores = entry.setdefault("posthoc", {})
    for target in targets:
        if target in scores:
            continue
        pairs = test_pairs(root / f"{target}-seed{entry['seed']}", target)
        if pairs is None:
            continue
        theta, x = pairs
        log_q = pair_log_probs(posterior, theta, x).numpy()
        score = {"on": f"the 100 held-out HF pairs of {target} (test seed {TEST_SEED})",
                 "nltp": round(float(-log_q.mean()), 4), "log_q": [round(float(v), 4) for v in log_q]}
        if target != entry["task"]:
            metrics = evaluate_posterior(posterior, get_task(target), theta, x, num_c2st=5, num_samples=1000,
                                         seed=TEST_SEED)
            result, _ = calibration_on_pairs(posterior, theta, x, num_samples=1000,
                                             seed=derive_seed(TEST_SEED, "calibration"))
            calibration = result.to_dict()
            score["nrmse"] = round(float(metrics.nrmse), 4)
            score["calibration"] = {k: calibration[k] for k in ("verdict", "sbc_ks_pvalues", "tarp_atc",
                                                                 "tarp_ks_pvalue", "level", "test")}
        scores[target] = score


def score_pretrained(document: dict, root: Path) -> None:
    """The LF-pretrained estimator of every store, as it is (MF-NPE before any HF), on the store's held-out pairs."""
    from mfsbi.inference import estimator_from_bytes, pair_log_probs
    from mfsbi.simulators import get_task
    from mfsbi.storage import SimulationStore

    scores = document.setdefault("pretrained", {})
    for entry in list(document["runs"].values()):
        name, key = entry["summary"].get("pretrained"), f"{entry['task']}/seed{entry['seed']}"
        if not name or key in scores:
            continue
        store = root / f"{entry['task']}-seed{entry['seed']}"
        pairs = test_pairs(store, entry["task"])
        if pairs is None:
            continue
        data = SimulationStore(str(store)).read_artifact(name.removeprefix("artifacts/"))
        posterior = estimator_from_bytes(data, get_task(entry["task"]).prior).posterior()
        log_q = pair_log_probs(posterior, *pairs).numpy()
        scores[key] = {"checkpoint": name, "on": f"the 100 held-out HF pairs of {entry['task']}",
                       "nltp": round(float(-log_q.mean()), 4), "log_q": [round(float(v), 4) for v in log_q]}


def refit_diagnostic(document: dict, root: Path) -> None:
    """MF-NPE's HF step again, here, with the x z-scoring refitted on the HF rows (what the runs do) and kept from LF.

    The same pretrained checkpoint, HF rows, learning rate (1e-4), batch size and training seed as the
    run (``derive_seed(seed, "train")``), so the refitted variant reproduces the run's NLTP exactly
    (checked: ``matches_run``); the other differs in that one setting. Scored on the store's held-out pairs.
    """
    import torch

    from mfsbi.inference import TrainingConfig, estimator_from_bytes, fine_tune, pair_log_probs
    from mfsbi.runtime.seeds import derive_seed
    from mfsbi.runtime.training_jobs import read_training_data
    from mfsbi.simulators import get_task
    from mfsbi.storage import SimulationStore

    torch.set_num_threads(1)
    out = document.setdefault("refit_diagnostic", {})
    for entry in document["runs"].values():
        key = f"{entry['task']}/hf{entry['hf']}/seed{entry['seed']}"
        if entry["method"] != "mf-npe" or key in out:
            continue
        store_path = root / f"{entry['task']}-seed{entry['seed']}"
        store, task = SimulationStore(str(store_path)), get_task(entry["task"])
        pretrained = estimator_from_bytes(store.read_artifact(entry["summary"]["pretrained"].removeprefix("artifacts/")),
                                          task.prior)
        theta, x = read_training_data(store.table(entry["task"], "hf"), entry["hf"])
        test_theta, test_x = test_pairs(store_path, entry["task"])
        row = {}
        for refit in (True, False):
            training = TrainingConfig(learning_rate=1e-4, max_num_epochs=2**31 - 1, seed=derive_seed(entry["seed"], "train"),
                                      batch_size=200)
            trained = fine_tune(pretrained, torch.as_tensor(theta, dtype=torch.float32),
                                torch.as_tensor(x, dtype=torch.float32), training=training, refit_x_zscore=refit)
            log_q = pair_log_probs(trained.posterior(), test_theta, test_x).numpy()
            row["refit" if refit else "kept"] = {"nltp": round(float(-log_q.mean()), 4), "epochs": trained.epochs}
        row["matches_run"] = abs(row["refit"]["nltp"] - entry["summary"]["metrics"]["nltp"]) < 1e-3
        out[key] = row


# ---- the document ----------------------------------------------------------------------------------

def load(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"costs": [], "runs": {}, "invocations": []}


def save(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=1) + "\n")
    temporary.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/pyr"), help="stores, logs and services (outside the repo)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--phase", nargs="+", default=["core", "npe-large", "a-mf-tsnpe"],
                        choices=["core", "npe-large", "a-mf-tsnpe"])
    parser.add_argument("--only", nargs="*", default=None, help="run only these keys (task/method/lf/hf/seed[/obs])")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cost-draws", type=int, default=40, help="HF draws of the cost measurement (LF: 2x, 4x)")
    parser.add_argument("--out", type=Path, default=Path("docs/pyramidal-table.json"))
    parser.add_argument("--report-only", action="store_true", help="no runs: print the tables (and the plot)")
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--refit-diagnostic", action="store_true",
                        help="after the runs: every MF-NPE run's HF step again with the LF x z-scoring kept")
    args = parser.parse_args()

    document = load(args.out)
    if not args.report_only:
        run_all(args, document)
    if args.root.exists():  # the stores are here: score what the runs did not (the pretrained estimators)
        for entry in document["runs"].values():
            if entry["method"] in ("npe", "mf-npe"):
                posthoc(entry, args.root)
        score_pretrained(document, args.root)
        if args.refit_diagnostic:
            refit_diagnostic(document, args.root)
        save(args.out, document)
    print(report(document, args.plot))


@contextlib.contextmanager
def invocation(document: dict, out: Path, protocol: str) -> Iterator[None]:
    """Records one invocation of a benchmark in ``document`` (saved to ``out``), its end even on failure."""
    record = {"command": "python " + " ".join(sys.argv), "started_at": now(), "machine": platform.platform(),
              "processor": platform.processor(), "cpus": os.cpu_count(), "python": platform.python_version()}
    document.setdefault("invocations", []).append(record)
    document["protocol"] = protocol.strip()
    started = time.perf_counter()
    try:
        yield
    finally:
        record["finished_at"] = now()
        record["wall_seconds"] = round(time.perf_counter() - started, 1)
        save(out, document)


def run_all(args, document: dict) -> None:
    with invocation(document, args.out, __doc__ or ""):
        run_planned(args, document)


def run_planned(args, document: dict) -> None:
    document.setdefault("costs", []).append(measure_costs(args.cost_draws))
    save(args.out, document)
    print("cost per simulation (CPU s):", document["costs"][-1], flush=True)
    logs = args.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    runs = [r for r in plan(args.seeds, args.phase) if args.only is None or key_of(r) in args.only]
    todo = [r for r in runs if key_of(r) not in document["runs"]]
    print(f"{len(runs)} runs planned, {len(todo)} to do", flush=True)
    with runner.services(args.root / "services", args.workers) as services:
        for run in todo:
            entry = execute(run, args.root, services, logs)
            document["runs"][entry["key"]] = entry
            save(args.out, document)
            m = entry["summary"]["metrics"]
            print(f"{now()} {entry['key']}: NLTP {m.get('nltp'):.3f}, NRMSE {m.get('nrmse'):.3f}, "
                  f"{entry['command_wall_seconds']} s wall, workers {entry['worker_cpu_seconds']} CPU s", flush=True)
            # Score what can be scored now (another variant's pairs may appear later).
            for other in document["runs"].values():
                if other["method"] in ("npe", "mf-npe"):
                    missing = other.get("posthoc", {}).keys() < ({other["task"]} | ({"pyramidal-reduced"} if other["method"] == "npe" else set()))
                    if missing:
                        posthoc(other, args.root)
            save(args.out, document)


if __name__ == "__main__":
    main()

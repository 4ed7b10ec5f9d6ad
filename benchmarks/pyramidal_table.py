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
cluster (a scheduler and two single-threaded workers started here, ``--dask-address``) and one
Prefect server (``PREFECT_API_URL``), so no run pays for bringing them up. The workers' CPU time
(``os.times`` in each worker process) is read before and after every run: it is the only record
of a sequential run's training CPU (its summary keeps the rounds' wall seconds only).

CPU seconds per simulation are measured here, in this process, with ``time.process_time`` on fresh
prior draws (``--cost-draws``), at the start of every invocation; the table uses the median of all
measurements. Every finished run is written to ``--out`` at once and skipped when the script is
run again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

VARIANTS = ("pyramidal", "pyramidal-reduced")
NPE_BUDGETS = (50, 100, 200, 500, 1000, 2000, 5000, 10000)
MF_BUDGETS = (50, 100, 200, 500, 1000)
AMF_BUDGETS = (50, 100)
AMF_OBSERVATIONS = (0, 1, 2)
LF_SIMS = 10000
TEST_SEED = 2026            # RunConfig.test_seed: the held-out pairs are the same for every run seed
PAPER = {  # PAPER.md, neuron task: CPU seconds (simulation + training) and NLTP.
    "npe": {"hf": 10000, "lf": 0, "simulation": 4940, "training": 70, "nltp": -5.87},
    "mf-npe": {"hf": 1000, "lf": 10000, "simulation": 1032, "training": 97, "nltp": -5.73},
    "a-mf-tsnpe": {"hf": 50, "lf": 10000, "simulation": 607, "training": 557, "nltp": -5.08},
}


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
    mfsbi = str(Path(sys.executable).with_name("mfsbi"))  # the console script beside this interpreter
    store = root / f"{run['task']}-seed{run['seed']}"
    command = [mfsbi, "run", "--task", run["task"], "--method", run["method"], "--hf-sims", str(run["hf"]),
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


# ---- services: one Dask cluster and one Prefect server for every run ---------------------------

class Services:
    """A Dask scheduler, two single-threaded workers (mfsbi's preload) and a Prefect server, started here."""

    def __init__(self, root: Path, workers: int, port: int = 8799, prefect_port: int = 4299):
        self.folder = root / "services"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.address = f"tcp://127.0.0.1:{port}"
        self.api = f"http://127.0.0.1:{prefect_port}/api"
        self.processes: list[subprocess.Popen] = []
        bin_dir = Path(sys.executable).parent
        self._start("scheduler", [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--dashboard-address", "127.0.0.1:0"])
        time.sleep(3)
        self._start("workers", [str(bin_dir / "dask"), "worker", self.address, "--nworkers", str(workers),
                                "--nthreads", "1", "--preload", "mfsbi.runtime.worker_setup", "--host", "127.0.0.1",
                                "--memory-limit", "6GiB"])
        env = {"PREFECT_HOME": str(self.folder / "prefect"), "PREFECT_SERVER_API_HOST": "127.0.0.1",
               "PREFECT_SERVER_API_PORT": str(prefect_port), "PREFECT_UI_API_URL": self.api}
        self._start("prefect", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                "--port", str(prefect_port), "--no-services"], env)
        from distributed import Client

        self.client = Client(self.address, timeout="60s")
        self.client.wait_for_workers(workers, timeout=300)
        self._wait_for_prefect()

    def _start(self, name: str, command: list[str], env: dict | None = None) -> None:
        log = open(self.folder / f"{name}.log", "ab")
        self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                               env={**os.environ, **(env or {})}, start_new_session=True))

    def _wait_for_prefect(self, timeout: float = 180) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.api + "/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise SystemExit(f"the Prefect server at {self.api} did not become healthy; see {self.folder}/prefect.log")

    def worker_cpu(self) -> dict[str, tuple[int, float]]:
        """Per worker: its pid and the CPU seconds (user + system) its process has used so far."""
        return self.client.run(_process_cpu)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            for process in reversed(self.processes):  # only the process groups started here, by id
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=30)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(process.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


def _process_cpu() -> tuple[int, float]:
    times = os.times()
    return os.getpid(), times.user + times.system


def cpu_delta(before: dict, after: dict) -> float | None:
    """The workers' CPU seconds between two readings; None when a worker was restarted in between."""
    if set(before) != set(after) or any(before[w][0] != after[w][0] for w in before):
        return None
    return round(sum(after[w][1] - before[w][1] for w in before), 2)


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


def cost_per_simulation(document: dict) -> dict[str, float]:
    costs = document.get("costs", [])
    if not costs:
        return {}
    return {name: float(np.median([c[name] for c in costs])) for name in ("hf", "lf_pyramidal", "lf_pyramidal-reduced")}


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


def execute(run: dict, root: Path, services: Services, logs: Path) -> dict:
    command = command_of(run, root, services.address)
    env = {**os.environ, "PREFECT_API_URL": services.api}
    log = logs / (key_of(run).replace("/", "_") + ".log")
    before, started, started_at = services.worker_cpu(), time.perf_counter(), now()
    with open(log, "w") as err:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    if done.returncode != 0 and run["method"] == "a-mf-tsnpe" and "--resume" in log.read_text():
        # A sequential run killed earlier: continue it (nothing stored is proposed, simulated or trained again).
        command.append("--resume")
        with open(log, "a") as err:
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    wall = round(time.perf_counter() - started, 1)
    after = services.worker_cpu()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}); see {log}")
    summary = json.loads(done.stdout)
    return {**run, "key": key_of(run), "command": " ".join(command), "started_at": started_at,
            "command_wall_seconds": wall, "worker_cpu_seconds": cpu_delta(before, after),
            "loadavg_after": [round(v, 2) for v in os.getloadavg()], "summary": _slim_summary(summary)}


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


def run_all(args, document: dict) -> None:
    invocation = {"command": "python " + " ".join(sys.argv), "started_at": now(), "machine": platform.platform(),
                  "processor": platform.processor(), "cpus": os.cpu_count(), "python": platform.python_version()}
    document.setdefault("invocations", []).append(invocation)
    document["protocol"] = (__doc__ or "").strip()
    started = time.perf_counter()
    document.setdefault("costs", []).append(measure_costs(args.cost_draws))
    save(args.out, document)
    print("cost per simulation (CPU s):", document["costs"][-1], flush=True)
    logs = args.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    runs = [r for r in plan(args.seeds, args.phase) if args.only is None or key_of(r) in args.only]
    todo = [r for r in runs if key_of(r) not in document["runs"]]
    print(f"{len(runs)} runs planned, {len(todo)} to do", flush=True)
    services = Services(args.root, args.workers)
    try:
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
    finally:
        services.close()
        invocation["finished_at"] = now()
        invocation["wall_seconds"] = round(time.perf_counter() - started, 1)
        save(args.out, document)


# ---- the tables and the plot ------------------------------------------------------------------------

def _mean_sd(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _amortised_view(entry: dict, variant: str) -> dict | None:
    """NLTP, NRMSE, calibration and per-pair log q of an amortised run, on ``variant``'s held-out pairs."""
    summary = entry["summary"]
    if entry["task"] == variant:
        scored = entry.get("posthoc", {}).get(variant, {})
        return {"nltp": summary["metrics"]["nltp"], "nrmse": summary["metrics"]["nrmse"],
                "calibration": summary.get("calibration") or {}, "log_q": scored.get("log_q")}
    scored = entry.get("posthoc", {}).get(variant)
    if scored is None or "nrmse" not in scored:
        return None
    return {"nltp": scored["nltp"], "nrmse": scored["nrmse"], "calibration": scored["calibration"],
            "log_q": scored["log_q"]}


def _pretrain_cpu(document: dict, task: str, seed: int) -> float | None:
    """The LF pretraining's CPU seconds of a store (recorded by the run that trained it)."""
    for entry in document["runs"].values():
        if entry["task"] == task and entry["seed"] == seed and (entry["summary"].get("pretrain") or {}).get("cpu_seconds"):
            return entry["summary"]["pretrain"]["cpu_seconds"]
    return None


def pipeline_hf_cost(document: dict) -> tuple[list[float], list[float]]:
    """Per NPE run: the workers' CPU per HF simulation (less the training), and the simulator's wall per simulation."""
    per_sim, wall_per_sim = [], []
    for entry in document["runs"].values():
        hf = entry["summary"].get("hf") or {}
        if entry["method"] == "npe" and hf.get("simulated", 0) >= 50 and entry.get("worker_cpu_seconds") is not None:
            simulated = hf["simulated"] + (100 if entry["hf"] == 50 else 0)  # the first run also simulated the test pairs
            per_sim.append((entry["worker_cpu_seconds"] - entry["summary"]["train"]["cpu_seconds"]) / simulated)
            wall_per_sim.append(hf["simulator_seconds"] / hf["simulated"])
    return per_sim, wall_per_sim


def _sequential_training_cpu(entry: dict, costs: dict) -> float | None:
    """A-MF-TSNPE's round trainings: the workers' CPU during the run less its HF simulations.

    The simulations are charged at the workers' CPU per HF simulation measured on the NPE runs
    (``costs["hf_pipeline"]``), which includes what a simulation costs a worker beyond the simulator.
    """
    if entry.get("worker_cpu_seconds") is None:
        return None
    simulated = sum(r.get("simulated_now", 0) for r in entry["summary"].get("rounds") or [])
    lf = (entry["summary"].get("lf") or {}).get("simulated", 0)
    pretrain = (entry["summary"].get("pretrain") or {}).get("cpu_seconds", 0.0)
    return (entry["worker_cpu_seconds"] - simulated * costs.get("hf_pipeline", costs["hf"])
            - lf * costs[f"lf_{entry['task']}"] - pretrain)


def _cpu_parts(document: dict, entry: dict, costs: dict) -> tuple[float, float]:
    """(simulation, training) CPU seconds of a row, as the paper counts them (LF pretraining charged to every MF row)."""
    lf_cost = costs[f"lf_{entry['task']}"]
    simulation = entry["hf"] * costs["hf"] + entry["lf"] * lf_cost
    if entry["method"] == "npe":
        return simulation, entry["summary"]["train"]["cpu_seconds"]
    pretrain = _pretrain_cpu(document, entry["task"], entry["seed"]) or float("nan")
    if entry["method"] == "mf-npe":
        return simulation, pretrain + entry["summary"]["train"]["cpu_seconds"]
    rounds = _sequential_training_cpu(entry, costs)
    return simulation, pretrain + (rounds if rounds is not None else float("nan"))


def _verdicts(calibrations: list[dict]) -> str:
    names = {"calibrated": "cal", "over-confident": "over", "under-confident": "under", "biased": "biased"}
    counts: dict[str, int] = {}
    for c in calibrations:
        counts[names.get(c.get("verdict"), str(c.get("verdict")))] = counts.get(names.get(c.get("verdict"), str(c.get("verdict"))), 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _curve(document: dict, variant: str, method: str) -> dict[int, dict]:
    """Per HF budget: the amortised rows of a method scored on ``variant``'s pairs, over seeds."""
    source = "pyramidal" if method == "npe" else variant
    rows: dict[int, dict] = {}
    for entry in document["runs"].values():
        if entry["method"] != method or entry["task"] != source:
            continue
        view = _amortised_view(entry, variant)
        if view is None:
            continue
        rows.setdefault(entry["hf"], {"entries": [], "views": []})
        rows[entry["hf"]]["entries"].append(entry)
        rows[entry["hf"]]["views"].append(view)
    return dict(sorted(rows.items()))


def _score(view: dict, statistic: str) -> float:
    return view["nltp"] if statistic == "mean" else -float(np.median(view["log_q"]))


def _match_budget(curve: dict[int, dict], target: float, statistic: str = "mean") -> str:
    """The smallest NPE budget whose NLTP (mean over seeds) is ≤ target (log-budget interpolation between grid points)."""
    points = [(m, float(np.mean([_score(v, statistic) for v in row["views"]]))) for m, row in curve.items()]
    previous = None
    for m, value in points:
        if value <= target:
            if previous is None:
                return f"≤ {m} (already at the smallest budget: {value:.2f})"
            (m0, v0) = previous
            fraction = (v0 - target) / (v0 - value)
            interpolated = math.exp(math.log(m0) + fraction * (math.log(m) - math.log(m0)))
            return f"{m} on the grid ({m0}: {v0:.2f}, {m}: {value:.2f}); ≈ {interpolated:.0f} interpolated on log budget"
        previous = (m, value)
    if not points:
        return "—"
    return f"never within {points[-1][0]} (NPE at {points[-1][0]}: {points[-1][1]:.2f})"


def report(document: dict, plot: Path | None) -> str:
    costs = cost_per_simulation(document)
    if not costs or not document.get("runs"):
        return "no runs yet"
    lines = ["## Cost per simulation (CPU s, time.process_time in the benchmark process; median of "
             f"{len(document['costs'])} measurements)", "",
             "| simulator | CPU s / simulation | HF / this |", "|---|---|---|"]
    for name in ("hf", "lf_pyramidal", "lf_pyramidal-reduced"):
        lines.append(f"| {name} | {costs[name]:.4f} | {costs['hf'] / costs[name]:.1f} |")
    # In the pipeline: workers' CPU per HF simulation, from NPE runs (workers' CPU less the training).
    per_sim, wall_per_sim = pipeline_hf_cost(document)
    if per_sim:
        costs["hf_pipeline"] = float(np.median(per_sim))
        lines.append(f"\nIn the pipeline (NPE runs, workers' CPU less training, per HF simulation): "
                     f"median {np.median(per_sim):.3f} s (range {min(per_sim):.3f}–{max(per_sim):.3f}); "
                     f"simulator wall seconds per HF simulation inside the workers: median {np.median(wall_per_sim):.3f} s.")

    for variant in VARIANTS:
        lines += ["", f"## {variant}: amortised rows (NLTP and NRMSE: mean ± sd over seeds; "
                  f"on the 100 held-out HF pairs of {variant})", "",
                  "| method | LF | HF | seeds | NLTP | median −log q | NRMSE | SBC min p (per seed) | verdicts | sim CPU s | train CPU s | total CPU s | paper (sim + train, NLTP) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for method in ("npe", "mf-npe"):
            for m, row in _curve(document, variant, method).items():
                views, entries = row["views"], row["entries"]
                parts = [_cpu_parts(document, e, costs) for e in entries]
                sim, train = np.mean([p[0] for p in parts]), np.mean([p[1] for p in parts])
                pmin = " / ".join(f"{min(v['calibration']['sbc_ks_pvalues']):.2g}" for v in views)
                paper = PAPER.get(method)
                paper_cell = (f"{paper['simulation']} + {paper['training']}, {paper['nltp']}"
                              if paper and paper["hf"] == m else "")
                lf = 0 if method == "npe" else LF_SIMS
                medians = [-float(np.median(v["log_q"])) for v in views if v["log_q"]]
                lines.append(f"| {method} | {lf} | {m} | {len(views)} | {_mean_sd([v['nltp'] for v in views])} | "
                             f"{_mean_sd(medians)} | {_mean_sd([v['nrmse'] for v in views], 3)} | {pmin} | "
                             f"{_verdicts([v['calibration'] for v in views])} | {sim:.0f} | {train:.0f} | "
                             f"{sim + train:.0f} | {paper_cell} |")
        npe = _curve(document, variant, "npe")
        mf = _curve(document, variant, "mf-npe")
        lines += ["", f"How many HF simulations NPE needs to match MF-NPE (mean NLTP over seeds, {variant}'s pairs):", ""]
        for statistic in ("mean", "median"):
            for m in (50, 100):
                if m in mf:
                    target = float(np.mean([_score(v, statistic) for v in mf[m]["views"]]))
                    lines.append(f"- by the {statistic} −log q over pairs: MF-NPE at {m} HF: {target:.2f} → NPE: "
                                 f"{_match_budget(npe, target, statistic)}")
        # The guard's estimator from scratch: NPE on this variant's own HF rows, the same pairs.
        guard = [(e["hf"], e["summary"]["transfer_guard"]) for e in document["runs"].values()
                 if e["task"] == variant and e["method"] == "mf-npe" and (e["summary"].get("transfer_guard") or {}).get("compared")]
        if guard:
            lines += ["", "Transfer guard (report): mean log q on the held-out pairs, fine-tuned vs from scratch on the same HF rows", "",
                      "| HF | seeds | fine-tuned | from scratch | difference ± SE (per seed) | better |", "|---|---|---|---|---|---|"]
            for m in sorted({g[0] for g in guard}):
                gs = [g[1] for g in guard if g[0] == m]
                lines.append(f"| {m} | {len(gs)} | {_mean_sd([g['log_prob_fine_tuned'] for g in gs])} | "
                             f"{_mean_sd([g['log_prob_scratch'] for g in gs])} | "
                             + " / ".join(f"{g['difference']:+.2f} ± {g['standard_error']:.2f}" for g in gs)
                             + f" | {', '.join(g['better'] for g in gs)} |")

    # The LF-pretrained estimator as it is, and MF-NPE with the LF x z-scoring kept (refit_diagnostic).
    pretrained, refit = document.get("pretrained", {}), document.get("refit_diagnostic", {})
    if pretrained or refit:
        lines += ["", "## Diagnostic: MF-NPE's HF step with the x z-scoring refitted on the HF rows (the runs) "
                  "or kept from the LF pretraining; the pretrained estimator as it is (0 HF). NLTP, mean ± sd over seeds", "",
                  "| variant | HF | seeds | refitted (= the runs) | LF z-scoring kept | epochs refitted / kept (mean) |",
                  "|---|---|---|---|---|---|"]
        for variant in VARIANTS:
            as_is = [v["nltp"] for k, v in pretrained.items() if k.split("/")[0] == variant]
            if as_is:
                lines.append(f"| {variant} | 0 (pretrained as is) | {len(as_is)} | {_mean_sd(as_is)} | | |")
            for m in MF_BUDGETS:
                rows = [v for k, v in refit.items() if k.split("/")[0] == variant and k.split("/")[1] == f"hf{m}"]
                if rows:
                    matches = all(r["matches_run"] for r in rows)
                    lines.append(f"| {variant} | {m} | {len(rows)} | {_mean_sd([r['refit']['nltp'] for r in rows])}"
                                 f"{'' if matches else ' (≠ run!)'} | {_mean_sd([r['kept']['nltp'] for r in rows])} | "
                                 f"{np.mean([r['refit']['epochs'] for r in rows]):.0f} / {np.mean([r['kept']['epochs'] for r in rows]):.0f} |")

    # A-MF-TSNPE at single observations, beside the amortised rows at the same pairs.
    sequential = [e for e in document["runs"].values() if e["method"] == "a-mf-tsnpe"]
    if sequential:
        lines += ["", "## A-MF-TSNPE (1e4 LF, 5 rounds, ε = 1e-3): −log q(θ_o | x_o) at held-out observations, "
                  "beside the amortised estimators' −log q at the same pairs (mean ± sd over seeds)", "",
                  "| variant | HF | obs | seeds | A-MF-TSNPE | NRMSE | MF-NPE 50 | MF-NPE 100 | MF-NPE 1000 | NPE 50 | NPE 100 | NPE 10000 | sim CPU s | train CPU s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for variant in VARIANTS:
            curves = {"mf-npe": _curve(document, variant, "mf-npe"), "npe": _curve(document, variant, "npe")}

            def at(method: str, m: int, obs: list[int]) -> str:
                row = curves[method].get(m)
                if row is None:
                    return "—"
                return _mean_sd([-float(np.mean([v["log_q"][i] for i in obs])) for v in row["views"] if v["log_q"]])

            for m in AMF_BUDGETS:
                groups = [[i] for i in AMF_OBSERVATIONS] + [list(AMF_OBSERVATIONS)]
                for obs in groups:
                    chosen = [e for e in sequential if e["task"] == variant and e["hf"] == m and e["obs"] in obs]
                    if not chosen:
                        continue
                    seeds = sorted({e["seed"] for e in chosen})
                    complete = [s for s in seeds if len([e for e in chosen if e["seed"] == s]) == len(obs)]
                    values = [float(np.mean([e["summary"]["metrics"]["nltp"] for e in chosen if e["seed"] == s]))
                              for s in complete]
                    nrmse = [float(np.mean([e["summary"]["metrics"]["nrmse"] for e in chosen if e["seed"] == s]))
                             for s in complete]
                    parts = [_cpu_parts(document, e, costs) for e in chosen]
                    label = str(obs[0]) if len(obs) == 1 else "mean 0–2"
                    lines.append(f"| {variant} | {m} | {label} | {len(complete)} | {_mean_sd(values)} | {_mean_sd(nrmse, 3)} | "
                                 f"{at('mf-npe', 50, obs)} | {at('mf-npe', 100, obs)} | {at('mf-npe', 1000, obs)} | "
                                 f"{at('npe', 50, obs)} | {at('npe', 100, obs)} | {at('npe', 10000, obs)} | "
                                 f"{np.mean([p[0] for p in parts]):.0f} | {np.nanmean([p[1] for p in parts]):.0f} |")

    # The workers' CPU against what the rows charge (checks the accounting used for A-MF-TSNPE's training).
    ratios = []
    for entry in document["runs"].values():
        if entry["method"] == "a-mf-tsnpe" or entry.get("worker_cpu_seconds") is None:
            continue
        s = entry["summary"]
        accounted = (s["hf"]["simulated"] * costs["hf"] + (s.get("lf") or {}).get("simulated", 0) * costs[f"lf_{entry['task']}"]
                     + s["train"]["cpu_seconds"] + (s.get("pretrain") or {}).get("cpu_seconds", 0)
                     + ((s.get("transfer_guard") or {}).get("scratch_train") or {}).get("cpu_seconds", 0)
                     + (100 * costs["hf"] if entry["hf"] == 50 else 0))
        if accounted > 20:
            ratios.append(entry["worker_cpu_seconds"] / accounted)
    if ratios:
        lines.append(f"\nWorkers' CPU over the CPU the amortised rows account for (simulations × measured cost + "
                     f"trainings): median {np.median(ratios):.2f} (range {min(ratios):.2f}–{max(ratios):.2f}, {len(ratios)} runs).")
    walls = sum(e["command_wall_seconds"] for e in document["runs"].values())
    lines.append(f"\nRuns: {len(document['runs'])}; their commands' wall time: {walls / 3600:.2f} h; "
                 f"invocations: " + "; ".join(f"{i['started_at']} → {i.get('finished_at', 'running')} "
                                              f"({i.get('wall_seconds', 0) / 3600:.2f} h)" for i in document["invocations"]))
    if plot is not None:
        draw(document, plot)
        lines.append(f"\nPlot: {plot}")
    return "\n".join(lines)


def draw(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, variant in zip(axes, VARIANTS):
        for method, colour, label in (("npe", "tab:blue", "NPE (HF only; one curve for both)"),
                                      ("mf-npe", "tab:orange", "MF-NPE, 1e4 LF")):
            curve = _curve(document, variant, method)
            if not curve:
                continue
            budgets = np.array(list(curve))
            values = [[v["nltp"] for v in row["views"]] for row in curve.values()]
            mean = np.array([np.mean(v) for v in values])
            sd = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
            ax.plot(budgets, mean, marker="o", color=colour, label=f"{label} (100 pairs)")
            ax.fill_between(budgets, mean - sd, mean + sd, color=colour, alpha=0.2)
            # The same estimators at the A-MF-TSNPE observations, for the points below.
            obs = [float(np.mean([-np.mean([v["log_q"][i] for i in AMF_OBSERVATIONS]) for v in row["views"]]))
                   for row in curve.values()]
            ax.plot(budgets, obs, linestyle=":", color=colour, alpha=0.8, label=f"{method.upper()} at obs 0–2 only")
        seq = [e for e in document["runs"].values() if e["method"] == "a-mf-tsnpe" and e["task"] == variant]
        for m in AMF_BUDGETS:
            per_seed = {}
            for e in seq:
                if e["hf"] == m:
                    per_seed.setdefault(e["seed"], []).append(e["summary"]["metrics"]["nltp"])
            values = [np.mean(v) for v in per_seed.values() if len(v) == len(AMF_OBSERVATIONS)]
            if values:
                ax.errorbar([m], [np.mean(values)], yerr=[np.std(values, ddof=1) if len(values) > 1 else 0],
                            marker="D", color="tab:green", capsize=3,
                            label="A-MF-TSNPE at obs 0–2 (mean over obs; ± sd over seeds)" if m == AMF_BUDGETS[0] else None)
        for method, marker in (("npe", "*"), ("mf-npe", "*"), ("a-mf-tsnpe", "*")):
            p = PAPER[method]
            colour = {"npe": "tab:blue", "mf-npe": "tab:orange", "a-mf-tsnpe": "tab:green"}[method]
            ax.scatter([p["hf"]], [p["nltp"]], marker=marker, s=160, color=colour, edgecolor="black", zorder=5,
                       label="paper (jaxley cell; shape only, not absolute)" if method == "npe" else None)
        ax.set_xscale("log")
        ax.set_xlabel("HF simulations")
        ax.set_title(variant + (" (LF nseg 1)" if variant == "pyramidal" else " (LF ball-and-stick, dt 0.1 ms)"))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("NLTP  (−log q(θ_o | x_o), lower is better)")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()

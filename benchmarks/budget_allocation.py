"""The compute-budget planner against fixed allocations, chains against two levels, ml-npe against
MF-NPE, at equal total compute (issue 18, item 4). Results: docs/budget-and-chains.md.

Every run is ``mfsbi run ... --json`` (a subprocess, as a user types it) with ``--transfer-guard off``
and ``--n-workers 1``; this script only collects each run's summary.json. The commands that made
docs/budget-allocation.json (2-core machine shared with other long jobs; two streams side by side,
one per task family, each under ``nice -n 5``)::

    # stream 1: OU2 (grid first, then the planner at the budget read off the grid), then ou2-euler
    python benchmarks/budget_allocation.py run --parts ou2-grid --seeds 0 1 2 --out docs/budget-allocation.json
    python benchmarks/budget_allocation.py run --parts ou2-planner --seeds 0 1 2 --budget ou2=600 --out docs/budget-allocation.json
    python benchmarks/budget_allocation.py run --parts euler-chain euler-ml --seeds 0 1 2 --out docs/budget-allocation.json
    # stream 2: the pyramidal cell (NEURON)
    python benchmarks/budget_allocation.py run --parts pyr-grid pyr-planner pyr-chain pyr-ml --seeds 0 1 2 \\
        --budget pyramidal=250 --out docs/budget-allocation.json
    # the tables
    python benchmarks/budget_allocation.py report --out docs/budget-allocation.json

(The exact budgets and parts run are recorded in the JSON's ``invocations``.)

Compute of a run = simulation seconds + training CPU seconds:

* simulation seconds use DECLARED costs per simulation (``DECLARED`` below: OU2 lf 0.001 s, hf 1 s;
  ou2-euler lf 0.1, mf 0.2, hf 1.0, proportional to Euler steps; pyramidal the documented NEURON costs
  0.034 / 0.051 / 0.158 s), count x cost for every row a run trains on (rows reused from the shared
  store are charged to every run that uses them), plus ML-NPE's twins (each row above LF simulated
  again one level below: its count at the lower level's cost). The planner is charged by its own
  ledger (``--simulation-cost`` with the same declared costs; its planning pairs included).
* training: ``cpu_seconds`` of every training the run used: ``pretrain``, ``levels[].train``,
  ``train``. A checkpoint of the chain below HF is cached in the store and reused by later runs with
  the same counts and seed (their summary then lacks that training): the CPU seconds it took when it
  was trained are recorded here, keyed by store and checkpoint path, and charged to every run that
  uses it. A planner run gets a fresh store of its own (deleted before it starts), so its ledger
  pays for every simulation and training it needed; its compute is ``planner.ledger.spent_seconds``.
* the held-out test pairs and the evaluation are outside every run's compute, as in mfsbi.

The JSON is written after every run (under a lock, so two streams can share it); ``run`` skips runs
already in it, so a crashed invocation is continued by the same command.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import _runner as runner
from budget_report import TOLERANCE, chain_text, fmt, report

# Declared seconds per simulation, by task and fidelity.
DECLARED = {
    "ou2": {"lf": 0.001, "hf": 1.0},
    "ou2-euler": {"lf": 0.1, "mf": 0.2, "hf": 1.0},
    "pyramidal": {"lf": 0.034, "mf": 0.051, "hf": 0.158},
}
PLANNING_PAIRS = 50
# Where the planner starts: about a fifth of its budget (OU2: 1000 LF + 50 HF + 50 planning pairs, about
# 110 of 600 s; pyramidal: 500 LF + 25 HF + 50 planning pairs, about 35 of 150 s).
PLANNER_START = {"ou2": {"lf": 1000, "hf": 50}, "pyramidal": {"lf": 500, "hf": 25}}


def _spec(part: str, task: str, method: str, counts: dict[str, int], seed: int, budget: float | None = None) -> dict:
    chain = ",".join(f"{f}={counts[f]}" for f in ("lf", "mf", "hf") if f in counts)
    key = f"{task}|{method}|{chain}|seed{seed}" + (f"|budget{budget:g}" if budget else "")
    return {"key": key, "part": part, "task": task, "method": method, "counts": counts, "seed": seed,
            "budget": budget}


def specs(part: str, seed: int, budgets: dict[str, float]) -> list[dict]:
    """The runs of one part at one seed, in the order they run."""
    if part == "ou2-grid":
        out = [_spec(part, "ou2", "mf-npe", {"lf": lf, "hf": hf}, seed) for lf in (1000, 10000) for hf in (50, 100, 200, 400)]
        return out + [_spec(part, "ou2", "npe", {"hf": hf}, seed) for hf in (100, 200, 400, 800)]
    if part in ("ou2-planner", "pyr-planner"):
        task = "ou2" if part == "ou2-planner" else "pyramidal"
        if task not in budgets:
            raise SystemExit(f"{part}: give --budget {task}=SECONDS (read it off the grid's compute)")
        return [_spec(part, task, "mf-npe", dict(PLANNER_START[task]), seed, budgets[task])]
    if part == "euler-chain":
        return [_spec(part, "ou2-euler", "mf-npe", c, seed) for c in
                ({"lf": 10000, "hf": 100}, {"lf": 10000, "mf": 250, "hf": 50}, {"lf": 10000, "mf": 125, "hf": 75})]
    if part == "euler-ml":
        # HF 100 first (MF-NPE's run is euler-chain's), then HF 50 and HF 200.
        return [_spec(part, "ou2-euler", method, {"lf": 10000, "hf": hf}, seed)
                for hf in (100, 50, 200) for method in ("ml-npe", "mf-npe")]
    if part == "pyr-grid":
        # Cut for time from LF {1000, 5000} x HF {50, 200, 800} and NPE {200, 800, 2000}: NEURON ran 5-9x
        # slower than its documented cost on the shared machine (see docs/budget-and-chains.md).
        out = [_spec(part, "pyramidal", "mf-npe", {"lf": lf, "hf": hf}, seed) for lf in (1000, 3000) for hf in (50, 200, 400)]
        return out + [_spec(part, "pyramidal", "npe", {"hf": hf}, seed) for hf in (200, 400)]
    if part == "pyr-chain":
        return [_spec(part, "pyramidal", "mf-npe", c, seed) for c in
                ({"lf": 1000, "hf": 200}, {"lf": 1000, "mf": 300, "hf": 100})]
    if part == "pyr-ml":
        return [_spec(part, "pyramidal", m, {"lf": 1000, "hf": 200}, seed) for m in ("ml-npe", "mf-npe")]
    raise SystemExit(f"unknown part {part!r}")


PARTS = ["ou2-grid", "ou2-planner", "euler-chain", "euler-ml", "pyr-grid", "pyr-planner", "pyr-chain", "pyr-ml"]


# --------------------------------------------------------------------------------------------- the JSON

@contextlib.contextmanager
def locked(lock: Path):
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"declared_seconds_per_simulation": DECLARED, "tolerance": TOLERANCE, "planning_pairs": PLANNING_PAIRS,
            "invocations": [], "checkpoints": {}, "runs": {}}


def update(path: Path, lock: Path, change) -> dict:
    """Read-modify-write of the JSON under the lock (two streams share it)."""
    with locked(lock):
        document = load(path)
        change(document)
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(document, indent=1) + "\n")
        os.replace(temporary, path)
        return document


# ------------------------------------------------------------------------------------------- one run

def _cpu(training) -> float:
    if training is None:
        return 0.0
    if isinstance(training, list):
        return sum(_cpu(t) for t in training)
    return float(training.get("cpu_seconds") or training.get("seconds") or 0.0)


def command_for(spec: dict, store: Path, config_file: Path | None) -> list[str]:
    """The arguments after ``mfsbi`` of the spec's run."""
    command = ["run", "--task", spec["task"], "--method", spec["method"],
               "--sims", chain_text(spec["counts"]), "--seed", str(spec["seed"]), "--store", str(store),
               "--transfer-guard", "off", "--n-workers", "1", "--num-test-observations", "5",
               "--num-nltp-pairs", "100", "--json"]
    if spec["budget"]:
        costs = DECLARED[spec["task"]]
        command += ["--compute-budget", f"{spec['budget']:g}",
                    "--simulation-cost", ",".join(f"{f}={costs[f]:g}" for f in ("lf", "hf")),
                    "--config", str(config_file)]
    return command


def compute_of(spec: dict, summary: dict, store: Path, checkpoints: dict) -> dict:
    """Simulation (declared) and training CPU seconds of a fixed-count run; records new checkpoints."""
    costs = DECLARED[spec["task"]]
    counts = spec["counts"]
    method = spec["method"]
    used = [f for f in ("lf", "mf", "hf") if f in counts and (method != "npe" or f == "hf")]
    simulation = {f: counts[f] * costs[f] for f in used}
    twins = {}
    if method == "ml-npe":  # every row above LF again one level below, outside the budgets
        chain = [f for f in ("lf", "mf", "hf") if f in counts]
        for coarse, fine in zip(chain[:-1], chain[1:]):
            twins[f"{fine}->{coarse}"] = counts[fine] * costs[coarse]
    training: dict[str, float] = {}
    charged_from_cache = []
    steps = []  # (name, checkpoint path, training record or None)
    if summary.get("pretrained") and method != "npe":
        steps.append(("pretrain", summary["pretrained"], summary.get("pretrain")))
    for level in summary.get("levels") or []:
        if "twins" in level:  # ml-npe's level records: simulations only
            continue
        steps.append((f"fine-tune {level.get('fidelity')}", level.get("checkpoint"), level.get("train")))
    for name, path, record in steps:
        key = f"{store}::{path}"
        if record is not None:
            checkpoints[key] = {"cpu_seconds": _cpu(record), "trained_by": spec["key"]}
            training[name] = _cpu(record)
        elif key in checkpoints:
            training[name] = checkpoints[key]["cpu_seconds"]
            charged_from_cache.append(name)
        else:
            raise RuntimeError(f"{spec['key']}: {name} reused {path} whose training was never recorded")
    training["train"] = _cpu(summary.get("train"))
    total = sum(simulation.values()) + sum(twins.values()) + sum(training.values())
    return {"simulation_seconds": simulation, "twin_simulation_seconds": twins, "training_cpu_seconds": training,
            "training_charged_from_cache": charged_from_cache, "total_seconds": round(total, 3)}


def _forget_unrecorded_checkpoints(spec: dict, store: Path, checkpoints: dict) -> None:
    """A checkpoint in the store whose training is not recorded (a crashed run trained it): deleted, so
    that the run trains it again and its cost is known."""
    folder = store / "artifacts" / spec["task"]
    if not folder.is_dir():
        return
    for path in folder.glob("pretrained-*.pt"):
        key = f"{store}::artifacts/{spec['task']}/{path.name}"
        if key not in checkpoints:
            print(f"  deleting unrecorded checkpoint {path}", flush=True)
            path.unlink()


def _code_state() -> dict:
    """The commit and the planner's source at the start of a run (other people commit while this runs)."""
    head = runner.code_state()["git_commit"][:7]  # the short commit, as recorded before
    files = ("mfsbi/flows/compute_budget.py", "mfsbi/inference/allocation.py", "mfsbi/flows/multilevel.py")
    return {"head": head, **{name.split("/")[-1]: hashlib.md5((runner.ROOT / name).read_bytes()).hexdigest()[:8]
                             for name in files}}


def run_one(spec: dict, root: Path, document: dict, log_folder: Path) -> dict:
    planner = bool(spec["budget"])
    store = root / (f"{spec['task']}-seed{spec['seed']}" + ("-planner" if planner else ""))
    config_file = None
    if planner:
        if store.exists():  # a fresh store: the ledger pays for everything the planner needs
            shutil.rmtree(store)
        config_file = root / f"planner-config-{spec['task']}.json"
        config_file.write_text(json.dumps({"planning_pairs": PLANNING_PAIRS}) + "\n")
    else:
        _forget_unrecorded_checkpoints(spec, store, document["checkpoints"])
    command = command_for(spec, store, config_file)
    code = _code_state()
    # A Prefect database per task and seed: runs of two streams never share one.
    environment = dict(os.environ, MFSBI_HOME=str(root / f"home-{spec['task']}-seed{spec['seed']}"))
    log = log_folder / (spec["key"].replace("|", "_").replace(",", "_").replace("=", "") + ".stderr")
    done = runner.run(command, env=environment, log=log)
    wall = done.wall_seconds
    if done.returncode != 0:
        raise RuntimeError(f"{done.text} failed ({done.returncode}); stderr in {log}: "
                           f"{log.read_text()[-1500:]}")
    summary = done.summary
    metrics = summary["metrics"]
    row = {**{k: spec[k] for k in ("part", "task", "method", "counts", "seed", "budget")},
           "command": " ".join(command) if not planner else " ".join(command) + f"  # {config_file.name}: "
           + config_file.read_text().strip(),
           "store": str(store), "run": summary.get("run"),
           "c2st": metrics.get("c2st", {}).get("euler-maruyama"),
           "c2st_paper_reference": metrics.get("c2st", {}).get("paper"),
           "c2st_per_observation": (metrics.get("c2st_per_observation") or {}).get("euler-maruyama"),
           "nltp": metrics.get("nltp"), "nrmse": metrics.get("nrmse"),
           "calibration": (summary.get("calibration") or {}).get("verdict"),
           "wall_seconds": round(wall, 1), "cpu_seconds": round(done.cpu_seconds, 1),
           "summary_wall_seconds": summary.get("wall_seconds"), "code": code,
           "finished_at": summary.get("finished_at"),
           "cpu_capability": (summary.get("train") or {}).get("cpu_capability")
           if isinstance(summary.get("train"), dict) else None}
    if planner:
        p = summary["planner"]
        ledger = p["ledger"]
        row["compute"] = {"simulation_seconds": ledger["simulation_seconds"],
                          "training_cpu_seconds": {"all": ledger["training_seconds"]},
                          "total_seconds": ledger["spent_seconds"]}
        row["planner"] = {
            "chosen": p["chosen"], "stop_reason": p["stop_reason"], "overrun_seconds": p["overrun_seconds"],
            "ledger": ledger, "planning_pairs": p["planning_pairs"], "evaluations": p["evaluations"],
            "decisions": [{k: d.get(k) for k in ("fidelity", "counts", "expected_gain", "expected_seconds",
                                                  "measured_seconds", "measured_loss", "reason")}
                          for d in p["decisions"]],
            "final_curve": p.get("curve"),
        }
    else:
        row["compute"] = compute_of(spec, summary, store, document["checkpoints"])
    return row


def _claim(root: Path, key: str) -> Path | None:
    """Marks a run as taken by this process (streams side by side never run the same one), or None when
    a live process holds it."""
    folder = root / "claims"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (key.replace("|", "_").replace(",", "_").replace("=", "") + ".pid")
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            try:
                os.kill(int(path.read_text().strip() or 0), 0)
                return None
            except (ProcessLookupError, ValueError):
                path.unlink(missing_ok=True)  # its process is gone: a stale claim
                continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(str(os.getpid()))
        return path
    return None


def cmd_run(args) -> None:
    budgets = {}
    for item in args.budget or []:
        task, seconds = item.split("=")
        budgets[task] = float(seconds)
    lock = args.root / "budget-allocation.lock"
    log_folder = args.root / "logs"
    log_folder.mkdir(parents=True, exist_ok=True)
    update(args.out, lock, lambda d: d["invocations"].append(
        {"command": "python " + " ".join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
         "machine": f"{platform.platform()}, {os.cpu_count()} cores (shared)"}))
    if args.by_seed:  # every part at one seed, then the next seed
        order = [spec for seed in args.seeds for part in args.parts for spec in specs(part, seed, budgets)]
    elif args.config_major:  # each configuration at every seed before the next configuration
        order = [spec for part in args.parts
                 for same in zip(*(specs(part, seed, budgets) for seed in args.seeds)) for spec in same]
    else:
        order = [spec for part in args.parts for seed in args.seeds for spec in specs(part, seed, budgets)]
    if True:
        for spec in order:
            with locked(lock):
                document = load(args.out)
            if spec["key"] in document["runs"]:
                print(f"skip {spec['key']} (done)", flush=True)
                continue
            claim = _claim(args.root, spec["key"])
            if claim is None:
                print(f"skip {spec['key']} (running in another stream)", flush=True)
                continue
            print(f"run  {spec['key']} ...", flush=True)
            try:
                row = run_one(spec, args.root, document, log_folder)
            except RuntimeError as error:  # one failed run does not stop the stream; it is not recorded
                print(f"FAIL {spec['key']}: {str(error)[-600:]}", flush=True)
                continue
            finally:
                claim.unlink(missing_ok=True)
            # compute_of recorded new checkpoint trainings in document["checkpoints"]: merge them in.
            new_checkpoints = document["checkpoints"]

            def change(d, row=row, spec=spec, new_checkpoints=new_checkpoints):
                d["checkpoints"].update(new_checkpoints)
                d["runs"][spec["key"]] = row
            update(args.out, lock, change)
            print(f"     {spec['key']}: c2st {fmt(row['c2st'])} nltp {fmt(row['nltp'])} compute "
                  f"{row['compute']['total_seconds']:.1f} s wall {row['wall_seconds']:.0f} s"
                  + (f" chosen {row['planner']['chosen']}" if spec["budget"] else ""), flush=True)


def cmd_report(args) -> None:
    report(load(args.out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the parts' runs not yet in --out, appending each as it finishes")
    run.add_argument("--parts", nargs="+", choices=PARTS, required=True)
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run.add_argument("--budget", nargs="*", help="planner budgets, TASK=SECONDS (ou2=600 pyramidal=250)")
    run.add_argument("--by-seed", action="store_true", help="all parts at one seed before the next seed")
    run.add_argument("--config-major", action="store_true", help="each configuration at all seeds before the next")
    run.add_argument("--root", type=Path, default=Path("/tmp/budget"), help="stores, logs, lock (outside the repo)")
    run.add_argument("--out", type=Path, default=Path("docs/budget-allocation.json"))
    run.set_defaults(function=cmd_run)
    reporting = commands.add_parser("report", help="print the tables and the planner's goal from --out")
    reporting.add_argument("--out", type=Path, default=Path("docs/budget-allocation.json"))
    reporting.set_defaults(function=cmd_report)
    args = parser.parse_args()
    args.function(args)


if __name__ == "__main__":
    main()

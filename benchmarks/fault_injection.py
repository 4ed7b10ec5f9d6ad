"""Fault-injection drills: real processes, real SIGKILLs, real failing simulators; no mocks.

Each drill runs the real CLI (`mfsbi run`) on a fresh store with the fault-injecting task
``mfsbi.simulators.faults:ou2`` (OU2 slowed down so that a kill lands mid-phase), injects one fault,
completes the run (``--resume`` after a killed flow) and checks, against the store and the log of
every simulator call:

* rows lost: rows stored before the fault that are missing or changed afterwards (must be 0);
* duplicates: simulations run again beyond the one allowed re-run of work in flight at the kill (0);
* budget overruns: HF rows reserved, stored or simulated beyond the budget (0);
* the final metrics against an uninterrupted run with the same seed.

Kinds: ``worker-kill`` (SIGKILL the Dask worker running an HF batch), ``flow-kill-lf``,
``flow-kill-hf`` (SIGKILL `mfsbi run` mid-LF / mid-HF), ``flow-kill-round`` (mid-run of a 3-round
MF-TSNPE), ``exception``, ``nan-inf``, ``hang`` (simulator faults, each row counted), ``disk-full-lf``,
``disk-full-hf`` (the store's own small file system fills up: benchmarks/disk_full_drill.py). On SLURM
(``--cluster FILE``, runs with ``mfsbi run --cluster FILE``): ``scancel-lf`` / ``scancel-hf``
(``scancel`` of the job whose worker runs an LF / HF batch) and ``scancel-all`` (every worker job at
once, mid-HF); the adaptive cluster submits new jobs and the run goes on.

    python benchmarks/fault_injection.py --repeats 20 --out docs/reliability.json
    python benchmarks/fault_injection.py --kinds scancel-lf scancel-hf scancel-all --local-slurm /tmp/slurm \
        --cluster cluster.yaml --repeats 3 --out docs/reliability-slurm.json   # a local SLURM (tests/local_slurm.py)

writes the JSON and prints the table of docs/reliability.md. Tests import the drills
(tests/test_fault_injection.py). A shared Prefect server is started once (or ``PREFECT_API_URL``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import zarr

import _runner as runner

TASK = "mfsbi.simulators.faults:ou2"
# Small runs (training capped at a few epochs): the drills test the bookkeeping, not the posterior.
AMORTIZED = ["--method", "mf-npe", "--lf-sims", "4000", "--hf-sims", "60", "--max-num-epochs", "8",
             "--num-nltp-pairs", "20", "--num-test-observations", "1", "--n-workers", "2"]
SEQUENTIAL = ["--method", "mf-tsnpe", "--rounds", "3", "--lf-sims", "4000", "--hf-sims", "60",
              "--max-num-epochs", "6", "--num-nltp-pairs", "10", "--num-test-observations", "1", "--n-workers", "2"]
SLOW = "lf_delay=0.001,hf_delay=0.05"
SLURM_KINDS = ("scancel-lf", "scancel-hf", "scancel-all")
KILL_KINDS = ("worker-kill", "flow-kill-lf", "flow-kill-hf", "flow-kill-round", *SLURM_KINDS)
CLUSTER: list[str] = []  # ["--cluster", FILE] for the SLURM kinds (set by main)
# Rates high enough that a few runs inject 20 faults of a kind (held-out rows included).
SIMULATOR_KINDS = {"exception": "exception=0.1", "nan-inf": "nan=0.06,inf=0.04", "hang": "hang=0.1"}
# The store's file system fills up mid-LF / mid-HF (benchmarks/disk_full_drill.py; root: a tmpfs is mounted).
DISK_KINDS = ("disk-full-lf", "disk-full-hf")


@dataclass
class Outcome:
    kind: str
    repeat: int
    faults: int = 0
    completed: bool = False
    rows_lost: int = 0
    duplicates: int = 0
    budget_overruns: int = 0
    rerun_in_flight: int = 0
    same_result: bool | None = None
    seconds: float = 0.0
    detail: str = ""
    extra: dict = field(default_factory=dict)


def _env(faults: str, log: Path, home: Path) -> dict[str, str]:
    return {**os.environ, "MFSBI_FAULTS": faults, "MFSBI_FAULTS_LOG": str(log), "MFSBI_HOME": str(home),
            "PYTHONUNBUFFERED": "1"}


def _command(store: Path, args: list[str], extra: list[str] = ()) -> list[str]:
    """The arguments after ``mfsbi`` of a drill's run."""
    return ["run", "--task", TASK, "--store", str(store), *args, *extra]


def _tables(store: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every table's status, x and seed arrays, read directly with zarr (read-only)."""
    if not (store / "zarr.json").exists():
        return {}
    root = zarr.open_group(str(store), mode="r")
    out = {}
    for name, group in root.groups():
        if name == "artifacts":
            continue
        for fidelity, table in group.groups():
            arrays = dict(table.arrays())
            out[f"{name}/{fidelity}"] = {k: arrays[k][:] for k in ("status", "x", "seed")}
            out[f"{name}/{fidelity}"]["budget"] = table.attrs.get("budget", {}).get("total")
    return out


def _log(path: Path) -> list[tuple[str, int, int, int]]:
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(f, int(s), int(n), int(p)) for f, s, n, p in lines]


def _stored(store: Path, which) -> int:
    """Rows simulated (ok or failed) in the tables whose key passes ``which`` (held-out set excluded)."""
    tables = _safe_tables(store)
    return sum(int((a["status"] != 0).sum()) for k, a in tables.items() if which(k) and "-test/" not in k)


def _wait_until(process: subprocess.Popen, condition, timeout: float = 300.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(0.05)
    return False


def _check(kind: str, repeat: int, store: Path, log: Path, before: dict, kill_line: int,
           reference: dict | None, started: float, rcs: list[int]) -> Outcome:
    """Compares the store after the fault with its snapshot at the fault and with the call log."""
    after = _tables(store)
    outcome = Outcome(kind, repeat, faults=1, completed=all(rc == 0 for rc in rcs))
    for key, snap in before.items():
        stored = snap["status"] != 0
        now = after[key]
        same = (now["status"][: len(stored)][stored] == snap["status"][stored]).all() and np.array_equal(
            now["x"][: len(stored)][stored], snap["x"][stored], equal_nan=True)
        outcome.rows_lost += 0 if same else int(stored.sum())
    calls = _log(log)
    count = Counter((f, s) for f, s, _, _ in calls)
    in_flight = {(f, s) for f, s, _, _ in calls[:kill_line]}
    stored_at_kill = set()
    for key, snap in before.items():
        fidelity = key.rsplit("/", 1)[1]
        stored_at_kill |= {(fidelity, int(s)) for s in np.unique(snap["seed"][snap["status"] != 0])}
    in_flight -= stored_at_kill
    for batch, n in count.items():
        allowed = 2 if batch in in_flight else 1
        outcome.duplicates += max(0, n - allowed)
        outcome.rerun_in_flight += int(batch in in_flight and n == 2)
    for key, arrays in after.items():
        budget = arrays["budget"]
        if budget:
            total = int(budget)
            outcome.budget_overruns += int(len(arrays["status"]) > total or (arrays["status"] != 0).sum() > total)
    if outcome.completed and reference is not None:
        outcome.same_result = runner.stored_summary(store)["metrics"] == reference["metrics"]
    verify = runner.run(["verify", store])
    if verify.returncode != 0:
        outcome.detail += f"verify: {verify.stdout.strip()[-300:]}"
    outcome.seconds = time.perf_counter() - started
    return outcome


def kill_drill(kind: str, repeat: int, workdir: Path, reference: dict | None, rng: np.random.Generator,
               extra: tuple[str, ...] = ()) -> Outcome:
    """One SIGKILL mid-phase, completion (resume), the checks; ``extra``: more options for both runs."""
    started = time.perf_counter()
    store, log = workdir / f"{kind}-{repeat}", workdir / f"{kind}-{repeat}.log"
    env = _env(SLOW, log, workdir / "home")
    args = [*_arguments(kind), *extra]
    process = runner.start(_command(store, args), env=env)
    target = float(rng.uniform(0.05, 0.95))
    which, total = {
        "flow-kill-lf": (lambda k: k.endswith("/lf"), 4000),
        "scancel-lf": (lambda k: k.endswith("/lf"), 4000),
        "flow-kill-round": (lambda k: "." in k and k.endswith("/hf"), 60),  # the run's rounds table
    }.get(kind, (lambda k: k.endswith("/hf"), 60))
    hit = _wait_until(process, lambda: _stored(store, which) >= target * total)
    if kind == "flow-kill-round":
        time.sleep(float(rng.uniform(0, 3)))  # lands in simulation or in training alike
    victim = process.pid
    if kind == "worker-kill":
        hf = [pid for f, _, _, pid in _log(log) if f == "hf" and pid != process.pid]
        victim = hf[-1] if hf else process.pid
    if not hit or process.poll() is not None:
        process.kill()
        return Outcome(kind, repeat, detail=f"missed the kill point ({target:.2f}): {process.stderr.read().decode()[-300:]}")
    if kind in SLURM_KINDS:
        fidelity = "lf" if kind == "scancel-lf" else "hf"
        jobs = _slurm_jobs(log, fidelity, process.pid, every=kind == "scancel-all")
        if not jobs:
            process.kill()
            return Outcome(kind, repeat, detail="no SLURM job of a worker found to cancel")
        subprocess.run(["scancel", *jobs], check=True, capture_output=True, timeout=30)
        victim = -1
    else:
        os.kill(victim, signal.SIGKILL)
    rcs = []
    if kind == "worker-kill" or kind in SLURM_KINDS:
        time.sleep(0.2)
        # What is stored now was stored before the kill or by the surviving worker: all must survive.
        before, kill_line = _safe_tables(store), len(_log(log))
        rcs.append(process.wait(timeout=600))
        if rcs[-1]:
            return Outcome(kind, repeat, faults=1, detail=process.stderr.read().decode()[-300:])
    else:
        process.wait(timeout=60)
        time.sleep(0.5)  # any orphan of the killed run gets to show itself in the log and the store
        before, kill_line = _safe_tables(store), len(_log(log))
        resumed = runner.run(_command(store, args, ["--resume"]), env=env, timeout=900)
        rcs.append(resumed.returncode)
        if resumed.returncode:
            return Outcome(kind, repeat, faults=1, detail=resumed.stderr[-300:])
    outcome = _check(kind, repeat, store, log, before, kill_line, reference, started, rcs)
    outcome.extra = {"kill_at": round(target, 3), "victim": "worker" if victim != process.pid else "flow"}
    if kind in SLURM_KINDS:
        outcome.extra["cancelled_jobs"] = jobs
    return outcome


def _arguments(kind: str) -> list[str]:
    args = SEQUENTIAL if kind == "flow-kill-round" else AMORTIZED
    if kind in SLURM_KINDS:  # SLURM jobs instead of the local cluster's two workers
        i = args.index("--n-workers")
        args = [*args[:i], *args[i + 2:], *CLUSTER]
    return args


def _slurm_jobs(log: Path, fidelity: str, flow_pid: int, every: bool) -> list[str]:
    """SLURM job ids: of the worker that ran the newest ``fidelity`` batch, or of every worker job."""
    if every:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-n", "mfsbi-worker"], capture_output=True, text=True)
        return out.stdout.split()
    for _, _, _, pid in reversed([c for c in _log(log) if c[0] == fidelity and c[3] != flow_pid]):
        try:  # the worker runs on this machine (a local SLURM): its job id is in its environment
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            if entry.startswith(b"SLURM_JOB_ID="):
                return [entry.split(b"=", 1)[1].decode()]
    return []


def _safe_tables(store: Path) -> dict:
    for _ in range(20):
        try:
            return _tables(store)
        except Exception:  # noqa: BLE001 -- metadata caught mid-rewrite; read again
            time.sleep(0.05)
    return _tables(store)


def simulator_drill(kind: str, repeat: int, workdir: Path) -> Outcome:
    """A run whose HF simulator fails in one way on ~3-5 % of rows: each fault must end as a failed row."""
    from mfsbi.simulators.faults import FaultPlan, FaultySimulator

    if kind not in SIMULATOR_KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {sorted(SIMULATOR_KINDS)}")
    started = time.perf_counter()
    store, log = workdir / f"{kind}-{repeat}", workdir / f"{kind}-{repeat}.log"
    plan = f"{SIMULATOR_KINDS[kind]},hf_delay=0.005"
    config = workdir / f"{kind}.json"
    config.write_text(json.dumps({"hf_chunk_size": 1, "max_failure_fraction": 0.5}))
    extra = ["--seed", str(repeat), "--config", str(config)]
    if kind == "hang":
        extra += ["--simulation-timeout", "1"]
    run = runner.run(_command(store, AMORTIZED, extra), env=_env(plan, log, workdir / "home"), timeout=1800)
    outcome = _check(kind, repeat, store, log, {}, 0, None, started, [run.returncode])
    simulator = FaultySimulator(None, "hf", FaultPlan.parse(plan))
    injected = wrong = 0
    for key, arrays in _tables(store).items():
        if not key.endswith("/hf"):
            continue
        reasons = zarr.open_group(str(store), mode="r")[key]["reason"][:]
        theta = zarr.open_group(str(store), mode="r")[key]["theta"][:]
        for row, fault in enumerate(simulator.faults(theta)):
            if fault:
                injected += 1
                expected = {"exception": "RuntimeError", "nan": "non-finite", "inf": "non-finite", "hang": "timeout"}[fault]
                wrong += int(arrays["status"][row] != 2 or expected not in str(reasons[row]))
            else:
                wrong += int(arrays["status"][row] != 1)
    summary = runner.stored_summary(store) if run.returncode == 0 else {}
    ok_hf = int(sum((a["status"] == 1).sum() for k, a in _tables(store).items() if k.endswith("/hf") and "-test" not in k))
    trained_on = summary.get("train", {}).get("simulations")
    outcome.faults = injected
    outcome.rows_lost += wrong  # a fault not recorded as such, or a good row recorded failed
    outcome.extra = {"failed_rows_misrecorded": wrong, "hf_ok": ok_hf, "trained_on": trained_on}
    if trained_on is not None and trained_on != ok_hf:
        outcome.detail += f"trained on {trained_on} rows, {ok_hf} ok"
    if run.returncode:
        outcome.detail += run.stderr[-300:]
    return outcome


def reference_run(workdir: Path, args: list[str]) -> dict:
    store = workdir / f"reference-{len(args)}-{args[1]}"
    run = runner.run(_command(store, args), env=_env(SLOW, workdir / "reference.log", workdir / "home"), store=store,
                     timeout=900)
    if run.returncode:
        raise RuntimeError(f"reference run failed: {run.stderr[-500:]}")
    return run.summary


def run_drills(kinds: list[str], repeats: int, workdir: Path, seed: int = 0,
               simulator_repeats: int = 3, first: int = 0) -> list[Outcome]:
    rng = np.random.default_rng(seed)
    references: dict[str, dict] = {}
    outcomes = []
    for kind in kinds:
        for repeat in range(first, first + (simulator_repeats if kind in SIMULATOR_KINDS else repeats)):
            if kind in DISK_KINDS:
                from disk_full_drill import disk_full_drill  # imports this module (its helpers)

                outcome = disk_full_drill(kind, repeat, workdir, rng)
            elif kind in KILL_KINDS:
                args = SEQUENTIAL if kind == "flow-kill-round" else AMORTIZED  # the reference runs locally
                if args[1] not in references:
                    references[args[1]] = reference_run(workdir, args)
                outcome = kill_drill(kind, repeat, workdir, references[args[1]], rng)
            else:
                outcome = simulator_drill(kind, repeat, workdir)
            print(json.dumps(asdict(outcome)), flush=True)  # one line each: a crashed session keeps them
            outcomes.append(outcome)
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    lines = ["| fault | drills | faults injected | runs completed | rows lost | budget overruns | duplicates "
             "| in-flight work re-run once | same result as uninterrupted |", "|---|---|---|---|---|---|---|---|---|"]
    for kind in dict.fromkeys(o.kind for o in outcomes):
        group = [o for o in outcomes if o.kind == kind]
        same = [o.same_result for o in group if o.same_result is not None]
        lines.append(f"| {kind} | {len(group)} | {sum(o.faults for o in group)} | {sum(o.completed for o in group)} "
                     f"| {sum(o.rows_lost for o in group)} | {sum(o.budget_overruns for o in group)} "
                     f"| {sum(o.duplicates for o in group)} | {sum(o.rerun_in_flight for o in group)} "
                     f"| {f'{sum(same)}/{len(same)}' if same else '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=[*KILL_KINDS, *SIMULATOR_KINDS])
    parser.add_argument("--repeats", type=int, default=20, help="drills of each kill kind")
    parser.add_argument("--simulator-repeats", type=int, default=3, help="runs of each simulator-fault kind")
    parser.add_argument("--out", type=Path, default=Path("docs/reliability.json"))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--first", type=int, default=0,
                        help="number of the first drill: simulator drills use it as the run seed (new θ, new faults)")
    parser.add_argument("--include", type=Path, nargs="*", default=[],
                        help="outcome lines (this script's stdout) of earlier invocations to add to the table")
    parser.add_argument("--cluster", help="--cluster file of the SLURM kinds (mfsbi/runtime/slurm.yaml's shape)")
    parser.add_argument("--local-slurm", type=Path, help="start a single-node SLURM in this folder for the drills")
    args = parser.parse_args()
    slurm = None
    if any(kind in SLURM_KINDS for kind in args.kinds):
        if not args.cluster:
            parser.error("--cluster: the SLURM kinds need a cluster file")
        CLUSTER[:] = ["--cluster", str(Path(args.cluster).resolve())]
        if args.local_slurm:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from local_slurm import LocalSlurm

            slurm = LocalSlurm(args.local_slurm).start()
            os.environ.update(slurm.environ)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # `kill` stops the local SLURM too
    try:
        _main(args)
    finally:
        if slurm is not None:
            slurm.stop()


def _main(args) -> None:
    with tempfile.TemporaryDirectory() as tmp, runner.prefect_server():
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.time()
        outcomes = [Outcome(**json.loads(line)) for path in args.include
                    for line in path.read_text().splitlines() if line.startswith("{")]
        outcomes += run_drills(args.kinds, args.repeats, workdir, simulator_repeats=args.simulator_repeats,
                               first=args.first)
        result = {"command": " ".join(sys.argv), **runner.code_state(), "seconds": round(time.time() - started, 1),
                  "outcomes": [asdict(o) for o in outcomes], "table": table(outcomes)}
        if any(o.kind in DISK_KINDS for o in outcomes):
            from disk_full_drill import disk_table

            result["disk_table"] = disk_table(outcomes)
        args.out.write_text(json.dumps(result, indent=1))
        print(table(outcomes), result.get("disk_table", ""), sep="\n\n")


if __name__ == "__main__":
    main()

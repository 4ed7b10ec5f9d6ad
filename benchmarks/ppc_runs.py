"""Posterior predictive checks of default runs, and the network's plausible fraction, through ``mfsbi ppc``.

Issue 33's "done when": the checks of the default runs on OU2 and both pyramidal variants, and the
plastic network's fraction of plausible posterior draws (PAPER.md: ~94 % MF-NPE against ~64 % NPE)
redone through ``mfsbi ppc`` at three or more seeds. Every command goes through benchmarks/_runner.py
(the CLI as a user types it, with its wall and CPU seconds); the JSON keeps each run's and each
check's summary as the commands printed them.

Cases (one fresh store per case and seed under ``--stores``):

* ``ou2``, ``pyramidal``, ``pyramidal-reduced``: ``mfsbi run --task T --seed S`` (MF-NPE, 1e4 LF,
  100 HF, the run's own held-out evaluation), then ``mfsbi ppc -n 400`` at one x_o: an HF simulation
  at the prior draw of seed ``1000 + S``, simulator seed ``2000 + S`` (independent of every run seed);
* ``network``: ``plastic-network-tiny``, MF-NPE (1e4 LF, 50 HF) and NPE on the same 50 HF rows
  (one store, one seed: the HF table is shared), no held-out pairs; x_o is the first of 20 HF
  simulations at prior draws (seed ``1000 + S``) whose rates are both in 1-50 Hz; then ``mfsbi ppc
  -n 80`` (the least that can give a verdict on 2 statistics) for each method's run.

    python benchmarks/ppc_runs.py --cases ou2 pyramidal pyramidal-reduced --seeds 0 --out docs/ppc-runs.json
    python benchmarks/ppc_runs.py --cases network --seeds 0 1 2 --out docs/ppc-network.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from _runner import code_state, protocol, run
from mfsbi.simulators import get_task
from mfsbi.simulators.plastic_network import is_plausible

PAPER_PLAUSIBLE = {"mf-npe": 0.94, "npe": 0.64}
NETWORK_TASK = "plastic-network-tiny"


def _observation(task_name: str, seed: int, path: Path, plausible_only: bool = False) -> dict:
    """Writes one HF simulation at a prior draw to ``path``; returns θ, x_o and how it was drawn."""
    task = get_task(task_name)
    tries = 20 if plausible_only else 1
    theta = task.sample_prior(tries, 1000 + seed)
    x = task.high_fidelity(theta, 2000 + seed)
    x = x[0] if isinstance(x, tuple) else x
    keep = 0
    if plausible_only:
        ok = np.flatnonzero(is_plausible(x))
        if not ok.size:
            raise RuntimeError(f"{task_name}: none of {tries} prior draws (seed {1000 + seed}) gives plausible rates")
        keep = int(ok[0])
    np.save(path, np.asarray(x[keep], dtype=np.float32))
    return {"theta": theta[keep].tolist(), "x_o": np.asarray(x[keep]).tolist(), "prior_seed": 1000 + seed,
            "simulator_seed": 2000 + seed, "draw": keep}


def _new_runs(store: Path, before: set[str]) -> list[str]:
    found = {f"{p.parent.name}/{p.name}" for p in (store / "artifacts").glob("*/*") if (p / "summary.json").exists()}
    return sorted(found - before)


def _runs(store: Path) -> set[str]:
    return set(_new_runs(store, set())) if (store / "artifacts").exists() else set()


def _record(rec) -> dict:
    out = {"command": rec.text, "returncode": rec.returncode, "wall_seconds": rec.wall_seconds,
           "cpu_seconds": rec.cpu_seconds, "started_at": rec.started_at}
    if rec.returncode != 0:
        out["stderr_tail"] = rec.stderr[-2000:]
    return out


def _run_and_check(store: Path, run_args: list, x_o: Path, draws: int, workers: int, log: Path) -> dict:
    """``mfsbi run`` then ``mfsbi ppc`` on the run it stored."""
    before = _runs(store)
    rec = run(["run", *run_args, "--store", store, "--n-workers", workers], store=store, log=log, append=True)
    result = {"run": _record(rec)}
    if rec.returncode != 0:
        return result
    (name,) = _new_runs(store, before)
    summary = json.loads((store / "artifacts" / name / "summary.json").read_text())
    result["run"].update(name=name, summary=summary)
    check = run(["ppc", "--store", store, "--run", name, "--observation", x_o, "-n", draws, "--n-workers", workers,
                 "--json"], log=log, append=True)
    result["ppc"] = _record(check)
    if check.returncode == 0:
        result["ppc"]["summary"] = check.summary
    return result


def _brief(case: dict) -> str:
    ppc = case.get("ppc", {}).get("summary") or {}
    plausible = ppc.get("plausible_fraction")
    return (f"run rc {case['run']['returncode']} ({case['run']['wall_seconds']:.0f} s), ppc {ppc.get('status')}"
            + (f", plausible HF {plausible['hf']}" if plausible else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["ou2", "pyramidal", "pyramidal-reduced", "network"],
                        choices=["ou2", "pyramidal", "pyramidal-reduced", "network"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--draws", type=int, default=400, help="mfsbi ppc -n for the single-cell and OU2 runs")
    parser.add_argument("--network-draws", type=int, default=80)
    parser.add_argument("--network-lf", type=int, default=10_000)
    parser.add_argument("--network-hf", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stores", type=Path, default=Path("benchmarks/stores/ppc-runs"))
    parser.add_argument("--out", type=Path, default=Path("docs/ppc-runs.json"))
    args = parser.parse_args()

    results = {"protocol": protocol(args),
               "paper_plausible_fraction": PAPER_PLAUSIBLE, **code_state(), "cases": []}
    started = time.perf_counter()
    for case in args.cases:
        for seed in args.seeds:
            store = args.stores / f"{case}-seed{seed}"
            store.mkdir(parents=True, exist_ok=True)
            log = store.with_suffix(".log")
            x_o = store.parent / f"{case}-seed{seed}-x_o.npy"
            entry: dict = {"case": case, "seed": seed, "store": str(store)}
            if case == "network":
                entry["observation"] = _observation(NETWORK_TASK, seed, x_o, plausible_only=True)
                common = ["--task", NETWORK_TASK, "--seed", seed, "--hf-sims", args.network_hf, "--test-pairs", 0,
                          "--num-test-observations", 0]
                entry["methods"] = {
                    "mf-npe": _run_and_check(store, [*common, "--method", "mf-npe", "--lf-sims", args.network_lf],
                                             x_o, args.network_draws, args.workers, log),
                    "npe": _run_and_check(store, [*common, "--method", "npe"], x_o, args.network_draws,
                                          args.workers, log)}
                print(f"{case} seed {seed}: " + "; ".join(f"{m} {_brief(c)}" for m, c in entry["methods"].items()),
                      flush=True)
            else:
                entry["observation"] = _observation(case, seed, x_o)
                entry.update(_run_and_check(store, ["--task", case, "--seed", seed], x_o, args.draws, args.workers,
                                            log))
                print(f"{case} seed {seed}: {_brief(entry)}", flush=True)
            results["cases"].append(entry)
            results["wall_seconds"] = round(time.perf_counter() - started, 1)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Two rules for MF-NPE's choice, compared on the stores of ``selection_goals.py`` (issue 30, item 2).

* ``default-first``: keep the fine-tuning unless another candidate is clearly better (what a run
  does; :func:`mfsbi.inference.selection.choose`).
* ``stacked`` (a kept form, not a rule): every candidate's kept form in one mixture, weighted by
  stacking of their out-of-fold scores (:func:`mfsbi.inference.selection.stacking_weights`).
* ``nearest-first``: start at the pretrained estimator and step to a candidate farther from it
  (anchored, fine-tuned, from scratch) only on a clear gain over the one held
  (:func:`mfsbi.inference.selection.choose_nearest`).

Per stored run (the MF-NPE run of ``selection_goals.py`` for a task and seed), in this process on
one thread: the run's HF rows, its pretrained checkpoint and its held-out pairs are read from the
store; every candidate is cross-validated on the rows (5 folds, out-of-fold log q and out-of-fold
SBC + TARP, as a run does) and its kept form built (the fold-stopped ensemble; the pretrained
estimator as it is); every kept form is evaluated as the run evaluates (its held-out NLTP, and C2ST
at the run's observations where the task has a reference). Both rules are applied to the same
scores, so what each keeps is read off the same table. The trainings' seeds are this script's, not
the run's: a kept form here is a sibling of the run's, not the same weights.

    python benchmarks/selection_rules.py --task pyramidal --stores /tmp/goals/stores --seeds 0 1 2 \\
        --out docs/selection-rules-pyramidal.json
    python benchmarks/selection_rules.py --report docs/selection-rules-*.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sbi.inference.posteriors import EnsemblePosterior

from _runner import code_state, protocol
from mfsbi.flows.evaluation import evaluate_posterior
from mfsbi.inference import Ensemble, clearly_miscalibrated, estimator_from_bytes
from mfsbi.inference.selection import (
    CANDIDATES, choose, choose_nearest, cross_validate, fold_assignment, fold_stopped_ensemble, out_of_fold_calibration,
    spread_weights, stacking_weights,
)
from mfsbi.runtime.training_jobs import read_training_data
from mfsbi.simulators import get_task
from mfsbi.storage import SimulationStore

MARGIN = 0.25   # the run's (docs/selection.md), fixed on OU2's development seeds
FOLDS = 5
CALIBRATION_DRAWS = 200
ORDER = sorted(CANDIDATES, key=lambda name: CANDIDATES[name].nearness)


def _stored_run(store: SimulationStore, task: str, method: str, lf: int, hf: int, seed: int) -> dict:
    run = f"{method}-lf{lf}-hf{hf}-seed{seed}" if method != "npe" else f"npe-hf{hf}-seed{seed}"
    return json.loads(store.read_artifact(f"{task}/{run}/summary.json"))


def _metrics(posterior, task, test_theta, test_x, config: dict) -> dict:
    metrics = evaluate_posterior(posterior, task, test_theta, test_x, num_c2st=config["num_test_observations"],
                                 num_samples=config["posterior_samples"], seed=config["test_seed"])
    return {"nltp": metrics.nltp, "c2st": metrics.c2st}


def study(path: Path, task_name: str, seed: int, lf: int, hf: int) -> dict:
    """Both rules' choices on one stored run, with every candidate's kept form evaluated."""
    task = get_task(task_name)
    store = SimulationStore(str(path))
    summary = _stored_run(store, task_name, "mf-npe", lf, hf, seed)
    config = {"test_seed": summary["config"]["test_seed"], "posterior_samples": summary["config"]["posterior_samples"],
              "num_test_observations": summary["metrics"]["num_c2st_observations"]}
    theta, x = read_training_data(store.table(task_name, "hf"), hf)
    test_theta, test_x = store.table(f"{task_name}-test", "hf").read("ok")
    pretrained = estimator_from_bytes(store.read_artifact(summary["pretrained"].removeprefix("artifacts/")), task.prior)
    folds = fold_assignment(len(theta), FOLDS, seed)
    cv = cross_validate(pretrained, theta, x, folds, candidates=ORDER, seed=1000 * seed + 1)
    calibrations = {name: out_of_fold_calibration(cv.fold_estimators[name], theta, x, folds, draws=CALIBRATION_DRAWS,
                                                  seed=seed) for name in ORDER}
    miscalibrated = {name: c.verdict for name, c in calibrations.items() if clearly_miscalibrated(c)}
    rules = {"default-first": choose(cv.scores, default="fine-tuned", margin=MARGIN, miscalibrated=miscalibrated),
             "nearest-first": choose_nearest(cv.scores, order=ORDER, margin=MARGIN, miscalibrated=miscalibrated)}
    kept_forms, members = {}, {}
    for name in ORDER:
        form = fold_stopped_ensemble(name, pretrained, theta, x, folds, seed=1000 * seed + 101)
        members[name] = list(form.members) if isinstance(form, Ensemble) else [form]
        kept_forms[name] = _metrics(form.posterior(), task, test_theta, test_x, config)
    # Stacking: the candidates' kept forms mixed with the weights their out-of-fold scores give
    # (one flat mixture of every member: sbi scores no mixture of mixtures).
    weights = stacking_weights(cv.scores)
    flat, flat_weights = spread_weights({n: w for n, w in weights.items() if w > 1e-3}, members)
    stacked = EnsemblePosterior([m.posterior() for m in flat], weights=flat_weights)
    kept_forms["stacked"] = _metrics(stacked, task, test_theta, test_x, config)
    row = {"task": task_name, "seed": seed, "rows": len(theta), "test_pairs": len(test_theta),
           "out_of_fold_mean_log_q": {n: float(np.mean(v)) for n, v in cv.scores.items()},
           "out_of_fold_log_q": {n: [round(float(v), 4) for v in values] for n, values in cv.scores.items()},
           "stacking_weights": weights,
           "out_of_fold_calibration": {n: None if c is None else c.verdict for n, c in calibrations.items()},
           "kept_form": kept_forms,
           "rules": {r: {"kept": c.kept, "reason": c.reason} for r, c in rules.items()},
           "run": {"kept": (summary.get("selection") or {}).get("kept"), "metrics": {
               "nltp": summary["metrics"].get("nltp"), "c2st": summary["metrics"].get("c2st")}}}
    try:
        npe = _stored_run(store, task_name, "npe", lf, hf, seed)
        row["npe"] = {"nltp": npe["metrics"].get("nltp"), "c2st": npe["metrics"].get("c2st")}
    except (FileNotFoundError, KeyError):
        row["npe"] = None
    return row


def report(paths: list[Path]) -> None:
    """One markdown row per stored run: what each rule keeps and its held-out scores, beside the others'."""
    first = lambda c: c.get("paper", next(iter(c.values()))) if c else None  # noqa: E731 (the paper's reference)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print("| task | seed | out-of-fold mean log q (pretrained / anchored / fine-tuned / scratch) | stacking weights "
          "| default-first keeps | nearest-first keeps | held-out NLTP (pretrained / anchored / fine-tuned / scratch "
          "/ stacked / NPE) | C2ST (same order) |")
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        for row in json.loads(path.read_text())["runs"]:
            forms = row["kept_form"]
            npe = row.get("npe") or {}
            oof = " / ".join(f"{row['out_of_fold_mean_log_q'][n]:.2f}" for n in ORDER)
            weights = ", ".join(f"{n} {w:.2f}" for n, w in row["stacking_weights"].items() if w >= 0.005)
            nltp = " / ".join(fmt(forms[n]["nltp"]) for n in [*ORDER, "stacked"]) + f" / {fmt(npe.get('nltp'))}"
            c2st = " / ".join(fmt(first(forms[n]["c2st"])) for n in [*ORDER, "stacked"]) + \
                f" / {fmt(first(npe.get('c2st')))}"
            print(f"| {row['task']} | {row['seed']} | {oof} | {weights} | {row['rules']['default-first']['kept']} | "
                  f"{row['rules']['nearest-first']['kept']} | {nltp} | {c2st} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task")
    parser.add_argument("--stores", type=Path, default=Path("benchmarks/stores/selection-goals"),
                        help="selection_goals.py's --stores")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--lf", type=int, default=10_000)
    parser.add_argument("--hf", type=int, default=50)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--report", type=Path, nargs="+", help="print the table of JSONs this script wrote, and stop")
    args = parser.parse_args()
    if args.report:
        report(args.report)
        return
    if args.out is None:
        parser.error("--out: the JSON to write is required (or --report FILE to print one)")
    if args.task is None:
        parser.error("--task: the task of the stored runs is required")
    torch.set_num_threads(1)
    results = {"protocol": protocol(args), **code_state(), "runs": []}
    started = time.perf_counter()
    for seed in args.seeds:
        row = study(args.stores / f"{args.task}-hf{args.hf}-seed{seed}", args.task, seed, args.lf, args.hf)
        results["runs"].append(row)
        results["wall_seconds"] = round(time.perf_counter() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, default=float) + "\n")
        print(f"{args.task} seed {seed}: " + ", ".join(f"{r} keeps {v['kept']}" for r, v in row["rules"].items())
              + "; held-out NLTP " + ", ".join(f"{n} {m['nltp']:.3f}" for n, m in row["kept_form"].items())
              + f"; NPE {row['npe']}", flush=True)


if __name__ == "__main__":
    main()

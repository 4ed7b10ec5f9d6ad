"""MF-NPE's candidate estimators on OU2, scored against the exact posterior (issue 30, items 2 and 5).

    python benchmarks/selection_candidates.py --seeds 10 11 --hf 50 --out docs/selection-development.json
    python benchmarks/selection_candidates.py --seeds 0 1 2 --hf 50 100 --out docs/selection-candidates.json

Per seed, in one process on one thread (no Prefect, no store: the library as a notebook uses it):
1e4 LF rows pretrain one estimator (the run's settings: batch 500, learning rate 5e-4); for each HF
budget, the HF rows train every candidate of :mod:`mfsbi.inference.selection`, each once on all
rows and once per fold of a K-fold split (the fold estimators give the out-of-fold score the run
chooses by, and their mixture is the "fold ensemble" candidate). Every candidate is then scored
by C2ST against the exact reference at ``--observations`` observations drawn with a seed no run
uses (``--observation-seed``), and by the mean log q on 2000 held-out HF pairs. The point: does
the out-of-fold score rank the candidates as the reference does, and which final form (one
estimator on all rows, or the fold ensemble) is better.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from mfsbi.inference import Ensemble, TrainingConfig, c2st, train_npe
from mfsbi.inference.selection import CANDIDATES, choose, cross_validate, fold_assignment

DEFAULT = "fine-tuned"
#: The margins (nats) whose choices are recorded: the rule's margin is fixed on development seeds.
MARGINS = (0.0, 0.25, 0.5, 1.0, 2.0)
from mfsbi.simulators.registry import get_task


def _c2st(posterior, observations: np.ndarray, reference, seed: int) -> list[float]:
    scores = []
    for i, x_o in enumerate(observations):
        with torch.random.fork_rng():
            torch.manual_seed(seed + i)
            drawn = posterior.sample((1000,), x=torch.as_tensor(x_o[None], dtype=torch.float32),
                                     show_progress_bars=False).numpy()
        scores.append(round(c2st(reference(x_o, 1000, 7 + i), drawn, seed=i), 4))
    return scores


def _held_out(posterior_of, theta: torch.Tensor, x: torch.Tensor) -> float:
    with torch.no_grad():
        return round(float(posterior_of(theta, x).mean()), 4)


def ou2_evaluation(num_observations: int, observation_seed: int):
    """OU2, its exact reference, the C2ST observations and 2 000 held-out pairs, all from ``observation_seed``.

    Returns:
        ``(task, reference, observations, held_theta, held_x)``, the pairs as float32 tensors.
    """
    task = get_task("ou2")
    reference = task.references[next(iter(task.references))]
    observations = task.high_fidelity(task.sample_prior(num_observations, seed=observation_seed), seed=observation_seed)
    held_theta = task.sample_prior(2000, seed=observation_seed + 1)
    held_x = torch.as_tensor(task.high_fidelity(held_theta, seed=observation_seed + 1), dtype=torch.float32)
    return task, reference, observations, torch.as_tensor(held_theta, dtype=torch.float32), held_x


def main(args) -> dict:
    torch.set_num_threads(1)
    task, reference, observations, held_theta, held_x = ou2_evaluation(args.observations, args.observation_seed)
    rows, choices = [], []
    for seed in args.seeds:
        lf_theta = task.sample_prior(args.lf, seed=100 + seed)
        lf_x = task.low_fidelity(lf_theta, seed=100 + seed)
        started = time.perf_counter()
        pretrained = train_npe(task.prior, lf_theta, lf_x, training=TrainingConfig(seed=seed, batch_size=500))
        print(f"seed {seed}: pretrained in {time.perf_counter() - started:.0f} s", flush=True)
        for hf in args.hf:
            hf_theta = task.sample_prior(hf, seed=200 + seed)
            hf_x = task.high_fidelity(hf_theta, seed=200 + seed)
            folds = fold_assignment(hf, args.folds, seed)
            started = time.perf_counter()
            candidates = [CANDIDATES[name] for name in args.candidates] + [
                dataclasses.replace(CANDIDATES["anchored"], name=f"anchored-{a:g}", anchor_penalty=a) for a in args.anchors]
            result = cross_validate(pretrained, hf_theta, hf_x, folds, candidates=candidates, seed=seed,
                                    with_full=True)
            print(f"seed {seed} hf {hf}: candidates trained in {time.perf_counter() - started:.0f} s", flush=True)
            choices.append({"seed": seed, "hf": hf, "out_of_fold_scores": {k: [round(float(v), 4) for v in s]
                                                                          for k, s in result.scores.items()},
                            "kept": {f"{m:g}": choose(result.scores, default=DEFAULT, margin=m, seed=seed).kept
                                     for m in MARGINS}})
            print(json.dumps({"seed": seed, "hf": hf, "kept": choices[-1]["kept"]}), flush=True)
            for name in [c.name for c in candidates]:
                forms = {"all rows": result.full[name], "fold ensemble": result.fold_ensemble(name)}
                for form, estimator in forms.items():
                    posterior = estimator.posterior()
                    scores = _c2st(posterior, observations, reference, seed=1000 * seed)
                    log_q = _held_out(lambda t, x: -_loss(estimator, t, x), held_theta, held_x)
                    row = {"seed": seed, "hf": hf, "candidate": name, "form": form,
                           "out_of_fold_log_q": round(float(result.scores[name].mean()), 4),
                           "c2st": round(float(np.mean(scores)), 4), "c2st_per_observation": scores,
                           "held_out_log_q": log_q}
                    print(json.dumps({k: v for k, v in row.items() if k != "c2st_per_observation"}), flush=True)
                    rows.append(row)
    return {"command": "python benchmarks/selection_candidates.py " + " ".join(
                f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items() if k != "out"),
            "machine": f"{platform.processor() or platform.machine()}, 1 torch thread", "torch": torch.__version__,
            "rows": rows, "choices": choices}


def _loss(estimator, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if isinstance(estimator, Ensemble):
        logs = torch.stack([m.network.log_prob(theta, x) for m in estimator.members])
        return -(torch.logsumexp(logs, 0) - np.log(len(estimator.members)))
    return estimator.network.loss(theta, x)


def report(path: Path, margin: str) -> None:
    """The tables of docs/selection.md from a JSON this script wrote."""
    data = json.loads(path.read_text())
    rows = data["rows"]
    print(f"{data['command']}\n")
    print("| candidate | form | C2ST (mean ± sd over seeds) | held-out mean log q | out-of-fold mean log q |")
    print("|---|---|---|---|---|")
    keys = sorted({(r["candidate"], r["form"]) for r in rows}, key=lambda k: (k[0] != "fine-tuned", k))
    for hf in sorted({r["hf"] for r in rows}):
        for candidate, form in keys:
            mine = [r for r in rows if r["hf"] == hf and r["candidate"] == candidate and r["form"] == form]
            c2sts = [r["c2st"] for r in mine]
            print(f"| {candidate} (HF {hf}) | {form} | {np.mean(c2sts):.3f} ± {np.std(c2sts, ddof=1):.3f} "
                  f"({', '.join(f'{c:.3f}' for c in c2sts)}) | "
                  f"{np.mean([r['held_out_log_q'] for r in mine]):.3f} | "
                  f"{np.mean([r['out_of_fold_log_q'] for r in mine]):.3f} |")
    print(f"\nkept at margin {margin}:")
    for choice in data["choices"]:
        kept = choice["kept"][margin]
        by = {(r["candidate"], r["form"]): r["c2st"] for r in rows
              if r["seed"] == choice["seed"] and r["hf"] == choice["hf"] and r["form"] == "all rows"}
        print(f"  seed {choice['seed']} HF {choice['hf']}: kept {kept} (C2ST {by.get((kept, 'all rows'), float('nan')):.3f}; "
              f"default fine-tuned {by[('fine-tuned', 'all rows')]:.3f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", type=Path, help="print the tables of a JSON this script wrote, and stop")
    parser.add_argument("--margin", default="0.25", help="with --report: the margin whose choices to show")
    parser.add_argument("--seeds", type=int, nargs="+", default=[10, 11])
    parser.add_argument("--hf", type=int, nargs="+", default=[50])
    parser.add_argument("--lf", type=int, default=10_000)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    parser.add_argument("--anchors", type=float, nargs="*", default=[],
                        help="also anchored fine-tunings with these L2-SP strengths")
    parser.add_argument("--observations", type=int, default=8)
    parser.add_argument("--observation-seed", type=int, default=777)
    parser.add_argument("--out", type=Path)
    arguments = parser.parse_args()
    if arguments.report:
        report(arguments.report, arguments.margin)
        raise SystemExit(0)
    result = main(arguments)
    if arguments.out:
        arguments.out.write_text(json.dumps(result, indent=1) + "\n")

"""When MF-NPE's fine-tuning stops (issue 30, item 5): a 10 % split against the folds' verdict.

    python benchmarks/fine_tuning_stopping.py --seeds 10 11 12 --hf 50 100 --out docs/fine-tuning-stopping-development.json

The fine-tuning on a small HF budget stops early on a random 10 % of the rows (5 rows at HF 50)
and keeps the weights of its best epoch on them. Per seed, in one process on one thread (library
calls, no Prefect): 1e4 LF rows pretrain one estimator per ``--lf-batch`` (the run's batch 500,
and sbi's 200), and the HF rows are fine-tuned in these ways (``--variants``):

- ``split``: what a run does (:func:`mfsbi.inference.fine_tune`, a random 10 % stops it).
- ``cv-epochs``: 5 folds, each fine-tuned on four and stopped on the fifth (patience 20); the
  number of epochs is the one where the folds' mean held-out loss (per row, over epochs every fold
  reached) is lowest; then one fine-tuning on *all* rows for that many epochs, no row held back.
- ``cv-median``: the same, with the median of the folds' own best epochs.
- ``fold-ensemble``: the five fold estimators of ``cv-epochs`` (each at its own best epoch) as an
  equal-weight mixture.
- ``fold-ensemble-batch-10``: ``fold-ensemble`` with fine-tuning batches of 10 rows (4 steps an
  epoch at HF 50 instead of one, so the patience of 20 epochs waits 80 steps).
- ``fold-ensemble-repeated``: ``fold-ensemble`` and the 5 members of a second fold assignment
  (another seed): 10 members, every row held out twice.
- ``fold-ensemble-10``: 10 folds, each member fine-tuned on nine and stopped on the tenth.
- ``sbi-split``: ``split`` through sbi 0.27's own training loop (``NPE.train``, what ran before
  mfsbi's loop; benchmarks/training_speed.py): the loops side by side on the same rows and seed.

``--method npe`` trains from scratch instead (no LF; variants ``split`` and ``sbi-split``): sbi's
loop draws the split and the initial weights from torch's generator after its own prior checks, so
the same seed gives another split and another start in the two loops; over many seeds the two must
agree on average if the loop itself changed nothing.

Every variant is scored by C2ST against the exact reference at ``--observations`` observations
drawn with a seed no run uses, and by mean log q on 2 000 held-out HF pairs. ``--task`` runs another
task than OU2 (e.g. ``slcp``, ``pyramidal-reduced``); one without an exact reference is scored by the
held-out pairs alone (``--held-out`` of them).
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

from mfsbi.inference import Ensemble, TrainingConfig, fine_tune, train_npe
from mfsbi.inference.config import EstimatorConfig
from mfsbi.inference.fitting import VALIDATION_BATCH_SIZE, RowBatches, fit
from mfsbi.inference.selection import fold_assignment
from mfsbi.inference.training import TrainedEstimator, _builder, restandardized_copy
from mfsbi.simulators import get_task
from selection_candidates import _c2st  # the script's folder is on sys.path
from training_speed import _sbi_fine_tune, _sbi_loop

FINE_TUNING = TrainingConfig(learning_rate=1e-4)


def _tuned(pretrained: TrainedEstimator, theta: torch.Tensor, x: torch.Tensor, training: TrainingConfig,
           validation: tuple[torch.Tensor, torch.Tensor] | None) -> TrainedEstimator:
    """A fine-tuning on all of ``theta, x``: stopped on ``validation``, or ``training.max_num_epochs`` epochs."""
    network = restandardized_copy(pretrained, x)
    for parameter in network.parameters():
        parameter.requires_grad_(True)
    started = time.perf_counter()
    held = None if validation is None else RowBatches(*validation, VALIDATION_BATCH_SIZE)
    fitted = fit(network, RowBatches(theta, x, training.batch_size, seed=training.seed), held, training)
    return TrainedEstimator(network=fitted.network, prior=pretrained.prior, estimator=pretrained.estimator,
                            training=training, epochs=fitted.epochs,
                            best_validation_loss=fitted.best_validation_loss if held else float("nan"),
                            seconds=time.perf_counter() - started, theta_dim=pretrained.theta_dim,
                            x_dim=pretrained.x_dim, num_simulations=len(theta),
                            validation_losses=fitted.validation_losses)


def _cross_validated(pretrained, theta, x, folds, seed, batch_size=FINE_TUNING.batch_size):
    """The fold fine-tunings (each stopped on its held-out fold) and the epoch counts they point at."""
    members, curves = [], []
    for k in range(int(folds.max()) + 1):
        keep, held = torch.as_tensor(folds != k), torch.as_tensor(folds == k)
        member = _tuned(pretrained, theta[keep], x[keep],
                        dataclasses.replace(FINE_TUNING, seed=seed + k, batch_size=batch_size), (theta[held], x[held]))
        members.append(member)
        curves.append(np.asarray(member.validation_losses) * int(held.sum()))
    reached = min(len(c) for c in curves)
    mean_curve = np.sum([c[:reached] for c in curves], axis=0) / len(theta)
    best_epochs = [int(np.argmin(c)) + 1 for c in curves]
    return members, int(np.argmin(mean_curve)) + 1, int(np.median(best_epochs)), best_epochs


@torch.no_grad()
def _held_out_log_q(estimator, theta, x) -> float:
    if isinstance(estimator, Ensemble):
        logs = torch.stack([m.network.log_prob(theta, x) for m in estimator.members])
        return float((torch.logsumexp(logs, 0) - np.log(len(estimator.members))).mean())
    return float(-estimator.network.loss(theta, x).mean())


def _simulated(task, theta, seed: int, float32_first: bool = False,
               fidelity: str = "high_fidelity") -> tuple[np.ndarray, np.ndarray]:
    """HF (or ``fidelity``'s) ``(theta, x)`` of the rows that simulated: a simulator that reports failed
    rows (the NEURON cells' ``(x, errors)``) has them left out. ``float32_first``: simulate the
    float32-rounded theta (what the training rows always were here, so that the JSONs written before
    stay reproducible)."""
    theta = np.asarray(theta, dtype=np.float32 if float32_first else np.float64)
    out = getattr(task, fidelity)(theta.astype(np.float64), seed=seed)
    if not isinstance(out, tuple):
        return theta, np.asarray(out)
    ok = np.array([error is None for error in out[1]])
    return theta[ok], np.asarray(out[0])[ok]


def _tensors(*arrays) -> tuple[torch.Tensor, ...]:
    return tuple(torch.as_tensor(a, dtype=torch.float32) for a in arrays)


def _evaluation(args):
    """``(task, reference or None, observations, held_theta, held_x)``, all drawn from ``--observation-seed``."""
    task = get_task(args.task)
    reference = task.references[next(iter(task.references))] if task.references else None
    seed = args.observation_seed
    observations = _simulated(task, task.sample_prior(args.observations, seed=seed), seed)[1]
    held = _simulated(task, task.sample_prior(args.held_out, seed=seed + 1), seed + 1)
    return (task, reference, observations, *_tensors(*held))


def _c2st_entries(estimator, observations, reference, seed) -> dict:
    """A row's C2ST (mean) and its per-observation values; None without an exact reference."""
    if reference is None:
        return {"c2st": None, "c2st_per_observation": None}
    scores = _c2st(estimator.posterior(), observations, reference, seed=seed)
    return {"c2st": round(float(np.mean(scores)), 4), "c2st_per_observation": scores}


def main(args) -> dict:
    torch.set_num_threads(1)
    task, reference, observations, held_theta, held_x = _evaluation(args)
    rows = []
    for seed in args.seeds:
        if args.method == "npe":
            rows += _from_scratch(task, seed, args, observations, reference, held_theta, held_x)
            continue
        lf_theta, lf_x = _simulated(task, task.sample_prior(args.lf, seed=100 + seed), 100 + seed,
                                    fidelity="low_fidelity")
        for lf_batch in args.lf_batch:
            started = time.perf_counter()
            pretrained = train_npe(task.prior, lf_theta, lf_x, training=TrainingConfig(seed=seed, batch_size=lf_batch))
            print(f"seed {seed}: pretrained (batch {lf_batch}) in {time.perf_counter() - started:.0f} s", flush=True)
            for hf in args.hf:
                theta, x = _tensors(*_simulated(task, task.sample_prior(hf, seed=200 + seed), 200 + seed,
                                                float32_first=True))
                folds = fold_assignment(hf, args.folds, seed)
                members, curve_epochs, median_epochs, best_epochs = _cross_validated(pretrained, theta, x, folds, seed)
                # What stopping on its own fold flatters a fold estimator by: its mean log q on that fold
                # against on 2 000 fresh pairs.
                optimism = {"members_out_of_fold_log_q": round(float(np.mean(np.concatenate([
                                -m.network.loss(theta[torch.as_tensor(folds == k)], x[torch.as_tensor(folds == k)]).detach().numpy()
                                for k, m in enumerate(members)]))), 4),
                            "members_held_out_log_q": round(float(np.mean([_held_out_log_q(m, held_theta, held_x)
                                                                           for m in members])), 4)}
                forms = {
                    "split": lambda: fine_tune(pretrained, theta, x, training=dataclasses.replace(FINE_TUNING, seed=seed)),
                    "cv-epochs": lambda: _tuned(pretrained, theta, x, dataclasses.replace(
                        FINE_TUNING, seed=seed, max_num_epochs=curve_epochs), None),
                    "cv-median": lambda: _tuned(pretrained, theta, x, dataclasses.replace(
                        FINE_TUNING, seed=seed, max_num_epochs=median_epochs), None),
                    "fold-ensemble": lambda: Ensemble(members),
                    "fold-ensemble-batch-10": lambda: Ensemble(
                        _cross_validated(pretrained, theta, x, folds, seed, batch_size=10)[0]),
                    "fold-ensemble-repeated": lambda: Ensemble(members + _cross_validated(
                        pretrained, theta, x, fold_assignment(hf, args.folds, seed + 1000), seed + 1000)[0]),
                    "fold-ensemble-10": lambda: Ensemble(
                        _cross_validated(pretrained, theta, x, fold_assignment(hf, 10, seed), seed)[0]),
                    "sbi-split": lambda: _sbi_fine_tune(pretrained, theta, x, dataclasses.replace(FINE_TUNING, seed=seed)),
                }
                for variant in args.variants:
                    started = time.perf_counter()
                    estimator = forms[variant]()
                    seconds = round(time.perf_counter() - started, 1)  # beyond the 5 folds every variant shares
                    row = {"seed": seed, "lf_batch": lf_batch, "hf": hf, "variant": variant, **optimism,
                           "epochs": getattr(estimator, "epochs", None), "seconds": seconds,
                           "fold_best_epochs": best_epochs,
                           "cv_epochs": curve_epochs, "cv_median_epochs": median_epochs,
                           **_c2st_entries(estimator, observations, reference, 1000 * seed),
                           "held_out_log_q": round(_held_out_log_q(estimator, held_theta, held_x), 4)}
                    print(json.dumps({k: v for k, v in row.items() if k != "c2st_per_observation"}), flush=True)
                    rows.append(row)
    return {"command": "python benchmarks/fine_tuning_stopping.py " + " ".join(
                f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items() if k != "out"),
            "machine": f"{platform.processor() or platform.machine()}, 1 torch thread", "torch": torch.__version__,
            "rows": rows}


def _from_scratch(task, seed, args, observations, reference, held_theta, held_x) -> list[dict]:
    """NPE on the HF rows alone, through mfsbi's loop and through sbi's."""
    rows = []
    for hf in args.hf:
        theta, x = _tensors(*_simulated(task, task.sample_prior(hf, seed=200 + seed), 200 + seed, float32_first=True))
        training = TrainingConfig(seed=seed)
        forms = {"split": lambda: train_npe(task.prior, theta, x, training=training),
                 "sbi-split": lambda: _sbi_loop(task.prior, theta, x, _builder(task.prior, EstimatorConfig()), training,
                                                EstimatorConfig())}
        for variant in args.variants:
            estimator = forms[variant]()
            rows.append({"seed": seed, "lf_batch": 0, "hf": hf, "variant": f"npe {variant}", "epochs": estimator.epochs,
                         **_c2st_entries(estimator, observations, reference, 1000 * seed),
                         "held_out_log_q": round(_held_out_log_q(estimator, held_theta, held_x), 4)})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "c2st_per_observation"}), flush=True)
    return rows


def report(path: Path) -> None:
    """The table of docs/benchmark-ou2.md from a JSON this script wrote."""
    data = json.loads(path.read_text())
    rows = data["rows"]
    print(f"{data['command']}\n")
    print("| pretraining batch | HF | variant | C2ST mean ± sd over seeds (per seed) | held-out mean log q (same) | epochs |")
    print("|---|---|---|---|---|---|")
    for lf_batch in sorted({r["lf_batch"] for r in rows}):
        for hf in sorted({r["hf"] for r in rows}):
            for variant in dict.fromkeys(r["variant"] for r in rows):
                mine = [r for r in rows if (r["lf_batch"], r["hf"], r["variant"]) == (lf_batch, hf, variant)]
                if not mine:
                    continue
                c, q = [r["c2st"] for r in mine], [r["held_out_log_q"] for r in mine]
                print(f"| {lf_batch} | {hf} | {variant} | {_spread(c)} | {_spread(q)} | "
                      f"{', '.join(str(r['epochs']) for r in mine)} |")


def _spread(values: list) -> str:
    """``mean ± sd (per seed)``, or a dash where there is no value (no exact reference)."""
    if any(v is None for v in values):
        return "—"
    sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f} ± {sd:.3f} ({', '.join(f'{v:.3f}' for v in values)})"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", type=Path, help="print the table of a JSON this script wrote, and stop")
    parser.add_argument("--seeds", type=int, nargs="+", default=[10, 11, 12])
    parser.add_argument("--hf", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--method", choices=["mf-npe", "npe"], default="mf-npe")
    parser.add_argument("--task", default="ou2")
    parser.add_argument("--held-out", type=int, default=2000, help="held-out HF pairs for mean log q")
    parser.add_argument("--lf", type=int, default=10_000)
    parser.add_argument("--lf-batch", type=int, nargs="+", default=[500])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=["split", "cv-epochs", "cv-median", "fold-ensemble"])
    parser.add_argument("--observations", type=int, default=8)
    parser.add_argument("--observation-seed", type=int, default=777)
    parser.add_argument("--out", type=Path)
    arguments = parser.parse_args()
    if arguments.report:
        report(arguments.report)
        raise SystemExit(0)
    result = main(arguments)
    if arguments.out:
        arguments.out.write_text(json.dumps(result, indent=1) + "\n")

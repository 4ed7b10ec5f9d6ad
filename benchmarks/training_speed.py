"""Fast training on the cores there are (issue 16): sbi's loop against mfsbi's, side by side in one run.

    python benchmarks/training_speed.py --seeds 0 1 2 --out docs/training-speed.json

Per seed, on one thread (as a Dask worker trains): MF-NPE on OU2 with the paper's settings,
pretraining on 1e4 LF simulations and fine-tuning on 100 HF (at the run's fine-tuning
learning rate, 1e-4), once with sbi 0.27's training loop
(``sbi.inference.NPE.train``, what ``train_npe`` ran before) and once with
:func:`mfsbi.inference.fitting.fit` (what it runs now); the same data, network builder, seed and
stopping rules. Reported per seed and loop: pretraining seconds, epochs and seconds per epoch,
fine-tuning seconds, the loss on 2000 held-out HF pairs and C2ST against the exact reference
posterior at held-out observations (after fine-tuning, the run's answer; and after pretraining).
The loops draw their batch orders differently, so a seed's two trainings are two samples of the
same procedure: equivalence is judged against the seed-to-seed spread.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import copy
import io
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from mfsbi.flows.options import FINE_TUNING_LEARNING_RATE
from mfsbi.inference import TrainingConfig, c2st, fine_tune, train_npe
from mfsbi.inference.config import EstimatorConfig
from mfsbi.inference.training import TrainedEstimator, _builder, refit_x_standardizer
from mfsbi.simulators.registry import get_task


def _sbi_loop(prior, theta, x, builder, training: TrainingConfig, estimator: EstimatorConfig) -> TrainedEstimator:
    """The training ``train_npe`` and ``fine_tune`` ran before: sbi 0.27's NPE loop, seeded the same way."""
    from sbi.inference import NPE

    start = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(training.seed)
        inference = NPE(prior=prior, density_estimator=builder, show_progress_bars=False)
        inference.append_simulations(theta, x, exclude_invalid_x=True)
        with contextlib.redirect_stdout(io.StringIO()):
            network = inference.train(training_batch_size=training.batch_size, learning_rate=training.learning_rate,
                                      validation_fraction=training.validation_fraction,
                                      stop_after_epochs=training.stop_after_epochs,
                                      max_num_epochs=training.max_num_epochs, clip_max_norm=training.clip_max_norm)
    network.eval()
    summary = inference.summary
    return TrainedEstimator(network=network, prior=prior, estimator=estimator, training=training,
                            epochs=int(summary["epochs_trained"][-1]),
                            best_validation_loss=float(summary["best_validation_loss"][-1]),
                            seconds=time.perf_counter() - start, theta_dim=theta.shape[1], x_dim=x.shape[1],
                            num_simulations=len(theta), validation_losses=tuple(summary["validation_loss"]))


def _sbi_fine_tune(pretrained: TrainedEstimator, theta, x, training: TrainingConfig) -> TrainedEstimator:
    network = copy.deepcopy(pretrained.network)
    for parameter in network.parameters():
        parameter.requires_grad_(True)
    refit_x_standardizer(network, x)
    return _sbi_loop(pretrained.prior, theta, x, lambda *_: network, training, pretrained.estimator)


def _variant(name: str):
    """``sbi:200`` (sbi's loop, pretraining batch 200) or ``mfsbi:500`` (mfsbi's loop, batch 500)."""
    loop, batch = name.split(":")
    if loop == "sbi":
        return (lambda prior, theta, x, training: _sbi_loop(prior, theta, x, _builder(prior, EstimatorConfig()),
                                                            dataclasses.replace(training, batch_size=int(batch)),
                                                            EstimatorConfig()),
                _sbi_fine_tune)
    return (lambda prior, theta, x, training: train_npe(prior, theta, x,
                                                        training=dataclasses.replace(training, batch_size=int(batch))),
            lambda pretrained, theta, x, training: fine_tune(pretrained, theta, x, training=training))


def _c2st(trained: TrainedEstimator, test_x: np.ndarray, reference) -> float:
    scores = []
    for i, x_o in enumerate(test_x):
        with torch.random.fork_rng():
            torch.manual_seed(i)
            drawn = trained.posterior().sample((1000,), x=torch.as_tensor(x_o[None], dtype=torch.float32),
                                               show_progress_bars=False).numpy()
        scores.append(c2st(reference(x_o, 1000, 7 + i), drawn, seed=i))
    return float(np.mean(scores))


def main(args) -> dict:
    torch.set_num_threads(1)
    task = get_task("ou2")
    reference = task.references[next(iter(task.references))]
    test_x = task.high_fidelity(task.sample_prior(args.observations, seed=2026), seed=2026)
    held_theta = task.sample_prior(args.held_out, seed=2027)
    held_x = torch.as_tensor(task.high_fidelity(held_theta, seed=2027), dtype=torch.float32)
    held_x_lf = torch.as_tensor(task.low_fidelity(held_theta, seed=2027), dtype=torch.float32)
    held_theta = torch.as_tensor(held_theta, dtype=torch.float32)
    rows = []
    for seed in args.seeds:
        lf_theta = task.sample_prior(args.lf, seed=100 + seed)
        lf_x = task.low_fidelity(lf_theta, seed=100 + seed)
        hf_theta = task.sample_prior(args.hf, seed=200 + seed)
        hf_x = task.high_fidelity(hf_theta, seed=200 + seed)
        to = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        for loop in args.variants:
            pretrain, tune = _variant(loop)
            lf = pretrain(task.prior, to(lf_theta), to(lf_x), TrainingConfig(seed=seed))
            with torch.no_grad():
                held_out_lf = float(lf.network.loss(held_theta, held_x_lf).mean())
            hf = tune(lf, to(hf_theta), to(hf_x), TrainingConfig(seed=seed, learning_rate=FINE_TUNING_LEARNING_RATE))
            with torch.no_grad():
                held_out = float(hf.network.loss(held_theta, held_x).mean())
            row = {"seed": seed, "loop": loop, "pretrain_seconds": round(lf.seconds, 2), "pretrain_epochs": lf.epochs,
                   "pretrain_seconds_per_epoch": round(lf.seconds / lf.epochs, 4),
                   "pretrained_held_out_lf_loss": round(held_out_lf, 4),
                   "fine_tune_seconds": round(hf.seconds, 2), "fine_tune_epochs": hf.epochs,
                   "held_out_hf_loss": round(held_out, 4), "c2st": round(_c2st(hf, test_x, reference), 4),
                   "c2st_pretrained": round(_c2st(lf, test_x, reference), 4)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    keys = ("pretrain_seconds", "pretrain_epochs", "pretrain_seconds_per_epoch", "pretrained_held_out_lf_loss",
            "fine_tune_seconds",
            "held_out_hf_loss", "c2st", "c2st_pretrained")
    summary: dict = {}
    for loop in args.variants:
        mine = [r for r in rows if r["loop"] == loop]
        summary[loop] = {k: {"mean": round(float(np.mean([r[k] for r in mine])), 4),
                             "std": round(float(np.std([r[k] for r in mine], ddof=1)), 4) if len(mine) > 1 else None}
                         for k in keys}
    base = args.variants[0]
    for loop in args.variants[1:]:
        pairs = [(a, b) for a in rows for b in rows if a["seed"] == b["seed"] and a["loop"] == base and b["loop"] == loop]
        summary[f"{loop} vs {base}"] = {
            "speedup_pretrain_seconds_per_epoch": round(float(np.mean([a["pretrain_seconds_per_epoch"]
                                                                       / b["pretrain_seconds_per_epoch"]
                                                                       for a, b in pairs])), 3),
            "speedup_pretrain_total": round(sum(a["pretrain_seconds"] for a, _ in pairs)
                                            / sum(b["pretrain_seconds"] for _, b in pairs), 3),
            "speedup_pretrain_plus_fine_tune_total": round(
                sum(a["pretrain_seconds"] + a["fine_tune_seconds"] for a, _ in pairs)
                / sum(b["pretrain_seconds"] + b["fine_tune_seconds"] for _, b in pairs), 3)}
    return {"command": "python benchmarks/training_speed.py " + " ".join(
                f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items() if k != "out"),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread",
            "torch": torch.__version__, "rows": rows, "summary": summary}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["sbi:200", "mfsbi:200", "mfsbi:500"],
                        help="LOOP:PRETRAINING_BATCH, the first is the baseline")
    parser.add_argument("--lf", type=int, default=10_000)
    parser.add_argument("--hf", type=int, default=100)
    parser.add_argument("--observations", type=int, default=5)
    parser.add_argument("--held-out", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    arguments = parser.parse_args()
    result = main(arguments)
    print(json.dumps(result["summary"], indent=1))
    if arguments.out:
        arguments.out.write_text(json.dumps(result, indent=1) + "\n")

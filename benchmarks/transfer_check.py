"""Validation of the transfer check (issue 17) on known cases, beside what MF-NPE vs NPE actually shows.

    python benchmarks/transfer_check.py --seeds 0 1 2 --out docs/transfer-check.json

Per case and seed: pretrain on ``--lf`` LF simulations of the case's LF, simulate ``--hf`` HF
pairs (the pilot; the LF at the same θ beside them), run :func:`mfsbi.inference.check_transfer`
on them, then train MF-NPE (fine-tune on those HF pairs) and NPE (from scratch on the same pairs)
and score both by C2ST against the exact posterior at ``--observations`` held-out observations.
The check's verdict should match the sign of NPE's C2ST minus MF-NPE's (positive: transfer
helped). Cases: OU2 (the LF of the paper), OU2 with the LF outputs in reversed order (the paper's
failure case), OU2 with an LF of pure noise that ignores θ, and SLCP (an LF of 3 of its 5
parameters). One thread, as a Dask worker trains; the paper's estimator and the run's learning rates.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from mfsbi.flows.options import FINE_TUNING_LEARNING_RATE, HF_LEARNING_RATE, LF_BATCH_SIZE
from mfsbi.inference import TrainingConfig, c2st, check_transfer, fine_tune, pretrain, train_npe
from mfsbi.simulators.registry import get_task

CASES = {
    "ou2": ("ou2", lambda x, rng: x),
    "ou2-lf-reversed": ("ou2", lambda x, rng: x[:, ::-1].copy()),
    "ou2-lf-noise": ("ou2", lambda x, rng: rng.standard_normal(x.shape)),
    "slcp": ("slcp", lambda x, rng: x),
}


def _c2st(task, posterior, test_x, seed: int) -> float:
    reference = task.references[next(iter(task.references))]
    scores = []
    for i, x_o in enumerate(test_x):
        with torch.random.fork_rng():
            torch.manual_seed(1000 * seed + i)
            drawn = posterior.sample((1000,), x=torch.as_tensor(x_o, dtype=torch.float32), show_progress_bars=False)
        scores.append(c2st(reference(x_o, 1000, 7 + i), drawn.numpy(), seed=i))
    return float(np.mean(scores))


def one(case: str, seed: int, args) -> dict:
    name, transform = CASES[case]
    task = get_task(name)
    rng = np.random.default_rng([seed, 99])
    lf_theta = task.sample_prior(args.lf, seed=100 + seed)
    lf_x = transform(task.low_fidelity(lf_theta, seed=100 + seed), rng)
    hf_theta = task.sample_prior(args.hf, seed=200 + seed)
    hf_x = task.high_fidelity(hf_theta, seed=200 + seed)
    pilot_lf = transform(task.low_fidelity(hf_theta, seed=300 + seed), rng)
    test_x = task.high_fidelity(task.sample_prior(args.observations, seed=2026), seed=2026)

    start = time.perf_counter()
    pretrained = pretrain(task.prior, lf_theta, lf_x, training=TrainingConfig(seed=seed, batch_size=LF_BATCH_SIZE))
    pretrain_seconds = time.perf_counter() - start
    fine_tuning = TrainingConfig(learning_rate=FINE_TUNING_LEARNING_RATE, seed=seed)
    scratch = TrainingConfig(learning_rate=HF_LEARNING_RATE, seed=seed)
    start = time.perf_counter()
    check = check_transfer(pretrained, task.prior, hf_theta, hf_x, pilot_lf, fine_tuning=fine_tuning,
                           scratch=scratch, seed=seed)
    check_seconds = time.perf_counter() - start
    mf = fine_tune(pretrained, hf_theta, hf_x, training=fine_tuning)
    npe = train_npe(task.prior, hf_theta, hf_x, training=scratch)
    c2st_mf, c2st_npe = _c2st(task, mf.posterior(), test_x, seed), _c2st(task, npe.posterior(), test_x, seed)
    row = {"case": case, "seed": seed, "verdict": check.verdict, "ranking_auc": round(check.ranking_auc, 4),
           "ranking_auc_interval": [round(check.ranking_auc_lower, 4), round(check.ranking_auc_upper, 4)],
           "ranking_pvalue": round(check.ranking_pvalue, 5), "log_prob_restandardized": round(check.log_prob_restandardized, 3),
           "wilcoxon_pvalue": round(check.wilcoxon_pvalue, 4), "median_difference": round(check.median_difference, 4),
           "difference": round(check.difference, 4), "standard_error": round(check.standard_error, 4),
           "log_prob_prior": round(check.log_prob_prior, 3), "log_prob_pretrained": round(check.log_prob_pretrained, 3),
           "log_prob_scratch": round(check.log_prob_scratch, 3), "log_prob_fine_tuned": round(check.log_prob_fine_tuned, 3),
           "output_correlation": [round(v, 3) for v in check.output_correlation],
           "c2st_mf_npe": round(c2st_mf, 4), "c2st_npe": round(c2st_npe, 4),
           "c2st_npe_minus_mf_npe": round(c2st_npe - c2st_mf, 4),
           "pretrain_seconds": round(pretrain_seconds, 1), "check_seconds": round(check_seconds, 1)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lf", type=int, default=10_000)
    parser.add_argument("--hf", type=int, default=50)
    parser.add_argument("--observations", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [one(case, seed, args) for case in args.cases for seed in args.seeds]
    summary = {}
    for case in args.cases:
        mine = [r for r in rows if r["case"] == case]
        gains = [r["c2st_npe_minus_mf_npe"] for r in mine]
        summary[case] = {"verdicts": [r["verdict"] for r in mine],
                         "c2st_mf_npe": round(float(np.mean([r["c2st_mf_npe"] for r in mine])), 4),
                         "c2st_npe": round(float(np.mean([r["c2st_npe"] for r in mine])), 4),
                         "c2st_gain_mean": round(float(np.mean(gains)), 4),
                         "c2st_gain_std": round(float(np.std(gains, ddof=1)), 4) if len(gains) > 1 else None}
    document = {"command": "python benchmarks/transfer_check.py " + " ".join(
                    f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                    for k, v in vars(args).items()),
                "machine": platform.platform(), "torch": torch.__version__, "rows": rows, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

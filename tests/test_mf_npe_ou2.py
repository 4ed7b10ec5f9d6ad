"""The scientific claim at a small budget: on OU2, MF-NPE beats NPE at the same HF budget (C2ST)."""

import numpy as np
import pytest
import torch

from mfsbi.inference import TrainingConfig, build_network, c2st, fine_tune, train_npe
from mfsbi.inference.training import TrainedEstimator
from mfsbi.simulators import get_task

NUM_SAMPLES = 500


def _samples(posterior, x_o, seed):
    torch.manual_seed(seed)
    return posterior.sample((NUM_SAMPLES,), x=torch.as_tensor(x_o, dtype=torch.float32),
                            show_progress_bars=False).double().numpy()


def _mean_c2st(posterior, task, test_x):
    reference = task.references["euler-maruyama"]
    return float(np.mean([c2st(_samples(posterior, x, i), reference(x, NUM_SAMPLES, seed=100 + i), seed=i)
                          for i, x in enumerate(test_x)]))


# Slow (~70 s): the quick version of this claim is tests/test_inference.py::test_mf_npe_beats_npe_quick.
@pytest.mark.slow
def test_mf_npe_beats_npe_and_the_untrained_estimator_on_ou2():
    task = get_task("ou2")
    test_x = task.high_fidelity(task.sample_prior(3, seed=999), seed=998)
    scores = {"mf-npe": [], "npe": [], "untrained": []}
    for seed in (0, 1):
        theta_lf = task.sample_prior(2000, seed=10 + seed)
        x_lf = task.low_fidelity(theta_lf, seed=20 + seed)
        theta_hf = task.sample_prior(50, seed=30 + seed)
        x_hf = task.high_fidelity(theta_hf, seed=40 + seed)
        training = TrainingConfig(seed=seed)
        pretrained = train_npe(task.prior, theta_lf, x_lf, training=training)
        scores["mf-npe"].append(_mean_c2st(fine_tune(pretrained, theta_hf, x_hf, training=training).posterior(),
                                           task, test_x))
        scores["npe"].append(_mean_c2st(train_npe(task.prior, theta_hf, x_hf, training=training).posterior(),
                                        task, test_x))
        torch.manual_seed(seed)
        untrained = build_network(task.prior, theta_hf, x_hf)
        untrained_posterior = TrainedEstimator(untrained, task.prior, pretrained.estimator, training, 0,
                                               float("nan"), 0.0, 2, 10).posterior()
        scores["untrained"].append(_mean_c2st(untrained_posterior, task, test_x))
    means = {name: float(np.mean(values)) for name, values in scores.items()}
    print(means)
    assert means["mf-npe"] < means["npe"] - 0.02, means
    assert means["mf-npe"] < means["untrained"] - 0.1, means

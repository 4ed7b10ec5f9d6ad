"""A tiny self-contained 2-parameter toy (OU-like) shared by the inference tests."""

import numpy as np
import torch
from sbi.utils import BoxUniform

from mfsbi.inference import EstimatorConfig, TrainingConfig

LOW, HIGH = [0.1, 0.1], [3.0, 0.6]
TINY = EstimatorConfig(hidden_features=16, num_transforms=2, num_bins=4)
QUICK = TrainingConfig(max_num_epochs=4, batch_size=100)


def make_prior() -> BoxUniform:
    return BoxUniform(torch.tensor(LOW), torch.tensor(HIGH))


def sample_prior(n: int, seed: int) -> np.ndarray:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make_prior().sample((n,)).double().numpy()


def simulate_hf(theta: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = len(theta)
    e = np.empty((n, 10))
    e[:, 0] = rng.standard_normal(n)
    for t in range(1, 10):
        e[:, t] = 0.6 * e[:, t - 1] + 0.8 * rng.standard_normal(n)
    return theta[:, :1] + 0.5 + theta[:, 1:2] * e


def simulate_lf(theta: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return theta[:, :1] + theta[:, 1:2] * rng.standard_normal((len(theta), 10))


def state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

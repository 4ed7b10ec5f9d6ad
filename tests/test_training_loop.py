"""One training loop (mfsbi.inference.fitting.fit) for every estimator: ML-NPE plugs in its batches and objective."""

from __future__ import annotations

import pytest
import torch
from sbi.utils import BoxUniform
from torch import nn

from mfsbi.inference import EstimatorConfig, TrainingConfig, build_network, coupled_levels, train_ml_npe
from mfsbi.inference.fitting import NPELoss, RowBatches, fit
from mfsbi.inference.multilevel import CoupledBatches, CoupledLevel, MultilevelLoss

torch.set_num_threads(1)

SMALL = EstimatorConfig(hidden_features=12, num_transforms=1, num_bins=4)


def _level(ids: range, coupled: bool) -> CoupledLevel:
    theta = torch.tensor(list(ids), dtype=torch.float32)[:, None]
    return CoupledLevel(theta, -theta, -theta if coupled else None)


def test_coupled_batches_take_every_level_each_step_and_reshuffle_a_small_level_when_used_up():
    batches = CoupledBatches([_level(range(10), False), _level(range(100, 104), True)], batch_size=3, seed=5)
    first = list(batches.epoch(1))
    assert batches.steps == 4 and len(first) == 4  # ceil(10 / 3) steps: one pass over the largest level
    assert [len(step[0]) for step in first] == [3, 3, 3, 1]
    level0 = [int(v) for step in first for v in step[0].theta[:, 0]]
    assert sorted(level0) == list(range(10))
    # The small level gives min(3, 4) = 3 rows a step; its pass of 4 rows splits 3 + 1, then it reshuffles.
    level1 = [[int(v) for v in step[1].theta[:, 0]] for step in first]
    assert [len(rows) for rows in level1] == [3, 1, 3, 1]
    assert sorted(level1[0] + level1[1]) == sorted(level1[2] + level1[3]) == [100, 101, 102, 103]
    assert all(torch.equal(step[1].x_coarse, -step[1].theta) for step in first)  # pairs stay together
    # The passes run on across epochs: epoch 2 is not epoch 1 again, and the same seed repeats it all.
    second = list(batches.epoch(2))
    again = CoupledBatches([_level(range(10), False), _level(range(100, 104), True)], batch_size=3, seed=5)
    assert [[step[0].theta.tolist() for step in e] for e in (first, second)] == \
        [[step[0].theta.tolist() for step in again.epoch(e)] for e in (1, 2)]
    assert [step[0].theta.tolist() for step in first] != [step[0].theta.tolist() for step in second]


def _coupled(seed: int) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    theta0, theta1 = 4 * torch.rand(120, 2, generator=g) - 2, 4 * torch.rand(40, 2, generator=g) - 2
    noise = 0.1 * torch.randn(40, 2, generator=g)
    return [(theta0, theta0 + 0.3 + 0.1 * torch.randn(120, 2, generator=g)), (theta1, theta1 + noise, theta1 + 0.3 + noise)]


def test_train_ml_npe_is_fit_with_the_multilevel_batches_and_objective():
    prior = BoxUniform(-2 * torch.ones(2), 2 * torch.ones(2))
    training = TrainingConfig(learning_rate=3e-3, max_num_epochs=6, stop_after_epochs=2, seed=4, batch_size=32)
    reports = []
    trained = train_ml_npe(prior, _coupled(0), estimator=SMALL, training=training, on_epoch=reports.append)
    # The same steps by hand: the split train_ml_npe draws (torch.randperm under training.seed), then fit.
    levels = coupled_levels(_coupled(0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(training.seed)
        splits = [torch.randperm(len(level)) for level in levels]
    n_train = [int(0.9 * len(level)) for level in levels]
    train = [level.rows(p[:n]) for level, p, n in zip(levels, splits, n_train)]
    held_out = [level.rows(p[n:]) for level, p, n in zip(levels, splits, n_train)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(training.seed)
        for level in levels:  # the same draws as train_ml_npe, so the network starts from the same weights
            torch.randperm(len(level))
        network = build_network(prior, train[-1].theta, train[-1].x, SMALL)
        fitted = fit(network, CoupledBatches(train, 32, 4), CoupledBatches(held_out, 2000, 4), training,
                     objective=MultilevelLoss())
    assert trained.validation_losses == fitted.validation_losses
    assert [r.validation_loss for r in reports] == list(fitted.validation_losses)
    assert all(torch.equal(a, b) for a, b in zip(trained.network.state_dict().values(), network.state_dict().values()))


class _NaN(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def loss(self, theta, x):
        return self.weight * torch.full((len(theta),), float("nan"))


def test_a_non_finite_loss_names_the_objective_and_a_penalty_goes_to_the_objective():
    levels = [_level(range(8), False), _level(range(20, 24), True)]
    with pytest.raises(FloatingPointError, match="^ML-NPE training loss is not finite in epoch 1$"):
        fit(_NaN(), CoupledBatches(levels, 4, 0), CoupledBatches(levels, 4, 0), TrainingConfig(),
            objective=MultilevelLoss(adjust=False))
    rows = RowBatches(torch.zeros(4, 1), torch.zeros(4, 1), 2)
    with pytest.raises(ValueError, match="^penalty: give it to the objective"):
        fit(_NaN(), rows, rows, TrainingConfig(), penalty=lambda: torch.zeros(()), objective=NPELoss())

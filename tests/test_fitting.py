"""The training loop every NPE training runs (mfsbi.inference.fitting): batches, stopping, best weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mfsbi.inference import TrainingConfig, train_npe
from mfsbi.inference.fitting import RowBatches, fit


def _rows(batches: RowBatches, epoch: int) -> list[int]:
    return [int(v) for theta, _ in batches.epoch(epoch) for v in theta[:, 0]]


def test_row_batches_visit_every_row_once_in_a_seeded_order_per_epoch():
    ids = torch.arange(23, dtype=torch.float32)[:, None]
    batches = RowBatches(ids, -ids, batch_size=5, seed=3)
    first, second = _rows(batches, 1), _rows(batches, 2)
    assert sorted(first) == sorted(second) == list(range(23))
    assert first != second and first != list(range(23))
    assert _rows(RowBatches(ids, -ids, batch_size=5, seed=3), 1) == first  # same seed and epoch, same order
    assert [len(t) for t, _ in batches.epoch(1)] == [5, 5, 5, 5, 3]
    assert all(torch.equal(x, -t) for t, x in batches.epoch(4))  # rows stay paired
    assert _rows(RowBatches(ids, -ids, batch_size=5), 7) == list(range(23))  # no seed: in order


class _Scripted(nn.Module):
    """A 'network' whose validation loss per epoch is scripted; its one weight counts training steps."""

    def __init__(self, validation: list[float]):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.validation = validation
        self.evaluations = 0

    def loss(self, theta, x):
        if self.training:
            return (self.weight - 1e3) ** 2 * torch.ones(len(theta)) / 1e6
        self.evaluations += 1
        return torch.full((len(theta),), self.validation[self.evaluations - 1])


def test_fit_stops_after_the_patience_and_keeps_the_best_epochs_weights():
    theta = torch.zeros(10, 1)
    network = _Scripted([3.0, 2.0, 2.5, 1.0, 1.5, 1.25, 1.125, 0.5])
    training = TrainingConfig(stop_after_epochs=3, learning_rate=0.1, clip_max_norm=None)
    weights = []
    fitted = fit(network, RowBatches(theta, theta, 5, seed=0), RowBatches(theta, theta, 10), training,
                 on_epoch=lambda report: weights.append(float(network.weight.detach())))
    # best at epoch 4 (1.0); epochs 5, 6, 7 do not improve: stop after 7, never seeing 0.5
    assert fitted.validation_losses == (3.0, 2.0, 2.5, 1.0, 1.5, 1.25, 1.125)
    assert fitted.best_epoch == 4 and fitted.best_validation_loss == 1.0
    assert float(network.weight.detach()) == pytest.approx(weights[3]) and weights[3] != weights[-1]
    assert not network.training


def test_fit_runs_at_most_max_num_epochs():
    theta = torch.zeros(4, 1)
    fitted = fit(_Scripted(list(np.linspace(5, 1, 20))), RowBatches(theta, theta, 2, seed=0),
                 RowBatches(theta, theta, 4), TrainingConfig(max_num_epochs=6))
    assert fitted.epochs == 6 and fitted.best_epoch == 6


def test_a_non_finite_training_loss_is_an_error_not_a_silent_result():
    class _Diverged(_Scripted):
        def loss(self, theta, x):
            return super().loss(theta, x) * float("nan") if self.training else super().loss(theta, x)

    theta = torch.zeros(4, 1)
    with pytest.raises(FloatingPointError, match="not finite in epoch 1"):
        fit(_Diverged([1.0]), RowBatches(theta, theta, 2, seed=0), RowBatches(theta, theta, 4), TrainingConfig())


def test_train_npe_is_the_same_for_the_same_seed_and_drops_invalid_rows():
    prior = torch.distributions.Independent(torch.distributions.Uniform(-torch.ones(2), torch.ones(2)), 1)
    theta = prior.sample((300,))
    x = theta + 0.1 * torch.randn(300, 2)
    x[::10] = float("nan")  # 30 failed simulations
    training = TrainingConfig(seed=5, max_num_epochs=4)
    a, b = train_npe(prior, theta, x, training=training), train_npe(prior, theta, x, training=training)
    assert a.validation_losses == b.validation_losses and a.num_simulations == 270
    for p, q in zip(a.network.parameters(), b.network.parameters()):
        assert torch.equal(p, q)
    other = train_npe(prior, theta, x, training=TrainingConfig(seed=6, max_num_epochs=4))
    assert other.validation_losses != a.validation_losses


def test_fit_without_validation_trains_exactly_the_epoch_count_and_keeps_the_last_weights():
    theta = torch.zeros(10, 1)
    network = _Scripted([])  # a validation pass would index past the script and fail
    reports = []
    fitted = fit(network, RowBatches(theta, theta, 5, seed=0), None,
                 TrainingConfig(max_num_epochs=7, learning_rate=0.1, clip_max_norm=None), on_epoch=reports.append)
    assert network.evaluations == 0 and fitted.epochs == 7 and fitted.validation_losses == ()
    assert [r.epoch for r in reports] == list(range(1, 8))
    # 2 batches per epoch, 14 Adam steps of ~lr each toward 1e3: the weight is the last step's
    assert float(network.weight.detach()) == pytest.approx(1.4, rel=0.05)

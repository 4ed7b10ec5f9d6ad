"""Multilevel NPE (mfsbi.inference.multilevel): the objective, its gradient, training and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sbi.inference import DirectPosterior
from sbi.utils import BoxUniform

from mfsbi.inference import (
    EstimatorConfig,
    TrainingConfig,
    adjusted_gradient,
    build_network,
    coupled_levels,
    ml_npe_loss,
    train_ml_npe,
    train_npe,
)

torch.set_num_threads(1)

from toy import state_equal  # noqa: E402

SMALL = EstimatorConfig(hidden_features=20, num_transforms=2, num_bins=4)
SHIFT = 0.3  # the cheap simulator's bias


def _prior() -> BoxUniform:
    return BoxUniform(-2 * torch.ones(2), 2 * torch.ones(2))


def _coupled(n0: int, n1: int, seed: int) -> list[tuple]:
    """Level 0: x = theta + 0.3 + 0.1 e; level 1: (theta, theta + 0.1 e, theta + 0.3 + 0.1 e), one e per row."""
    g = torch.Generator().manual_seed(seed)
    theta0 = 4 * torch.rand(n0, 2, generator=g) - 2
    x0 = theta0 + SHIFT + 0.1 * torch.randn(n0, 2, generator=g)
    theta1 = 4 * torch.rand(n1, 2, generator=g) - 2
    noise = 0.1 * torch.randn(n1, 2, generator=g)
    return [(theta0, x0), (theta1, theta1 + noise, theta1 + SHIFT + noise)]


def _mean_bias(estimator) -> np.ndarray:
    """Posterior mean minus x_o, averaged over observations inside the box (the HF answer is about 0)."""
    posterior = estimator.posterior()
    x_os = torch.tensor([[0.5, -0.5], [-0.8, 0.6], [0.2, 1.0], [-0.3, -1.0]])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        means = [posterior.sample((1000,), x=x[None], show_progress_bars=False).mean(0) for x in x_os]
    return (torch.stack(means) - x_os).mean(0).numpy()


def test_ml_npe_corrects_the_cheap_simulators_bias():
    # 400 biased LF rows, 200 coupled rows. Mean bias per coordinate over seeds 0-5 (measured):
    # ML-NPE -0.05 .. -0.15, LF-only -0.28 .. -0.36, ML-NPE with the correction term removed
    # -0.25 .. -0.35. The paper's gradient rescaling leaves part of the bias (see adjusted_gradient).
    levels = _coupled(400, 200, seed=0)
    training = TrainingConfig(learning_rate=3e-3, max_num_epochs=80, seed=0)
    ml = train_ml_npe(_prior(), levels, estimator=SMALL, training=training)
    lf = train_npe(_prior(), *levels[0], estimator=SMALL, training=training)
    ml_bias, lf_bias = _mean_bias(ml), _mean_bias(lf)
    assert isinstance(ml.posterior(), DirectPosterior)
    assert np.all(lf_bias < -0.2), lf_bias  # the setup: LF-only is biased by about -0.3
    assert np.all(np.abs(ml_bias) < 0.2), ml_bias
    assert np.linalg.norm(ml_bias) < 0.6 * np.linalg.norm(lf_bias), (ml_bias, lf_bias)


def test_the_loss_is_level_zeros_npe_loss_when_the_coarse_x_is_the_fine_x():
    levels = _coupled(50, 30, seed=1)
    theta1, x1, _ = levels[1]
    network = build_network(_prior(), levels[0][0], levels[0][1], SMALL)
    with torch.no_grad():
        npe = network.loss(*levels[0]).mean()
        same = ml_npe_loss(network, coupled_levels([levels[0], (theta1, x1, x1)]))
        coupled = ml_npe_loss(network, coupled_levels(levels))
        expected = npe + network.loss(theta1, x1).mean() - network.loss(theta1, levels[1][2]).mean()
    assert float(same) == pytest.approx(float(npe), abs=1e-5)
    assert float(coupled) == pytest.approx(float(expected), abs=1e-5)


def test_adjusted_gradient_rescales_and_projects_as_the_paper():
    g0 = torch.tensor([1.0, 0.0])
    # Equal and opposite corrections cancel: the direction is level 0's alone.
    assert torch.allclose(adjusted_gradient([g0, torch.tensor([0.0, 2.0]), torch.tensor([0.0, -2.0])]), g0)
    # f^- is rescaled to the norm of f^+ before the sum; no conflict, no projection.
    out = adjusted_gradient([g0, torch.tensor([0.0, 1.0]), torch.tensor([0.0, -4.0])])
    assert torch.allclose(out, g0, atol=1e-6)
    # Conflict (g0 . g_c < 0): both are projected onto the other's normal plane, then added.
    g_c = torch.tensor([-1.0, 1.0])
    out = adjusted_gradient([g0, g_c, torch.zeros(2)])
    expected = (g0 - (-1.0 / 2.0) * g_c) + (g_c - (-1.0 / 1.0) * g0)
    assert torch.allclose(out, expected)
    assert torch.allclose(adjusted_gradient([g0, g_c, torch.zeros(2)], adjust=False), g0 + g_c)


def test_same_seed_same_network_and_the_global_rng_is_left_alone():
    levels = _coupled(120, 40, seed=2)
    training = TrainingConfig(max_num_epochs=3, batch_size=50, seed=7)
    torch.manual_seed(123)
    before = torch.rand(1)
    a = train_ml_npe(_prior(), levels, estimator=SMALL, training=training)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)
    b = train_ml_npe(_prior(), levels, estimator=SMALL, training=training)
    c = train_ml_npe(_prior(), levels, estimator=SMALL, training=TrainingConfig(max_num_epochs=3, batch_size=50, seed=8))
    assert state_equal(a.network, b.network) and not state_equal(a.network, c.network)
    assert a.validation_losses == b.validation_losses and a.epochs == 3
    assert a.num_simulations == 120 + 2 * 40 and (a.theta_dim, a.x_dim) == (2, 2)


def test_three_levels_train_and_failed_pairs_are_dropped_together(caplog):
    (theta0, x0), (theta1, x1, x0_1) = _coupled(100, 40, seed=3)
    theta2 = theta1[:30].clone()
    x2, x1_2 = theta2 + 0.05 * torch.randn(30, 2), theta2 + 0.1
    x1_2[0, 1] = float("nan")  # a failed coarse member drops its fine partner too
    x2[1, 0] = float("inf")
    levels = [(theta0, x0), (theta1, x1, x0_1), (theta2.numpy(), x2.numpy(), x1_2.numpy())]
    with caplog.at_level("WARNING", logger="mfsbi.inference.multilevel"):
        data = coupled_levels(levels)
    assert [len(level) for level in data] == [100, 40, 28] and data[2].dropped == 2
    assert "levels[2]: dropped 2 of 30 rows" in caplog.text
    result = train_ml_npe(_prior(), levels, estimator=SMALL, training=TrainingConfig(max_num_epochs=2))
    assert result.epochs == 2 and math.isfinite(result.best_validation_loss)
    samples = result.posterior().sample((5,), x=x2[2:3], show_progress_bars=False)
    assert samples.shape == (5, 2)


@pytest.mark.parametrize(
    "levels, message",
    [
        ([], r"^levels: pass a non-empty"),
        ([(torch.zeros(0, 2), torch.zeros(0, 2))], r"^levels\[0\]: level 0 holds no valid row"),
        ([(torch.zeros(3, 2), torch.full((3, 2), float("nan")))], r"^levels\[0\]: level 0 holds no valid row"),
        ([(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2))], r"^levels\[0\]: level 0 has no coarser"),
        ([(torch.zeros(3, 2), torch.zeros(3, 2)), (torch.zeros(3, 2), torch.zeros(3, 2))], r"^levels\[1\]: .*needs x_coarse"),
        ([(torch.zeros(3, 2), torch.zeros(3, 2)), (torch.zeros(3, 2), torch.zeros(2, 2), torch.zeros(2, 2))],
         r"^levels\[1\]: theta has 3 rows but x has 2"),
        ([(torch.zeros(3, 2), torch.zeros(3, 2)), (torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 3))],
         r"^levels\[1\]: x_coarse has shape \(3, 3\) but x has \(3, 2\)"),
        ([(torch.zeros(3, 2), torch.zeros(3, 2)), (torch.zeros(3, 2), torch.zeros(3, 4), torch.zeros(3, 4))],
         r"^levels\[1\]: x has 4 columns but level 0's has 2"),
        ([(torch.zeros(3, 2), torch.zeros(3))], r"^levels\[0\]: x must have shape \(n, dim\)"),
    ],
)
def test_malformed_levels_name_the_argument(levels, message):
    with pytest.raises(ValueError, match=message):
        coupled_levels(levels)


def test_train_ml_npe_rejects_data_it_cannot_split_or_a_foreign_prior():
    levels = _coupled(50, 5, seed=4)
    with pytest.raises(ValueError, match=r"^levels\[1\]: 1 valid rows .* leave an empty"):
        train_ml_npe(_prior(), [levels[0], tuple(t[:1] for t in levels[1])], estimator=SMALL)
    prior3 = BoxUniform(-2 * torch.ones(3), 2 * torch.ones(3))
    with pytest.raises(ValueError, match=r"^levels: theta has 2 columns but the prior's event_shape is \(3,\)"):
        train_ml_npe(prior3, levels, estimator=SMALL)

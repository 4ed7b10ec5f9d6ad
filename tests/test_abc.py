"""Tests of mfsbi.inference.mf_abc (multifidelity rejection ABC, Prescott & Baker 2020)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal

from mfsbi.inference import (
    DEFAULT_ETA1,
    DEFAULT_ETA2,
    abc_distances,
    continuation_decisions,
    distance_scale,
    epsilon_from_quantile,
    mf_abc,
    mf_abc_weights,
    proposals_within_budget,
)

NOISE = 0.5
X_O = np.array([1.0, -0.5])


def gaussian_prior() -> Independent:
    return Independent(Normal(torch.zeros(2), torch.ones(2)), 1)


def gaussian_simulator(theta: np.ndarray, seed: int) -> np.ndarray:
    # x = theta + N(0, NOISE^2): posterior N(x_o / (1 + NOISE^2), NOISE^2 / (1 + NOISE^2) I).
    return theta + NOISE * np.random.default_rng(seed).standard_normal(theta.shape)


class CountingSimulator:
    """Records how many rows it was asked to simulate, call by call."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, theta: np.ndarray, seed: int) -> np.ndarray:
        self.calls.append(len(theta))
        return gaussian_simulator(theta, seed)


def test_weights_match_hand_computed_cases_including_a_negative_one():
    eps, eta1, eta2 = 1.0, 0.5, 0.25
    lf_d = np.array([0.5, 0.5, 0.5, 2.0, 2.0, 2.0, np.nan])
    hf_d = np.array([0.5, 2.0, np.nan, 0.5, 2.0, np.nan, 0.5])
    continued = np.array([True, True, False, True, True, False, True])
    w = mf_abc_weights(lf_d, hf_d, eps, eta1, eta2, continued)
    # LF accept, HF accept: 1 + 0/eta1; LF accept, HF reject: 1 - 1/0.5 = -1 (negative);
    # LF accept, not continued: 1; LF reject, HF accept: 1/0.25 = 4; LF reject, HF reject: 0;
    # LF reject, not continued: 0; failed LF (NaN) counts as an LF reject: 1/eta2 = 4.
    np.testing.assert_allclose(w, [1.0, -1.0, 1.0, 4.0, 0.0, 0.0, 4.0])
    # A failed HF simulation (NaN where continued) counts as an HF reject.
    assert mf_abc_weights(np.array([0.5]), np.array([np.nan]), eps, eta1, eta2, np.array([True]))[0] == -1.0


def test_weights_are_unbiased_for_the_hf_acceptance():
    # E[w] = P(d < eps) whatever eta: simulate correlated (d~, d) pairs many times.
    rng = np.random.default_rng(0)
    n = 400_000
    lf_d = np.abs(rng.standard_normal(n))
    hf_d = np.abs(lf_d + 0.4 * rng.standard_normal(n))
    for eta1, eta2 in ((1.0, 0.1), (0.3, 0.6)):
        continued = continuation_decisions(lf_d, 0.5, eta1, eta2, rng)
        w = mf_abc_weights(lf_d, np.where(continued, hf_d, np.nan), 0.5, eta1, eta2, continued)
        assert w.mean() == pytest.approx((hf_d < 0.5).mean(), abs=0.005)


def test_continuation_probabilities_are_eta1_and_eta2_empirically():
    rng = np.random.default_rng(1)
    lf_d = rng.uniform(0.0, 2.0, 200_000)
    continued = continuation_decisions(lf_d, 1.0, eta1=0.7, eta2=0.2, rng=3)
    assert continued[lf_d < 1.0].mean() == pytest.approx(0.7, abs=0.01)
    assert continued[lf_d >= 1.0].mean() == pytest.approx(0.2, abs=0.01)
    np.testing.assert_array_equal(continued, continuation_decisions(lf_d, 1.0, 0.7, 0.2, rng=3))
    with pytest.raises(ValueError):
        continuation_decisions(lf_d, 1.0, eta1=0.0, eta2=0.2)


def test_proposals_within_budget_stops_right_after_the_last_affordable_continuation():
    continued = np.array([False, True, False, True, True, False])
    assert proposals_within_budget(continued, 0) == 1
    assert proposals_within_budget(continued, 1) == 2
    assert proposals_within_budget(continued, 2) == 4
    assert proposals_within_budget(continued, 3) == 6
    assert proposals_within_budget(continued, 10) == 6


def test_distances_and_epsilon():
    x = np.array([[1.0, 0.0], [3.0, 4.0], [np.nan, 0.0]])
    np.testing.assert_allclose(abc_distances(x, np.zeros(2))[:2], [1.0, 5.0])
    assert np.isnan(abc_distances(x, np.zeros(2))[2])
    np.testing.assert_allclose(distance_scale(x), [1.0, 2.0])  # std of the valid rows; 0 -> 1
    assert epsilon_from_quantile(np.array([1.0, 2.0, 3.0, np.nan]), 0.5) == 2.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("hf_budget", [0, 1, 7, 60, 5_000])
@pytest.mark.parametrize("hf_batch_size", [None, 16])
def test_the_hf_budget_is_never_exceeded(seed, hf_budget, hf_batch_size):
    hf = CountingSimulator()
    result = mf_abc(gaussian_prior(), gaussian_simulator, hf, X_O, hf_budget=hf_budget, num_proposals=2_000,
                    epsilon_quantile=0.05, hf_batch_size=hf_batch_size, seed=seed)
    assert sum(hf.calls) == result.hf_used <= hf_budget
    assert result.hf_used == int(result.continued.sum())
    if hf_batch_size is not None:
        assert all(n <= hf_batch_size for n in hf.calls)
    if hf_budget <= 60:  # binding: proposing stopped as the budget was spent
        assert result.hf_used == hf_budget and len(result.theta) < 2_000
    else:  # not binding: every proposal processed
        assert len(result.theta) == 2_000
    assert result.lf_used == 2_000
    assert np.isnan(result.hf_distances[~result.continued]).all()


def test_mf_abc_recovers_the_posterior_mean_of_a_gaussian_when_lf_equals_hf():
    result = mf_abc(gaussian_prior(), gaussian_simulator, gaussian_simulator, X_O, hf_budget=20_000,
                    num_proposals=60_000, epsilon_quantile=0.02, seed=0)
    assert (result.eta1, result.eta2) == (DEFAULT_ETA1, DEFAULT_ETA2)
    assert (result.weights >= 0).all()  # eta1 = 1: every LF accept is checked, no negative weight
    true_mean = X_O / (1 + NOISE**2)
    np.testing.assert_allclose(result.mean(), true_mean, atol=0.08)
    samples = result.sample(2_000, seed=1)
    assert samples.shape == (2_000, 2)
    np.testing.assert_allclose(samples.mean(axis=0), true_mean, atol=0.1)
    np.testing.assert_allclose(samples.std(axis=0), np.sqrt(NOISE**2 / (1 + NOISE**2)), atol=0.1)
    # Same seed, same result.
    again = mf_abc(gaussian_prior(), gaussian_simulator, gaussian_simulator, X_O, hf_budget=20_000,
                   num_proposals=60_000, epsilon_quantile=0.02, seed=0)
    np.testing.assert_array_equal(again.weights, result.weights)


def test_negative_weights_with_eta1_below_one_and_sampling_uses_the_positive_part():
    result = mf_abc(gaussian_prior(), gaussian_simulator, gaussian_simulator, X_O, hf_budget=20_000,
                    num_proposals=40_000, epsilon_quantile=0.05, eta1=0.5, eta2=0.2, seed=2)
    assert (result.weights < 0).any()
    np.testing.assert_allclose(result.mean(), X_O / (1 + NOISE**2), atol=0.12)
    samples = result.sample(500, seed=0)
    positive = {tuple(row) for row in result.theta[result.weights > 0]}
    assert all(tuple(row) in positive for row in samples)


def test_argument_checks():
    prior = gaussian_prior()
    with pytest.raises(ValueError, match="exactly one"):
        mf_abc(prior, gaussian_simulator, gaussian_simulator, X_O, hf_budget=5, num_proposals=10, seed=0)
    with pytest.raises(ValueError, match="exactly one"):
        mf_abc(prior, gaussian_simulator, gaussian_simulator, X_O, hf_budget=5, num_proposals=10,
               epsilon=1.0, epsilon_quantile=0.1)
    with pytest.raises(ValueError, match="distance"):
        mf_abc(prior, gaussian_simulator, gaussian_simulator, X_O, hf_budget=5, num_proposals=10,
               epsilon=1.0, distance="manhattan")
    # A simulator in the (x, reasons) form of the mfsbi contract is accepted.
    result = mf_abc(prior, lambda t, s: (gaussian_simulator(t, s), [None] * len(t)), gaussian_simulator,
                    torch.tensor(X_O), hf_budget=5, num_proposals=50, epsilon=1.0, distance="euclidean")
    np.testing.assert_array_equal(result.scale, np.ones(2))

"""Calibration within a memory bound, and from draws made elsewhere (out-of-fold calibration)."""

import importlib

import pytest
import torch

from sbi.utils import diagnostics_utils

from mfsbi.inference import calibration, calibration_from_samples, samples_on_pairs
from mfsbi.inference.calibration import pairs_per_batch
from known_posteriors import ConjugateGaussianModel, KnownPosterior


def test_pairs_per_batch_keeps_the_repeated_observations_within_the_bound():
    # The case of issue 30: 1 000 draws of a 16 384-value x take 131 MB per pair (x and its first layer).
    assert pairs_per_batch(1000, 16_384, 2**28) == 2
    assert pairs_per_batch(1000, 16_384, 2**20) == 1  # never fewer than one pair
    assert pairs_per_batch(1000, 10, 2**28) == 3355


def test_sampling_is_split_into_batches_within_the_bound(monkeypatch):
    model = ConjugateGaussianModel(dim=2)
    theta, x = model.pairs(10, seed=1)
    posterior = KnownPosterior(model)
    calls = []
    original = diagnostics_utils.get_posterior_samples_on_batch

    def recording(xs, posterior, shape, **kwargs):
        calls.append(len(xs))
        return original(xs, posterior, shape, **kwargs)

    # The module, not mfsbi.inference.calibration (the package's attribute of that name is the function).
    monkeypatch.setattr(importlib.import_module("mfsbi.inference.calibration"), "get_posterior_samples_on_batch",
                        recording)
    # 50 draws x 2 values x 8 bytes = 800 bytes a pair: a 3 000-byte bound takes 3 pairs a call.
    samples = samples_on_pairs(posterior, x, 50, max_bytes=3000)
    assert calls == [3, 3, 3, 1] and samples.shape == (50, 10, 2)
    result = calibration(posterior, theta, x, num_posterior_samples=50, max_batch_bytes=3000)
    assert result.num_pairs == 10 and calls[4:] == [3, 3, 3, 1]


def test_calibration_from_samples_agrees_with_calibration_on_the_same_draws():
    model = ConjugateGaussianModel(dim=2)
    theta, x = model.pairs(60, seed=2)
    posterior = KnownPosterior(model, scale=0.4)  # clearly over-confident
    with torch.random.fork_rng():
        torch.manual_seed(5)
        direct = calibration(posterior, theta, x, num_posterior_samples=200, seed=5)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        draws = samples_on_pairs(posterior, x, 200)
    assert calibration_from_samples(draws, theta).ranks == direct.ranks
    assert direct.verdict == "over-confident"
    # Seeded: the same draws give the same TARP curve and verdict, and the caller's RNG is untouched
    # (unseeded, MF-NPE's out-of-fold verdicts, which its choice reads, changed from run to run).
    state = torch.random.get_rng_state()
    first, again = calibration_from_samples(draws, theta, seed=3), calibration_from_samples(draws, theta, seed=3)
    assert first == again and torch.equal(state, torch.random.get_rng_state())
    assert calibration_from_samples(draws, theta, seed=4).tarp_atc != first.tarp_atc
    with pytest.raises(ValueError, match="num_samples, n, d"):
        calibration_from_samples(draws[:, :5], theta)

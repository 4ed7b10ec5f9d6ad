"""An ensemble posterior (MF-NPE's fold-stopped members) is scored and sampled in batches, as one network is."""

import dataclasses

import numpy as np
import torch

from mfsbi.inference import Ensemble, train_npe
from mfsbi.inference.calibration import samples_on_pairs
from mfsbi.inference.metrics import pair_log_probs
from toy import QUICK, TINY, make_prior, sample_prior, simulate_hf


def _ensemble(members: int = 3) -> Ensemble:
    theta = sample_prior(200, seed=1)
    x = simulate_hf(theta, seed=1)
    return Ensemble([train_npe(make_prior(), theta, x, estimator=TINY, training=dataclasses.replace(QUICK, seed=s))
                     for s in range(members)])


def test_an_ensembles_pair_log_probs_are_its_mixture_density_at_each_pair():
    ensemble = _ensemble()
    posterior = ensemble.posterior()
    theta = torch.as_tensor(sample_prior(7, seed=2), dtype=torch.float32)
    x = torch.as_tensor(simulate_hf(theta.double().numpy(), seed=2), dtype=torch.float32)
    batched = pair_log_probs(posterior, theta, x, batch_size=3)
    # The mixture by hand: log of the mean of the members' densities, one pair at a time.
    with torch.no_grad():
        by_hand = [torch.logsumexp(torch.stack([m.network.log_prob(theta[i:i + 1], x[i:i + 1]).reshape(())
                                                for m in ensemble.members]), 0) - np.log(3) for i in range(7)]
    assert torch.allclose(batched, torch.stack(by_hand).double(), atol=1e-4)
    # and what sbi's own (one x at a time, renormalised: the logit transform leaks no mass) gives
    sbi_one_at_a_time = torch.cat([posterior.log_prob(theta[i:i + 1], x=x[i:i + 1]) for i in range(7)])
    assert torch.allclose(batched.float(), sbi_one_at_a_time, atol=1e-3)


def test_an_ensemble_is_sampled_on_many_pairs_at_once():
    posterior = _ensemble().posterior()
    x = torch.as_tensor(simulate_hf(sample_prior(5, seed=3), seed=3), dtype=torch.float32)
    samples = samples_on_pairs(posterior, x, 40)
    assert samples.shape == (40, 5, 2) and torch.isfinite(samples).all()
    low, high = torch.tensor([0.1, 0.1]), torch.tensor([3.0, 0.6])
    assert ((samples >= low) & (samples <= high)).all()  # inside the prior, as every member's draws
    # the draws at different pairs differ: each pair is conditioned on its own x
    assert not torch.allclose(samples[:, 0].mean(0), samples[:, 4].mean(0), atol=1e-3)

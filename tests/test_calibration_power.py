"""The calibration verdict's false alarms on exact posteriors, and its power on known distortions.

benchmarks/calibration_power.py measures both over a grid (docs/calibration-power.json); these
tests check the claims on fresh seeds at a few cheap settings.
"""

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import binom, binomtest, truncnorm

from known_posteriors import ConjugateGaussianModel
from mfsbi.inference import calibration, clearly_miscalibrated
from mfsbi.inference.calibration import BIASED, CALIBRATED, OVER_CONFIDENT, UNDER_CONFIDENT

# Seeds no benchmark run used (the benchmark's pair sets start at 0, 500 000 and 2 000 000).
PAIR_SEED0, SAMPLE_SEED0 = 7_000_000, 8_000_000


def verdicts(posterior, model, num_pairs: int, num_samples: int, sets: int, offset: int = 0) -> Counter:
    counts = Counter()
    for k in range(offset, offset + sets):
        theta, x = model.pairs(num_pairs, PAIR_SEED0 + k)
        counts[calibration(posterior, theta, x, num_posterior_samples=num_samples, seed=SAMPLE_SEED0 + k).verdict] += 1
    return counts


def exact_alarms(sets: int) -> tuple[int, Counter]:
    """Verdicts other than calibrated on ``sets`` pair sets of the exact posterior, half of 50 pairs, half of 100."""
    model = ConjugateGaussianModel(dim=2)
    counts = verdicts(model.posterior(), model, 50, 100, sets // 2) + verdicts(
        model.posterior(), model, 100, 100, sets - sets // 2, offset=sets // 2)
    return sets - counts[CALIBRATED], counts


def test_false_alarms_on_exact_posteriors_stay_near_the_level():
    # 100 independent pair sets. At most 11 alarms: a rule at its nominal 5 % fails this with
    # probability P(X >= 12), X ~ Binomial(100, 0.05), under 0.5 %; a rule at 15 % passes with
    # probability 16 %, one at 20 % with 1.3 %. The slow test below bounds the rate itself.
    assert binom.sf(11, 100, 0.05) < 0.005 and binom.cdf(11, 100, 0.20) < 0.015
    torch.set_num_threads(1)
    alarms, counts = exact_alarms(100)
    assert alarms <= 11, counts


@pytest.mark.slow
def test_false_alarms_on_exact_posteriors_are_at_most_ten_percent():
    # 500 independent pair sets. The claim "false-alarm rate <= 10 %" is shown when the one-sided
    # 95 % Clopper-Pearson upper bound of the observed rate lies below 10 %, i.e. at most 38
    # alarms in 500. A rule at its nominal 5 % fails this with probability P(X >= 39) for
    # X ~ Binomial(500, 0.05), 0.5 % (6 % were its true rate 6 %).
    sets, most = 500, 38
    assert binomtest(most, sets).proportion_ci(0.90, method="exact").high < 0.10
    assert binomtest(most + 1, sets).proportion_ci(0.90, method="exact").high >= 0.10
    assert binom.sf(most, sets, 0.05) < 0.005
    torch.set_num_threads(1)
    alarms, counts = exact_alarms(sets)
    assert alarms <= most, counts


@pytest.mark.parametrize("distortion, right", [
    (dict(scale=0.5), OVER_CONFIDENT),     # credible regions half as wide as they should be
    (dict(scale=2.0), UNDER_CONFIDENT),    # twice as wide
    (dict(shift=0.5), BIASED),             # every parameter's location off by half a posterior SD
])
def test_a_clearly_distorted_posterior_is_flagged_with_the_right_name(distortion, right):
    # Measured on other seeds (docs/calibration-power.json, 100 pairs, d = 2): the right name in
    # 95-100 % of sets. At least 32 of 40 here: if the true rate were 0.9, this fails with
    # probability P(X <= 31) for X ~ Binomial(40, 0.9), 1.5 % (0.2 % were it 0.95).
    assert binom.cdf(31, 40, 0.9) < 0.016 and binom.cdf(31, 40, 0.95) < 0.002
    torch.set_num_threads(1)
    model = ConjugateGaussianModel(dim=2)
    counts = verdicts(model.posterior(**distortion), model, 100, 100, 40)
    assert counts[right] >= 32, counts


def test_only_biased_and_over_confident_estimates_count_as_clearly_miscalibrated():
    model = ConjugateGaussianModel(dim=2)
    theta, x = model.pairs(100, PAIR_SEED0)
    result = calibration(model.posterior(), theta, x, num_posterior_samples=100, seed=1)
    found = {verdict: clearly_miscalibrated(replace(result, verdict=verdict))
             for verdict in (CALIBRATED, OVER_CONFIDENT, UNDER_CONFIDENT, BIASED)}
    assert found == {CALIBRATED: False, OVER_CONFIDENT: True, UNDER_CONFIDENT: False, BIASED: True}
    assert clearly_miscalibrated(None) is False


@pytest.mark.parametrize("box", [None, 2.0])
def test_the_known_posterior_is_the_exact_one_and_its_distortions_are_what_they_say(box):
    model = ConjugateGaussianModel(dim=3, box=box)
    x = torch.tensor([[0.3, -2.5, 3.5]])
    torch.manual_seed(0)
    exact = model.posterior().sample((20_000,), x=x).double().numpy()
    assert exact.shape == (20_000, 3)
    # The conjugate posterior: N(x/2, 1/2) under N(0, 1), N(x, 1) cut to [-2, 2] under the box.
    for j in range(3):
        xj = float(x[0, j])
        if box is None:
            mean, sd = xj / 2, np.sqrt(0.5)
        else:
            cut = truncnorm((-box - xj), (box - xj), loc=xj, scale=1.0)
            mean, sd = cut.mean(), cut.std()
            assert exact[:, j].min() >= -box and exact[:, j].max() <= box
        assert abs(exact[:, j].mean() - mean) < 4 * sd / np.sqrt(20_000)
        assert abs(exact[:, j].std() / sd - 1) < 0.03
    if box is None:
        wide = model.posterior(scale=2.0, shift=1.0).sample((20_000,), x=x).double().numpy()
        assert np.allclose(wide.mean(0), x.numpy()[0] / 2 + np.sqrt(0.5), atol=0.04)
        assert np.allclose(wide.std(0), 2 * np.sqrt(0.5), rtol=0.03)
    batched = model.posterior().sample_batched((7,), x=torch.zeros(5, 3))
    assert batched.shape == (7, 5, 3)
    with pytest.raises(ValueError, match="scale"):
        model.posterior(scale=0.0)

"""The comparison of two estimates' marginals at x_o (the from-scratch cross-check's rule)."""

import numpy as np
import pytest

from mfsbi.inference.agreement import DISAGREEMENT_SHIFT, marginal_agreement


def _draws(n, mean, sd, seed):
    return np.random.default_rng(seed).normal(mean, sd, size=(n, len(mean)))


def test_draws_of_one_distribution_agree():
    result = marginal_agreement(_draws(2000, [0.0, 5.0], [1.0, 0.1], 0), _draws(2000, [0.0, 5.0], [1.0, 0.1], 1))
    assert not result.disagree and max(result.shift) < 0.15
    assert np.allclose(result.width_ratio, 1, atol=0.1) and np.allclose(result.held, 0.95, atol=0.02)


def test_a_sharper_estimate_centred_in_the_check_agrees():
    # What LF pretraining should give: narrower than from scratch, in the same place.
    result = marginal_agreement(_draws(2000, [0.0, 0.0], [0.4, 1.0], 0), _draws(2000, [0.1, 0.0], [1.0, 1.0], 1))
    assert not result.disagree
    assert result.width_ratio[0] < 0.5 and result.held[0] < 0.7  # it holds less of the check's draws, yet agrees


def test_an_estimate_shifted_beyond_the_rule_disagrees_on_that_parameter():
    shift = 1.5 * DISAGREEMENT_SHIFT
    result = marginal_agreement(_draws(2000, [0.0, shift], [1.0, 1.0], 0), _draws(2000, [0.0, 0.0], [1.0, 1.0], 1))
    assert result.disagree and result.shift[1] == pytest.approx(shift, abs=0.15) and result.shift[0] < 0.15
    assert marginal_agreement(_draws(2000, [0.0, shift], [1.0, 1.0], 0), _draws(2000, [0.0, 0.0], [1.0, 1.0], 1),
                              threshold=2 * shift).disagree is False


def test_draws_of_different_parameters_are_refused():
    with pytest.raises(ValueError, match="same d parameters"):
        marginal_agreement(np.zeros((10, 2)), np.zeros((10, 3)))

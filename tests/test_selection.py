"""Choosing MF-NPE's estimator on the HF budget's own rows (mfsbi.inference.selection)."""

import numpy as np
import pytest
import torch

from mfsbi.inference import TrainingConfig, fine_tune, train_npe
from mfsbi.inference.selection import (
    CANDIDATES, choose, choose_nearest, cross_validate, fold_assignment, fold_stopped_ensemble, log_q,
    out_of_fold_calibration, out_of_fold_scores, stacking_weights,
)
from toy import QUICK, TINY, make_prior, sample_prior, simulate_hf, simulate_lf, state_equal


def test_folds_cover_every_row_once_in_near_equal_parts_and_are_seeded():
    folds = fold_assignment(53, 5, seed=4)
    assert sorted(np.bincount(folds)) == [10, 10, 11, 11, 11]
    assert np.array_equal(folds, fold_assignment(53, 5, seed=4))
    assert not np.array_equal(folds, fold_assignment(53, 5, seed=5))
    with pytest.raises(ValueError, match="folds"):
        fold_assignment(3, 5, seed=0)


def _noisy(mean: float, n: int = 50, seed: int = 0, spread: float = 1.0) -> np.ndarray:
    return mean + spread * np.random.default_rng(seed).standard_normal(n)


@pytest.mark.parametrize("winner", ["pretrained", "anchored", "scratch"])
def test_a_candidate_clearly_better_than_the_default_is_kept(winner):
    # A "task built for" each candidate: its out-of-fold scores beat the default's on every row by 1 nat.
    base = _noisy(-1.0)
    scores = {name: base + (1.0 if name == winner else -0.05 * i) for i, name in enumerate(CANDIDATES)}
    scores["fine-tuned"] = base
    choice = choose(scores, default="fine-tuned", margin=0.1)
    assert choice.kept == winner and "clearly better" in choice.reason
    assert choice.scores[winner]["vs_default_lower"] > 0.1


def test_a_difference_inside_the_noise_keeps_the_default():
    # Independent noise of 1 nat per row over 50 rows: a mean lead of 0.1 is well inside it.
    scores = {"fine-tuned": _noisy(-1.0, seed=1), "scratch": _noisy(-0.9, seed=2),
              "pretrained": _noisy(-1.2, seed=3)}
    choice = choose(scores, default="fine-tuned", margin=0.0)
    assert choice.kept == "fine-tuned" and "kept the default" in choice.reason
    assert choice.scores["scratch"]["vs_default_mean"] > 0  # it led, but not clearly


def test_the_margin_and_exclusions_are_respected():
    base = _noisy(-1.0, spread=0.1)
    scores = {"fine-tuned": base, "scratch": base + 0.3, "anchored": base + 0.2}
    assert choose(scores, default="fine-tuned", margin=0.0).kept == "scratch"
    assert choose(scores, default="fine-tuned", margin=0.5).kept == "fine-tuned"
    excluded = choose(scores, default="fine-tuned", margin=0.0, miscalibrated={"scratch": "over-confident"})
    assert excluded.kept == "anchored" and "over-confident" in excluded.reason
    with pytest.raises(ValueError, match="default"):
        choose({"scratch": base}, default="fine-tuned", margin=0.0)


def test_a_miscalibrated_default_loses_to_a_calibrated_candidate_of_similar_score():
    scores = {"fine-tuned": _noisy(-1.0, seed=1), "anchored": _noisy(-1.05, seed=2),
              "scratch": _noisy(-1.5, seed=3)}  # not clearly worse, but half a nat lower: not similar
    choice = choose(scores, default="fine-tuned", margin=0.5, miscalibrated={"fine-tuned": "biased"})
    assert choice.kept == "anchored" and "biased out of fold" in choice.reason
    # Clearly worse (scratch) does not replace it, nor does another miscalibrated one.
    both = choose(scores, default="fine-tuned", margin=0.5, miscalibrated={"fine-tuned": "biased",
                                                                          "anchored": "over-confident"})
    assert both.kept == "fine-tuned"


def _pretrained(seed: int = 0):
    theta = sample_prior(600, seed=seed)
    return train_npe(make_prior(), theta, simulate_lf(theta, seed=seed), estimator=TINY, training=QUICK)


def _fold_estimators(pretrained, data_seed: int):
    """20 HF rows in 4 folds and the 4 fine-tunings that each left one fold out (3 epochs)."""
    theta = sample_prior(20, seed=data_seed)
    x = simulate_hf(theta, seed=data_seed)
    folds = fold_assignment(20, 4, seed=0)
    training = TrainingConfig(max_num_epochs=3, seed=1)
    return theta, x, folds, [fine_tune(pretrained, theta[folds != k], x[folds != k], training=training) for k in range(4)]


def test_out_of_fold_scores_come_from_the_estimator_that_did_not_see_the_row():
    pretrained = _pretrained()
    theta, x, folds, estimators = _fold_estimators(pretrained, 7)
    scores = out_of_fold_scores(estimators, theta, x, folds)
    for k in range(4):
        assert np.allclose(scores[folds == k], log_q(estimators[k], theta[folds == k], x[folds == k]))
    assert not np.allclose(scores, log_q(estimators[0], theta, x))


def test_cross_validation_is_seeded_and_leaves_the_pretrained_estimator_untouched():
    pretrained = _pretrained()
    before = {k: v.clone() for k, v in pretrained.network.state_dict().items()}
    theta = sample_prior(20, seed=8)
    x = simulate_hf(theta, seed=8)
    folds = fold_assignment(20, 4, seed=1)
    anchored = CANDIDATES["anchored"]
    a = cross_validate(pretrained, theta, x, folds, candidates=["pretrained", anchored], seed=3, max_num_epochs=5)
    b = cross_validate(pretrained, theta, x, folds, candidates=["pretrained", anchored], seed=3, max_num_epochs=5)
    assert np.array_equal(a.scores["anchored"], b.scores["anchored"])
    assert all(state_equal(m, n) for m, n in zip([e.network for e in a.fold_estimators["anchored"]],
                                                  [e.network for e in b.fold_estimators["anchored"]]))
    assert all(torch.equal(before[k], v) for k, v in pretrained.network.state_dict().items())
    # The pretrained estimator is one estimator, not a mixture of copies; it scores every row itself.
    assert a.fold_ensemble("pretrained") is pretrained
    assert np.allclose(a.scores["pretrained"], log_q(pretrained, theta, x))
    assert len(a.fold_ensemble("anchored")) == 4

def test_the_kept_form_stops_each_member_on_its_own_fold():
    pretrained = _pretrained()
    theta = sample_prior(20, seed=8)
    x = simulate_hf(theta, seed=8)
    folds = fold_assignment(20, 4, seed=1)
    kept = fold_stopped_ensemble("fine-tuned", pretrained, theta, x, folds, seed=3, max_num_epochs=6)
    assert len(kept) == 4
    # Member k trained on the other folds' rows and stopped on fold k: its best validation loss is its
    # mean -log q on fold k (with the scoring's internal split it would be on rows of the other folds).
    for k, member in enumerate(kept.members):
        assert member.num_simulations == int((folds != k).sum())
        assert member.best_validation_loss == pytest.approx(-log_q(member, theta[folds == k], x[folds == k]).mean(),
                                                            rel=1e-4, abs=1e-4)
    assert fold_stopped_ensemble("pretrained", pretrained, theta, x, folds) is pretrained


def test_an_anchored_fine_tuning_stays_nearer_the_pretrained_weights():
    pretrained = _pretrained()
    theta = sample_prior(40, seed=9)
    x = simulate_hf(theta, seed=9)

    def distance(training):
        tuned = fine_tune(pretrained, theta, x, training=training)
        return sum(float(((p - q) ** 2).sum()) for p, q in zip(tuned.network.parameters(),
                                                               pretrained.network.parameters()))

    free = distance(TrainingConfig(max_num_epochs=15, seed=2, learning_rate=1e-3))
    anchored = distance(TrainingConfig(max_num_epochs=15, seed=2, learning_rate=1e-3, anchor_penalty=10.0))
    assert anchored < 0.5 * free
    with pytest.raises(ValueError, match="anchor_penalty"):
        TrainingConfig(anchor_penalty=-1.0)


ORDER = ["pretrained", "anchored", "fine-tuned", "scratch"]


def test_nearest_first_steps_only_on_a_clear_gain_over_the_candidate_it_holds():
    base = _noisy(-1.0, spread=0.1)
    # Each step clear (0.5 nats per row over the one before): the walk ends at the farthest.
    clear = {name: base + 0.5 * i for i, name in enumerate(ORDER)}
    assert choose_nearest(clear, order=ORDER, margin=0.25).kept == "scratch"
    # A lead inside the margin keeps the nearer one, even where the farther one's mean is higher.
    near = {"pretrained": base, "anchored": base + 0.1, "fine-tuned": base + 0.2, "scratch": base + 0.2}
    choice = choose_nearest(near, order=ORDER, margin=0.25)
    assert choice.kept == "pretrained" and choice.default == "pretrained"
    assert "anchored vs pretrained +0.100" in choice.reason
    # Compared with the held candidate, not the start: fine-tuned clears pretrained but not anchored.
    chain = {"pretrained": base, "anchored": base + 1.0, "fine-tuned": base + 1.1, "scratch": base - 1.0}
    assert choose_nearest(chain, order=ORDER, margin=0.25).kept == "anchored"


def test_nearest_first_leaves_a_miscalibrated_end_only_for_a_candidate_of_about_its_score():
    base = _noisy(-1.0, spread=0.1)
    # The walk ends at fine-tuned (over-confident); anchored scores a nat lower: not about as well, so it stays.
    scores = {"pretrained": base, "anchored": base + 1.0, "fine-tuned": base + 2.0, "scratch": base}
    kept = choose_nearest(scores, order=ORDER, margin=0.25, miscalibrated={"fine-tuned": "over-confident"})
    assert kept.kept == "fine-tuned" and "over-confident" in kept.reason
    # Near ones miscalibrated do not make the walk compare a far one with the start (OU2 development seed 10:
    # from scratch 13 nats above the pretrained estimator, a nat below the fine-tunings).
    far = {"pretrained": base - 13.0, "anchored": base, "fine-tuned": base, "scratch": base - 1.0}
    assert choose_nearest(far, order=ORDER, margin=0.25,
                          miscalibrated={"anchored": "biased", "fine-tuned": "biased"}).kept == "anchored"
    # The start miscalibrated, nothing clearly better: a candidate of about its score that is not replaces it.
    flat = {"pretrained": _noisy(-1.0, seed=1), "anchored": _noisy(-1.05, seed=2), "fine-tuned": _noisy(-3.0, seed=3),
            "scratch": _noisy(-3.0, seed=4)}
    assert choose_nearest(flat, order=ORDER, margin=0.5, miscalibrated={"pretrained": "biased"}).kept == "anchored"
    with pytest.raises(ValueError, match="order"):
        choose_nearest(flat, order=["pretrained", "elsewhere"], margin=0.25)


def test_stacking_weights_go_to_the_candidate_that_scores_every_row_best_and_mix_complementary_ones():
    rng = np.random.default_rng(0)
    good, bad = rng.normal(0.0, 0.1, 200), rng.normal(-5.0, 0.1, 200)
    weights = stacking_weights({"good": good, "bad": bad})
    assert weights["good"] > 0.99 and sum(weights.values()) == pytest.approx(1.0)
    # Each candidate right on its own half of the rows: the mixture needs both, about equally.
    half = np.arange(200) < 100
    a, b = np.where(half, 0.0, -8.0), np.where(half, -8.0, 0.0)
    weights = stacking_weights({"a": a, "b": b})
    assert weights["a"] == pytest.approx(0.5, abs=0.01)
    mixed = np.logaddexp(np.log(weights["a"]) + a, np.log(weights["b"]) + b).mean()
    assert mixed > max(a.mean(), b.mean()) + 3.0


def test_out_of_fold_calibration_samples_each_row_from_the_estimator_that_did_not_train_on_it():
    pretrained = _pretrained()
    theta, x, folds, estimators = _fold_estimators(pretrained, 5)
    first = out_of_fold_calibration(estimators, theta, x, folds, draws=50, seed=3)
    again = out_of_fold_calibration(estimators, theta, x, folds, draws=50, seed=3)
    assert first.verdict == again.verdict and np.array_equal(first.ranks, again.ranks)
    assert np.asarray(first.ranks).shape[0] == 20
    # Every row from the one pretrained estimator instead: other draws, so other ranks.
    assert not np.array_equal(out_of_fold_calibration([pretrained] * 4, theta, x, folds, draws=50, seed=3).ranks,
                              first.ranks)
    assert out_of_fold_calibration(estimators, theta[:1], x[:1], folds[:1], draws=50, seed=3) is None


def test_an_ensembles_weights_reach_sbis_mixture_and_are_checked():
    from mfsbi.inference import Ensemble

    members = [_pretrained(seed=0), _pretrained(seed=1)]
    assert Ensemble(members).posterior()._weights.tolist() == pytest.approx([0.5, 0.5])
    assert Ensemble(members, [3.0, 1.0]).posterior()._weights.tolist() == pytest.approx([0.75, 0.25])
    for bad in ([1.0], [-1.0, 2.0], [0.0, 0.0]):
        with pytest.raises(ValueError, match="weights"):
            Ensemble(members, bad)


def test_a_mixtures_out_of_fold_score_and_draws_follow_its_weights():
    from mfsbi.inference.selection import _allocate, mixture_scores

    a, b = np.log(np.array([0.5, 0.1])), np.log(np.array([0.1, 0.5]))
    mixed = mixture_scores({"a": a, "b": b, "c": a - 50}, {"a": 0.75, "b": 0.25, "c": 0.0})
    assert np.allclose(np.exp(mixed), [0.75 * 0.5 + 0.25 * 0.1, 0.75 * 0.1 + 0.25 * 0.5])
    assert _allocate(200, {"a": 0.75, "b": 0.25}) == {"a": 150, "b": 50}
    counts = _allocate(7, {"a": 0.5, "b": 0.3, "c": 0.2})
    assert sum(counts.values()) == 7 and counts == {"a": 4, "b": 2, "c": 1}

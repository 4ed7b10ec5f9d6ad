"""Tests of mfsbi.inference on a tiny self-contained 2-D toy (no mfsbi.simulators on purpose).

Toy: theta = (mu, sigma) ~ U([0.1, 3] x [0.1, 0.6]). HF x: 10 values mu + 0.5 + sigma * e with e a
stationary AR(1) (rho 0.6); LF x: 10 i.i.d. N(mu, sigma^2). LF misses both the offset and the
correlation, as an OU-like pair does.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import pickle

import numpy as np
import pytest
import torch
from sbi.utils import BoxUniform

from mfsbi.inference import (
    EstimatorConfig,
    TrainedEstimator,
    TrainingConfig,
    build_network,
    c2st,
    estimator_from_bytes,
    estimator_to_bytes,
    fine_tune,
    load_estimator,
    mmd_squared,
    nltp,
    nrmse,
    pretrain,
    save_estimator,
    train_npe,
    x_standardizer,
)

torch.set_num_threads(1)

from toy import HIGH, LOW, QUICK, TINY, make_prior, sample_prior, simulate_hf, simulate_lf, state_equal  # noqa: E402


@pytest.fixture(scope="module")
def prior() -> BoxUniform:
    return make_prior()


@pytest.fixture(scope="module")
def lf_data() -> tuple[np.ndarray, np.ndarray]:
    theta = sample_prior(400, seed=1)
    return theta, simulate_lf(theta, seed=1)


@pytest.fixture(scope="module")
def hf_data() -> tuple[np.ndarray, np.ndarray]:
    theta = sample_prior(60, seed=2)
    return theta, simulate_hf(theta, seed=2)


@pytest.fixture(scope="module")
def pretrained(prior, lf_data) -> TrainedEstimator:
    return pretrain(prior, *lf_data, estimator=TINY, training=QUICK)


# --------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model": "made"}, "model"),
        ({"hidden_features": 0}, "hidden_features"),
        ({"num_transforms": 2.0}, "num_transforms"),
        ({"num_bins": True}, "num_bins"),
        ({"z_score_x": "zscore"}, "z_score_x"),
        ({"theta_transform": "sigmoid"}, "theta_transform"),
    ],
)
def test_estimator_config_rejects(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EstimatorConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"validation_fraction": 0.0}, "validation_fraction"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"stop_after_epochs": 0}, "stop_after_epochs"),
        ({"clip_max_norm": 0.0}, "clip_max_norm"),
        ({"max_num_epochs": 0}, "max_num_epochs"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_training_config_rejects(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainingConfig(**kwargs)


def test_configs_round_trip_through_json():
    for config in (EstimatorConfig(num_bins=10), TrainingConfig(clip_max_norm=None, seed=7)):
        data = json.loads(json.dumps(config.to_dict()))
        assert type(config).from_dict(data) == config
    with pytest.raises(ValueError, match="unknown"):
        TrainingConfig.from_dict({"batch_size": 10, "lr": 1e-3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainingConfig().seed = 3  # type: ignore[misc]


def test_defaults_are_the_papers():
    e, t = EstimatorConfig(), TrainingConfig()
    assert (e.model, e.hidden_features, e.num_transforms, e.num_bins) == ("zuko_nsf", 50, 5, 8)
    assert (e.z_score_x, e.theta_transform) == ("independent", "logit")
    assert (t.batch_size, t.learning_rate, t.validation_fraction) == (200, 5e-4, 0.1)
    assert (t.stop_after_epochs, t.clip_max_norm) == (20, 5.0)


def test_default_network_builds(prior, hf_data):
    theta, x = hf_data
    network = build_network(prior, theta, x)
    transforms = network.net.transform.transforms
    # One theta transform onto the prior's support, then the 5 spline transforms.
    assert len(transforms) == 1 + 5
    assert x_standardizer(network) is not None
    lp = network.log_prob(torch.tensor(theta[None, :5], dtype=torch.float32), torch.tensor(x[:5], dtype=torch.float32))
    assert lp.shape == (1, 5) and torch.isfinite(lp).all()


def test_train_rejects_bad_shapes(prior, hf_data):
    theta, x = hf_data
    with pytest.raises(ValueError, match="rows"):
        train_npe(prior, theta[:10], x[:9], estimator=TINY, training=QUICK)
    with pytest.raises(ValueError, match="event_shape"):
        train_npe(prior, theta[:, :1], x, estimator=TINY, training=QUICK)
    with pytest.raises(ValueError, match="validation"):
        train_npe(prior, theta[:1], x[:1], estimator=TINY, training=QUICK)


# --------------------------------------------------------------------------------- training


def test_training_is_seeded_and_leaves_the_global_rng_alone(prior, lf_data, pretrained):
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    again = pretrain(prior, *lf_data, estimator=TINY, training=QUICK)
    assert torch.equal(torch.rand(3), expected_next)  # fork_rng restored the caller's stream
    assert state_equal(again.network, pretrained.network)

    other = pretrain(prior, *lf_data, estimator=TINY, training=dataclasses.replace(QUICK, seed=1))
    assert not state_equal(other.network, pretrained.network)

    theta, x = lf_data
    lp_a = pretrained.posterior().log_prob(torch.tensor(theta[:5], dtype=torch.float32), x=torch.tensor(x[0]), norm_posterior=False)
    lp_b = again.posterior().log_prob(torch.tensor(theta[:5], dtype=torch.float32), x=torch.tensor(x[0]), norm_posterior=False)
    assert torch.equal(lp_a, lp_b)


def test_trained_estimator_records_its_run(pretrained, lf_data):
    assert pretrained.theta_dim == 2 and pretrained.x_dim == 10
    assert pretrained.num_simulations == len(lf_data[0])
    assert pretrained.epochs >= 1 and len(pretrained.validation_losses) == pretrained.epochs
    assert pretrained.best_validation_loss == pytest.approx(min(pretrained.validation_losses))
    assert pretrained.seconds > 0


def test_failed_simulations_are_dropped(prior, lf_data):
    theta, x = lf_data
    x = x.copy()
    x[:7] = np.nan
    trained = train_npe(prior, theta, x, estimator=TINY, training=TrainingConfig(max_num_epochs=1))
    assert trained.num_simulations == len(theta) - 7
    assert all(torch.isfinite(p).all() for p in trained.network.parameters())


def test_logit_transform_keeps_all_mass_inside_the_prior(prior, pretrained):
    # The raw flow, not the DirectPosterior (which would hide leakage by rejection sampling).
    x_edge = torch.tensor(simulate_lf(np.array([[0.1, 0.1]]), seed=5), dtype=torch.float32)
    with torch.no_grad():
        samples = pretrained.network.sample((4000,), condition=x_edge).reshape(-1, 2)
    low, high = torch.tensor(LOW), torch.tensor(HIGH)
    assert ((samples >= low) & (samples <= high)).all()
    posterior = pretrained.posterior()
    outside = torch.tensor([[0.05, 0.3], [1.0, 0.7]])
    assert torch.isinf(posterior.log_prob(outside, x=x_edge[0], norm_posterior=False)).all()
    drawn = posterior.sample((200,), x=x_edge[0], show_progress_bars=False)
    assert ((drawn >= low) & (drawn <= high)).all()


# --------------------------------------------------------------------------------- fine-tuning


def test_fine_tune_trains_a_copy_with_hf_zscoring(pretrained, hf_data):
    theta_hf, x_hf = hf_data
    before = {k: v.clone() for k, v in pretrained.network.state_dict().items()}
    tuned = fine_tune(pretrained, theta_hf, x_hf, training=QUICK)

    # The pretrained estimator is untouched; the tuned one moved (every weight was trainable).
    assert all(torch.equal(before[k], v) for k, v in pretrained.network.state_dict().items())
    assert tuned.network is not pretrained.network
    assert all(p.requires_grad for p in tuned.network.parameters())
    changed = [k for k, v in tuned.network.state_dict().items() if "hyper" in k and not torch.equal(v, before[k])]
    assert changed

    # The x z-scoring is refitted on the HF data (sbi's estimator: torch.std, unbiased).
    standardize = x_standardizer(tuned.network)
    x_t = torch.tensor(x_hf, dtype=torch.float32)
    torch.testing.assert_close(standardize._mean, x_t.mean(0))
    torch.testing.assert_close(standardize._std, x_t.std(0))
    assert not torch.allclose(x_standardizer(pretrained.network)._mean, standardize._mean)

    # The theta transform is still the prior's.
    probe = torch.tensor([[0.2, 0.15], [1.5, 0.35], [2.9, 0.55]])
    t_pre = pretrained.network.net.transform.transforms[0]()
    t_new = tuned.network.net.transform.transforms[0]()
    torch.testing.assert_close(t_pre(probe), t_new(probe))
    assert tuned.estimator == pretrained.estimator and tuned.training == QUICK


def test_fine_tune_can_keep_the_lf_zscoring(pretrained, hf_data):
    tuned = fine_tune(pretrained, *hf_data, training=QUICK, refit_x_zscore=False)
    lf_standardize, standardize = x_standardizer(pretrained.network), x_standardizer(tuned.network)
    assert torch.equal(standardize._mean, lf_standardize._mean)
    assert torch.equal(standardize._std, lf_standardize._std)


def test_fine_tune_rejects_other_x_dim(pretrained, hf_data):
    theta, x = hf_data
    with pytest.raises(ValueError, match="columns"):
        fine_tune(pretrained, theta, x[:, :5], training=QUICK)


# --------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path, prior, pretrained, hf_data):
    theta, x = hf_data
    path = tmp_path / "estimator.pt"
    save_estimator(pretrained, path, metadata={"task": "toy", "fidelity": "lf", "n": [1, 2]})
    loaded = load_estimator(path, prior)
    assert state_equal(loaded.network, pretrained.network)
    assert (loaded.estimator, loaded.training) == (pretrained.estimator, pretrained.training)
    assert loaded.epochs == pretrained.epochs
    assert loaded.validation_losses == pytest.approx(pretrained.validation_losses)

    theta_t, x_t = torch.tensor(theta[:20], dtype=torch.float32), torch.tensor(x[:20], dtype=torch.float32)
    assert torch.equal(
        loaded.posterior().log_prob_batched(theta_t, x=x_t, norm_posterior=False),
        pretrained.posterior().log_prob_batched(theta_t, x=x_t, norm_posterior=False),
    )

    # Plain data only: it loads with weights_only=True without any allow-listing.
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "mfsbi-estimator" and raw["version"] == 1
    assert raw["metadata"]["user"] == {"task": "toy", "fidelity": "lf", "n": [1, 2]}
    assert raw["metadata"]["prior_low"] == pytest.approx(LOW)

    blob = estimator_to_bytes(pretrained)
    assert isinstance(blob, bytes)
    from_bytes = estimator_from_bytes(blob, prior)
    assert state_equal(from_bytes.network, pretrained.network)
    assert state_equal(load_estimator(io.BytesIO(blob), prior).network, pretrained.network)


class _Payload:
    def __reduce__(self):  # would run code if unpickled without weights_only
        return (print, ("arbitrary code ran",))


def test_checkpoint_rejects_foreign_and_unsafe_files(tmp_path, prior, pretrained):
    unsafe = io.BytesIO()
    torch.save({"format": "mfsbi-estimator", "version": 1, "object": _Payload()}, unsafe)
    with pytest.raises(ValueError, match="not a loadable"):
        load_estimator(unsafe.getvalue(), prior)

    foreign = io.BytesIO()
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="format"):
        load_estimator(foreign.getvalue(), prior)

    with pytest.raises(ValueError):
        load_estimator(b"definitely not a checkpoint", prior)
    truncated = estimator_to_bytes(pretrained)[:200]
    with pytest.raises(ValueError):
        load_estimator(truncated, prior)

    plain_pickle = tmp_path / "x.pkl"
    plain_pickle.write_bytes(pickle.dumps({"format": "mfsbi-estimator"}))
    with pytest.raises(ValueError):
        load_estimator(plain_pickle, prior)

    other_prior = BoxUniform(torch.tensor([0.0, 0.1]), torch.tensor([3.0, 0.6]))
    with pytest.raises(ValueError, match="support"):
        load_estimator(estimator_to_bytes(pretrained), other_prior)

    with pytest.raises(ValueError, match="cannot be stored"):
        save_estimator(pretrained, io.BytesIO(), metadata={"bad": object()})


# --------------------------------------------------------------------------------- metrics


def test_c2st_sanity():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((500, 2)), rng.standard_normal((500, 2))
    assert abs(c2st(a, b) - 0.5) < 0.08
    assert c2st(a, b + 5.0) > 0.98
    assert c2st(a, b, seed=3) == c2st(a, b, seed=3)


def test_mmd_squared_sanity():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 2))
    assert mmd_squared(a, a) == pytest.approx(0.0, abs=1e-12)
    values = [mmd_squared(a, a + shift) for shift in (0.25, 0.5, 1.0, 2.0)]
    assert all(later > earlier for earlier, later in zip(values, values[1:]))
    # Against the definition, fixed bandwidth, all pairs at once.
    b = rng.standard_normal((200, 2)) + 0.3
    k = lambda u, v: np.exp(-((u[:, None] - v[None]) ** 2).sum(-1) / (2 * 0.7**2))  # noqa: E731
    direct = k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()
    assert mmd_squared(a, b, bandwidth=0.7, chunk=64) == pytest.approx(direct, rel=1e-9)


def test_nrmse_sanity():
    theta_o = np.array([1.0, 0.3])
    assert nrmse(np.tile(theta_o, (50, 1)), theta_o, LOW, HIGH) == 0.0
    # Samples at theta_o +- delta: RMSE delta per dimension, divided by the prior width.
    delta = np.array([0.29, 0.05])
    samples = np.stack([theta_o + delta, theta_o - delta])
    expected = np.mean(delta / (np.array(HIGH) - np.array(LOW)))
    assert nrmse(samples, theta_o, LOW, HIGH) == pytest.approx(expected)
    batched = nrmse(np.stack([samples, samples]), np.stack([theta_o, theta_o]), LOW, HIGH)
    assert batched == pytest.approx(expected)


def test_nltp_matches_per_observation_log_prob(pretrained, hf_data):
    theta, x = hf_data
    posterior = pretrained.posterior()
    manual = -np.mean(
        [
            float(posterior.log_prob(torch.tensor(theta[i : i + 1], dtype=torch.float32), x=torch.tensor(x[i], dtype=torch.float32), norm_posterior=False))
            for i in range(8)
        ]
    )
    assert nltp(posterior, theta[:8], x[:8]) == pytest.approx(manual, rel=1e-5)
    assert nltp(posterior, theta[:8], x[:8], batch_size=3) == pytest.approx(manual, rel=1e-5)
    assert math.isfinite(nltp(posterior, theta[:2], x[:2], norm_posterior=True))


# --------------------------------------------------------------------------------- science


def _mf_vs_npe(num_lf: int, num_hf: int, seeds: tuple[int, ...], estimator: EstimatorConfig):
    prior = make_prior()
    theta_test = sample_prior(300, seed=123)
    x_test = simulate_hf(theta_test, seed=123)
    results = []
    for seed in seeds:
        theta_lf, theta_hf = sample_prior(num_lf, 1000 + seed), sample_prior(num_hf, 2000 + seed)
        x_lf, x_hf = simulate_lf(theta_lf, 1000 + seed), simulate_hf(theta_hf, 2000 + seed)
        training = TrainingConfig(seed=seed)
        lf = pretrain(prior, theta_lf, x_lf, estimator=estimator, training=training)
        mf = fine_tune(lf, theta_hf, x_hf, training=training)
        npe = train_npe(prior, theta_hf, x_hf, estimator=estimator, training=training)
        results.append((nltp(mf.posterior(), theta_test, x_test), nltp(npe.posterior(), theta_test, x_test)))
    return np.array(results)


@pytest.mark.slow
def test_mf_npe_beats_npe_on_few_hf_simulations():
    """PAPER.md: pretraining on cheap LF pairs lowers the NLTP reached with few HF pairs."""
    results = _mf_vs_npe(num_lf=2000, num_hf=50, seeds=(0, 1, 2), estimator=EstimatorConfig())
    print("NLTP per seed (MF-NPE, NPE):", results.round(3).tolist())
    mf, npe = results.mean(axis=0)
    assert mf < npe - 0.1


def test_mf_npe_beats_npe_quick():
    """A one-seed, 1 000-LF version of the slow test below, for the default suite (~5 s)."""
    (mf, npe), = _mf_vs_npe(num_lf=1000, num_hf=50, seeds=(0,), estimator=EstimatorConfig())
    assert mf < npe


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_train_fine_tune_and_checkpoint(lf_data, hf_data):
    prior = BoxUniform(torch.tensor(LOW), torch.tensor(HIGH), device="cuda")
    lf = pretrain(prior, *lf_data, estimator=TINY, training=QUICK, device="cuda")
    tuned = fine_tune(lf, *hf_data, training=QUICK, device="cuda")
    assert tuned.device.type == "cuda"
    x_o = torch.tensor(hf_data[1][0], dtype=torch.float32, device="cuda")
    samples = tuned.posterior().sample((100,), x=x_o, show_progress_bars=False)
    assert samples.shape == (100, 2)
    assert math.isfinite(nltp(tuned.posterior(), *hf_data))
    loaded = estimator_from_bytes(estimator_to_bytes(tuned), prior, device="cuda")
    assert state_equal(loaded.network, tuned.network)

"""The SLCP, SIR and GaussianBlob tasks: simulators against their closed forms, the SLCP reference
against brute-force importance sampling, the SIR solver against solve_ivp."""

import pickle

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.integrate import solve_ivp

from mfsbi.simulators import Task
from mfsbi.simulators.gaussian_blob import (
    GaussianBlobHighFidelity,
    GaussianBlobLowFidelity,
    bilinear_upsample,
    blob_probability,
    gaussian_blob,
)
from mfsbi.simulators.sir import (
    OBSERVATION_DAYS,
    POPULATION,
    SILowFidelity,
    SIRCoarseLowFidelity,
    SIRHighFidelity,
    euler_sir,
    rk4_sir,
    si_infected,
    sir,
)
from mfsbi.simulators.slcp import (
    SLCPHighFidelity,
    SLCPLowFidelity,
    SLCPReferencePosterior,
    log_likelihood,
    slcp,
)


@pytest.fixture(scope="module")
def tasks() -> dict[str, Task]:
    # GaussianBlob at 64 x 64 with an 8 x 8 LF keeps the generic checks fast.
    return {"slcp": slcp(), "sir": sir(), "sir-coarse": sir(lf="coarse-sir"), "blob": gaussian_blob(64, 8)}


# Generic contract


@pytest.mark.parametrize("name", ["slcp", "sir", "sir-coarse", "blob"])
@pytest.mark.parametrize("fidelity", ["lf", "hf"])
def test_shapes_dtype_determinism(tasks, name, fidelity):
    task = tasks[name]
    simulator = task.simulator(fidelity)
    n = 20
    theta = task.sample_prior(n, seed=0)
    x = simulator(theta, seed=1)
    assert x.shape == (n, task.x_dim) and x.dtype == np.float64 and np.all(np.isfinite(x))
    np.testing.assert_array_equal(x, simulator(theta, seed=1))
    # Another seed gives other noise (SIR's day-0 count is almost always 0, so compare rows).
    assert not np.array_equal(x, simulator(theta, seed=2))
    assert np.mean(np.all(x == simulator(theta, seed=2), axis=1)) < 0.5
    # The pipeline ships simulators to worker processes.
    np.testing.assert_array_equal(x, pickle.loads(pickle.dumps(simulator))(theta, seed=1))
    assert simulator(theta[:0], seed=1).shape == (0, task.x_dim)
    with pytest.raises(ValueError, match="shape"):
        simulator(theta[0], seed=0)
    with pytest.raises(ValueError, match="shape"):
        simulator(np.ones((3, task.theta_dim + 1)), seed=0)


@pytest.mark.parametrize("name", ["slcp", "sir", "sir-coarse", "blob"])
@pytest.mark.parametrize("fidelity", ["lf", "hf"])
def test_nan_parameter_fails_its_row_only(tasks, name, fidelity):
    task = tasks[name]
    simulator = task.simulator(fidelity)
    theta = task.sample_prior(4, seed=21)
    broken = theta.copy()
    used = task.low_fidelity_parameters if fidelity == "lf" else range(task.theta_dim)
    broken[1, list(used)[-1]] = np.nan
    y = simulator(broken, seed=22)
    assert y.shape == (4, task.x_dim) and np.all(np.isnan(y[1]))
    # The other rows still simulate (their values may differ: binomial draws consume a
    # p-dependent amount of the batch's random stream).
    assert np.all(np.isfinite(np.delete(y, 1, axis=0)))


def test_task_metadata(tasks):
    assert tasks["slcp"].low_fidelity_parameters == (2, 3, 4) and "exact" in tasks["slcp"].references
    assert tasks["sir"].low_fidelity_parameters == (0,) and tasks["sir"].references == {}
    assert tasks["sir-coarse"].low_fidelity_parameters == (0, 1)
    paper = gaussian_blob()
    assert paper.name == "gaussian-blob" and paper.x_dim == 65536 and paper.x_shape == (256, 256)
    assert paper.embedding == "cnn"
    for task in (tasks["slcp"], tasks["sir"], paper):
        assert set(task.cost_seconds) == {"lf", "hf"} and task.cost_seconds["hf"] >= task.cost_seconds["lf"] > 0
    # The SIR prior is positive and unbounded: sbi's transform for it is a log, not a logit.
    support = tasks["sir"].prior.support
    assert isinstance(support, torch.distributions.constraints.independent)
    assert support.base_constraint is torch.distributions.constraints.positive
    with pytest.raises(ValueError, match="lf"):
        sir(lf="euler")  # type: ignore[arg-type]


def test_lf_ignores_hf_only_parameters(tasks):
    for name, ignored in (("slcp", [0, 1]), ("sir", [1])):
        task = tasks[name]
        theta = task.sample_prior(50, seed=3)
        other = theta.copy()
        other[:, ignored] = task.sample_prior(50, seed=4)[:, ignored]
        np.testing.assert_array_equal(task.low_fidelity(theta, 5), task.low_fidelity(other, 5))


# SLCP


def slcp_covariance(theta):
    s1, s2, rho = theta[2] ** 2, theta[3] ** 2, np.tanh(theta[4])
    return np.array([[s1 * s1, rho * s1 * s2], [rho * s1 * s2, s2 * s2]])


@pytest.mark.parametrize("theta", [(1.0, -2.0, 1.3, -0.8, 0.9), (-0.5, 2.5, -1.7, 1.1, -1.6)])
def test_slcp_moments(theta):
    n = 50_000
    thetas = np.tile([theta], (n, 1))
    cov = slcp_covariance(theta)
    for simulator, mean in ((SLCPHighFidelity(), np.array(theta[:2])), (SLCPLowFidelity(), np.zeros(2))):
        points = simulator(thetas, seed=6).reshape(n * 4, 2)
        se = np.sqrt(np.diag(cov) / points.shape[0])
        assert np.all(np.abs(points.mean(0) - mean) < 5 * se)
        empirical = np.cov(points.T)
        # Var of a sample covariance entry: (S_ij^2 + S_ii S_jj) / m.
        se_cov = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / points.shape[0])
        assert np.all(np.abs(empirical - cov) < 5 * se_cov)
    # The 4 draws of a row are independent.
    x = SLCPHighFidelity()(thetas, seed=7)
    assert abs(np.corrcoef(x[:, 0], x[:, 2])[0, 1]) < 5 / np.sqrt(n)


def test_slcp_log_likelihood_against_scipy():
    rng = np.random.default_rng(8)
    theta = rng.uniform(-3, 3, size=(6, 5))
    x_o = SLCPHighFidelity()(theta[:1], seed=9)[0]
    expected = [
        stats.multivariate_normal(t[:2], slcp_covariance(t)).logpdf(x_o.reshape(4, 2)).sum() for t in theta
    ]
    np.testing.assert_allclose(log_likelihood(theta, x_o), expected, rtol=1e-8)


def _features(theta):
    # The posterior is symmetric under theta_3 -> -theta_3 and theta_4 -> -theta_4: compare
    # |theta_3|, |theta_4| and the sign frequencies rather than raw means that are 0 by symmetry.
    return np.column_stack(
        [theta[:, 0], theta[:, 1], theta[:, 0] ** 2, theta[:, 1] ** 2, np.abs(theta[:, 2]), np.abs(theta[:, 3]),
         theta[:, 4], theta[:, 2] > 0, theta[:, 2] * theta[:, 3] > 0]
    )


@pytest.mark.parametrize(
    "theta_o",
    [
        (0.5, -1.0, 2.2, -1.8, 0.7),
        (1.0, -0.5, -1.5, 1.2, -0.4),
        # Near the edges of the box: the truncation of the mean, scales and correlation matters.
        (2.0, -2.0, 2.8, 2.7, 1.0),
    ],
)
def test_slcp_reference_against_importance_sampling(theta_o):
    # Brute force: self-normalised importance sampling from the prior with the exact likelihood.
    x_o = SLCPHighFidelity()(np.array([theta_o]), seed=3)[0]
    rng = np.random.default_rng(10)
    proposals = rng.uniform(-3, 3, size=(600_000, 5))
    log_w = log_likelihood(proposals, x_o)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    ess = 1.0 / np.sum(w * w)
    assert ess > 1000
    features = _features(proposals)
    is_mean = w @ features
    is_var = w @ (features - is_mean) ** 2
    num_samples = 4000
    samples, diagnostics = SLCPReferencePosterior().sample(x_o, num_samples, seed=11)
    assert samples.shape == (num_samples, 5) and np.all(np.abs(samples) <= 3)
    z = (_features(samples).mean(0) - is_mean) / np.sqrt(is_var * (1 / num_samples + 1 / ess))
    assert np.all(np.abs(z) < 4.5), z
    # The samples sit where the likelihood is high: far above prior draws.
    assert np.median(log_likelihood(samples, x_o)) > np.quantile(log_w, 0.99)


def test_slcp_reference_is_deterministic():
    x_o = SLCPHighFidelity()(np.array([[0.3, 0.2, 1.5, -1.9, 0.4]]), seed=12)[0]
    reference = SLCPReferencePosterior()
    first = reference(x_o, 200, seed=1)
    np.testing.assert_array_equal(first, reference(x_o, 200, seed=1))
    assert not np.array_equal(first, reference(x_o, 200, seed=2))
    with pytest.raises(ValueError, match="x_o"):
        reference(x_o[:6], 10, seed=0)


# SIR


def solve_ivp_infected(beta, gamma):
    def rhs(t, y):
        infections = beta * y[0] * y[1] / POPULATION
        return [-infections, infections - gamma * y[1]]

    solution = solve_ivp(rhs, (0, 160), [POPULATION - 1, 1.0], t_eval=OBSERVATION_DAYS, rtol=1e-10, atol=1e-8,
                         method="DOP853")
    return solution.y[1]


@pytest.mark.parametrize("beta, gamma", [(0.4, 0.125), (0.25, 0.1), (1.2, 0.2), (2.9, 0.125), (0.6, 0.17)])
def test_sir_rk4_against_solve_ivp(beta, gamma):
    expected = solve_ivp_infected(beta, gamma)
    actual = rk4_sir(np.array([beta]), np.array([gamma]))[0]
    relevant = expected > 1.0  # below one person the relative error says nothing
    np.testing.assert_allclose(actual[relevant], expected[relevant], rtol=1e-4)
    # Fewer than 10 people off anywhere (the Binomial sees I / N in steps of 1e-3).
    np.testing.assert_allclose(actual, expected, atol=10.0)


def test_sir_observation_mean_is_the_prevalence():
    n = 20_000
    theta = np.tile([[0.5, 0.1]], (n, 1))
    p = rk4_sir(theta[:1, 0], theta[:1, 1])[0] / POPULATION
    x = SIRHighFidelity()(theta, seed=13)
    assert np.all(np.abs(x.mean(0) - p) < 5 * np.sqrt(p * (1 - p) / (1000 * n)) + 1e-12)
    # Counts out of 1000.
    np.testing.assert_allclose(x * 1000, np.round(x * 1000), atol=1e-9)


def test_sir_larger_beta_gives_earlier_higher_peak():
    days = np.arange(161)
    infected = rk4_sir(np.array([0.3, 0.5, 0.9]), np.full(3, 0.125), days)
    peak_day, peak = infected.argmax(1), infected.max(1)
    assert np.all(np.diff(peak_day) < 0) and np.all(np.diff(peak) > 0)
    # The same seen through the noisy simulator, averaged over rows.
    x = SIRHighFidelity()(np.repeat([[0.3, 0.125], [0.9, 0.125]], 200, axis=0), seed=14)
    low, high = x[:200].mean(0), x[200:].mean(0)
    assert high.argmax() < low.argmax() and high.max() > low.max()


def test_sir_low_fidelity_choices():
    beta, gamma = np.array([0.4, 0.8]), np.array([0.125, 0.2])
    days = np.arange(161)
    # SI: the logistic solution, rising to the whole population.
    si = si_infected(beta, days)
    assert np.all(np.diff(si, axis=1) >= 0) and si[0, -1] > 0.99 * POPULATION
    assert si[0, 0] == pytest.approx(1.0)
    # It solves I' = beta I (1 - I / N): central differences at a few times.
    t, dt = np.array([5.0, 20.0, 35.0]), 1e-4
    derivative = (si_infected(beta, t + dt) - si_infected(beta, t - dt)) / (2 * dt)
    now = si_infected(beta, t)
    np.testing.assert_allclose(derivative, beta[:, None] * now * (1 - now / POPULATION), rtol=1e-5)
    # Coarse SIR: close to the exact solution, but not equal to it.
    coarse, exact = euler_sir(beta, gamma, days), rk4_sir(beta, gamma, days)
    assert np.all(np.abs(coarse.argmax(1) - exact.argmax(1)) < 15)
    assert np.all(np.abs(coarse.max(1) - exact.max(1)) < 0.15 * exact.max(1))
    assert not np.allclose(coarse, exact, rtol=1e-2)
    # Both simulators run and the task wires each in.
    theta = np.column_stack([beta, gamma])
    assert SILowFidelity()(theta, seed=0).shape == SIRCoarseLowFidelity()(theta, seed=0).shape == (2, 10)
    assert isinstance(sir().low_fidelity, SILowFidelity)
    assert isinstance(sir(lf="coarse-sir").low_fidelity, SIRCoarseLowFidelity)


# GaussianBlob


def test_blob_is_darkest_at_the_centre():
    size = 64
    theta = np.array([[20.0, 40.0, 1.0], [45.0, 12.0, 0.3], [32.0, 32.0, 1.8]])
    simulator = GaussianBlobHighFidelity(size, sigma=3.0)
    images = simulator(theta, seed=15).reshape(-1, size, size)
    for (x0, y0, _), image in zip(theta, images):
        # Smooth out the pixel noise with a 5 x 5 box filter, then find the darkest spot.
        padded = np.pad(image, 2, mode="edge")
        smooth = sum(padded[i : i + size, j : j + size] for i in range(5) for j in range(5)) / 25
        row, column = np.unravel_index(smooth.argmin(), smooth.shape)
        assert abs(column + 0.5 - x0) <= 2 and abs(row + 0.5 - y0) <= 2
    # p is 0.1 at the centre and rises to 0.9.
    p = blob_probability(np.array([10.5]), np.array([20.5]), np.array([1.0]), 32, 2.0)[0]
    assert p[20, 10] == pytest.approx(0.1) and p.argmin() == 20 * 32 + 10 and p.max() <= 0.9
    assert p[20, 10] < p[20, 11] < p[20, 12]


def test_blob_low_and_high_fidelity_correlate():
    # Paper sizes; without jitter both fidelities draw the blob at the same place.
    theta = np.array([[100.0, 150.0, 1.0], [40.0, 200.0, 0.5], [128.0, 128.0, 1.6]])
    high = GaussianBlobHighFidelity(jitter_std=0.0)(theta, seed=16)
    low = GaussianBlobLowFidelity(jitter_std=0.0)(theta, seed=16)
    for h, lo in zip(high, low):
        assert np.corrcoef(h, lo)[0, 1] > 0.5
    # A blob somewhere else does not correlate as well.
    assert np.corrcoef(high[0], low[1])[0, 1] < np.corrcoef(high[0], low[0])[0, 1] - 0.3


def test_bilinear_upsample_matches_torch_and_preserves_mean():
    images = np.random.default_rng(17).uniform(size=(3, 8, 8))
    upsampled = bilinear_upsample(images, 64)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(images)[:, None], size=(64, 64), mode="bilinear", align_corners=False
    )[:, 0].numpy()
    np.testing.assert_allclose(upsampled, expected, atol=1e-12)
    np.testing.assert_allclose(upsampled.mean(axis=(1, 2)), images.mean(axis=(1, 2)), rtol=1e-12)
    # The LF simulator's output is the upsampled small image: its 8 x 8 block means are the
    # binomial draws of the small grid, values k / 255.
    lf = GaussianBlobLowFidelity(64, 8, sigma=0.5)(np.array([[30.0, 20.0, 1.0]]), seed=18).reshape(64, 64)
    assert lf.mean() * 255 * 64 == pytest.approx(round(lf.mean() * 255 * 64), abs=1e-6)


def test_blob_values_and_blocks():
    task = gaussian_blob(32, 8)
    # More rows than one block: every block gets its own parameters and noise.
    theta = task.sample_prior(40, seed=19)
    x = task.high_fidelity(theta, seed=20)
    np.testing.assert_allclose(x * 255, np.round(x * 255), atol=1e-9)
    assert x.min() >= 0 and x.max() <= 1
    np.testing.assert_array_equal(x[17], task.high_fidelity(theta, seed=20)[17])
    assert len({row.tobytes() for row in x}) == 40

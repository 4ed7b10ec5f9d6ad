"""The OU tasks: simulators against their closed-form moments, references against brute force."""

import pickle

import numpy as np
import pytest
from scipy import stats

from mfsbi.simulators import Task, get_task
from mfsbi.simulators.ou import (
    DT,
    OUHighFidelity,
    OULowFidelity,
    OUReferencePosterior,
    PRIOR_HIGH,
    PRIOR_LOW,
    _rejection,
    log_likelihood,
    transition,
)


@pytest.fixture(scope="module")
def tasks() -> dict[int, Task]:
    return {d: get_task(f"ou{d}") for d in (2, 3, 4)}


def em_moments(mu, sigma, gamma, offset):
    """Mean and variance of X at steps 0, 10, ..., 90 of the Euler–Maruyama chain."""
    r = 1.0 - gamma * DT
    steps = 10 * np.arange(10)
    mean = mu + offset * r**steps
    var = r ** (2 * steps) + sigma**2 * DT * (1.0 - r ** (2 * steps)) / (1.0 - r**2)
    return mean, var


# Simulators


@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("fidelity", ["lf", "hf"])
def test_shapes_dtype_determinism(tasks, d, fidelity):
    task = tasks[d]
    simulator = task.simulator(fidelity)
    theta = task.sample_prior(50, seed=0)
    x = simulator(theta, seed=1)
    assert x.shape == (50, 10) and x.dtype == np.float64 and np.all(np.isfinite(x))
    np.testing.assert_array_equal(x, simulator(theta, seed=1))
    assert not np.any(x == simulator(theta, seed=2))
    # The pipeline ships simulators to worker processes.
    np.testing.assert_array_equal(x, pickle.loads(pickle.dumps(simulator))(theta, seed=1))
    # float32 input (from a torch prior) gives the same result as float64.
    np.testing.assert_array_equal(x, simulator(theta.astype(np.float32).astype(np.float64), seed=1))
    assert simulator(theta[:0], seed=1).shape == (0, 10)


@pytest.mark.parametrize("simulator", [OUHighFidelity(2), OULowFidelity(4)])
def test_bad_theta_shape(simulator):
    d = simulator.theta_dim
    with pytest.raises(ValueError, match="shape"):
        simulator(np.ones(d), seed=0)
    with pytest.raises(ValueError, match="shape"):
        simulator(np.ones((3, d + 1)), seed=0)


def test_hf_large_batch_spans_blocks():
    # Rows are simulated in blocks; every block must get its own parameters and noise.
    theta = np.tile([[1.0, 0.3, 0.5, 2.0]], (20000, 1))
    theta[10000:, 0] = 2.5
    x = OUHighFidelity(4)(theta, seed=3)
    assert len(np.unique(x[:, 5])) == len(x)
    assert abs(x[:10000, -1].mean() - 1.0) < 0.05 and abs(x[10000:, -1].mean() - 2.5) < 0.05


def test_lf_moments_and_ignored_parameters():
    n = 100_000
    theta = np.tile([[1.7, 0.35, 0.2, 3.5]], (n, 1))
    x = OULowFidelity(4)(theta, seed=4)
    se_mean = 0.35 / np.sqrt(n)
    assert np.all(np.abs(x.mean(0) - 1.7) < 5 * se_mean)
    assert np.all(np.abs(x.var(0) / 0.35**2 - 1) < 5 * np.sqrt(2 / n))
    other = theta.copy()
    other[:, 2:] = [0.9, 0.1]
    np.testing.assert_array_equal(x, OULowFidelity(4)(other, seed=4))


@pytest.mark.parametrize("theta", [(1.0, 0.5, 1.0, 3.0), (2.5, 0.15, 0.3, 0.5)])
def test_hf_moments_match_euler_maruyama(theta):
    n = 200_000
    x = OUHighFidelity(4)(np.tile([theta], (n, 1)), seed=5)
    mean, var = em_moments(*theta)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / n))
    assert np.all(np.abs(x.var(0) / var - 1) < 5 * np.sqrt(2 / n))
    # Markov structure: Cov(X_{10(k+1)}, X_{10k}) = a Var(X_{10k}), a the 10-step decay.
    a, _ = transition(np.array(theta[1]), np.array(theta[2]), "euler-maruyama")
    cov = np.mean((x[:, 1:] - x[:, 1:].mean(0)) * (x[:, :-1] - x[:, :-1].mean(0)), axis=0)
    assert np.all(np.abs(cov - a * var[:-1]) < 6 * np.sqrt(var[1:] * var[:-1] / n))


def test_hf_is_not_the_continuous_time_process():
    # The test above must be able to tell Euler–Maruyama from the exact OU transition.
    n = 200_000
    theta = (1.0, 0.5, 1.0, 3.0)
    x = OUHighFidelity(4)(np.tile([theta], (n, 1)), seed=6)
    continuous_mean = 1.0 + 3.0 * np.exp(-1.0)
    assert abs(x[:, 1].mean() - continuous_mean) > 20 * x[:, 1].std() / np.sqrt(n)


# Likelihood


@pytest.mark.parametrize("kind", ["euler-maruyama", "paper"])
def test_log_likelihood_against_scipy(kind):
    rng = np.random.default_rng(7)
    theta = PRIOR_LOW + (np.subtract(PRIOR_HIGH, PRIOR_LOW)) * rng.uniform(size=(5, 4))
    x_o = OUHighFidelity(4)(theta[:1], seed=8)[0]
    expected = []
    for mu, sigma, gamma, offset in theta:
        if kind == "paper":
            a, v = np.exp(-gamma), sigma**2 * (1 - np.exp(-2 * gamma)) / (2 * gamma)
        else:
            r = 1 - gamma * DT
            a, v = r**10, sigma**2 * DT * sum(r ** (2 * k) for k in range(10))
        value = stats.norm.logpdf(x_o[0], mu + offset, 1.0)
        value += stats.norm.logpdf(x_o[1:], mu + (x_o[:-1] - mu) * a, np.sqrt(v)).sum()
        expected.append(value)
    np.testing.assert_allclose(log_likelihood(theta, x_o, kind), expected, rtol=1e-10)
    # One x_o per row takes the other code path.
    np.testing.assert_allclose(log_likelihood(theta, np.tile(x_o, (5, 1)), kind), expected, rtol=1e-10)
    # OU2 fills in gamma = 0.5 and mu_offset = 3.
    reduced = np.column_stack([theta[:, :2], np.full(5, 0.5), np.full(5, 3.0)])
    np.testing.assert_allclose(log_likelihood(theta[:, :2], x_o, kind), log_likelihood(reduced, x_o, kind))


# References


def grid_moments(x_o, kind, size=600):
    """Posterior mean and covariance of OU2 on a fine midpoint grid over the prior box."""
    axes = [lo + (hi - lo) * (np.arange(size) + 0.5) / size for lo, hi in zip(PRIOR_LOW[:2], PRIOR_HIGH[:2])]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    log_w = log_likelihood(grid, x_o, kind)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    mean = w @ grid
    centred = grid - mean
    return mean, (w[:, None] * centred).T @ centred


@pytest.mark.parametrize("kind", ["euler-maruyama", "paper"])
def test_ou2_reference_matches_grid(tasks, kind):
    task = tasks[2]
    theta_o = np.array([[0.5, 0.15], [1.5, 0.3], [2.6, 0.55]])
    x_o = task.simulator("hf")(theta_o, seed=9)
    reference = task.references[kind]
    n = 4000
    for i in range(len(theta_o)):
        samples = reference(x_o[i], n, seed=i)
        assert samples.shape == (n, 2) and samples.dtype == np.float64
        assert np.all((samples >= PRIOR_LOW[:2]) & (samples <= PRIOR_HIGH[:2]))
        mean, cov = grid_moments(x_o[i], kind)
        sd = np.sqrt(np.diag(cov))
        assert np.all(np.abs(samples.mean(0) - mean) < 4.5 * sd / np.sqrt(n)), (samples.mean(0), mean)
        assert np.all(np.abs(samples.std(0) / sd - 1) < 0.06), (samples.std(0), sd)
        correlation = cov[0, 1] / (sd[0] * sd[1])
        assert abs(np.corrcoef(samples.T)[0, 1] - correlation) < 0.06


def test_references_are_ordered_seeded_and_picklable(tasks):
    task = tasks[3]
    assert list(task.references) == ["euler-maruyama", "paper"]
    x_o = task.simulator("hf")(np.array([[1.0, 0.3, 0.5]]), seed=10)[0]
    reference = pickle.loads(pickle.dumps(task.references["euler-maruyama"]))
    samples = reference(x_o, 300, seed=1)
    assert samples.shape == (300, 3)
    np.testing.assert_array_equal(samples, task.references["euler-maruyama"](x_o, 300, seed=1))
    assert not np.array_equal(samples, reference(x_o, 300, seed=2))
    with pytest.raises(ValueError):
        reference(x_o[:5], 10, seed=0)
    with pytest.raises(ValueError):
        OUReferencePosterior(2, kind="exact")  # type: ignore[arg-type]


def test_ou2_reference_is_calibrated(tasks):
    # Simulation-based calibration: the exact posterior of the HF simulator ranks the true
    # parameter uniformly among its samples.
    task = tasks[2]
    num_pairs, num_samples, bins = 100, 199, 10
    theta_o = task.sample_prior(num_pairs, seed=11)
    x_o = task.simulator("hf")(theta_o, seed=12)
    reference = task.references["euler-maruyama"]
    ranks = np.array(
        [(reference(x_o[i], num_samples, seed=100 + i) < theta_o[i]).sum(0) for i in range(num_pairs)]
    )
    for dim in range(2):
        counts = np.bincount(ranks[:, dim] * bins // (num_samples + 1), minlength=bins)
        assert stats.chisquare(counts).pvalue > 1e-3, counts


def test_ou4_reference_matches_importance_sampling(tasks):
    # An independent estimate of the OU4 posterior moments: self-normalised importance sampling
    # with the prior as proposal, on an observation where its effective sample size is large.
    task = tasks[4]
    x_o = task.simulator("hf")(np.array([[1.2, 0.45, 0.4, 2.0]]), seed=13)[0]
    proposals = task.sample_prior(2_000_000, seed=14)
    log_w = log_likelihood(proposals, x_o, "euler-maruyama")
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    assert 1.0 / np.sum(w**2) > 20_000
    mean = w @ proposals
    sd = np.sqrt(w @ (proposals - mean) ** 2)
    n = 4000
    samples = task.references["euler-maruyama"](x_o, n, seed=15)
    assert np.all(np.abs(samples.mean(0) - mean) < 4.5 * sd / np.sqrt(n))
    assert np.all(np.abs(samples.std(0) / sd - 1) < 0.1)


def test_rejection_recovers_from_a_missed_maximum():
    # An envelope below the true maximum must be detected and raised, not silently used.
    x_o = OUHighFidelity(2)(np.array([[1.0, 0.2]]), seed=16)[0]
    lo, width = np.array(PRIOR_LOW[:2]), np.subtract(PRIOR_HIGH[:2], PRIOR_LOW[:2])

    def log_lik(u):
        return log_likelihood(lo + width * u, x_o)

    true_max = OUReferencePosterior(2).sample(x_o, 10, seed=0)[1]["log_max"]
    _, diagnostics = _rejection(log_lik, 2, true_max - 20.0, 0.1, 500, np.random.default_rng(0))
    assert diagnostics["restarts"] >= 1
    assert diagnostics["log_envelope"] > true_max - 0.1


# Registry


@pytest.mark.parametrize("d", [2, 3, 4])
def test_registry(tasks, d):
    task = tasks[d]
    assert task.name == f"ou{d}" and task.theta_dim == d and task.x_dim == 10
    assert task.parameter_names == ("mu", "sigma", "gamma", "mu_offset")[:d]
    assert task.low_fidelity_parameters == (0, 1) and task.version == "1" and task.description
    theta = task.sample_prior(1000, seed=0)
    assert np.all((theta >= PRIOR_LOW[:d]) & (theta <= PRIOR_HIGH[:d]))
    assert task.simulator("hf")(theta, seed=0).shape == (1000, 10)

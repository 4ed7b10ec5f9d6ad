"""The plastic E/I network task: a tiny Brian2 network on the numpy target, and the mean field."""

import dataclasses
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("brian2")

from mfsbi.simulators.base import Task
from mfsbi.simulators.mean_field import R_MAX, drift_root, fixed_point_rates, learning_gain
from mfsbi.simulators.plastic_network import (
    PARAMETER_NAMES,
    NetworkScale,
    PlasticNetworkHighFidelity,
    PlasticNetworkLowFidelity,
    is_plausible,
    plastic_network,
)

TINY = NetworkScale.tiny()  # 80 + 20 neurons, 2 s, rates over the last 1 s
SHORT = dataclasses.replace(TINY, duration=0.2, window=0.1)  # ~2 s a batch on the numpy target


def rule(tau_pre=0.02, tau_post=0.02, alpha=0.0, beta=0.0, gamma=0.0, kappa=0.0):
    return [tau_pre, tau_post, alpha, beta, gamma, kappa]


STATIC = rule()  # all coefficients zero: the weights never move
BASELINE = np.array([STATIC * 4])


@pytest.fixture(scope="module")
def short_sim() -> PlasticNetworkHighFidelity:
    return PlasticNetworkHighFidelity(scale=SHORT, target="numpy")


def test_task_layout():
    task = plastic_network()
    assert isinstance(task, Task)
    assert task.theta_dim == 24 and task.x_dim == 2 and task.references == {}
    assert task.parameter_names[:6] == (
        "EE_tau_pre", "EE_tau_post", "EE_alpha", "EE_beta", "EE_gamma", "EE_kappa"
    )
    assert task.parameter_names[18] == "II_tau_pre" and len(set(PARAMETER_NAMES)) == 24
    assert task.low_fidelity_parameters == tuple(range(12))
    theta = task.sample_prior(500, seed=0)
    assert np.all(theta[:, 0::6] >= 0.01) and np.all(theta[:, 1::6] <= 0.1)
    assert np.all(np.abs(theta[:, 2::6]) <= 2.0)
    assert task.cost_seconds["hf"] > task.cost_seconds["lf"] > 0


def test_importing_the_module_does_not_import_brian2():
    code = "import sys, mfsbi.simulators.plastic_network; print('brian2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_hf_shapes_determinism_and_seeds(short_sim):
    theta = np.repeat(BASELINE, 2, axis=0)
    x, reasons = short_sim(theta, seed=3)
    assert x.shape == (2, 2) and x.dtype == np.float64 and reasons == [None, None]
    assert np.all(np.isfinite(x)) and np.all(x >= 0)
    # Rows of one batch get different seeds; the same batch seed repeats exactly.
    assert not np.array_equal(x[0], x[1])
    again, _ = short_sim(theta[:1], seed=3)
    np.testing.assert_array_equal(again[0], x[0])
    other, _ = short_sim(theta[:1], seed=4)
    assert not np.array_equal(other[0], x[0])


def test_hf_leaves_the_global_numpy_stream_alone(short_sim):
    np.random.seed(123)
    expected = np.random.rand(3)
    np.random.seed(123)
    short_sim(BASELINE, seed=0)
    np.testing.assert_array_equal(np.random.rand(3), expected)


def test_hf_bad_shape_raises(short_sim):
    with pytest.raises(ValueError, match="24"):
        short_sim(np.zeros((1, 12)), seed=0)


def test_hf_simulation_error_is_a_failed_row(short_sim, monkeypatch):
    """An exception while building or running one row fails that row, with a reason; the rest run."""
    build = PlasticNetworkHighFidelity._build

    def flaky(self, b2, theta, rng):
        if theta[2] == 1.0:  # EE_alpha marks the row to break
            raise KeyError('The identifier "bogus" could not be resolved.')
        return build(self, b2, theta, rng)

    monkeypatch.setattr(PlasticNetworkHighFidelity, "_build", flaky)
    theta = np.array([rule(alpha=1.0) + STATIC * 3, STATIC * 4])
    x, reasons = short_sim(theta, seed=0)
    assert np.all(np.isnan(x[0])) and reasons[0].startswith("simulation error: KeyError")
    assert np.all(np.isfinite(x[1])) and reasons[1] is None
    with pytest.raises(ValueError, match="positive"):
        PlasticNetworkHighFidelity(scale=SHORT, dt=-1e-4)


@pytest.mark.slow
def test_alpha_beta_potentiation_raises_the_excitatory_rate():
    """alpha_EE, beta_EE = +1.5 potentiate E->E to w_max (runaway); -1.5 depress it to zero."""
    scale = dataclasses.replace(TINY, duration=1.0, window=0.5)
    sim = PlasticNetworkHighFidelity(scale=scale, target="numpy")
    up = np.array([rule(alpha=1.5, beta=1.5) + STATIC * 3] * 2)
    down = np.array([rule(alpha=-1.5, beta=-1.5) + STATIC * 3] * 2)
    x_up, _ = sim(up, seed=0)
    x_down, _ = sim(down, seed=0)
    assert x_up[:, 0].mean() > 3 * x_down[:, 0].mean()
    assert x_up[:, 0].mean() > 50.0  # runaway: implausible
    assert not is_plausible(x_up).any()


def test_mean_field_formula_by_hand():
    # EE: tau_pre 0.02, tau_post 0.05, alpha 1, beta 0.5, gamma 1, kappa -2:
    # lambda = -2 * 0.05 + 1 * 0.02 = -0.08; r_E = -(1 + 0.5) / -0.08 = 18.75 Hz.
    # EI: tau_pre 0.03, tau_post 0.04, alpha 0.6, beta -0.2, gamma 0.5, kappa -1:
    # lambda = -0.04 + 0.015 = -0.025; r_I = -0.6 * 18.75 / (-0.2 - 0.025 * 18.75) = 16.8224...
    ee = np.array([[0.02, 0.05, 1.0, 0.5, 1.0, -2.0]])
    ei = np.array([[0.03, 0.04, 0.6, -0.2, 0.5, -1.0]])
    assert learning_gain(0.02, 0.05, 1.0, -2.0) == pytest.approx(-0.08)
    expected = [18.75, 0.6 * 18.75 / (0.2 + 0.025 * 18.75)]
    np.testing.assert_allclose(fixed_point_rates(ee, ei)[0], expected)
    np.testing.assert_allclose(fixed_point_rates(ee, ei, policy="nan")[0], expected)


def test_mean_field_policies_out_of_range():
    # Negative root, positive drift everywhere (alpha + beta > 0, lambda > 0): potentiation -> R_MAX.
    # Negative root, negative drift (alpha + beta < 0, lambda < 0): depression -> 0.
    # lambda = 0 with alpha + beta > 0: no root -> R_MAX. A root above R_MAX is clipped.
    a = np.array([1.0, -1.0, 1.0, 1.0])
    b = np.array([0.1, -0.1, 0.0, -0.001])
    np.testing.assert_array_equal(drift_root(a, b), [R_MAX, 0.0, R_MAX, R_MAX])
    nan = drift_root(a, b, policy="nan")
    assert np.isnan(nan[:3]).all() and nan[3] == pytest.approx(1000.0)


def test_lf_simulator_rows_and_reasons():
    task = plastic_network()
    theta = task.sample_prior(10_000, seed=1)
    x, reasons = task.low_fidelity(theta, seed=0)
    assert x.shape == (10_000, 2) and np.all(np.isfinite(x)) and all(r is None for r in reasons)
    assert np.all((x >= 0) & (x <= R_MAX))
    # IE and II parameters are dummies for the mean field.
    shuffled = theta.copy()
    shuffled[:, 12:] = theta[::-1, 12:]
    np.testing.assert_array_equal(task.low_fidelity(shuffled, seed=0)[0], x)
    x_nan, reasons_nan = PlasticNetworkLowFidelity(policy="nan")(theta, seed=0)
    failed = np.isnan(x_nan).any(axis=1)
    assert 0 < failed.mean() < 1
    assert all((r == "no fixed point") == f for r, f in zip(reasons_nan, failed))
    np.testing.assert_array_equal(x_nan[~failed & (x_nan <= R_MAX).all(axis=1)], x[~failed & (x_nan <= R_MAX).all(axis=1)])


@pytest.mark.slow
def test_mean_field_matches_simulation_in_the_homeostatic_regime():
    """alpha > 0, lambda < 0 (kappa < 0) for EE and EI: a stable fixed point the weights settle to.

    Targets (20, 30) Hz and (5, 10) Hz; the network lands near the first and orders the two correctly.
    The second overshoots: at zero E->E weight the Poisson input alone drives the E cells at about
    5-7 Hz in this tiny network, a floor the mean field does not know about.
    """
    sim = PlasticNetworkHighFidelity(scale=TINY, target="numpy")
    high = rule(tau_post=0.05, alpha=1.0, kappa=-1.0) + rule(tau_post=0.05, alpha=1.5, kappa=-1.0) + STATIC * 2
    low = rule(tau_post=0.05, alpha=0.5, kappa=-2.0) + rule(tau_post=0.05, alpha=1.0, kappa=-2.0) + STATIC * 2
    theta = np.array([high, high, low, low])
    mf, _ = PlasticNetworkLowFidelity()(theta, seed=0)
    np.testing.assert_allclose(mf[0], [20.0, 30.0])
    np.testing.assert_allclose(mf[2], [5.0, 10.0])
    x, _ = sim(theta, seed=11)
    x_high, x_low = x[:2].mean(axis=0), x[2:].mean(axis=0)
    np.testing.assert_allclose(x_high, mf[0], rtol=0.3)
    assert np.all(x_high > x_low)
    assert is_plausible(x).all()


def test_is_plausible():
    x = np.array([[1.0, 50.0], [0.5, 10.0], [10.0, 60.0], [np.nan, 5.0], [5.0, 5.0]])
    np.testing.assert_array_equal(is_plausible(x), [True, False, False, False, True])


def test_simulators_pickle(short_sim):
    lf = PlasticNetworkLowFidelity(policy="nan")
    assert pickle.loads(pickle.dumps(lf)) == lf
    clone = pickle.loads(pickle.dumps(short_sim))
    assert clone == short_sim
    np.testing.assert_array_equal(clone(BASELINE, seed=5)[0], short_sim(BASELINE, seed=5)[0])


def test_worker_thread_needs_preload_and_works_after_it():
    """In a fresh process: a thread cannot import brian2 until preload() ran in the main thread."""
    code = textwrap.dedent(
        """
        import threading, numpy as np, dataclasses
        from mfsbi.simulators import plastic_network as pn
        scale = dataclasses.replace(pn.NetworkScale.tiny(), duration=0.2, window=0.1)
        sim = pn.PlasticNetworkHighFidelity(scale=scale, target="numpy")
        theta = np.array([[0.02, 0.02, 0, 0, 0, 0] * 4])
        out = {}
        def work(key):
            try:
                out[key] = sim(theta, seed=0)[0]
            except RuntimeError as error:
                out[key] = str(error)
        if not %(preload)s:
            t = threading.Thread(target=work, args=("thread",)); t.start(); t.join()
        else:
            pn.preload()
            t = threading.Thread(target=work, args=("thread",)); t.start(); t.join()
            work("main")
        print(repr(out))
        """
    )
    for preload in (False, True):
        out = subprocess.run(
            [sys.executable, "-c", code % {"preload": preload}], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-2000:]
        result = eval(out.stdout.strip().splitlines()[-1], {"array": np.array})
        if preload:
            assert np.all(np.isfinite(result["thread"])) and np.array_equal(result["thread"], result["main"])
        else:
            assert "preload()" in result["thread"]

"""The multicompartment pyramidal-neuron task on NEURON (mfsbi.simulators.pyramidal).

Most tests use the LF cell (1 segment per section) and a short run (stimulus 10..40 ms) to stay
fast; the pyramidal cell is built once per process and shared by all tests.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NEURON_MODULE_OPTIONS", "-nogui")
pytest.importorskip("neuron")

from mfsbi.simulators import neuron_cell  # noqa: E402
from mfsbi.simulators.pyramidal import (  # noqa: E402
    PRIOR_HIGH,
    PRIOR_LOW,
    PyramidalSimulator,
    pyramidal,
    spike_count,
    trace,
)

# A short run: 5 ms at rest, a 30 ms step, 5 ms after it.
SHORT = dict(tstop=45.0, start=10.0, duration=30.0)
ROOT = Path(__file__).resolve().parents[1]


def test_task_metadata() -> None:
    task = pyramidal()
    assert task.name == "pyramidal"
    assert task.parameter_names == ("gNa", "gK")
    assert task.x_dim == 4 and task.low_fidelity_parameters == (0, 1)
    assert task.low_fidelity.nseg == 1 and task.high_fidelity.nseg == 8
    theta = task.sample_prior(100, seed=0)
    assert np.all(theta >= np.array(PRIOR_LOW) - 1e-9) and np.all(theta <= np.array(PRIOR_HIGH) + 1e-9)
    assert set(task.cost_seconds) == set(task.fidelities) == {"lf", "mf", "hf"}
    assert task.cost_seconds["hf"] > task.cost_seconds["lf"] > 0


def test_shapes_and_dtype() -> None:
    theta = pyramidal().sample_prior(3, seed=1)
    for nseg in (1, 8, "d_lambda"):
        x, reasons = PyramidalSimulator(nseg=nseg, **SHORT)(theta, seed=0)
        assert x.shape == (3, 4) and x.dtype == np.float64
        assert reasons == [None, None, None]
        assert np.all(np.isfinite(x))


def test_determinism_and_seed() -> None:
    simulator = PyramidalSimulator(nseg=1, **SHORT)
    theta = np.array([[0.12, 0.036], [0.3, 0.05]])
    x1, _ = simulator(theta, seed=7)
    x2, _ = simulator(theta, seed=7)
    x3, _ = simulator(theta, seed=8)
    np.testing.assert_array_equal(x1, x2)
    # Another seed draws other noise: the resting statistics change.
    assert not np.allclose(x1[:, 1:3], x3[:, 1:3])


def test_rows_do_not_leak_state() -> None:
    simulator = PyramidalSimulator(nseg=1, **SHORT)
    a, b, c = [0.5, 0.01], [0.12, 0.036], [0.8, 1e-6]
    # Row 1 draws the same noise in both batches (noise depends on seed and row only), so it must
    # come out the same whatever ran before it in the process.
    x1, _ = simulator(np.array([a, b, a]), seed=3)
    x2, _ = simulator(np.array([c, b]), seed=3)
    np.testing.assert_array_equal(x1[1], x2[1])
    # Without noise, the same theta twice in one batch (another cell state in between) agrees.
    quiet = PyramidalSimulator(nseg=1, noise_std=0.0, **SHORT)
    x, _ = quiet(np.array([b, c, a, b]), seed=0)
    np.testing.assert_array_equal(x[0], x[3])
    # Switching fidelity in the same process changes nseg in place and back.
    before, _ = quiet(np.array([b]), seed=0)
    PyramidalSimulator(nseg=8, noise_std=0.0, **SHORT)(np.array([b]), seed=0)
    after, _ = quiet(np.array([b]), seed=0)
    np.testing.assert_array_equal(before, after)


def test_more_sodium_more_spikes_and_potassium_silences() -> None:
    quiet = PyramidalSimulator(nseg=1, noise_std=0.0, **SHORT)
    gna = [0.005, 0.12, 0.25, 0.5]
    x, _ = quiet(np.array([[g, 0.036] for g in gna]), seed=0)
    counts = x[:, 0]
    assert np.all(np.diff(counts) >= 0), counts
    assert counts[0] == 0 and counts[-1] >= 3, counts
    # High gK silences a cell that fires at moderate gK.
    x, _ = quiet(np.array([[0.25, 0.036], [0.25, 0.15]]), seed=0)
    assert x[0, 0] >= 2 and x[1, 0] == 0


def test_lf_and_hf_traces_differ_but_correlate() -> None:
    theta = np.array([0.3, 0.05])
    t_lf, v_lf = trace(theta, nseg=1, seed=0, **SHORT)
    t_hf, v_hf = trace(theta, nseg=8, seed=0, **SHORT)
    np.testing.assert_array_equal(t_lf, t_hf)
    assert v_lf.shape == (round(45.0 / 0.025) + 1,)
    assert np.abs(v_lf - v_hf).max() > 0.5
    assert np.corrcoef(v_lf, v_hf)[0, 1] > 0.8


def test_invalid_rows_fail_with_reason_not_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    simulator = PyramidalSimulator(nseg=1, **SHORT)
    x, reasons = simulator(np.array([[np.nan, 0.036], [0.12, 0.036]]), seed=0)
    assert np.all(np.isnan(x[0])) and reasons[0] is not None and "non-finite" in reasons[0]
    assert reasons[1] is None and np.all(np.isfinite(x[1]))

    # A blow-up beyond 1 000 mV in one row; the others are untouched.
    original = PyramidalSimulator.voltage
    calls = iter(range(10))

    def blow_up(self: PyramidalSimulator, theta: np.ndarray, seed: int, row: int = 0) -> np.ndarray:
        v = original(self, theta, seed, row)
        if next(calls) == 1:
            v[100] = 5e3
        return v

    monkeypatch.setattr(PyramidalSimulator, "voltage", blow_up)
    x, reasons = simulator(np.array([[0.12, 0.036]] * 3), seed=0)
    assert reasons[0] is None and reasons[2] is None
    assert reasons[1] is not None and "blow-up" in reasons[1] and np.all(np.isnan(x[1]))

    # A statistic that comes out NaN.
    import mfsbi.simulators.pyramidal as module

    monkeypatch.setattr(PyramidalSimulator, "voltage", original)
    monkeypatch.setattr(module, "summary_statistics", lambda *args: np.full(4, np.nan))
    x, reasons = simulator(np.array([[0.12, 0.036]]), seed=0)
    assert reasons == ["non-finite summary statistics"] and np.all(np.isnan(x))


def test_spike_count_hysteresis() -> None:
    v = np.array([-65, -20, 10, 30, -5, 5, -5, 5, -70, 20, -70], dtype=float)
    # Noise around 0 mV after a spike is not a new spike; a dip below -10 mV re-arms.
    assert spike_count(v) == 2
    assert spike_count(np.array([10.0, 20.0, 10.0])) == 0  # starts above: not armed


def test_swc_import(tmp_path: Path) -> None:
    # A soma (three-point SWC soma, radius 10 µm) and three dendrite segments in a chain.
    rows = [
        (1, 1, 0.0, 0.0, 0.0, 10.0, -1),
        (2, 1, 0.0, -10.0, 0.0, 10.0, 1),
        (3, 1, 0.0, 10.0, 0.0, 10.0, 1),
        (4, 3, 10.0, 0.0, 0.0, 1.0, 1),
        (5, 3, 60.0, 0.0, 0.0, 1.0, 4),
        (6, 3, 110.0, 0.0, 0.0, 0.8, 5),
        (7, 3, 160.0, 0.0, 0.0, 0.6, 6),
    ]
    path = tmp_path / "tiny.swc"
    path.write_text("".join(f"{i} {t} {x} {y} {z} {r} {p}\n" for i, t, x, y, z, r, p in rows))
    geometry = neuron_cell.read_morphology(str(path))
    assert geometry[0].parent is None and "soma" in geometry[0].name
    assert len(geometry) >= 2

    simulator = PyramidalSimulator(nseg=8, morphology=str(path), amplitude=0.1, **SHORT)
    x, reasons = simulator(np.array([[0.12, 0.036], [0.005, 0.15]]), seed=0)
    assert reasons == [None, None] and x.shape == (2, 4)
    assert x[0, 0] >= 1 and x[1, 0] == 0  # a small cell: 0.1 nA drives it
    # Only the active cell exists in NEURON: the pyramid's sections are gone.
    from neuron import h

    assert sum(1 for _ in h.allsec()) == len(geometry)
    # Back to the pyramid: the SWC cell goes, the pyramid comes back.
    PyramidalSimulator(nseg=1, **SHORT)(np.array([[0.12, 0.036]]), seed=0)
    assert sum(1 for _ in h.allsec()) == len(neuron_cell.read_morphology(str(neuron_cell.demo_pyramid_path())))


def test_demo_morphology_found() -> None:
    path = neuron_cell.demo_pyramid_path()
    assert path.name == "pyramid.nrn" and path.is_file()
    geometry = neuron_cell.read_morphology(str(path))
    assert len(geometry) == 79 and geometry[0].name == "soma"


def test_pickle_and_fresh_process(tmp_path: Path) -> None:
    task = pyramidal()
    for simulator in (task.low_fidelity, task.high_fidelity):
        assert pickle.loads(pickle.dumps(simulator)) == simulator
    simulator = PyramidalSimulator(nseg=1, **SHORT)
    theta = np.array([[0.3, 0.05], [0.12, 0.036]])
    expected, _ = simulator(theta, seed=11)
    (tmp_path / "sim.pkl").write_bytes(pickle.dumps((simulator, theta)))
    script = textwrap.dedent(
        f"""
        import pickle, sys
        import numpy as np
        simulator, theta = pickle.loads(open({str(tmp_path / "sim.pkl")!r}, "rb").read())
        x, reasons = simulator(theta, 11)
        np.save({str(tmp_path / "x.npy")!r}, x)
        """
    )
    env = dict(os.environ, NEURON_MODULE_OPTIONS="-nogui")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, env=env, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), expected)

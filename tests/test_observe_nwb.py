"""A recording goes in: a current-clamp trace in an NWB file becomes the pyramidal task's x_o (`mfsbi observe`)."""

from datetime import datetime, timezone

import numpy as np
import pytest
from typer.testing import CliRunner

from pynwb import NWBHDF5IO, NWBFile, TimeSeries  # the `recording` extra, part of `test`
from pynwb.icephys import CurrentClampSeries

from mfsbi.app.cli import app
from mfsbi.simulators import RecordingError, get_task
from mfsbi.simulators.pyramidal import DT, pyramidal

RATE = 1e3 / DT  # the simulator's 40 kHz
THETA = np.array([0.4, 0.05])  # spikes several times during the step (docs/tasks-pyramidal.md's grid)
SEED = 3


@pytest.fixture(scope="module")
def simulated():
    """The HF simulator's x at THETA and the somatic trace (mV) it computed that x from."""
    task = get_task("pyramidal")
    x, reasons = task.high_fidelity(THETA[None], SEED)
    assert reasons == [None]
    return x[0], task.high_fidelity.voltage(THETA, SEED, row=0)


def write_nwb(path, data, *, conversion=1.0, rate=RATE, timestamps=None, name="sweep_0", extra=()):
    nwbfile = NWBFile(session_description="simulated current clamp", identifier="mfsbi-test",
                      session_start_time=datetime(2026, 1, 1, tzinfo=timezone.utc))
    device = nwbfile.create_device(name="NEURON")
    electrode = nwbfile.create_icephys_electrode(name="soma", description="the soma's centre", device=device)
    timing = {"timestamps": timestamps} if timestamps is not None else {"rate": rate, "starting_time": 0.0}
    nwbfile.add_acquisition(CurrentClampSeries(name=name, data=data, conversion=conversion, electrode=electrode,
                                               **timing))
    for item in extra:
        nwbfile.add_acquisition(item)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path


def observe(*args):
    return CliRunner().invoke(app, ["observe", *map(str, args)], catch_exceptions=False)


@pytest.mark.parametrize("conversion", [1.0, 1e-3], ids=["volts", "millivolts-with-conversion"])
def test_a_simulated_trace_written_to_nwb_gives_back_the_simulators_statistics(tmp_path, simulated, conversion):
    x, v = simulated
    path = write_nwb(tmp_path / "cell.nwb", v * 1e-3 / conversion, conversion=conversion)
    out = tmp_path / "x_o.npy"
    result = observe("--task", "pyramidal", "--nwb", path, "--series", "sweep_0", "--out", out)
    assert result.exit_code == 0, result.output
    assert "4 statistics" in result.output and "40000 Hz" in result.output and "resampled" not in result.output
    x_o = np.load(out)
    assert x_o.shape == (4,) and x_o[0] == x[0] >= 3  # spikes: counted the same
    np.testing.assert_allclose(x_o, x, rtol=1e-12, atol=1e-12)  # volts and back: rounding only


def test_the_rich_statistics_come_back_too_and_a_task_without_a_recording_says_so(simulated):
    _, v = simulated
    rich = pyramidal(statistics="rich")
    x_rich, _ = rich.high_fidelity(THETA[None], SEED)
    np.testing.assert_allclose(rich.statistics_of_recording(v * 1e-3, RATE), x_rich[0], rtol=1e-12, atol=1e-12)
    with pytest.raises(RecordingError, match="says no way to turn a recording"):
        get_task("ou2").statistics_of_recording(v * 1e-3, RATE)


def test_timestamps_instead_of_a_rate_and_another_rate_are_resampled(tmp_path, simulated):
    x, v = simulated
    times = np.arange(v.size) / RATE
    path = write_nwb(tmp_path / "stamped.nwb", v * 1e-3, timestamps=times)
    assert observe("--task", "pyramidal", "--nwb", path, "--series", "sweep_0", "--out", tmp_path / "a.npy").exit_code == 0
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), x, rtol=1e-9)  # 1/mean(step) is 40 kHz to 1e-9
    # Recorded at 20 kHz (every other sample): resampled to 40 kHz by scipy's polyphase filter.
    path = write_nwb(tmp_path / "slow.nwb", v[::2] * 1e-3, rate=RATE / 2)
    result = observe("--task", "pyramidal", "--nwb", path, "--series", "sweep_0", "--out", tmp_path / "b.npy")
    assert result.exit_code == 0 and "resampled to 40000 Hz" in result.output, result.output
    x_slow = np.load(tmp_path / "b.npy")
    assert x_slow[0] == x[0]  # the same spikes
    # Rest mean and SD, mean during the step, mV: within 0.005 mV of the 40 kHz values when written.
    np.testing.assert_allclose(x_slow[1:], x[1:], atol=0.05)


@pytest.mark.parametrize("case, expected", [
    ("no-series", "--series: 'sweep_9' in the acquisition of {path} is not there; its current-clamp series: sweep_0"),
    ("wrong-type", "--series: 'position' in the acquisition of {path} is a TimeSeries, not a CurrentClampSeries"),
    ("short", "--series: the recording lasts 50 ms; the statistics need 110 ms (somatic voltage from t = 0"),
    ("not-nwb", "--nwb: {path} is not a readable NWB file"),
    ("no-recording", "--task: task 'ou2' says no way to turn a recording into its statistics"),
    ("out", "--out: '{tmp}/x_o.txt' must end in .npy"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, simulated, case, expected):
    _, v = simulated
    path, series, task, out = tmp_path / "cell.nwb", "sweep_0", "pyramidal", tmp_path / "x_o.npy"
    position = TimeSeries(name="position", data=np.zeros(10), unit="m", rate=10.0)
    if case == "not-nwb":
        path.write_text("not HDF5")
    else:
        write_nwb(path, (v[: int(0.05 * RATE)] if case == "short" else v) * 1e-3, extra=[position])
    series = {"no-series": "sweep_9", "wrong-type": "position"}.get(case, series)
    task = "ou2" if case == "no-recording" else task
    out = tmp_path / "x_o.txt" if case == "out" else out
    result = observe("--task", task, "--nwb", path, "--series", series, "--out", out)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + expected.format(path=repr(str(path)), tmp=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell.nwb"]  # no x_o, no leftover part


@pytest.mark.parametrize("args, expected", [
    (["--task", "pyramidal"], "error: --nwb: required (see `mfsbi observe --help`)"),
    (["--bogus", "1"], "error: --bogus: no such option of `mfsbi observe`"),
])
def test_a_malformed_command_line_is_one_line_naming_observe(args, expected):
    result = observe(*args)
    assert result.exit_code == 2 and result.output.strip().startswith(expected), result.output
    assert len(result.output.strip().splitlines()) == 1

"""The CLI: one-line errors with exit code 2 and nothing written; a tiny run, sample and status."""

import numpy as np
import pytest
from typer.testing import CliRunner

from mfsbi.app.cli import app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def store(tmp_path):
    return tmp_path / "store"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--task", "nope"], "--task: unknown task 'nope'"),
        (["--task", "no_such_module:thing"], "cannot import module"),
        (["--hf-sims", "0"], "--hf-sims"),
        (["--lf-sims", "-5"], "--lf-sims"),
        (["--method", "magic"], "--method"),
        (["--device", "tpu"], "--device"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_bad_options_give_one_line_exit_2_and_write_nothing(store, args, expected):
    result = _invoke("run", "--store", store, *args)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not store.exists()


@pytest.mark.parametrize(
    "content, expected",
    [
        (np.zeros(7), "shape (7,) does not match"),
        (np.full(10, np.nan), "NaN or inf"),
        (np.array(["a"] * 10), "expected numbers"),
        (None, "does not exist"),
        (b"not an npy file", "not a readable .npy"),
    ],
)
def test_bad_observations_are_refused(tmp_path, store, content, expected):
    path = tmp_path / "x_o.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, content)
    result = _invoke("run", "--store", store, "--observation", path)
    assert result.exit_code == 2
    assert expected in result.output
    assert not store.exists()


def test_a_store_made_with_another_seed_is_refused_before_anything_is_written(tmp_path, store):
    from mfsbi.flows.config import RunConfig
    from mfsbi.runtime.simulation import ensure_rows
    from mfsbi.simulators import get_task
    from mfsbi.storage import SimulationStore

    config = RunConfig(task="ou2", store=str(store), seed=1)
    task = get_task("ou2")
    ensure_rows(SimulationStore(store), task, table="ou2", fidelity="hf", num_rows=10, chunk_size=10, seed=1,
                config_hash=config.simulation_hash("hf", 10, task.version, 1), budget=10)
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    result = _invoke("run", "--store", store, "--seed", "2", "--method", "npe")
    assert result.exit_code == 2
    assert "--store" in result.output
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before


def test_tasks_lists_the_ou_tasks():
    result = _invoke("tasks")
    assert result.exit_code == 0
    for name in ("ou2", "ou3", "ou4"):
        assert name in result.output


def test_run_sample_status_end_to_end(tmp_path, store, prefect_server):
    x_o = tmp_path / "x_o.npy"
    from mfsbi.simulators import get_task

    task = get_task("ou2")
    np.save(x_o, task.high_fidelity(np.array([[1.5, 0.3]]), seed=0)[0])
    result = _invoke("run", "--task", "ou2", "--method", "mf-npe", "--lf-sims", 200, "--hf-sims", 20,
                     "--store", store, "--seed", 0, "--observation", x_o, "--n-workers", 1,
                     "--num-test-observations", 1, "--num-nltp-pairs", 5, "--max-num-epochs", 3,
                     "--transfer-guard", "off")  # one fine-tuning: MF-NPE's selection is tests/test_flow.py's
    assert result.exit_code == 0, result.output
    assert "C2ST vs euler-maruyama" in result.output and "NLTP" in result.output
    assert "calibration (SBC + TARP on 5 held-out HF pairs)" in result.output

    out = tmp_path / "samples.npy"
    result = _invoke("sample", "--store", store, "--observation", x_o, "-n", 50, "--out", out)
    assert result.exit_code == 0, result.output
    samples = np.load(out)
    assert samples.shape == (50, 2)
    assert ((samples >= [0.1, 0.1]) & (samples <= [3.0, 0.6])).all()

    result = _invoke("status", store)
    assert result.exit_code == 0
    assert "20 / 20" in result.output  # HF budget used / total


def test_a_store_held_by_a_live_run_is_refused(tmp_path, store):
    from mfsbi.storage import StoreLock

    with StoreLock(str(store), owner="another-run"):
        result = _invoke("run", "--store", store, "--method", "npe", "--hf-sims", 10)
    assert result.exit_code == 2, result.output
    assert "in use by run 'another-run'" in result.output
    assert len(result.output.strip().splitlines()) == 1

"""Fidelities as an ordered chain (issue 18): the task interface, the coupled OU2 chain, budgets per
level, the store's tables, `--sims`, and a run that fine-tunes through a level and resumes mid-chain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sbi.utils import BoxUniform

from mfsbi.app.inputs import UsageError, parse_sims
from mfsbi.flows.config import RunConfig
from mfsbi.simulators import FidelityLevel, Task, get_task
from mfsbi.simulators.ou import OUHighFidelity
from mfsbi.simulators.ou_chain import OUCoarseEuler


def _task(**overrides) -> Task:
    values = dict(name="toy", prior=BoxUniform(torch.zeros(1), torch.ones(1)), parameter_names=("a",),
                  low_fidelity=OUCoarseEuler(1, 2), high_fidelity=OUHighFidelity(2), x_dim=10,
                  low_fidelity_parameters=(0,))
    values.update(overrides)
    return Task(**values)


def test_a_two_level_task_is_the_chain_lf_hf():
    task = get_task("ou2")
    assert task.fidelities == ("lf", "hf") and not task.coupled
    with pytest.raises(ValueError, match="no fidelity 'mf'"):
        task.simulator("mf")


def test_the_chain_lists_intermediate_levels_cheapest_first():
    task = get_task("ou2-euler")
    assert task.fidelities == ("lf", "mf", "hf") and task.coupled
    assert task.simulator("mf") == OUCoarseEuler(2, 2)
    assert set(task.cost_seconds) == set(task.fidelities)


@pytest.mark.parametrize("name", ["lf", "hf", "MF", "2x", "m-f", "a" * 17])
def test_a_level_needs_a_short_lowercase_name_other_than_the_ends(name):
    with pytest.raises(ValueError, match="intermediate fidelity"):
        _task(intermediate=(FidelityLevel(name, OUCoarseEuler(2, 2)),))


def test_level_names_do_not_repeat():
    level = FidelityLevel("mf", OUCoarseEuler(2, 2))
    with pytest.raises(ValueError, match="repeat"):
        _task(intermediate=(level, level))


def test_the_ou2_chain_is_coupled_to_the_ou2_hf_simulator():
    """Ten steps per interval draw and sum the HF's own normals: the HF trajectory, to rounding."""
    theta = get_task("ou2").sample_prior(20_000, seed=1)   # > one block of 8192 rows
    hf = OUHighFidelity(2)(theta, 5)
    assert np.allclose(OUCoarseEuler(10, 2)(theta, 5), hf, rtol=0, atol=1e-12)
    # The coarse levels share the noise: close to HF at the same seed, far from it at another.
    lf, mf = OUCoarseEuler(1, 2)(theta, 5), OUCoarseEuler(2, 2)(theta, 5)
    assert np.array_equal(lf[:, 0], hf[:, 0])                  # the same initial state
    coupled, uncoupled = np.abs(mf - hf)[:, 1:].mean(), np.abs(OUCoarseEuler(2, 2)(theta, 6) - hf)[:, 1:].mean()
    assert coupled < 0.25 * uncoupled
    assert np.abs(mf - hf).mean() < np.abs(lf - hf).mean()    # dt 0.5 is closer to dt 0.1 than dt 1
    with pytest.raises(ValueError, match="divide"):
        OUCoarseEuler(3)


def test_parse_sims():
    assert parse_sims("lf=100000, mf=2000,hf=100") == {"lf_sims": 100000, "hf_sims": 100, "level_sims": {"mf": 2000}}
    assert parse_sims("hf=5") == {"hf_sims": 5}
    for bad, message in (("lf=10,lf=20", "twice"), ("mf", "fidelity=count"), ("mf=1.5", "fidelity=count")):
        with pytest.raises(UsageError, match=message):
            parse_sims(bad)


def test_level_budgets_are_validated_and_named_in_run_names():
    config = RunConfig(task="ou2-euler", level_sims={"mf": 200}, lf_sims=1000, hf_sims=50)
    assert config.run_name == "mf-npe-lf1000-mf200-hf50-seed0"
    assert RunConfig(task="ou2").run_name == "mf-npe-lf10000-hf100-seed0"   # two levels: the name it always had
    with pytest.raises(ValueError, match="intermediate level"):
        RunConfig(task="ou2-euler", level_sims={"hf": 20})
    with pytest.raises(ValueError, match="whole number"):
        RunConfig(task="ou2-euler", level_sims={"mf": 0})


@pytest.mark.parametrize("arguments, message", [
    (["--task", "ou2-euler", "--sims", "lf=100,xf=20,hf=10"], "--sims: task 'ou2-euler' has no intermediate fidelity 'xf'"),
    (["--task", "ou2", "--sims", "mf=20"], "--sims: task 'ou2' has no intermediate fidelity 'mf'"),
    (["--task", "ou2-euler", "--method", "npe", "--sims", "mf=20"], "--sims: npe does not fine-tune through"),
    (["--task", "ou2-euler", "--sims", "lf=100", "--lf-sims", "200"], "--sims: sets LF too"),
    (["--task", "ou2-euler", "--sims", "mf=-3"], "--sims: level 'mf': give a whole number"),
])
def test_bad_chains_are_refused_with_one_line_and_nothing_written(tmp_path, arguments, message):
    from typer.testing import CliRunner

    from mfsbi.app.cli import app

    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["run", *arguments, "--store", str(store)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert not store.exists()


def test_mf_npe_fine_tunes_through_the_chain_and_resumes_mid_chain(tmp_path, prefect_server, dask_cluster_client,
                                                                    monkeypatch):
    from prefect import flow

    from mfsbi.flows.amortized import run_amortized
    from mfsbi.flows.run import Run
    from mfsbi.runtime.executor import DaskExecutor
    from mfsbi.storage import SimulationStore

    config = RunConfig(task="ou2-euler", method="mf-npe", lf_sims=300, level_sims={"mf": 40}, hf_sims=20,
                       store=str(tmp_path / "store"), seed=3, num_test_observations=0, num_nltp_pairs=10,
                       posterior_samples=100, max_num_epochs=3, lf_chunk_size=100, hf_chunk_size=10,
                       transfer_guard="off")
    real_simulate = Run.simulate

    def killed_before_hf(self, **kwargs):
        if kwargs["fidelity"] == "hf" and kwargs["table"] == self.shared_table:
            raise RuntimeError("killed after the MF level")
        return real_simulate(self, **kwargs)

    @flow
    def run_once():
        return run_amortized(config, DaskExecutor(dask_cluster_client))

    monkeypatch.setattr(Run, "simulate", killed_before_hf)
    with pytest.raises(RuntimeError, match="killed after the MF level"):
        run_once()
    store = SimulationStore(config.store, mode="r")
    assert ("ou2-euler", "mf") in store.tables() and store.table("ou2-euler", "hf") is None
    checkpoint = "ou2-euler/pretrained-lf300-mf40-seed3-b500.pt"
    trained = store.read_artifact(checkpoint)

    monkeypatch.setattr(Run, "simulate", real_simulate)
    summary = run_once().to_dict()
    # The chain's tables, one per fidelity, each level above LF with its budget.
    store = SimulationStore(config.store, mode="r")
    assert store.tables()[:3] == [("ou2-euler", "lf"), ("ou2-euler", "mf"), ("ou2-euler", "hf")]
    tables = store.summary()["tables"]
    assert tables["ou2-euler/mf"]["budget"] == {"total": 40, "reserved": 40, "remaining": 0}
    assert tables["ou2-euler/mf"]["ok"] == 40 and tables["ou2-euler/hf"]["budget"]["total"] == 20
    assert tables["ou2-euler/lf"]["budget"] is None
    # Resumed mid-chain: the MF level was neither simulated nor fine-tuned again.
    (level,) = summary["levels"]
    assert level["fidelity"] == "mf" and level["simulations"]["simulated"] == 0 and "train" not in level
    assert level["checkpoint"] == f"artifacts/{checkpoint}"
    assert store.read_artifact(checkpoint) == trained
    assert "pretrain" not in summary and summary["train"]["simulations"] == 20
    assert summary["run"] == "mf-npe-lf300-mf40-hf20-seed3"
    assert np.isfinite(summary["metrics"]["nltp"])


def test_ml_npe_trains_on_coupled_twins_through_three_levels(tmp_path, prefect_server, dask_cluster_client):
    from prefect import flow

    from mfsbi.flows.amortized import run_amortized
    from mfsbi.runtime.executor import DaskExecutor
    from mfsbi.runtime.simulation import theta_and_seeds
    from mfsbi.storage import SimulationStore

    config = RunConfig(task="ou2-euler", method="ml-npe", lf_sims=300, level_sims={"mf": 30}, hf_sims=20,
                       store=str(tmp_path / "store"), seed=2, num_test_observations=0, num_nltp_pairs=10,
                       posterior_samples=100, max_num_epochs=3, lf_chunk_size=100, hf_chunk_size=10)

    @flow
    def run_once():
        return run_amortized(config, DaskExecutor(dask_cluster_client))

    summary = run_once().to_dict()
    store = SimulationStore(config.store, mode="r")
    task = get_task("ou2-euler")
    # Every row above LF has a twin one level below, simulated at its θ with its seed: coupled.
    for fine, coarse in (("mf", "lf"), ("hf", "mf")):
        rows, twins = store.table("ou2-euler", fine), store.table(f"ou2-euler.twins-{fine}", coarse)
        assert twins.num_rows == rows.num_rows and twins.chunk_size == rows.chunk_size
        theta, seeds = theta_and_seeds(rows, rows.num_rows)
        assert np.array_equal(theta_and_seeds(twins, twins.num_rows)[0], theta)
        _, twin_x = twins.read("ok")
        _, fine_x = rows.read("ok")
        for start in range(0, rows.num_rows, rows.chunk_size):
            batch = slice(start, start + rows.chunk_size)
            assert np.array_equal(twin_x[batch], task.simulator(coarse)(theta[batch], int(seeds[start])))
        # Sharing the noise: the pair differs far less than outputs at another seed.
        other = task.simulator(coarse)(theta, 12345)
        assert np.abs(twin_x - fine_x)[:, 1:].mean() < 0.5 * np.abs(other - fine_x)[:, 1:].mean()
    assert summary["hf_twins"]["table"] == "ou2-euler.twins-hf" and summary["hf_twins"]["stored_ok"] == 20
    assert summary["levels"][0]["twins"]["fidelity"] == "lf" and summary["hf"]["stored_ok"] == 20
    assert summary["train"]["simulations"] == 300 + 2 * 30 + 2 * 20
    assert "transfer_guard" not in summary and np.isfinite(summary["metrics"]["nltp"])


def test_ml_npe_needs_a_coupled_task(tmp_path):
    from typer.testing import CliRunner

    from mfsbi.app.cli import app

    result = CliRunner().invoke(app, ["run", "--task", "ou2", "--method", "ml-npe", "--store", str(tmp_path / "s")])
    assert result.exit_code == 2 and "does not couple its fidelities" in " ".join(result.output.split())
    assert not (tmp_path / "s").exists()


def test_the_pyramidal_cell_is_a_chain_nseg_1_d_lambda_nseg_8():
    for name in ("pyramidal", "pyramidal-reduced"):
        task = get_task(name)
        assert task.fidelities == ("lf", "mf", "hf") and task.coupled
        assert task.simulator("mf").nseg == "d_lambda" and task.simulator("hf").nseg == 8
        assert task.cost_seconds["lf"] < task.cost_seconds["mf"] < task.cost_seconds["hf"]
    from mfsbi.simulators.pyramidal import pyramidal

    assert pyramidal(hf_nseg="d_lambda").fidelities == ("lf", "hf")   # the HF is the rule: nothing between

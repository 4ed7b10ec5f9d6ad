"""Amortised methods as plug-ins: a training strategy, its checks and its run names, and a toy run through the CLI."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mfsbi.flows.config import RunConfig
from mfsbi.flows.methods import AMORTIZED, SEQUENTIAL, Entrypoint, Method, get_method, register_method, unregister_method
from mfsbi.storage import SimulationStore

import toy_amortized
import toy_proposal


def test_a_training_strategy_is_what_an_amortised_method_needs_and_only_it():
    with pytest.raises(ValueError, match="training strategy"):
        Method("broken", AMORTIZED, uses_lf=False)
    with pytest.raises(ValueError, match="training strategy"):
        Method("broken", SEQUENTIAL, uses_lf=False, propose=toy_proposal.half_from_prior,
               train=toy_amortized.npe_on_half_the_budget)


def test_an_entrypoint_loads_its_function_when_called():
    lazy = Entrypoint("toy_amortized:one_estimator")
    assert lazy.load() is toy_amortized.one_estimator
    with pytest.raises(ValueError, match="--ensemble: toy-npe"):
        lazy(RunConfig(task="ou2", method="npe", ensemble=2), None)


def test_the_built_in_checks_belong_to_their_methods():
    """ML-NPE's and the planner's refusals are the methods' own; npe has none."""
    assert get_method("npe").check is None
    config = RunConfig(task="ou2", method="mf-npe", compute_budget=60, ensemble=2)
    with pytest.raises(ValueError, match="--ensemble: the compute-budget planner"):
        get_method("mf-npe").check(config, None)
    get_method("mf-npe").check(RunConfig(task="ou2", method="mf-npe", ensemble=2), None)  # counts: no planner


@pytest.fixture
def toy_method():
    """The whole of a new amortised method: its strategy module and this one registry entry."""
    method = register_method(Method("toy-npe", AMORTIZED, uses_lf=False, train=toy_amortized.npe_on_half_the_budget,
                                    check=toy_amortized.one_estimator, name_suffix=lambda config: "-half",
                                    description="NPE on half the HF budget (a test)"))
    yield method
    unregister_method(method.name)


def test_a_methods_run_names_and_checks_are_its_own(toy_method):
    from mfsbi.app.cli import app

    assert RunConfig(task="ou2", method="toy-npe", hf_sims=30, ensemble=2).run_name == "toy-npe-hf30-half-seed0"
    result = CliRunner().invoke(app, ["run", "--task", "ou2", "--method", "toy-npe", "--ensemble", "2"])
    assert result.exit_code != 0
    assert "--ensemble: toy-npe trains one estimator" in result.output and "Traceback" not in result.output


def test_a_toy_amortized_method_runs_through_the_cli(tmp_path, prefect_server, shared_dask, toy_method):
    from mfsbi.app.cli import app

    store = tmp_path / "store"
    result = CliRunner().invoke(app, [str(a) for a in (
        "run", "--task", "ou2", "--method", "toy-npe", "--hf-sims", 30, "--store", store, "--n-workers", 1,
        "--max-num-epochs", 3, "--num-test-observations", 1, "--num-nltp-pairs", 10)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "C2ST vs euler-maruyama" in result.output

    run_name = "toy-npe-hf30-half-seed0"
    folder = store / "artifacts" / "ou2" / run_name
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["method"] == "toy-npe" and summary["run"] == run_name
    # The strategy ran: the whole budget simulated, one estimator trained on its first half.
    assert summary["hf"]["stored_ok"] == 30 and summary["hf_budget"]["reserved"] == 30
    assert summary["train"]["simulations"] == 15
    assert (folder / "loss-train-on-the-first-15-hf-rows-toy.png").stat().st_size > 0
    assert "pretrained" not in summary and "selection" not in summary and "lf" not in summary
    # Evaluation, calibration and storage are the amortised flow's, as for every method.
    assert summary["posterior"] == f"artifacts/ou2/{run_name}/posterior.pt" and (folder / "posterior.pt").stat().st_size
    assert np.isfinite(summary["metrics"]["c2st"]["euler-maruyama"]) and np.isfinite(summary["metrics"]["nltp"])
    assert SimulationStore(store).table("ou2", "hf").counts()["ok"] >= 30

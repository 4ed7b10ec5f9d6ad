"""The method registry: what derives from it, and a new sequential variant added by one entry."""

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from mfsbi.flows.methods import (
    AMORTIZED, FAMILIES, SEQUENTIAL, Method, available_methods, get_method, methods_of, register_method,
    unregister_method,
)
from mfsbi.storage import SimulationStore

import toy_proposal


def test_the_built_in_methods_and_their_families():
    assert available_methods() == ["npe", "mf-npe", "ml-npe", "tsnpe", "mf-tsnpe", "a-mf-tsnpe", "mf-abc"]
    assert [m for m in available_methods() if get_method(m).uses_lf] == [
        "mf-npe", "ml-npe", "mf-tsnpe", "a-mf-tsnpe", "mf-abc"]
    assert methods_of(AMORTIZED) == ["npe", "mf-npe", "ml-npe"]
    # Each amortised method is its training strategy, loaded from its module when a run calls it.
    assert [get_method(m).train.entrypoint for m in methods_of(AMORTIZED)] == [
        "mfsbi.flows.strategies:npe", "mfsbi.flows.strategies:mf_npe", "mfsbi.flows.multilevel:train_multilevel_run"]
    assert all(callable(get_method(m).train.load()) for m in methods_of(AMORTIZED))
    assert all(get_method(m).train is None for m in available_methods() if get_method(m).family is not AMORTIZED)
    assert methods_of(SEQUENTIAL) == ["tsnpe", "mf-tsnpe", "a-mf-tsnpe"]
    assert get_method("a-mf-tsnpe").members(5) == 5 and get_method("mf-tsnpe").members(5) == 1
    # Each method reads its options model: the common fields, its family's, its own.
    assert "ensemble_size" in get_method("a-mf-tsnpe").option_names
    assert "ensemble_size" not in get_method("tsnpe").option_names and "rounds" in get_method("tsnpe").option_names
    assert "abc_quantile" in get_method("mf-abc").option_names and "rounds" not in get_method("npe").option_names


def test_every_family_flow_loads_and_prefect_yaml_uses_only_each_familys_options():
    from prefect import Flow

    from mfsbi.flows.config import RunConfig

    spec = {d["name"]: d for d in yaml.safe_load(open("deploy/prefect.yaml"))["deployments"]}
    for family in FAMILIES:
        flow = family.load_flow()
        assert isinstance(flow, Flow) and flow.name == family.deployment
        parameters = spec[family.deployment]["parameters"]["config"]
        method = get_method(parameters.get("method", family.default_method))
        assert method.family is family
        assert set(parameters) <= method.option_names, set(parameters) - method.option_names
        RunConfig(**parameters)
    # Every RunConfig field belongs to exactly one option group.
    groups = [g for m in available_methods() for g in get_method(m).option_groups]
    fields = [name for group in dict.fromkeys(groups) for name in group.model_fields]
    assert sorted(fields) == sorted(RunConfig.model_fields)


def test_a_method_without_its_familys_needs_is_refused_at_registration():
    with pytest.raises(ValueError, match="proposal"):
        Method("broken", SEQUENTIAL, uses_lf=False)
    with pytest.raises(ValueError, match="proposal"):
        Method("broken", AMORTIZED, uses_lf=False, propose=toy_proposal.half_from_prior)


def test_an_unknown_method_is_refused_with_the_choices():
    from mfsbi.flows.config import RunConfig

    with pytest.raises(ValueError, match="choose one of npe, mf-npe"):
        RunConfig(task="ou2", method="magic")


@pytest.fixture
def toy_method():
    """The whole of a new sequential variant: its proposal module and this one registry entry."""
    method = register_method(Method("toy-tsnpe", SEQUENTIAL, uses_lf=False, propose=toy_proposal.half_from_prior,
                                    description="half prior, half truncated (a test)"))
    yield method
    unregister_method(method.name)


def test_a_toy_sequential_method_runs_through_the_cli(tmp_path, prefect_server, shared_dask, toy_method):
    from mfsbi.app.cli import app

    store = tmp_path / "store"
    # The per-round C2ST only reports (tests/test_sequential_flow.py); the check near x_o and 1 000
    # posterior samples for the final metrics are not what this test reads.
    config = tmp_path / "light-evaluation.toml"
    config.write_text("evaluate_rounds = false\ncoverage_folds = 0\nposterior_samples = 200\n")
    result = CliRunner().invoke(app, [str(a) for a in (
        "run", "--config", config, "--task", "ou2", "--method", "toy-tsnpe", "--hf-sims", 12, "--rounds", 2,
        "--store", store, "--n-workers", 1, "--max-num-epochs", 3, "--num-test-observations", 1, "--num-nltp-pairs", 0,
        "--observation-index", 0)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "rounds" in result.output and "C2ST vs euler-maruyama" in result.output
    assert "calibration (SBC + TARP on x_o" in result.output

    run_name = "toy-tsnpe-hf12-r2-obs0-seed0"
    folder = store / "artifacts" / "ou2" / run_name
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["method"] == "toy-tsnpe" and [r["new_simulations"] for r in summary["rounds"]] == [6, 6]
    assert "pretrained" not in summary  # uses_lf=False: no LF table, no pretraining
    # Round 2 was proposed by the toy: its facts are stored with the round, half of it from the prior.
    assert json.loads((folder / "round-1.json").read_text())["from_prior"] == 3
    table = SimulationStore(store).table(f"ou2.{run_name}", "hf")
    assert table.counts()["ok"] == 12 and table.budget().reserved == 12
    assert len(table.read("ok", rounds=[1])[0]) == 6
    assert ("ou2", "lf") not in SimulationStore(store).tables()
    assert np.isfinite(summary["metrics"]["c2st"]["euler-maruyama"])

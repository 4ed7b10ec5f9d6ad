"""Deployments without a Prefect server: where a submitted run's store lives, ``mfsbi deploy --cron``,
and the flow-side refusal of a store a deployment run would lose."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from mfsbi.app import deployments, service_cli
from mfsbi.app.cli import app
from mfsbi.flows.run import check_store_location
from mfsbi.storage import StoreError

runner = CliRunner()


@pytest.fixture
def no_api(monkeypatch, tmp_path):
    """No Prefect API anywhere, and a command that asks for one fails the test."""
    monkeypatch.setenv("MFSBI_HOME", str(tmp_path / "home"))
    for key in ("PREFECT_API_URL", "MFSBI_DASK_ADDRESS"):
        monkeypatch.delenv(key, raising=False)

    def require_api():
        raise AssertionError("the API was needed before the input was checked")

    monkeypatch.setattr(service_cli, "require_api", require_api)


# ---- submit: the store ------------------------------------------------------------------------

@pytest.mark.parametrize("given, expected", [("runs/ou2", "runs/ou2"), (None, "mfsbi-store"),
                                             ("./a/../b", "b")])
def test_a_relative_or_default_store_is_made_absolute_against_the_cwd(monkeypatch, tmp_path, given, expected):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MFSBI_DASK_ADDRESS", raising=False)
    monkeypatch.setenv("MFSBI_HOME", str(tmp_path / "home"))
    values = {"task": "ou2", "hf_sims": "20"} | ({"store": given} if given else {})
    config = deployments.build_submit_config("mfsbi-amortized", values)
    assert config.store == str(tmp_path / expected)
    assert Path(config.store).is_absolute()


@pytest.mark.parametrize("store", ["memory://ou2", "s3://bucket/ou2", "file:///data/ou2"])
def test_a_store_url_is_unchanged(monkeypatch, tmp_path, store):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MFSBI_HOME", str(tmp_path / "home"))
    config = deployments.build_submit_config("mfsbi-amortized", {"task": "ou2", "store": store})
    assert config.store == store


def test_an_absolute_store_is_unchanged(monkeypatch, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setenv("MFSBI_HOME", str(tmp_path / "home"))
    config = deployments.build_submit_config("mfsbi-amortized", {"task": "ou2", "store": str(tmp_path / "s")})
    assert config.store == str(tmp_path / "s")


def test_bad_submit_parameters_are_refused_before_the_api(no_api):
    # (Moved here from the deploy-path test, which ran it as a subprocess against live services.)
    result = runner.invoke(app, ["submit", "mfsbi-amortized", "--param", "task=ou2", "--param", "hf_sims=0"])
    assert result.exit_code == 2, result.output
    assert "--hf-sims" in result.output and len(result.output.strip().splitlines()) == 1


# ---- deploy --cron ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--cron", "not a cron"], "--cron: 'not a cron' is not a cron expression"),
    (["--cron", "61 * * * *"], "--cron: '61 * * * *' is not a cron expression"),
    (["--cron", "0 2 * * *", "--no-schedule"], "--cron: cannot be combined with --no-schedule"),
])
def test_bad_cron_is_refused_before_the_api(no_api, args, expected):
    result = runner.invoke(app, ["deploy", *args])
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args, called", [
    (["--cron", "0 2 * * *"], {"with_schedule": True, "cron": "0 2 * * *"}),
    (["--no-schedule"], {"with_schedule": False, "cron": None}),
    ([], {"with_schedule": True, "cron": None}),
])
def test_deploy_passes_the_schedule_on(no_api, monkeypatch, args, called):
    calls = []
    monkeypatch.setattr(service_cli, "require_api", lambda: "http://127.0.0.1:1/api")
    monkeypatch.setattr(deployments, "register_deployments",
                        lambda **kwargs: calls.append(kwargs) or [("mfsbi-amortized/mfsbi-amortized", "id")])
    result = runner.invoke(app, ["deploy", *args])
    assert result.exit_code == 0, result.output
    assert calls == [called]


def test_the_schedules_of_mfsbi_amortized(monkeypatch, tmp_path):
    monkeypatch.setenv("MFSBI_HOME", str(tmp_path / "home"))
    (active,) = deployments.amortized_schedules(cron="0 2 * * *")
    assert (active.cron, active.timezone, active.active) == ("0 2 * * *", "UTC", True)
    (example,) = deployments.amortized_schedules()
    assert (example.cron, example.active) == (deployments.EXAMPLE_CRON, False)
    assert deployments.amortized_schedules(with_schedule=False) is None
    for schedule in (active, example):
        store = schedule.parameters["config"]["store"]
        assert store == str(tmp_path / "home" / "stores" / "ou2") and Path(store).is_absolute()
        from mfsbi.flows.config import RunConfig

        RunConfig(**schedule.parameters["config"])


def test_the_scheduled_store_is_absolute_with_a_relative_or_default_home(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MFSBI_HOME", "rel-home")
    assert deployments.scheduled_store() == str(tmp_path / "rel-home" / "stores" / "ou2")
    monkeypatch.delenv("MFSBI_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert deployments.scheduled_store() == str(tmp_path / "user" / ".mfsbi" / "stores" / "ou2")


def test_register_deployments_sends_the_schedule(monkeypatch, tmp_path):
    """Through Prefect's own deployment objects, with ``apply`` (the API call) replaced."""
    from prefect.deployments.runner import RunnerDeployment

    monkeypatch.setenv("MFSBI_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(deployments, "ensure_work_pool", lambda: True)
    sent = {}

    def apply(self, *args, **kwargs):
        sent[self.name] = self
        return uuid.uuid4()

    monkeypatch.setattr(RunnerDeployment, "apply", apply)
    registered = deployments.register_deployments(["mfsbi-amortized", "mfsbi-sequential"], cron="0 2 * * *")
    assert [name for name, _ in registered] == ["mfsbi-amortized/mfsbi-amortized", "mfsbi-sequential/mfsbi-sequential"]
    (schedule,) = sent["mfsbi-amortized"].schedules
    assert schedule.active and schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "UTC"
    assert schedule.parameters["config"]["store"] == str(tmp_path / "home" / "stores" / "ou2")
    assert (tmp_path / "home" / "stores").is_dir(), "the parent the scheduled run needs is made"
    assert not sent["mfsbi-sequential"].schedules
    # The existing callers: positional names, with_schedule only.
    deployments.register_deployments(["mfsbi-amortized"], with_schedule=False)
    assert not sent["mfsbi-amortized"].schedules
    deployments.register_deployments(["mfsbi-amortized"])
    assert [s.active for s in sent["mfsbi-amortized"].schedules] == [False]


# ---- the flow side: a deployment run refuses a store it would lose ----------------------------

@pytest.fixture
def in_deployment_run(monkeypatch):
    """A flow run context as a worker's flow run has it: the flow run names its deployment."""
    from prefect.context import FlowRunContext

    context = SimpleNamespace(flow_run=SimpleNamespace(deployment_id=uuid.uuid4()))
    monkeypatch.setattr(FlowRunContext, "get", classmethod(lambda cls: context))


def test_a_deployment_run_refuses_a_relative_store(in_deployment_run):
    with pytest.raises(StoreError, match=r"^store: 'mfsbi-store' is relative.*give an absolute path"):
        check_store_location("mfsbi-store")


def test_a_deployment_run_refuses_a_store_whose_parent_is_missing(in_deployment_run, tmp_path):
    with pytest.raises(StoreError, match=r"^store: the folder .*typo does not exist"):
        check_store_location(str(tmp_path / "typo" / "store"))
    assert not (tmp_path / "typo").exists()


def test_a_deployment_run_accepts_a_new_store_in_an_existing_folder_and_urls(in_deployment_run, tmp_path):
    check_store_location(str(tmp_path / "new-store"))
    check_store_location("memory://ou2")
    check_store_location("s3://bucket/ou2")


def test_without_a_deployment_any_store_is_accepted(monkeypatch, tmp_path):
    """``mfsbi run`` runs in the user's folder: a relative store, and a new folder chain, are created."""
    from prefect.context import FlowRunContext

    check_store_location("mfsbi-store")  # no flow run at all
    local = SimpleNamespace(flow_run=SimpleNamespace(deployment_id=None))
    monkeypatch.setattr(FlowRunContext, "get", classmethod(lambda cls: local))
    check_store_location("runs/ou2")
    check_store_location(str(tmp_path / "a" / "b" / "store"))


def test_run_start_checks_the_store_before_opening_it(in_deployment_run, tmp_path, monkeypatch):
    from mfsbi.flows.config import RunConfig
    from mfsbi.flows.run import Run

    monkeypatch.chdir(tmp_path)
    config = RunConfig(task="ou2", method="npe", store="rel-store")
    with pytest.raises(StoreError, match="^store: 'rel-store' is relative"):
        Run.start(config, executor=None, device="cpu")
    assert not (tmp_path / "rel-store").exists()


def test_use_api_keeps_pointing_prefect_at_the_given_server_after_prefect_was_imported(monkeypatch):
    """The override must outlive garbage collection: `mfsbi deploy` once registered on a temporary server."""
    import gc

    import prefect  # noqa: F401 -- imported first, as the CLI's checks do
    from prefect.settings import get_current_settings

    from mfsbi.app import stack

    monkeypatch.setattr(stack, "_API_OVERRIDES", [])
    before = os.environ.get("PREFECT_API_URL")
    try:
        stack.use_api("http://127.0.0.1:9/api")
        gc.collect()
        assert get_current_settings().api.url == "http://127.0.0.1:9/api"
    finally:
        for override in reversed(stack._API_OVERRIDES):
            override.__exit__(None, None, None)
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before

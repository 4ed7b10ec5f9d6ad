"""`mfsbi infer` and the `mfsbi-infer` deployment: new observations of a folder through the latest posterior.

The deployment under `mfsbi serve` with a cron schedule that fires during the test is in
tests/test_infer_serve.py (slow); here: the command end to end, the flow as a deployment run calls it,
the deployment's registration and schedule, and the folder's files (NWB included).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from prefect import flow
from typer.testing import CliRunner

from mfsbi.app.cli import app
from mfsbi.simulators import get_task

runner = CliRunner()


@flow
def _tiny_run(store: str):
    from mfsbi.flows.amortized import run_amortized
    from mfsbi.flows.config import RunConfig
    from mfsbi.runtime.executor import SerialExecutor

    config = RunConfig(task="ou2", method="npe", hf_sims=20, store=store, seed=0, num_test_observations=0,
                       num_nltp_pairs=0, max_num_epochs=3, hf_chunk_size=10)
    return run_amortized(config, SerialExecutor()).to_dict()


def tiny_store(store: Path) -> tuple[Path, str]:
    """A trained NPE run on 20 OU2 HF simulations (3 epochs) in ``store``: the store and ``TASK/RUN``."""
    summary = _tiny_run(str(store))
    return store, f"ou2/{summary['run']}"


def save_ou2(path: Path, theta: tuple[float, float], seed: int) -> None:
    x = get_task("ou2").high_fidelity(np.array([theta]), seed=seed)
    np.save(path, (x[0] if isinstance(x, tuple) else x)[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_server):
    return tiny_store(tmp_path_factory.mktemp("infer") / "store")


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _files(store: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(store)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in store.rglob("*") if p.is_file() and p.name != "lock")


def _night_artifacts(night: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["markdown"])))
    return [a for a in artifacts if a.key and a.key.startswith("infer-") and a.key.endswith(night)]


def test_infer_end_to_end_idempotent_and_only_new_files(trained, shared_dask, tmp_path):
    from mfsbi.storage import SimulationStore

    store, run = trained
    folder = tmp_path / "observations"
    folder.mkdir()
    save_ou2(folder / "a.npy", (1.5, 0.3), seed=1)
    save_ou2(folder / "b.npy", (0.5, 0.8), seed=2)
    (folder / "notes.txt").write_text("not an observation")

    first = _invoke("infer", "--observations", folder, "--store", store, "--ppc-sims", 10, "-n", 200)
    assert first.exit_code == 0, first.output
    assert "infer: 2 new, 0 inferred before" in first.output and "10 HF and 10 LF" in first.output
    handle = SimulationStore(str(store), mode="r")
    report = json.loads(handle.read_artifact(f"inference/reports/{datetime.now(timezone.utc).date()}.json"))
    assert [r["file"] for r in report["observations"]] == ["a.npy", "b.npy"] and report["failed"] == []
    for row in report["observations"]:
        result = json.loads(handle.read_artifact(row["result"].removeprefix("artifacts/")))
        assert result["run"] == run and result["parameters"] == list(get_task("ou2").parameter_names)
        samples = np.load(store / result["samples"])
        assert samples.shape == (200, 2) and np.allclose(samples.mean(axis=0), result["mean"])
        assert result["ppc"]["num_draws"] == 10 and result["ppc"]["status"] == "inconclusive"  # 10 < 399 draws
        hf_table = result["ppc"]["tables"]["hf"].rsplit("/", 1)[0]
        assert handle.table(hf_table, "hf").counts()["ok"] == 10 and handle.table(hf_table, "lf").counts()["ok"] == 10
        assert (store / result["plot"]).read_bytes().startswith(b"\x89PNG")
        assert f"{row['observation']} " in first.output.replace("\n", " ") or row["observation"] in first.output
    (markdown,) = _night_artifacts(report["night"])
    assert "a.npy" in markdown.data and "b.npy" in markdown.data and "inconclusive (10 draws)" in markdown.data

    before = _files(store)
    second = _invoke("infer", "--observations", folder, "--store", store, "--ppc-sims", 10, "-n", 200)
    assert second.exit_code == 0, second.output
    assert "infer: 0 new, 2 inferred before" in second.output and "nothing new" in second.output
    assert "Prefect API" not in second.output  # nothing to do: no services started
    assert _files(store) == before  # nothing written, nothing simulated

    save_ou2(folder / "c.npy", (1.0, 0.5), seed=3)
    np.save(folder / "short.npy", np.zeros(3))
    (folder / "garbage.npy").write_bytes(b"not numpy")
    third = runner.invoke(
        app, ["infer", "--json", "--observations", str(folder), "--store", str(store), "--ppc-sims", "10", "-n", "200"])
    assert third.exit_code == 1, third.output
    rows = {r["file"]: r for r in json.loads(third.stdout)["observations"]}
    assert {f: r["status"] for f, r in rows.items()} == {"a.npy": "done", "b.npy": "done", "c.npy": "new",
                                                          "garbage.npy": "failed", "short.npy": "failed"}
    assert rows["short.npy"]["error"].startswith("short.npy: shape (3,) does not match")
    assert rows["garbage.npy"]["error"].startswith("garbage.npy:") and "\n" not in rows["garbage.npy"]["error"]
    assert rows["c.npy"]["ppc"]["simulated_now"] == {"hf": 10, "lf": 10}
    changed = {name for name, *_ in set(_files(store)) - set(before)}
    assert changed and not any(rows[f]["observation"] in name for f in ("a.npy", "b.npy") for name in changed)
    assert not any("short" in name or "garbage" in name for name in changed)  # nothing of a failed file
    night = json.loads(SimulationStore(str(store), mode="r").read_artifact(
        f"inference/reports/{report['night']}.json"))
    assert [r["file"] for r in night["observations"]] == ["a.npy", "b.npy", "c.npy"]
    assert sorted(r["file"] for r in night["failed"]) == ["garbage.npy", "short.npy"] and night["passes"] == 2
    versions = _night_artifacts(report["night"])  # one report per night: a new version of its key
    assert {a.key for a in versions} == {markdown.key} and any("c.npy" in a.data for a in versions)


@pytest.mark.parametrize("make, expected", [
    (lambda d: d.mkdir(), "holds no .npy or .nwb file"),
    (lambda d: None, "is not a folder"),
])
def test_a_folder_without_observations_is_one_line(trained, tmp_path, make, expected):
    store, _ = trained
    make(tmp_path / "obs")
    before = _files(store)
    result = _invoke("infer", "--observations", tmp_path / "obs", "--store", store)
    assert result.exit_code == 2 and result.output.startswith("error: --observations:") and expected in result.output
    assert len(result.output.strip().splitlines()) == 1 and _files(store) == before


def test_a_store_without_a_run_is_one_line(tmp_path):
    (tmp_path / "obs").mkdir()
    np.save(tmp_path / "obs" / "x.npy", np.zeros(10))
    result = _invoke("infer", "--observations", tmp_path / "obs", "--store", tmp_path / "none")
    assert result.exit_code == 2 and result.output.startswith("error: --store:")
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "none").exists()


def test_the_flow_as_a_deployment_run_calls_it(trained, tmp_path, prefect_server):
    """A dict config, as a deployment's parameters arrive; no check (no Dask): samples and the report."""
    from mfsbi.app.nightly import infer_flow

    store, run = trained
    folder = tmp_path / "nightly"
    folder.mkdir()
    save_ou2(folder / "night.npy", (1.2, 0.4), seed=9)
    report = infer_flow({"observations": str(folder), "store": str(store), "ppc_sims": 0, "num_samples": 50})
    (row,) = report["observations"]
    assert row["status"] == "new" and row["ppc"] is None and row["run"] == run and report["report"]
    again = infer_flow({"observations": str(folder), "store": str(store), "ppc_sims": 0, "num_samples": 50})
    assert again["counts"] == {"new": 0, "done": 1, "failed": 0} and again["report"] is None


def test_the_deployment_is_registered_with_its_schedule(monkeypatch, tmp_path):
    from prefect.deployments.runner import RunnerDeployment

    from mfsbi.app import deployments
    from mfsbi.app.infer_plan import InferConfig

    monkeypatch.setenv("MFSBI_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(deployments, "ensure_work_pool", lambda: True)
    sent = {}
    monkeypatch.setattr(RunnerDeployment, "apply", lambda self, *a, **k: sent.setdefault(self.name, self) and uuid.uuid4())
    registered = deployments.register_deployments(["mfsbi-infer"], cron="* * * * *")
    assert [name for name, _ in registered] == ["mfsbi-infer/mfsbi-infer"]
    deployment = sent["mfsbi-infer"]
    assert deployment.entrypoint == "mfsbi.app.nightly.infer_flow"
    (schedule,) = deployment.schedules
    assert schedule.active and schedule.schedule.cron == "* * * * *"
    config = InferConfig(**schedule.parameters["config"])
    assert config.observations == str(tmp_path / "home" / "observations") and Path(config.observations).is_dir()
    assert config.store == deployments.scheduled_store() and config.lock_wait > 0
    assert "mfsbi-infer" in deployments.deployment_names()
    with pytest.raises(deployments.ParamError, match="^--deployment: 'nope'"):
        deployments.register_deployments(["nope"])


def test_submit_validates_the_infer_parameters(monkeypatch, tmp_path):
    from mfsbi.app import deployments

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MFSBI_DASK_ADDRESS", raising=False)
    monkeypatch.setenv("MFSBI_HOME", str(tmp_path / "home"))
    config = deployments.build_submit_config("mfsbi-infer", {"observations": "obs", "store": "s", "ppc_sims": "5"})
    assert config.observations == str(tmp_path / "obs") and config.store == str(tmp_path / "s") and config.ppc_sims == 5
    with pytest.raises(deployments.ParamError, match="^--param: 'hf_sims' is not a setting of mfsbi-infer"):
        deployments.build_submit_config("mfsbi-infer", {"observations": "o", "store": "s", "hf_sims": "5"})


# ---- the folder's files ------------------------------------------------------------------------

def test_an_observation_id_is_stable_and_changes_with_the_bytes_or_the_name(tmp_path):
    from mfsbi.app.observations import observation_files

    np.save(tmp_path / "a b.npy", np.arange(3.0))
    (first,), _ = observation_files(tmp_path)
    (again,), _ = observation_files(tmp_path)
    assert first.id == again.id and first.id.startswith("a_b-npy-")
    np.save(tmp_path / "a b.npy", np.arange(3.0) + 1)
    (changed,), _ = observation_files(tmp_path)
    (tmp_path / "a b.npy").rename(tmp_path / "c.npy")
    (renamed,), _ = observation_files(tmp_path)
    assert len({first.id, changed.id, renamed.id}) == 3


def _write_nwb(path: Path, names: tuple[str, ...], data: np.ndarray, rate: float = 1000.0) -> None:
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.icephys import CurrentClampSeries

    nwbfile = NWBFile(session_description="test", identifier="mfsbi-infer",
                      session_start_time=datetime(2026, 1, 1, tzinfo=timezone.utc))
    device = nwbfile.create_device(name="amp")
    electrode = nwbfile.create_icephys_electrode(name="soma", description="soma", device=device)
    for name in names:
        nwbfile.add_acquisition(CurrentClampSeries(name=name, data=data, electrode=electrode, rate=rate,
                                                   starting_time=0.0))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)


def test_an_nwb_recording_becomes_the_tasks_statistics_through_its_recording(tmp_path):
    """A task with a recording (a stand-in: the trace's mean and the rate); the file's only series by default."""
    from mfsbi.app.observations import ObservationError, read_statistics

    task = SimpleNamespace(name="stand-in", x_dim=2, recording=object(),
                           statistics_of_recording=lambda trace, rate: np.array([trace.mean(), rate]))
    trace = np.linspace(-0.07, -0.05, 500)
    _write_nwb(tmp_path / "one.nwb", ("sweep",), trace)
    assert np.allclose(read_statistics(tmp_path / "one.nwb", task), [trace.mean(), 1000.0])
    _write_nwb(tmp_path / "two.nwb", ("s1", "s2"), trace)
    with pytest.raises(ObservationError, match=r"^two.nwb: .*holds 2 current-clamp series \(s1, s2\); name one"):
        read_statistics(tmp_path / "two.nwb", task)
    assert np.allclose(read_statistics(tmp_path / "two.nwb", task, series="s2"), [trace.mean(), 1000.0])
    with pytest.raises(ObservationError, match=r"^two.nwb: 'nope' in the acquisition"):
        read_statistics(tmp_path / "two.nwb", task, series="nope")
    (tmp_path / "bad.nwb").write_bytes(b"not hdf5")
    with pytest.raises(ObservationError, match=r"^bad.nwb: .*is not a readable NWB file"):
        read_statistics(tmp_path / "bad.nwb", task)
    with pytest.raises(ObservationError, match=r"^one.nwb: task 'ou2' says no way to turn a recording"):
        read_statistics(tmp_path / "one.nwb", get_task("ou2"))

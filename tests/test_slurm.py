"""`--cluster slurm` on a real single-node SLURM (tests/local_slurm.py): runs, scaling, refusals.

The `slurm` tests need slurm-wlm, munge and root (`.ci/run` installs them and runs `pytest -m slurm`);
elsewhere they are skipped with the reason. The checks of the `--cluster` input need none of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from local_slurm import LocalSlurm, SlurmUnavailable, slurm_missing_reason
from serve_process import stop_serve

MFSBI = [sys.executable, "-m", "mfsbi.app.cli"]
SMALL = ["--num-test-observations", "1", "--num-nltp-pairs", "5", "--max-num-epochs", "5"]


def _unavailable(reason: str) -> None:
    """Skip, or fail where SLURM was promised (`.ci/run` sets MFSBI_REQUIRE_SLURM=1 once it installed it)."""
    if os.environ.get("MFSBI_REQUIRE_SLURM") == "1":
        pytest.fail(f"MFSBI_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = slurm_missing_reason()
    if reason:
        _unavailable(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmUnavailable as error:
        _unavailable(f"local SLURM did not start: {error}")
    try:
        yield cluster
    finally:
        cluster.stop()


def _cluster_file(folder: Path, **slurm) -> Path:
    """A --cluster file for this machine: small jobs, quick scaling."""
    settings = {"maximum-jobs": 2, "start-timeout": 60, "target-duration": "0.2s", "wait-count": 3, **slurm}
    path = folder / "cluster.yaml"
    path.write_text(json.dumps({"jobqueue": {"slurm": {"memory": "2GiB", "walltime": "00:20:00"}},
                                "mfsbi": {"slurm": settings}}))  # JSON is YAML
    return path


def _mfsbi(args: list[str], slurm: LocalSlurm, home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    # PYTHONPATH: the SLURM jobs (which get this environment) import tests/slow_ou.py.
    env = {**os.environ, **slurm.environ, "MFSBI_HOME": str(home), "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    env.pop("PREFECT_API_URL", None)
    env.pop("MFSBI_DASK_ADDRESS", None)
    return subprocess.run([*MFSBI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _launched(slurm: LocalSlurm) -> int:
    return (slurm.root / "log" / "slurmd.log").read_text().count("Launching batch job")


@pytest.mark.slurm
def test_a_run_on_slurm_scales_up_with_the_simulations_and_leaves_no_job(slurm, tmp_path):
    before = _launched(slurm)
    store = tmp_path / "store"
    result = _mfsbi(["run", "--task", "slow_ou:slow_ou2", "--method", "mf-npe", "--lf-sims", "4000", "--hf-sims", "20",
                     "--store", str(store), "--cluster", str(_cluster_file(tmp_path)), "--json", *SMALL],
                    slurm, tmp_path / "home")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    summary = json.loads(result.stdout)
    assert summary["hf"]["stored_ok"] == 20 and summary["lf"]["stored_ok"] == 4000
    assert _launched(slurm) - before >= 2, "the LF fan-out did not scale to a second SLURM job"
    deadline = time.monotonic() + 30
    while slurm.jobs() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert slurm.jobs() == [], "worker jobs left in squeue"
    assert not list((tmp_path / "home" / "slurm-tls").glob(".dask-jobqueue.*")), "TLS keys left on disk"
    # The workers spoke TLS (the scheduler listens beyond 127.0.0.1).
    logs = "".join(p.read_text() for p in (tmp_path / "home" / "slurm-logs").glob("*.err"))
    assert "tls://" in logs and "tcp://" not in logs


@pytest.mark.slurm
def test_a_partition_that_starts_no_job_stops_the_run_clearly_and_the_same_command_continues(slurm, tmp_path):
    store = tmp_path / "store"
    args = ["run", "--task", "ou2", "--method", "npe", "--hf-sims", "20", "--store", str(store), *SMALL]
    impatient = tmp_path / "impatient"
    impatient.mkdir()
    slurm.set_partition("DOWN")
    try:
        refused = _mfsbi([*args, "--cluster", str(_cluster_file(impatient, **{"start-timeout": 8}))], slurm,
                         tmp_path / "home")
    finally:
        slurm.set_partition("UP")
    assert refused.returncode != 0
    (error,) = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert "no SLURM worker job started within 8 s" in error and "PartitionDown" in error, refused.stderr[-2000:]
    assert not (store / "ou2").exists(), "something was written although nothing ran"
    assert slurm.jobs() == [], "the pending job was not cancelled"
    again = _mfsbi([*args, "--json", "--cluster", str(_cluster_file(tmp_path))], slurm, tmp_path / "home")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["hf"]["stored_ok"] == 20


@pytest.mark.parametrize("args, message", [
    (["--cluster", "no-such-file.yaml"], "--cluster: 'no-such-file.yaml' is neither 'slurm' nor an existing YAML"),
    (["--cluster", "slurm", "--dask-address", "tcp://127.0.0.1:1"], "--cluster: give either it or --dask-address"),
])
def test_bad_cluster_options_get_one_line_and_exit_2(tmp_path, args, message):
    from typer.testing import CliRunner

    from mfsbi.app.cli import app

    # In process: the refusal comes before anything starts (a subprocess only added its import time).
    result = CliRunner().invoke(app, ["run", "--task", "ou2", "--store", str(tmp_path / "s"), *args],
                                catch_exceptions=False)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "s").exists()


def test_a_cluster_file_with_a_bad_key_is_refused(tmp_path):
    from mfsbi.runtime.slurm import ClusterConfigError, load_slurm_settings

    path = tmp_path / "c.yaml"
    path.write_text("mfsbi:\n  slurm:\n    maximum-job: 3\n")
    with pytest.raises(ClusterConfigError, match="unknown key mfsbi.slurm.maximum-job"):
        load_slurm_settings(str(path))
    path.write_text("mfsbi:\n  slurm:\n    minimum-jobs: 4\n    maximum-jobs: 2\n")
    with pytest.raises(ClusterConfigError, match="minimum-jobs"):
        load_slurm_settings(str(path))
    packaged = load_slurm_settings("slurm")
    assert packaged.jobqueue["cores"] == 1 and packaged.tls and packaged.minimum_jobs == 1


def test_gpu_training_jobs_ask_slurm_for_the_gpu_and_join_with_tls():
    from mfsbi.runtime.slurm import gpu_job_command, load_slurm_settings

    command = gpu_job_command(load_slurm_settings("slurm"), "tls://10.0.0.1:8786", ["--tls-ca-file", "/s/ca"])
    assert command[:2] == ["sbatch", "--parsable"] and "--gres=gpu:1" in command
    wrapped = command[-1]
    assert "--resources GPU=1" in wrapped and "tls://10.0.0.1:8786" in wrapped and "--tls-ca-file /s/ca" in wrapped


@pytest.mark.slurm
def test_serve_on_slurm_runs_a_scheduled_deployment_run_on_slurm_jobs(slurm, tmp_path):
    """`mfsbi serve --cluster`: a deployment with a cron schedule, and a run scheduled through the API
    as Prefect's scheduler makes them, runs on SLURM worker jobs; `mfsbi runs`/`status` show it."""
    home, store = tmp_path / "home", tmp_path / "store"
    env = {**os.environ, **slurm.environ, "MFSBI_HOME": str(home), "PREFECT_WORKER_QUERY_SECONDS": "2",
           "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    for key in ("PREFECT_API_URL", "MFSBI_DASK_ADDRESS", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(key, None)
    before = _launched(slurm)
    log = open(tmp_path / "serve.out", "w+")
    serve = subprocess.Popen([*MFSBI, "serve", "--prefect-port", "0", "--cluster", str(_cluster_file(tmp_path))],
                             env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (home / "serve.json").exists():
            assert serve.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.out").read_text()
            time.sleep(1)
        info = json.loads((home / "serve.json").read_text())
        assert info["dask_address"].startswith("tls://"), info
        assert slurm.jobs(), "no worker job while serve is up"

        deploy = subprocess.run([*MFSBI, "deploy", "--cron", "0 2 * * *"], env=env, capture_output=True,
                                text=True, timeout=180)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        scheduled = subprocess.run([sys.executable, "-c", f"""
import datetime, json, time
from prefect.client.orchestration import get_client
from prefect.states import Scheduled
from mfsbi.flows.config import RunConfig
config = RunConfig(task="ou2", method="mf-npe", lf_sims=500, hf_sims=20, store={str(store)!r}, max_num_epochs=5,
                   num_test_observations=1, num_nltp_pairs=5)
with get_client(sync_client=True) as client:
    (deployment,) = [d for d in client.read_deployments() if d.name == "mfsbi-amortized"]
    due = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=5)
    run = client.create_flow_run_from_deployment(deployment.id, parameters={{"config": config.model_dump(mode="json")}},
                                                 state=Scheduled(scheduled_time=due))
    for _ in range(600):
        run = client.read_flow_run(run.id)
        if run.state.is_final():
            break
        time.sleep(1)
    print(json.dumps({{"state": run.state.type.value, "message": run.state.message,
                      "schedules": [[s.active, s.schedule.cron] for s in deployment.schedules]}}))
"""], env={**env, "PREFECT_API_URL": info["prefect_api_url"],
                                                    "PREFECT_API_AUTH_STRING": (home / "prefect-auth-string").read_text().strip()}, capture_output=True, text=True, timeout=700)
        assert scheduled.returncode == 0, deploy.stdout + scheduled.stderr[-1500:]
        facts = json.loads(scheduled.stdout.strip().splitlines()[-1])
        worker_log = (home / "logs" / "prefect-worker.log").read_text()
        assert facts["state"] == "COMPLETED", json.dumps(facts) + worker_log[-3000:]
        assert facts["schedules"] == [[True, "0 2 * * *"]]
        # serve started no local Dask worker: the flow's simulations and training ran on SLURM jobs.
        assert _launched(slurm) > before
        runs = subprocess.run([*MFSBI, "runs", "--json"], env=env, capture_output=True, text=True, timeout=120)
        assert runs.returncode == 0 and any(r["state"] == "Completed" for r in json.loads(runs.stdout))
        status = subprocess.run([*MFSBI, "status", str(store)], env=env, capture_output=True, text=True, timeout=120)
        assert status.returncode == 0 and "20 / 20" in status.stdout, status.stdout + status.stderr
    finally:
        stop_serve(serve, grace=90)
        log.close()
    assert serve.returncode == 0, (tmp_path / "serve.out").read_text()
    deadline = time.monotonic() + 30
    while slurm.jobs() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert slurm.jobs() == [], "serve left worker jobs in squeue"
    assert not (home / "slurm-tls" / "clients").exists(), "the clients' TLS key was left on disk"


@pytest.mark.slurm
def test_scancel_of_every_worker_job_mid_hf_is_survived_with_nothing_lost(slurm, prefect_server, tmp_path,
                                                                         monkeypatch):
    """The drill of benchmarks/fault_injection.py: replacement jobs are submitted, the run completes."""
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import fault_injection as drills

    monkeypatch.setattr(drills, "CLUSTER", ["--cluster", str(_cluster_file(tmp_path, **{"target-duration": "5s"}))])
    for key, value in slurm.environ.items():
        monkeypatch.setenv(key, value)
    before = _launched(slurm)
    outcome = drills.kill_drill("scancel-all", 0, tmp_path, None, np.random.default_rng(5))
    assert outcome.completed and not outcome.detail, outcome
    assert (outcome.rows_lost, outcome.duplicates, outcome.budget_overruns) == (0, 0, 0), outcome
    assert outcome.extra["cancelled_jobs"] and _launched(slurm) - before > len(outcome.extra["cancelled_jobs"])

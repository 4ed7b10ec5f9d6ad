"""The `mfsbi-infer` deployment under `mfsbi serve`, on a cron schedule that fires during the test.

`mfsbi serve` (a subprocess: Prefect server, Dask scheduler and worker, the process work pool and a
Prefect worker), a trained OU2 store at `$MFSBI_HOME/stores/ou2` and two observations in
`$MFSBI_HOME/observations` (the scheduled pass's folder and store), then
`mfsbi deploy --cron "* * * * *" --deployment mfsbi-infer`. Cron has minute granularity: the
schedule fires at the next minute's start, so the test waits up to 3 minutes for a Completed flow
run of the deployment, then checks the store's results and the night's report artifact. Slow
(~2 minutes: serve's start, up to a minute to the next cron tick, the flow run's process start);
tests/test_infer.py covers the same pass in-process, the registration of the schedule and its
parameters, and the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from serve_process import stop_serve
from test_infer import save_ou2, tiny_store

MFSBI = [sys.executable, "-m", "mfsbi.app.cli"]


def _api_env(env: dict, home, info: dict) -> dict:
    return {**env, "PREFECT_API_URL": info["prefect_api_url"],
            "PREFECT_API_AUTH_STRING": (home / "prefect-auth-string").read_text().strip()}


@pytest.mark.slow
def test_the_scheduled_deployment_infers_the_folder_under_serve(tmp_path, prefect_server):
    home = tmp_path / "home"
    store, run = tiny_store(home / "stores" / "ou2")  # trained through the session's API, before serve
    (home / "observations").mkdir(parents=True)
    save_ou2(home / "observations" / "monday.npy", (1.5, 0.3), seed=1)
    save_ou2(home / "observations" / "tuesday.npy", (0.6, 0.9), seed=2)
    env = {**os.environ, "MFSBI_HOME": str(home), "PREFECT_WORKER_QUERY_SECONDS": "2", "PYTHONUNBUFFERED": "1"}
    for key in ("PREFECT_API_URL", "MFSBI_DASK_ADDRESS", "PREFECT_API_DATABASE_CONNECTION_URL",
                "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING"):
        env.pop(key, None)
    log = open(tmp_path / "serve.out", "w+")
    serve = subprocess.Popen([*MFSBI, "serve", "--workers", "1", "--prefect-port", "0", "--dask-port", "0",
                              "--dashboard-port", "0"], env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (home / "serve.json").exists():
            assert serve.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.out").read_text()
            time.sleep(1)
        info = json.loads((home / "serve.json").read_text())
        deploy = subprocess.run([*MFSBI, "deploy", "--cron", "* * * * *", "--deployment", "mfsbi-infer"],
                                env=env, capture_output=True, text=True, timeout=180)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        assert "mfsbi-infer/mfsbi-infer" in deploy.stdout and "mfsbi-amortized/" not in deploy.stdout
        assert f"observations {home / 'observations'}" in deploy.stdout.replace("\n", "")
        registered = time.time()
        waited = subprocess.run([sys.executable, "-c", """
import json, time
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
with get_client(sync_client=True) as client:
    deployment = client.read_deployment_by_name("mfsbi-infer/mfsbi-infer")
    paused = False
    for _ in range(480):
        runs = [r for r in client.read_flow_runs() if r.deployment_id == deployment.id and r.state is not None]
        if not paused and any(r.state.type.value != "SCHEDULED" for r in runs):
            # It fired: no further minute's run (each would start the whole stack in a process of its own).
            client.pause_deployment(deployment.id)
            paused = True
        final = sorted((r for r in runs if r.state.is_final()), key=lambda r: r.start_time or r.expected_start_time)
        if final:
            break
        time.sleep(1)
    run = final[0] if final else None
    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
        any_=[run.id]))) if run else []
    print(json.dumps({"state": run.state.type.value if run else None, "message": run.state.message if run else None,
                      "auto": bool(run and run.auto_scheduled), "start": run.start_time.timestamp() if run else None,
                      "artifacts": [[a.type, a.key, a.data if a.type == "markdown" else ""] for a in artifacts]}))
"""], env=_api_env(env, home, info), capture_output=True, text=True, timeout=700)
        assert waited.returncode == 0, waited.stderr
        facts = json.loads(waited.stdout.strip().splitlines()[-1])
        worker_log = (home / "logs" / "prefect-worker.log").read_text()[-3000:]
        assert facts["state"] == "COMPLETED", (facts, worker_log)
        assert facts["auto"] and facts["start"] >= registered - 1  # fired by the schedule, after the deploy
        reports = [data for kind, key, data in facts["artifacts"] if kind == "markdown" and key.startswith("infer-")]
        assert reports and "monday.npy" in reports[0] and "tuesday.npy" in reports[0], facts["artifacts"]

        from mfsbi.storage import SimulationStore

        handle = SimulationStore(str(store), mode="r")
        night = json.loads(handle.read_artifact(f"inference/reports/{time.strftime('%Y-%m-%d', time.gmtime())}.json"))
        assert sorted(r["file"] for r in night["observations"]) == ["monday.npy", "tuesday.npy"]
        for row in night["observations"]:
            assert row["run"] == run and row["ppc"]["num_draws"] == 20  # the deployment's default check
    finally:
        stop_serve(serve, grace=60)
        log.close()
    assert serve.returncode == 0, (tmp_path / "serve.out").read_text()

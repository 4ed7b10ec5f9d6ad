"""The real deploy path, without Docker: the services docker-compose.yml runs, as local processes.

PostgreSQL: Debian's server binaries (``apt-get install -y postgresql``) are found through
``pg_config --bindir``, ``/usr/lib/postgresql/*/bin`` or PATH. The test runs ``initdb`` into a fresh
directory and ``pg_ctl start -o "-k DIR -p PORT -c listen_addresses=127.0.0.1"``, as the current user,
or, when that is root (PostgreSQL refuses to run as root), as the ``postgres`` user through
``runuser -u postgres --`` (or ``su postgres -c``). When no server binaries are found or it cannot start,
the Prefect server runs on SQLite instead and the test says so in its output (``-rA``/``-s``).

Then ``mfsbi serve`` (a subprocess) starts the Prefect server on that database, a Dask scheduler, one
Dask worker, the process work pool and a Prefect worker, all on 127.0.0.1. ``mfsbi deploy`` registers
the deployments, ``mfsbi submit ... --follow`` runs a small OU2 MF-NPE to Completed; the Prefect API
must show the flow run Completed with its markdown metrics artifact, and the store the 20 HF
simulations. A submit without ``store`` keeps its store in the submitter's folder (not in the worker's
temporary one), a flow run handed a relative store fails saying so, and the registered schedule names
an absolute store. Everything is stopped with SIGTERM and no process of the test may be left.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from serve_process import stop_serve

# In the default suite on purpose (~70 s): it is the one test of the real service path.
MFSBI = [sys.executable, "-m", "mfsbi.app.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres_bindir() -> Path | None:
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).resolve().parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def _as_postgres_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *argv]
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(map(repr, argv))]


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust-free: a password from a file)."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="mfsbi-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.password = "mfsbi-test-" + os.urandom(6).hex()

    def start(self) -> str:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        run = lambda argv: subprocess.run(_as_postgres_user(argv), capture_output=True, text=True, timeout=120)
        result = run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "mfsbi", "--auth=scram-sha-256",
                      f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C"])
        if result.returncode:
            raise RuntimeError(f"initdb failed: {result.stderr.strip()[-300:]}")
        options = f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1"
        result = run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                      "-o", options, "-w", "-t", "60", "start"])
        if result.returncode:
            raise RuntimeError(f"pg_ctl start failed: {result.stderr.strip()[-300:]}")
        return f"postgresql+asyncpg://mfsbi:{self.password}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(_as_postgres_user([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                                              "-w", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def database():
    """(connection URL or None for SQLite, a description)."""
    bindir = _postgres_bindir()
    if bindir is None:
        yield None, "SQLite (no PostgreSQL server binaries: apt-get install -y postgresql)"
        return
    server = Postgres(bindir)
    try:
        url = server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired, KeyError) as error:
        server.stop()
        yield None, f"SQLite (PostgreSQL from {bindir} did not start: {error})"
        return
    try:
        yield url, f"PostgreSQL {bindir.parent.name} on 127.0.0.1:{server.port}"
    finally:
        server.stop()


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,pgid="], capture_output=True, text=True).stdout
    rows = [tuple(map(int, line.split())) for line in out.splitlines() if line.strip()]
    found, frontier = set(), {pid}
    while frontier:
        children = {p for p, pp, _ in rows if pp in frontier} - found
        found |= children
        frontier = children
    return found


def _alive(pids) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,stat="], capture_output=True, text=True).stdout
    live = {int(p) for p, stat in (line.split() for line in out.splitlines()) if not stat.startswith("Z")}
    return set(pids) & live


def test_serve_deploy_submit_on_local_services(tmp_path, database):
    url, description = database
    print(f"\ndatabase of the Prefect server: {description}")
    home = tmp_path / "home"
    env = {**os.environ, "MFSBI_HOME": str(home), "PREFECT_WORKER_QUERY_SECONDS": "2",
           "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    # The session's own Prefect server (tests/conftest.py) put its auth string in this process's environment:
    # serve's clients must read serve's, from the new MFSBI_HOME.
    for key in ("PREFECT_API_URL", "MFSBI_DASK_ADDRESS", "PREFECT_API_DATABASE_CONNECTION_URL",
                "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING"):
        env.pop(key, None)
    if url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = url
    serve_log = open(tmp_path / "serve.out", "w+")
    serve = subprocess.Popen([*MFSBI, "serve", "--workers", "1", "--prefect-port", "0", "--dask-port", "0",
                              "--dashboard-port", "0"], env=env, stdout=serve_log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while not (home / "serve.json").exists():
            seen |= _descendants(serve.pid)
            assert serve.poll() is None, f"mfsbi serve exited: {(tmp_path / 'serve.out').read_text()}"
            assert time.monotonic() < deadline, f"mfsbi serve not up: {(tmp_path / 'serve.out').read_text()}"
            time.sleep(1)
        info = json.loads((home / "serve.json").read_text())
        seen |= _descendants(serve.pid)
        assert info["prefect_api_url"].startswith("http://127.0.0.1:")
        assert info["dask_address"].startswith("tls://127.0.0.1:")  # TLS by default (mfsbi.runtime.tls)
        if url:  # the server really runs on PostgreSQL: no SQLite database was made
            assert not (home / "prefect" / "prefect.db").exists()

        # The API requires the auth string serve generated (mode 600 in MFSBI_HOME); without it: 401.
        import urllib.error
        import urllib.request

        assert (home / "prefect-auth-string").stat().st_mode & 0o777 == 0o600
        request = urllib.request.Request(info["prefect_api_url"] + "/flow_runs/filter", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        deploy = subprocess.run([*MFSBI, "deploy"], env=env, capture_output=True, text=True, timeout=180)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        assert "mfsbi-amortized/mfsbi-amortized" in deploy.stdout

        # (Bad parameters refused before anything is submitted: tests/test_deployments.py, in process.)

        # No `store`: the default is taken from the submitter's folder (not the worker's temporary one),
        # and outlives the flow run.
        submitter = tmp_path / "submitter"
        submitter.mkdir()
        store = submitter / "mfsbi-store"
        submit = subprocess.run(
            [*MFSBI, "submit", "mfsbi-amortized", "--param", "task=ou2", "--param", "method=mf-npe",
             "--param", "lf_sims=300", "--param", "hf_sims=20", "--param", "transfer_guard=off",
             "--param", "max_num_epochs=5", "--param", "num_test_observations=0", "--param", "num_nltp_pairs=5",
             "--follow", "--timeout", "600"],
            env=env, cwd=submitter, capture_output=True, text=True, timeout=700)
        seen |= _descendants(serve.pid)
        assert submit.returncode == 0, submit.stdout + submit.stderr + (home / "logs" / "prefect-worker.log").read_text()[-3000:]
        assert f"store: {store}" in submit.stdout, submit.stdout
        flow_run_id = submit.stdout.split("flow run ", 1)[1].split()[0]

        listing = subprocess.run([*MFSBI, "runs"], env=env, capture_output=True, text=True, timeout=120)
        assert listing.returncode == 0 and "Completed" in listing.stdout, listing.stdout + listing.stderr
        # `mfsbi status` shows the store's rows and budget beside its flow runs from the API.
        status = subprocess.run([*MFSBI, "status", str(store)], env={**env, "COLUMNS": "200"},
                                capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "20 / 20" in status.stdout and "Completed" in status.stdout, status.stdout

        # Through the Prefect API, in one client process: (1) a relative store reaching a deployment run
        # (not through `mfsbi submit`) fails the run, saying why; (2) the submitted run is Completed and
        # published its metrics table.
        check = subprocess.run([sys.executable, "-c", f"""
import json, time
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from mfsbi.app.deployments import submit_run
from mfsbi.flows.config import RunConfig
config = RunConfig(task="ou2", method="npe", hf_sims=20, store="relative-store", dask_address={info["dask_address"]!r})
flow_run = submit_run("mfsbi-amortized/mfsbi-amortized", config)
with get_client(sync_client=True) as client:
    for _ in range(300):
        flow_run = client.read_flow_run(flow_run.id)
        if flow_run.state is not None and flow_run.state.is_final():
            break
        time.sleep(1)
    run = client.read_flow_run({flow_run_id!r})
    deployment = client.read_deployment(run.deployment_id)
    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    print(json.dumps({{"refused": {{"state": flow_run.state.type.value, "message": flow_run.state.message}},
                      "state": run.state.type.value, "name": run.name, "deployment": deployment.name,
                      "artifacts": [[a.type, a.key, a.data] for a in artifacts],
                      "schedules": [[s.active, s.parameters] for s in deployment.schedules]}}))
"""], env={**env, "PREFECT_API_URL": info["prefect_api_url"],
                                                    "PREFECT_API_AUTH_STRING": (home / "prefect-auth-string").read_text().strip()}, capture_output=True, text=True, timeout=400)
        seen |= _descendants(serve.pid)
        assert check.returncode == 0, check.stderr
        facts = json.loads(check.stdout.strip().splitlines()[-1])
        refused = facts["refused"]
        assert refused["state"] == "FAILED" and "store: 'relative-store' is relative" in refused["message"], refused
        assert facts["state"] == "COMPLETED" and facts["deployment"] == "mfsbi-amortized"
        assert facts["name"].startswith("ou2 mf-npe lf=300 hf=20")
        markdown = [data for kind, key, data in facts["artifacts"] if kind == "markdown" and key.startswith("metrics-")]
        assert markdown and "| metric | value |" in markdown[0]
        # The example nightly schedule (inactive) names an absolute store under $MFSBI_HOME.
        ((active, parameters),) = facts["schedules"]
        assert active is False and parameters["config"]["store"] == str(home / "stores" / "ou2")

        # Through the store: the simulations are there.
        from mfsbi.storage import SimulationStore

        handle = SimulationStore(str(store), mode="r")
        assert handle.table("ou2", "hf").counts()["ok"] == 20
        assert handle.table("ou2", "lf").counts()["ok"] == 300
    finally:
        seen |= _descendants(serve.pid)
        stop_serve(serve, grace=60)
        serve_log.close()
    assert serve.returncode == 0, (tmp_path / "serve.out").read_text()
    assert not (home / "serve.json").exists()
    time.sleep(1)
    left = _alive(seen)
    assert not left, subprocess.run(["ps", "-o", "pid,args", "-p", ",".join(map(str, left))],
                                    capture_output=True, text=True).stdout

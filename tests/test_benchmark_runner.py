"""benchmarks/_runner.py, the one way benchmarks run `mfsbi`: a real tiny run, its record, its services."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _runner as runner  # noqa: E402

# The cheapest run the CLI accepts: 10 HF rows, 2 epochs, no held-out observations or pairs, one worker.
TINY = ["run", "--task", "ou2", "--method", "npe", "--hf-sims", 10, "--num-test-observations", 0,
        "--num-nltp-pairs", 0, "--max-num-epochs", 2, "--n-workers", 1]


def _environment() -> dict[str, str]:
    # The subprocess imports this checkout's mfsbi, as the benchmarks' commands do when run from it.
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_a_run_returns_its_summary_seconds_and_commit(tmp_path, prefect_server, shared_dask):
    store = tmp_path / "store"
    record = runner.run([*TINY, "--store", store, "--json"], env=_environment())
    assert record.returncode == 0, record.stderr[-2000:]
    assert record.summary is not None and record.summary["run"] == "npe-hf10-seed0"
    assert record.summary == runner.stored_summary(store)  # --json's stdout is the stored summary.json
    assert record.summary["train"]["simulations"] == 10
    assert record.text == f"mfsbi run --task ou2 --method npe --hf-sims 10 --num-test-observations 0 " \
                          f"--num-nltp-pairs 0 --max-num-epochs 2 --n-workers 1 --store {store} --json"
    # Wall and CPU: the command started Python, imported torch and Prefect and trained, so well over a second of CPU.
    assert record.wall_seconds > 1.0 and record.cpu_seconds > 1.0, record
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", record.commit["git_commit"]) and record.commit["git_commit"] == head
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", record.started_at)


def test_a_failed_command_is_returned_with_its_one_line_error_and_no_summary(tmp_path):
    log = tmp_path / "err.log"
    store = tmp_path / "store"
    record = runner.run(["run", "--hf-sims", -5, "--store", store, "--json"], env=_environment(), log=log)
    assert record.returncode == 2 and record.summary is None and record.stderr == ""
    lines = log.read_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "hf" in lines[0], lines
    assert not store.exists()
    with pytest.raises(FileNotFoundError, match="no artifacts/TASK/RUN/summary.json"):
        runner.stored_summary(store)


def test_the_cli_is_found_one_way():
    assert runner.command(["run", "--seed", 3]) == [sys.executable, "-m", "mfsbi.app.cli", "run", "--seed", "3"]


# Starts the whole `mfsbi serve` stack (Prefect server and worker, scheduler, a worker): 60-90 s here.
# What the fast tests above do not cover: services(), the workers' CPU and a run against them.
@pytest.mark.slow
def test_runs_against_the_services_of_mfsbi_serve_count_the_workers_cpu(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with runner.services(tmp_path / "home", workers=1) as services:
        assert os.environ["MFSBI_HOME"] == str(tmp_path / "home") and os.environ["PREFECT_API_URL"] == services.api
        before = services.worker_cpu()
        record = runner.run([*TINY, "--store", tmp_path / "store", "--dask-address", services.dask_address, "--json"],
                            env=_environment())
        after = services.worker_cpu()
    assert record.returncode == 0, record.stderr[-2000:]
    assert record.summary["train"]["epochs"] == 2
    cpu = services.cpu_delta(before, after)
    assert cpu is not None and cpu > 0.1, (before, after)  # the worker simulated and trained
    assert os.environ.get("MFSBI_HOME") != str(tmp_path / "home")  # this process's environment is back

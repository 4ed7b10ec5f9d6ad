"""Store integrity: the run lock (real processes, real kills) and ``verify`` (read-only checks)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from mfsbi.app.cli import app
from mfsbi.storage import SimulationStore, StoreLock, StoreLockedError, check_unlocked, verify_store
from mfsbi.storage.lock import LOCK_NAME, read_lock

PROVENANCE = {"simulator": "toy", "simulator_version": "1", "config_hash": "abc"}


def _holder(store: Path) -> subprocess.Popen:
    """A process that takes the lock, says so, and sleeps."""

    code = textwrap.dedent(
        f"""
        import sys, time
        from mfsbi.storage.lock import StoreLock
        with StoreLock({str(store)!r}, owner="holder-run"):
            print("locked", flush=True)
            time.sleep(120)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_live_lock_refuses_then_a_killed_holder_is_recovered(tmp_path, caplog):
    store = tmp_path / "store"
    process = _holder(store)
    try:
        with pytest.raises(StoreLockedError) as refused:
            with StoreLock(store, owner="second"):
                pass
        message = str(refused.value)
        assert f"pid {process.pid}" in message and "holder-run" in message
        assert "wait for it, or use another --store" in message and "\n" not in message
        with pytest.raises(StoreLockedError, match=str(process.pid)):
            check_unlocked(store)
        assert read_lock(store).state == "live"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()

    # The holder died without releasing: the lock file is there, and stale.
    assert (store / LOCK_NAME).exists()
    assert read_lock(store).state == "stale"
    check_unlocked(store)  # a stale lock does not refuse a run

    with caplog.at_level("WARNING", logger="mfsbi.storage.lock"):
        with StoreLock(store, owner="recovering") as lock:
            data = json.loads((store / LOCK_NAME).read_text())
            assert data["pid"] == os.getpid() and data["owner"] == "recovering"
            assert lock.held
    assert "stale lock" in caplog.text and str(process.pid) in caplog.text
    assert not (store / LOCK_NAME).exists()
    assert [p.name for p in store.iterdir() if p.name.startswith(LOCK_NAME)] == []


def test_lock_is_released_on_exception_and_the_store_opens(tmp_path):
    store = tmp_path / "new-store"  # does not exist yet: the lock initialises the store first
    with pytest.raises(RuntimeError):
        with StoreLock(store, owner="run"):
            assert (store / LOCK_NAME).exists()
            SimulationStore(store)  # a lock file does not make the folder unreadable as a store
            raise RuntimeError("boom")
    assert not (store / LOCK_NAME).exists()
    with StoreLock(store, owner="again"):
        pass


def test_lock_never_deletes_a_lock_it_does_not_own(tmp_path):
    store = tmp_path / "store"
    with StoreLock(store, owner="mine"):
        foreign = {"pid": 1, "hostname": socket.gethostname(), "owner": "other", "started_at": "x", "token": "t"}
        (store / LOCK_NAME).write_text(json.dumps(foreign))
    assert json.loads((store / LOCK_NAME).read_text())["token"] == "t"


def test_a_lock_from_another_host_is_live_until_its_heartbeat_is_stale(tmp_path):
    """Its pid cannot be checked from here: the file's modification time (the heartbeat) decides."""
    store = tmp_path / "store"
    SimulationStore(store)
    now = datetime.now(timezone.utc)
    lock = {"pid": 999_999, "hostname": "elsewhere.invalid", "owner": "remote", "token": "r",
            "started_at": (now - timedelta(hours=2)).isoformat(timespec="seconds")}
    (store / LOCK_NAME).write_text(json.dumps(lock))

    # Started 2 h ago, but beat just now: held, whatever its age.
    with pytest.raises(StoreLockedError, match="elsewhere.invalid"):
        StoreLock(store, owner="local").acquire()
    ten_minutes_ago = now.timestamp() - 600
    os.utime(store / LOCK_NAME, (ten_minutes_ago, ten_minutes_ago))
    with pytest.raises(StoreLockedError, match="elsewhere.invalid"):
        StoreLock(store, owner="local", stale_after=3600).acquire()
    with StoreLock(store, owner="local"):  # no heartbeat for 10 min: stale after the default 5 min
        assert json.loads((store / LOCK_NAME).read_text())["owner"] == "local"
    assert not (store / LOCK_NAME).exists()


def test_non_local_stores_are_not_locked():
    with StoreLock("memory://integrity", owner="run") as lock:
        assert lock.path is None and not lock.held
    check_unlocked("memory://integrity")


def test_check_unlocked_raises_the_given_error(tmp_path):
    class UsageError(Exception):
        pass

    with StoreLock(tmp_path / "s", owner="me"):
        with pytest.raises(UsageError, match="in use by run 'me'"):
            check_unlocked(tmp_path / "s", error=UsageError)


# verify


def _make_store(path: Path) -> Path:
    """A consistent store made with the real API: lf all ok, hf with a budget, ok and failed rows."""

    store = SimulationStore(path)
    lf = store.require_table("toy", "lf", theta_dim=2, x_dim=3, chunk_size=4, provenance=PROVENANCE)
    lf.reserve(np.arange(20.0).reshape(10, 2), seed=np.repeat([1, 2, 3], [4, 4, 2]))
    for batch in lf.pending_batches():
        lf.write_batch(*batch.rows, x=np.ones((len(batch), 3)))

    hf = store.require_table("toy", "hf", theta_dim=2, x_dim=3, chunk_size=4, provenance=PROVENANCE)
    hf.set_budget(8)
    hf.reserve(np.zeros((6, 2)), seed=np.repeat([5, 6], [4, 2]))
    hf.write_batch(0, 4, x=np.ones((4, 3)))
    hf.write_batch(4, 6, x=np.full((2, 3), np.nan), reasons=["diverged", ""])
    hf.reserve(np.ones((1, 2)), seed=np.array([7]))  # one pending row (row 6)

    store.write_artifact("toy/run/posterior.pt", b"weights")
    store.write_artifact("latest.json", json.dumps({"task": "toy", "run": "toy/run"}).encode())
    return path


def _snapshot(path: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_verify_a_clean_store_finds_nothing_and_changes_nothing(tmp_path):
    path = _make_store(tmp_path / "store")
    before = _snapshot(path)
    report = verify_store(path)
    assert list(report) == []
    assert (report.tables, report.rows) == (2, 17)
    assert _snapshot(path) == before


def _hf(path: Path) -> zarr.Group:
    return zarr.open_group(str(path / "toy" / "hf"), mode="r+")


def _set_status_7(path):
    _hf(path)["status"][0] = 7


def _ok_row_nan_x(path):
    _hf(path)["x"][1] = np.nan


def _failed_without_reason(path):
    _hf(path)["reason"][4] = ""


def _reserved_over_total(path):
    _hf(path).attrs["budget"] = {"total": 5, "reserved": 7}


def _missing_attribute(path):
    group = _hf(path)
    attrs = group.attrs.asdict()
    del attrs["simulator_version"]
    group.attrs.put(attrs)


def _short_array(path):
    _hf(path)["seed"].resize((5,))


def _pending_with_x(path):
    _hf(path)["x"][6] = 0.0


def _dangling_latest(path):
    (path / "artifacts" / "toy" / "run" / "posterior.pt").unlink()


@pytest.mark.parametrize(
    "corrupt, field, text",
    [
        (_set_status_7, "status", "status not in"),
        (_ok_row_nan_x, "x", "ok rows with a non-finite x: [1]"),
        (_failed_without_reason, "reason", "failed rows without a reason: [4]"),
        (_reserved_over_total, "budget", "exceeds the total 5"),
        (_missing_attribute, "simulator_version", "missing attribute"),
        (_short_array, "seed", "5 rows but status has 7"),
        (_pending_with_x, "x", "pending rows with x stored"),
        (_dangling_latest, "latest.json", "does not exist"),
    ],
)
def test_verify_detects_each_corruption_without_changing_the_store(tmp_path, corrupt, field, text):
    path = _make_store(tmp_path / "store")
    corrupt(path)
    before = _snapshot(path)
    problems = verify_store(path)
    assert _snapshot(path) == before
    assert any(p.field == field and text in p.message for p in problems), problems


def test_an_ensemble_runs_members_are_its_posterior(tmp_path):
    path = _make_store(tmp_path / "store")
    (path / "artifacts" / "toy" / "run" / "posterior.pt").rename(path / "artifacts" / "toy" / "run" / "posterior-member-0.pt")
    assert not [p for p in verify_store(path) if p.field == "latest.json"]
    (path / "artifacts" / "toy" / "run" / "posterior-member-0.pt").unlink()
    assert any(p.field == "latest.json" and "does not exist" in p.message for p in verify_store(path))


def test_verify_reports_a_lock(tmp_path):
    path = _make_store(tmp_path / "store")
    with StoreLock(path, owner="busy"):
        problems = verify_store(path)
    assert [(p.table, p.field, p.severity) for p in problems] == [("store", LOCK_NAME, "warning")]
    assert "live lock of run 'busy'" in problems[0].message


# CLI

runner = CliRunner()


def test_cli_verify_exit_codes(tmp_path):
    path = _make_store(tmp_path / "store")
    result = runner.invoke(app, ["verify", str(path)])
    assert result.exit_code == 0, result.output
    assert "store OK: 2 tables, 17 rows" in result.output

    _set_status_7(path)
    result = runner.invoke(app, ["verify", str(path)])
    assert result.exit_code == 1, result.output
    assert "status" in result.output

    result = runner.invoke(app, ["verify", str(tmp_path / "missing")])
    assert result.exit_code == 2
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    result = runner.invoke(app, ["verify", str(tmp_path / "plain")])
    assert result.exit_code == 2
    assert not (tmp_path / "missing").exists()


def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path):
    """A reused pid (alive, but started at another time) no longer makes a dead run's lock look held."""
    from mfsbi.storage.lock import process_start

    store = tmp_path / "store"
    SimulationStore(store)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": sleeper.pid, "hostname": socket.gethostname(), "owner": "crashed", "token": "c",
                "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (store / LOCK_NAME).write_text(json.dumps({**lock, "process_start": process_start(sleeper.pid)}))
        assert read_lock(store).state == "live"  # the lock's own process: held
        (store / LOCK_NAME).write_text(json.dumps({**lock, "process_start": "another-boot:12345"}))
        info = read_lock(store)
        assert info.state == "stale" and "now belongs to another process" in info.reason
        with StoreLock(store, owner="next"):
            assert json.loads((store / LOCK_NAME).read_text())["process_start"] == process_start(os.getpid())
    finally:
        sleeper.kill()
        sleeper.wait()


def test_chunk_write_locks_live_beside_the_store_not_in_the_temp_folder(tmp_path):
    import tempfile

    store = tmp_path / "store"
    table = SimulationStore(store).require_table("toy", "hf", theta_dim=1, x_dim=1, chunk_size=2,
                                                 provenance=PROVENANCE)
    before = set(Path(tempfile.gettempdir()).glob("mfsbi-locks/*"))
    table.reserve(np.zeros((3, 1)), np.array([1, 2, 3]))
    table.write_batch(0, 2, x=np.ones((2, 1)))
    locks = tmp_path / ".store.mfsbi-locks"
    assert locks.is_dir() and list(locks.glob("*/*.lock"))
    assert all(p.stat().st_mode & 0o077 == 0 for p in locks.iterdir())  # only the owner can use them
    assert set(Path(tempfile.gettempdir()).glob("mfsbi-locks/*")) == before

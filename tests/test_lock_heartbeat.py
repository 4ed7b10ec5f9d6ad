"""The run lock's heartbeat, between real processes: a race of two, a killed holder, a frozen one,
a run longer than the stale time, and release where ``flock`` fails (NFS, Lustre without flock)."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from typer.testing import CliRunner

from mfsbi.app.cli import app
from mfsbi.storage import SimulationStore, StoreError, StoreLock, StoreLockedError
from mfsbi.storage import lock as lock_module
from mfsbi.storage.lock import LOCK_NAME, read_lock

STALE = 2.0  # seconds: short, so that the tests wait little (the heartbeat beats every 0.4 s),
# long enough that a holder starved of CPU on a loaded machine does not miss five heartbeats


def _child(store: Path, signal_file: Path, *, hostname: str | None = None, wait_for_go: bool = False,
           expect_loss: bool = False) -> subprocess.Popen:
    """A process that takes the lock (optionally as another host), prints the outcome, holds the
    lock until ``signal_file`` exists (and, with ``expect_loss``, up to 20 s more until its
    heartbeat finds the lock lost), then prints whether it lost it."""

    code = textwrap.dedent(
        f"""
        import logging, os, socket, sys, time
        if {hostname!r}:
            socket.gethostname = lambda: {hostname!r}  # pretend to run on another machine
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        from mfsbi.storage.lock import StoreLock, StoreLockedError
        print("ready", flush=True)
        go = {str(signal_file)!r} + ".go"
        while {wait_for_go!r} and not os.path.exists(go):
            time.sleep(0.01)
        try:
            lock = StoreLock({str(store)!r}, owner="child-" + str(os.getpid()), stale_after={STALE!r})
            lock.acquire()
        except StoreLockedError:
            print("refused", flush=True)
            sys.exit(0)
        print("won", flush=True)
        while not os.path.exists({str(signal_file)!r}):
            time.sleep(0.05)
        deadline = time.monotonic() + 20
        while {expect_loss!r} and not lock.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        print("lost" if lock.lost else "kept", flush=True)
        lock.release()
        """
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def _finish(process: subprocess.Popen) -> tuple[str, str]:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return out, err


def _wait_until(predicate, limit: float = 15.0) -> float:
    """Seconds until ``predicate()`` held (fails after ``limit``)."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < limit, "timed out"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture()
def store(tmp_path) -> Path:
    SimulationStore(tmp_path / "store")
    return tmp_path / "store"


def test_two_processes_racing_for_one_store_one_wins(store, tmp_path):
    release = tmp_path / "release"
    racers = [_child(store, release, wait_for_go=True) for _ in range(2)]
    Path(f"{release}.go").touch()
    outcomes = sorted(racer.stdout.readline().strip() for racer in racers)
    release.touch()
    for racer in racers:
        _finish(racer)
    assert outcomes == ["refused", "won"]
    assert not (store / LOCK_NAME).exists()


@pytest.mark.parametrize("hostname", [None, "node-a.invalid"], ids=["same host", "another host"])
def test_a_run_longer_than_the_stale_time_keeps_its_lock(store, tmp_path, hostname):
    release = tmp_path / "release"
    holder = _child(store, release, hostname=hostname)
    try:
        assert holder.stdout.readline().strip() == "won"
        deadline = time.monotonic() + 2 * STALE  # two stale times, ten heartbeats
        while time.monotonic() < deadline:
            info = read_lock(store, stale_after=STALE)
            assert info.state == "live", info.reason
            time.sleep(0.1)
        with pytest.raises(StoreLockedError, match=hostname or socket.gethostname()):
            StoreLock(store, owner="second", stale_after=STALE).acquire()
        release.touch()
        assert holder.stdout.readline().strip() == "kept"
    finally:
        release.touch()
        _finish(holder)
    assert not (store / LOCK_NAME).exists()


def test_a_killed_holder_on_another_host_is_stale_once_its_heartbeat_is(store, tmp_path, caplog):
    holder = _child(store, tmp_path / "never", hostname="node-a.invalid")
    assert holder.stdout.readline().strip() == "won"
    holder.kill()
    holder.wait()
    # Its pid cannot be checked from "another host": it is held until the heartbeat is stale.
    with pytest.raises(StoreLockedError, match="node-a.invalid"):
        StoreLock(store, owner="second", stale_after=STALE).acquire()
    waited = _wait_until(lambda: read_lock(store, stale_after=STALE).state == "stale")
    assert waited < 2 * STALE
    with caplog.at_level("WARNING", logger="mfsbi.storage.lock"):
        with StoreLock(store, owner="second", stale_after=STALE):
            assert json.loads((store / LOCK_NAME).read_text())["owner"] == "second"
    assert "recovering a stale lock" in caplog.text and "no heartbeat for" in caplog.text


def test_a_frozen_holder_loses_its_lock_and_says_so(store, tmp_path):
    """Stale on any host: a live but stopped holder (same host) is taken over; once resumed, its
    heartbeat finds the lock someone else's, logs an error, and its release leaves it in place."""
    release = tmp_path / "release"
    holder = _child(store, release, expect_loss=True)
    try:
        assert holder.stdout.readline().strip() == "won"
        holder.send_signal(signal.SIGSTOP)
        _wait_until(lambda: read_lock(store, stale_after=STALE).state == "stale")
        assert "no heartbeat" in read_lock(store, stale_after=STALE).reason
        second = StoreLock(store, owner="second", stale_after=STALE)
        second.acquire()
        holder.send_signal(signal.SIGCONT)
        release.touch()
        out, err = _finish(holder)
        assert out.split()[-1] == "lost"
        assert "lost its lock" in err and "no longer ours; left in place" in err
        assert second.held and json.loads((store / LOCK_NAME).read_text())["owner"] == "second"
        second.release()
    finally:
        holder.send_signal(signal.SIGCONT)
        release.touch()
        holder.wait(timeout=60)
    assert not (store / LOCK_NAME).exists()


def test_release_and_recovery_work_where_flock_fails(store, monkeypatch, caplog):
    """As on NFS mounted `nolock`-less v3 without lockd, or Lustre without `-o flock`: a warning,
    not an error; and no directory is ever flock'ed (NFS cannot)."""
    locked_kinds = []

    def no_flock(file, operation):
        locked_kinds.append(stat.S_ISREG(os.fstat(file.fileno()).st_mode))
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_module.fcntl, "flock", no_flock)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"pid": dead.pid, "hostname": socket.gethostname(), "owner": "crashed", "token": "c",
             "started_at": "2026-01-01T00:00:00+00:00"}
    (store / LOCK_NAME).write_text(json.dumps(stale))

    with caplog.at_level("WARNING", logger="mfsbi.storage.lock"):
        with StoreLock(store, owner="run", stale_after=STALE) as lock:  # recovers the stale lock
            assert lock.held
        assert not (store / LOCK_NAME).exists()  # released
    assert locked_kinds and all(locked_kinds)
    assert "no flock" in caplog.text and "No locks available" in caplog.text


def test_stale_after_from_the_environment(store, monkeypatch):
    monkeypatch.setenv("MFSBI_LOCK_STALE_AFTER", "42")
    with StoreLock(store, owner="run") as lock:
        assert lock.stale_after == 42.0
        assert json.loads((store / LOCK_NAME).read_text())["stale_after"] == 42.0
    for bad in ("soon", "0", "-5", "nan"):
        monkeypatch.setenv("MFSBI_LOCK_STALE_AFTER", bad)
        with pytest.raises(StoreError, match="MFSBI_LOCK_STALE_AFTER=.* is not a number of seconds > 0") as error:
            StoreLock(store, owner="run")
        assert "\n" not in str(error.value)


def test_a_bad_stale_time_stops_a_run_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MFSBI_LOCK_STALE_AFTER", "5min")
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["run", "--store", str(store), "--task", "ou2", "--method", "npe",
                                      "--hf-sims", "10"])
    assert result.exit_code == 2, result.output
    assert "MFSBI_LOCK_STALE_AFTER='5min' is not a number of seconds > 0" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not store.exists()


def test_a_reader_never_takes_a_lock_before_the_holder_promised(store):
    """The holder's stale time is in its lock: a reader with a shorter one waits for the longer."""
    remote = {"pid": 999_999, "hostname": "node-a.invalid", "owner": "remote", "token": "r",
              "started_at": "2026-01-01T00:00:00+00:00", "stale_after": 60.0}
    (store / LOCK_NAME).write_text(json.dumps(remote))
    past = time.time() - 10
    os.utime(store / LOCK_NAME, (past, past))  # 10 s without heartbeat: stale for 1 s, not for 60 s
    info = read_lock(store, stale_after=1.0)
    assert info.state == "live" and "stale after 60 s" in info.reason
    assert read_lock(store, stale_after=5.0).state == "live"
    os.utime(store / LOCK_NAME, (past - 60, past - 60))
    assert read_lock(store, stale_after=1.0).state == "stale"


def test_a_chunk_write_where_flock_fails_is_one_clear_error(store, monkeypatch):
    table = SimulationStore(store).require_table(
        "toy", "hf", theta_dim=1, x_dim=1, chunk_size=2,
        provenance={"simulator": "toy", "simulator_version": "1", "config_hash": "abc"},
    )
    table.reserve(np.zeros((2, 1)), np.array([1, 2]))

    def no_flock(file, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(lock_module.fcntl, "flock", no_flock)
    with pytest.raises(StoreError, match="must support flock") as error:
        table.write_batch(0, 2, x=np.ones((2, 1)))
    assert "\n" not in str(error.value) and "Shared machines and file systems" in str(error.value)

"""Tests of the zarr simulation store (mfsbi.storage): rows reserved, written, failed, reopened, crashed
and written concurrently. What a store holds and refuses (names, provenance, artifacts, URLs):
test_storage_layout.py."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from mfsbi.storage import (Batch, BudgetExceededError, HighFidelityBudget, SimulationStore, SimulationTable,
                           StoreError)
from toy_store import PROVENANCE, make, run_all, toy


def test_round_trip(tmp_path):
    _, table = make(tmp_path)
    rng = np.random.default_rng(0)
    theta0, theta1 = rng.normal(size=(25, 3)), rng.normal(size=(7, 3))

    rows0 = table.reserve(theta0, np.repeat([1, 2, 3], [10, 10, 5]), round=0)
    rows1 = table.reserve(theta1, np.full(7, 4), round=1)

    assert rows0.tolist() == list(range(25)) and rows1.tolist() == list(range(25, 32))
    assert table.counts() == {"pending": 32, "ok": 0, "failed": 0, "total": 32}
    assert table.read()[0].shape == (0, 3)

    run_all(table)

    seeds = np.repeat([1, 2, 3, 4], [10, 10, 5, 7])
    theta = np.concatenate([theta0, theta1])
    expected = np.concatenate([toy(theta[i : i + 1], s) for i, s in enumerate(seeds)])

    got_theta, got_x = table.read()
    assert got_theta.dtype == got_x.dtype == np.float64
    np.testing.assert_array_equal(got_theta, theta)
    np.testing.assert_array_equal(got_x, expected)

    theta_r1, x_r1 = table.read(rounds=[1])
    np.testing.assert_array_equal(theta_r1, theta1)
    np.testing.assert_array_equal(x_r1, expected[25:])

    assert table.counts() == {"pending": 0, "ok": 32, "failed": 0, "total": 32}
    assert table.pending_batches() == []
    assert table.rows("ok").tolist() == list(range(32))


def test_failures_and_reasons(tmp_path):
    _, table = make(tmp_path)
    table.reserve(np.zeros((4, 3)), np.zeros(4, dtype=int))

    x = np.ones((4, 4))
    x[1, 2] = np.nan
    x[3, 0] = np.inf
    ok = np.array([True, True, False, True])
    reasons = ["", "", "timeout", "diverged"]

    table.write_batch(0, 4, x, ok=ok, reasons=reasons, elapsed=2.0)

    assert table.counts() == {"pending": 0, "ok": 1, "failed": 3, "total": 4}
    assert table.failures() == [(1, "non-finite output"), (2, "timeout"), (3, "diverged")]
    assert table.rows("failed").tolist() == [1, 2, 3]
    assert table.read()[1].shape == (1, 4)

    root = zarr.open_group(tmp_path / "store", mode="r")
    np.testing.assert_array_equal(root["toy/lf/elapsed"][:], [0.5] * 4)


def test_status_is_written_last(tmp_path, monkeypatch):
    store, table = make(tmp_path)
    theta = np.arange(30.0).reshape(10, 3)
    table.reserve(theta, np.full(10, 5))

    def crash(*args, **kwargs):
        raise RuntimeError("worker killed")

    # A crash between the payload and the status commit.
    monkeypatch.setattr(SimulationTable, "_commit_status", crash)

    with pytest.raises(RuntimeError):
        table.write_batch(0, 10, toy(theta, 5))

    root = zarr.open_group(store.path, mode="r")
    np.testing.assert_array_equal(root["toy/lf/x"][:], toy(theta, 5))  # the payload is there
    assert table.counts()["pending"] == 10
    assert table.read()[0].shape == (0, 3)
    assert table.pending_batches() == [Batch(rows=(0, 10), seed=5)]

    # The re-run (as Dask would) completes the rows.
    monkeypatch.undo()
    table.write_batch(0, 10, toy(theta, 5))

    assert table.counts()["ok"] == 10
    np.testing.assert_array_equal(table.read()[1], toy(theta, 5))


def test_never_overwrite_but_idempotent(tmp_path):
    store, table = make(tmp_path)
    theta = np.ones((10, 3))
    table.reserve(theta, np.zeros(10, dtype=int))
    table.write_batch(0, 10, toy(theta, 0), elapsed=1.0)

    root = zarr.open_group(store.path, mode="r")
    before = {k: root[f"toy/lf/{k}"][:] for k in ("x", "status", "reason", "elapsed")}

    table.write_batch(0, 10, toy(theta, 0), elapsed=9.0)  # the same batch again: a no-op

    with pytest.raises(StoreError, match="never overwritten"):
        table.write_batch(0, 10, toy(theta, 0) + 1)
    with pytest.raises(StoreError, match="never overwritten"):
        table.write_batch(2, 4, toy(theta[2:4], 0), ok=np.array([True, False]))

    for name, value in before.items():
        np.testing.assert_array_equal(root[f"toy/lf/{name}"][:], value)


def test_reopen_and_continue(tmp_path):
    _, table = make(tmp_path)
    rng = np.random.default_rng(1)
    theta = rng.normal(size=(40, 3))
    table.reserve(theta, np.repeat(np.arange(4), 10))

    for batch in table.pending_batches()[::2]:  # half the work, then a "crash"
        table.write_batch(*batch.rows, x=toy(theta[slice(*batch.rows)], batch.seed))

    del table
    reopened = SimulationStore(tmp_path / "store").table("toy", "lf")

    assert reopened is not None and reopened.num_rows == 40
    assert reopened.pending_batches() == [Batch((10, 20), 1), Batch((30, 40), 3)]

    run_all(reopened)

    assert reopened.counts() == {"pending": 0, "ok": 40, "failed": 0, "total": 40}
    np.testing.assert_array_equal(reopened.read()[0], theta)


def test_pending_batches_cover_pending_rows_within_chunks(tmp_path):
    _, table = make(tmp_path, chunk_size=8)
    rng = np.random.default_rng(2)

    # Reservations of odd sizes and seeds changing inside chunks.
    for n in (5, 13, 1, 20, 7):
        table.reserve(rng.normal(size=(n, 3)), rng.integers(0, 3, size=n))

    seed = zarr.open_group(tmp_path / "store", mode="r")["toy/lf/seed"][:]

    for batch in table.pending_batches()[1::3]:
        theta, _ = table.theta_rows(*batch.rows)
        table.write_batch(*batch.rows, x=toy(theta, batch.seed))

    batches = table.pending_batches()
    covered = np.concatenate([np.arange(*b.rows) for b in batches])

    assert covered.tolist() == table.rows("pending").tolist()  # exactly, in order, no overlap
    assert table.counts()["ok"] > 0 and len(covered) > 0

    for b in batches:
        assert b.start < b.stop
        assert b.start // 8 == (b.stop - 1) // 8
        assert np.all(seed[b.start : b.stop] == b.seed)

    with pytest.raises(ValueError, match="spans two chunks"):
        table.write_batch(6, 10, np.zeros((4, 4)))


def test_budget_refusal_writes_nothing(tmp_path):
    store, table = make(tmp_path, fidelity="hf")

    assert table.budget() is None
    assert table.set_budget(12) == HighFidelityBudget(total=12, reserved=0)
    with pytest.raises(ValueError, match="only be raised"):
        table.set_budget(11)

    table.reserve(np.zeros((10, 3)), np.zeros(10, dtype=int))
    root = zarr.open_group(store.path, mode="r")
    shapes = {k: root[f"toy/hf/{k}"].shape for k in ("theta", "x", "seed", "status")}
    attrs = dict(root["toy/hf"].attrs)

    with pytest.raises(BudgetExceededError) as info:
        table.reserve(np.ones((3, 3)), np.ones(3, dtype=int))

    assert (info.value.requested, info.value.remaining) == (3, 2)

    root = zarr.open_group(store.path, mode="r")
    assert {k: root[f"toy/hf/{k}"].shape for k in shapes} == shapes
    assert dict(root["toy/hf"].attrs) == attrs

    # Failed rows do not give budget back; the budget survives reopening.
    table.write_batch(0, 10, np.full((10, 4), np.nan))
    table.reserve(np.ones((2, 3)), np.ones(2, dtype=int))

    reopened = SimulationStore(store.path).table("toy", "hf")
    assert reopened.budget() == HighFidelityBudget(total=12, reserved=12)
    assert reopened.budget().remaining == 0

    with pytest.raises(BudgetExceededError):
        reopened.reserve(np.ones((1, 3)), np.ones(1, dtype=int))
    with pytest.raises(ValueError, match="below the 12 rows"):
        reopened.set_budget(11)

    reopened.set_budget(13)
    reopened.reserve(np.ones((1, 3)), np.ones(1, dtype=int))

    assert store.summary()["tables"]["toy/hf"]["budget"] == {"total": 13, "reserved": 13, "remaining": 0}

    lf = store.require_table("toy", "lf", theta_dim=3, x_dim=4, chunk_size=10, provenance=PROVENANCE)
    with pytest.raises(ValueError, match="hf"):
        lf.set_budget(5)


def test_crash_during_reserve(tmp_path, monkeypatch):
    store, table = make(tmp_path)
    table.reserve(np.zeros((5, 3)), np.zeros(5, dtype=int))

    # A reservation that dies while writing its rows commits none of them.
    setitem = zarr.Array.__setitem__

    def crash_on_round(self, key, value):
        if self.name.endswith("/round"):
            raise RuntimeError("flow killed")
        setitem(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", crash_on_round)
    with pytest.raises(RuntimeError):
        table.reserve(np.ones((3, 3)), np.ones(3, dtype=int))
    monkeypatch.undo()

    assert table.num_rows == 5
    assert table.pending_batches() == [Batch((0, 5), 0)]

    # A reservation that died after growing the row arrays but before committing status.
    group = zarr.open_group(store.path, mode="a")["toy/lf"]
    for name in ("theta", "x", "seed", "round", "reason", "elapsed"):
        array = group[name]
        array.resize((9, *array.shape[1:]))
    group["theta"][5:9] = 7.0

    reopened = SimulationStore(store.path).table("toy", "lf")
    assert reopened.num_rows == 5
    assert reopened.pending_batches() == [Batch((0, 5), 0)]

    theta = np.ones((2, 3))
    assert reopened.reserve(theta, np.full(2, 3)).tolist() == [5, 6]
    run_all(reopened)

    np.testing.assert_array_equal(reopened.read()[0], np.concatenate([np.zeros((5, 3)), theta]))


def test_plain_zarr_reads_everything(tmp_path):
    store, table = make(tmp_path, chunk_size=4)
    theta = np.arange(18.0).reshape(6, 3)
    table.reserve(theta, np.arange(6), round=2)
    table.write_batch(0, 4, toy(theta[:4], 0), ok=np.array([True, True, False, True]))

    root = zarr.open_group(str(store.path), mode="r")
    assert root.attrs["format"] == "mfsbi-store" and root.attrs["format_version"] == 1

    t = root["toy/lf"]
    np.testing.assert_array_equal(t["theta"][:], theta)
    np.testing.assert_array_equal(t["x"][:4], toy(theta[:4], 0))
    assert np.isnan(t["x"][4:]).all()
    assert t["status"][:].tolist() == [1, 1, 2, 1, 0, 0]
    assert t["round"][:].tolist() == [2] * 6
    assert t["reason"][2] == "simulator reported failure"
    assert t["x"].chunks == (4, 4) and t["status"].chunks == (4,)
    assert t.attrs["simulator"] == "toy.hf" and t.attrs["chunk_size"] == 4
    assert t.attrs["created_at"].endswith("+00:00")


def test_concurrent_dask_workers(tmp_path, dask_cluster_client):
    """Two worker processes (the session's cluster: two single-threaded worker processes) write 40 chunks
    of 50 rows; in the hf table every chunk holds two seeds, so two batches of one chunk may run at once
    (serialised by the chunk lock)."""

    chunks, chunk_size = 40, 50
    n = chunks * chunk_size
    store, lf = make(tmp_path, chunk_size=chunk_size)
    hf = store.require_table("toy", "hf", theta_dim=3, x_dim=4, chunk_size=chunk_size, provenance=PROVENANCE)
    rng = np.random.default_rng(3)
    theta = rng.normal(size=(n, 3))
    seeds = {"lf": np.repeat(np.arange(chunks), chunk_size), "hf": np.repeat(np.arange(2 * chunks), chunk_size // 2)}
    lf.reserve(theta, seeds["lf"])
    hf.reserve(theta, seeds["hf"])

    jobs = [("lf", b) for b in lf.pending_batches()] + [("hf", b) for b in hf.pending_batches()]
    assert len(jobs) == 3 * chunks

    path = str(store.path)

    # Nested, so that cloudpickle sends it by value (workers cannot import the test module).
    def simulate(fidelity: str, start: int, stop: int, seed: int) -> int:
        from mfsbi.storage import SimulationStore

        table = SimulationStore(path).table("toy", fidelity)
        theta, _ = table.theta_rows(start, stop)
        x = np.concatenate([2 * theta, theta.sum(axis=1, keepdims=True) + seed], axis=1)
        table.write_batch(start, stop, x, elapsed=0.01)
        return stop - start

    client = dask_cluster_client
    assert len(client.scheduler_info()["workers"]) == 2
    futures = [client.submit(simulate, fid, *b.rows, b.seed, pure=False) for fid, b in jobs]
    written = client.gather(futures)
    workers = {w for ws in client.who_has(futures).values() for w in ws}

    assert sum(written) == 2 * n
    assert len(workers) == 2  # both processes wrote

    for fidelity, table in (("lf", lf), ("hf", hf)):
        assert table.counts() == {"pending": 0, "ok": n, "failed": 0, "total": n}, fidelity
        got_theta, got_x = table.read()
        np.testing.assert_array_equal(got_theta, theta)
        np.testing.assert_array_equal(got_x, toy(theta, 0) + np.c_[np.zeros((n, 3)), seeds[fidelity]])

"""The store's fast write path: several batches per write, cached handles, the layout of new tables."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import mfsbi.storage.table as table_module
from mfsbi.flows.config import RunConfig
from mfsbi.simulators import get_task
from mfsbi.storage import BatchOutput, SimulationStore, SimulationTable, StoreError, verify_store
from mfsbi.storage.layout import X_CODEC, reservation_chunk_rows

PROVENANCE = {"simulator": "toy.lf", "simulator_version": "1.0", "config_hash": "abc123"}


def toy(theta: np.ndarray, seed: int) -> np.ndarray:
    return np.concatenate([2 * theta, theta.sum(axis=1, keepdims=True) + seed], axis=1)


def table(path, chunk_size=10, name="toy") -> SimulationTable:
    return SimulationStore(path).require_table(
        name, "lf", theta_dim=3, x_dim=4, chunk_size=chunk_size, provenance=PROVENANCE
    )


def outputs(sim: SimulationTable, failing: int | None = None) -> list[BatchOutput]:
    result = []
    for batch in sim.pending_batches():
        theta, _ = sim.theta_rows(*batch.rows)
        x = toy(theta, batch.seed)
        reasons = None
        if failing is not None and batch.start <= failing < batch.stop:
            x[failing - batch.start] = np.nan
            reasons = ["boom" if row == failing else "" for row in range(*batch.rows)]
        result.append(BatchOutput(batch.start, batch.stop, x, reasons=reasons, elapsed=0.1 * len(batch)))
    return result


def stored(sim: SimulationTable) -> dict[str, np.ndarray]:
    group = zarr.open_group(sim._group.store, path=sim._group.path, mode="r")
    return {name: group[name][:] for name in ("x", "status", "reason", "elapsed")}


def test_one_write_of_many_batches_stores_what_one_write_per_batch_stores(tmp_path):
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(47, 3))
    # Two seeds inside chunk 2 (two batches of one chunk) and a partial last chunk.
    seeds = np.repeat([1, 2, 3, 4, 5, 6], [10, 10, 4, 6, 10, 7])
    one, many = table(tmp_path / "one"), table(tmp_path / "many")
    for sim in (one, many):
        sim.reserve(theta, seeds)
    for output in outputs(one, failing=25):
        one.write_batch(output.start, output.stop, output.x, reasons=output.reasons, elapsed=output.elapsed)
    many.write_batches(outputs(many, failing=25)[::-1])  # any order

    a, b = stored(one), stored(many)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert many.counts() == {"pending": 0, "ok": 46, "failed": 1, "total": 47}
    assert many.failures() == [(25, "boom")]
    assert verify_store(tmp_path / "many").ok


def test_a_write_of_more_chunks_than_it_locks_at_once_goes_in_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(table_module, "CHUNKS_PER_WRITE", 2)
    locked = []
    original = SimulationTable._chunk_lock

    def spy(self, chunk):
        locked.append(chunk)
        return original(self, chunk)

    monkeypatch.setattr(SimulationTable, "_chunk_lock", spy)
    sim = table(tmp_path)
    theta = np.arange(150.0).reshape(50, 3)
    sim.reserve(theta, np.arange(50) // 10)
    sim.write_batches(outputs(sim))

    assert locked == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(sim.read()[1], np.concatenate([toy(theta[i:i + 10], i // 10) for i in range(0, 50, 10)]))


def test_overlapping_batches_are_refused_before_anything_is_written(tmp_path):
    sim = table(tmp_path)
    sim.reserve(np.zeros((20, 3)), np.zeros(20, dtype=int))
    with pytest.raises(ValueError, match="overlap"):
        sim.write_batches([BatchOutput(0, 6, np.ones((6, 4))), BatchOutput(5, 10, np.ones((5, 4)))])
    with pytest.raises(ValueError, match="spans two chunks"):
        sim.write_batches([BatchOutput(0, 5, np.ones((5, 4))), BatchOutput(8, 12, np.ones((4, 4)))])
    assert sim.counts()["pending"] == 20 and np.isnan(stored(sim)["x"]).all()


def test_a_crash_between_commits_leaves_rows_stored_or_pending_never_half(tmp_path, monkeypatch):
    sim = table(tmp_path)
    theta = np.arange(90.0).reshape(30, 3)
    sim.reserve(theta, np.arange(30) // 10)
    commits = []

    def crash_after_one(self, status, start, stop, values):
        if commits:
            raise RuntimeError("worker killed")
        commits.append(start)
        status[start:stop] = values

    monkeypatch.setattr(SimulationTable, "_commit_status", crash_after_one)
    with pytest.raises(RuntimeError):
        # Rows 0-10 and 20-30 (not adjacent): two runs, so two status commits.
        sim.write_batches([o for o in outputs(sim) if o.start != 10])
    # The first run is committed with its payload; the second is pending, and verify calls its
    # payload (if already written) what a kill leaves, a warning.
    assert sim.counts() == {"pending": 20, "ok": 10, "failed": 0, "total": 30}
    np.testing.assert_array_equal(sim.read()[0], theta[:10])
    assert all(p.severity == "warning" for p in verify_store(tmp_path))

    monkeypatch.undo()
    sim.write_batches(outputs(sim))  # the re-run (as Dask would) completes them
    assert sim.counts()["ok"] == 30 and verify_store(tmp_path).ok


def test_rewrites_are_idempotent_and_never_overwrite(tmp_path):
    sim = table(tmp_path)
    theta = np.arange(60.0).reshape(20, 3)
    sim.reserve(theta, np.arange(20) // 10)
    first = outputs(sim)
    sim.write_batches(first)
    before = stored(sim)
    sim.write_batches(first)  # a job re-run by Dask: a no-op
    for name, values in stored(sim).items():
        np.testing.assert_array_equal(values, before[name])
    changed = [BatchOutput(o.start, o.stop, o.x + 1) for o in first]
    with pytest.raises(StoreError, match="never overwritten"):
        sim.write_batches(changed)


@pytest.mark.parametrize("writer_first", ["stale", "fresh"])
def test_a_handle_opened_before_a_reservation_never_loses_the_rows_reserved_after(tmp_path, writer_first):
    """The cached handles: a chunk that grew after they were opened is written through fresh ones."""
    stale, fresh = table(tmp_path), table(tmp_path)
    theta = np.arange(90.0).reshape(30, 3)
    stale.reserve(theta[:15], np.zeros(15, dtype=int))  # chunk 1 half reserved
    assert stale.is_pending(0, 15).all()  # opens and caches handles of 15 rows
    fresh.reserve(theta[15:], np.ones(15, dtype=int))  # chunk 1 completed, chunk 2 added

    early = BatchOutput(10, 15, toy(theta[10:15], 0))
    late = BatchOutput(15, 20, toy(theta[15:20], 1))
    pairs = [(stale, early), (fresh, late)]
    for sim, output in pairs if writer_first == "stale" else pairs[::-1]:
        sim.write_batches([output])

    reader = table(tmp_path)
    x = stored(reader)["x"]
    np.testing.assert_array_equal(x[10:15], early.x)
    np.testing.assert_array_equal(x[15:20], late.x)
    assert reader.counts() == {"pending": 20, "ok": 10, "failed": 0, "total": 30}


def test_new_tables_store_x_with_lz4_and_reservations_in_large_chunks(tmp_path):
    sim = table(tmp_path, chunk_size=10)
    group = zarr.open_group(tmp_path / "toy" / "lf", mode="r")
    codec, checksum = group["x"].compressors  # LZ4, then crc32c (tests/test_chunk_checksums.py)
    assert isinstance(checksum, zarr.codecs.Crc32cCodec)
    assert (codec.cname, codec.shuffle) == (X_CODEC.cname, X_CODEC.shuffle) and group["status"].chunks == (10,)
    rows = reservation_chunk_rows(10, 3)
    assert rows % 10 == 0 and rows > 10_000
    assert group["theta"].chunks == (rows, 3) and group["seed"].chunks == (rows,)
    sim.reserve(np.zeros((25, 3)), np.zeros(25, dtype=int))
    sim.write_batches(outputs(sim))
    assert verify_store(tmp_path).ok
    # Chunks of exactly the table's chunk size for what workers write: anything else is an error.
    zarr.open_group(tmp_path / "toy" / "lf", mode="a").create_array("elapsed", shape=(25,), chunks=(20,),
                                                                    dtype="float64", overwrite=True)
    problems = verify_store(tmp_path)
    assert any(p.field == "elapsed" and "chunk size 20" in p.message for p in problems)


def test_a_reservation_chunk_that_is_not_a_multiple_of_the_chunk_size_is_reported(tmp_path):
    sim = table(tmp_path, chunk_size=10)
    sim.reserve(np.zeros((5, 3)), np.zeros(5, dtype=int))
    group = zarr.open_group(tmp_path / "toy" / "lf", mode="a")
    group.create_array("seed", shape=(5,), chunks=(15,), dtype="int64", overwrite=True)[:] = 0
    problems = verify_store(tmp_path)
    assert any(p.field == "seed" and "not a multiple" in p.message for p in problems)


def test_cheap_lf_simulators_get_chunks_of_megabytes_and_others_keep_1000_rows():
    config = RunConfig(task="ou2")
    assert config.chunk_rows("lf", get_task("ou2")) == 100_000  # 0.4 µs per simulation, 80 B per row
    assert config.chunk_rows("lf", get_task("pyramidal")) == 1000  # 34 ms per simulation
    assert config.chunk_rows("lf", get_task("gaussian-blob")) == 128  # 512 KiB rows: the 64 MiB cap
    assert config.chunk_rows("hf", get_task("ou2")) == 10

    class Unknown:
        x_dim = 10
        cost_seconds: dict = {}

    assert config.chunk_rows("lf", Unknown()) == 1000
    assert RunConfig(task="ou2", lf_chunk_size=1000).chunk_rows("lf", get_task("ou2")) == 1000


def test_two_runs_in_one_chunk_keep_each_others_rows(tmp_path):
    """Batches of one chunk separated by stored rows: two runs, whose chunk files are shared."""
    for attempt in range(5):  # concurrent writers of one chunk lose rows only sometimes
        sim = table(tmp_path / str(attempt))
        theta = np.arange(30.0).reshape(10, 3)
        sim.reserve(theta, np.repeat([1, 2, 3], [3, 3, 4]))
        sim.write_batch(3, 6, toy(theta[3:6], 2), elapsed=3.0)
        x_a, x_b = toy(theta[:3], 1), toy(theta[6:], 3)
        x_a[1] = x_b[2] = np.nan
        sim.write_batches([BatchOutput(0, 3, x_a, reasons=["", "a", ""], elapsed=0.3),
                           BatchOutput(6, 10, x_b, reasons=["", "", "b", ""], elapsed=0.4)])
        assert sim.failures() == [(1, "a"), (8, "b")]
        np.testing.assert_allclose(stored(sim)["elapsed"], [0.1] * 3 + [1.0] * 3 + [0.1] * 4)
        assert sim.counts() == {"pending": 0, "ok": 8, "failed": 2, "total": 10}

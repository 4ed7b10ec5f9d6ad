"""Out-of-core training: the store's chunk reads, the chunk loader, streaming statistics and training."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest
import torch
from sbi.utils.sbiutils import standardizing_net

from mfsbi.inference import (
    ArrayChunks, ChunkLoader, StreamingConfig, TrainingConfig, chunk_moments, fine_tune_streaming, split_chunks,
    train_npe_streaming,
)
from mfsbi.runtime.training_jobs import TableChunks, TrainJob, streams, train_estimator
from mfsbi.storage import SimulationStore

PROVENANCE = {"simulator": "toy", "simulator_version": "1", "config_hash": "h"}


def toy(theta: np.ndarray) -> np.ndarray:
    return np.concatenate([theta, theta**2, theta.sum(axis=1, keepdims=True)], axis=1)


def make_table(tmp_path, rows: int, chunk_size: int, theta_dim: int = 2, x_dim: int | None = None):
    x_dim = x_dim or 2 * theta_dim + 1
    table = SimulationStore(tmp_path / "store").require_table(
        "toy", "lf", theta_dim=theta_dim, x_dim=x_dim, chunk_size=chunk_size, provenance=PROVENANCE)
    theta = np.random.default_rng(0).uniform(-1, 1, size=(rows, theta_dim))
    table.reserve(theta, np.arange(rows) // chunk_size)
    return table, theta


def write(table, chunk: int, x_of) -> None:
    start = chunk * table.chunk_size
    stop = min(start + table.chunk_size, table.num_rows)
    theta, _ = table.theta_rows(start, stop)
    table.write_batch(start, stop, x_of(theta))


def row_ids(rows: int, chunk_size: int) -> ArrayChunks:
    """theta's first column is the row's number; x is it twice."""
    ids = np.arange(rows, dtype=np.float64)[:, None]
    return ArrayChunks(np.hstack([ids, ids]), np.hstack([ids, -ids]), chunk_size)


def epoch_rows(loader: ChunkLoader, epoch: int) -> list[list[int]]:
    return [theta[:, 0].long().tolist() for theta, _ in loader.epoch(epoch)]


# The store's chunk read


def test_read_chunk_returns_the_ok_rows_of_one_chunk_below_stop(tmp_path):
    table, theta = make_table(tmp_path, rows=35, chunk_size=10)
    write(table, 0, toy)
    write(table, 1, lambda t: np.where(np.arange(len(t))[:, None] % 3 == 0, np.nan, toy(t)))  # every 3rd failed
    write(table, 3, toy)  # chunk 2 stays pending
    assert table.num_chunks == 4

    got_theta, got_x = table.read_chunk(1)
    ok = [r for r in range(10, 20) if (r - 10) % 3]
    np.testing.assert_array_equal(got_theta, theta[ok])
    np.testing.assert_array_equal(got_x, toy(theta[ok]))
    assert table.read_chunk(2)[0].shape == (0, 2)
    np.testing.assert_array_equal(table.read_chunk(3)[0], theta[30:35])
    np.testing.assert_array_equal(table.read_chunk(0, stop=4)[0], theta[:4])
    assert table.read_chunk(3, stop=30)[0].shape == (0, 2)
    with pytest.raises(ValueError, match="chunk"):
        table.read_chunk(4)


# The loader


def test_split_is_by_whole_chunks_fixed_by_the_seed():
    train, validation = split_chunks(50, 0.1, seed=3)
    assert len(validation) == 5 and sorted([*train, *validation]) == list(range(50))
    assert np.array_equal(split_chunks(50, 0.1, seed=3)[1], validation)
    assert not np.array_equal(split_chunks(50, 0.1, seed=4)[1], validation)
    assert len(split_chunks(2, 0.1, seed=0)[1]) == 1 and len(split_chunks(3, 0.9, seed=0)[0]) == 1
    with pytest.raises(ValueError, match="at least 2 chunks"):
        split_chunks(1, 0.1, seed=0)


def test_every_epoch_reads_every_row_once_in_a_new_shuffled_order():
    source = row_ids(1000, chunk_size=50)
    train, _ = split_chunks(source.num_chunks, 0.1, seed=0)
    loader = ChunkLoader(source, train, batch_size=64, config=StreamingConfig(buffer_chunks=3), seed=7)
    expected = sorted(r for c in train for r in range(50 * c, 50 * c + 50))

    epochs = [epoch_rows(loader, e) for e in (1, 2)]
    for batches in epochs:
        assert sorted(r for b in batches for r in b) == expected
        assert all(len(b) == 64 for b in batches[:-1]) and 0 < len(batches[-1]) <= 64
        # Rows are shuffled across the chunks of a buffer, not only within one chunk.
        assert any(len({r // 50 for r in b}) > 1 for b in batches)
    assert epochs[0] != epochs[1]
    assert not np.array_equal(loader.chunk_order(1), loader.chunk_order(2))


def test_the_same_seed_gives_the_same_batches_and_another_seed_others():
    source = row_ids(600, chunk_size=40)
    chunks = range(source.num_chunks)

    def batches(seed):
        loader = ChunkLoader(source, chunks, batch_size=50, config=StreamingConfig(buffer_chunks=2), seed=seed)
        return epoch_rows(loader, 1)

    assert batches(1) == batches(1)
    assert batches(1) != batches(2)


def test_validation_reads_in_order_without_shuffling():
    source = row_ids(300, chunk_size=30)
    loader = ChunkLoader(source, [4, 1, 7], batch_size=25, shuffle=False)
    rows = [r for b in epoch_rows(loader, 1) for r in b]
    assert rows == [*range(120, 150), *range(30, 60), *range(210, 240)]


def test_failed_and_pending_rows_never_train(tmp_path):
    table, theta = make_table(tmp_path, rows=100, chunk_size=10)
    for chunk in range(10):
        if chunk == 4:
            continue  # pending
        write(table, chunk, lambda t: np.where((t[:, :1] > 0.5), np.inf, toy(t)))  # some failed
    source = TableChunks(table, limit=100)
    loader = ChunkLoader(source, range(10), batch_size=16, seed=0)
    seen = torch.cat([t for t, _ in loader.epoch(1)]).double().numpy()

    ok = table.rows("ok")
    assert ok.size and not np.isin(np.arange(40, 50), ok).any() and (theta[ok, 0] <= 0.5).all()
    np.testing.assert_allclose(np.sort(seen[:, 0]), np.sort(theta[ok, 0].astype(np.float32)))


def test_rows_with_nan_or_inf_are_dropped_from_arrays():
    theta = np.arange(20, dtype=float).reshape(10, 2)
    x = theta.copy()
    x[3, 1], x[7, 0] = np.nan, -np.inf
    loader = ChunkLoader(ArrayChunks(theta, x, 4), range(3), batch_size=100, shuffle=False)
    (batch_theta, batch_x), = list(loader.epoch(1))
    assert batch_theta[:, 0].tolist() == [0, 2, 4, 8, 10, 12, 16, 18] and torch.isfinite(batch_x).all()


def test_a_reading_error_is_raised_in_training():
    class Broken(ArrayChunks):
        def read_chunk(self, chunk):
            if chunk == 3:
                raise OSError("chunk 3 is unreadable")
            return super().read_chunk(chunk)

    loader = ChunkLoader(Broken(np.zeros((100, 1)), np.zeros((100, 1)), 10), range(10), batch_size=10, shuffle=False)
    with pytest.raises(OSError, match="chunk 3"):
        list(loader.epoch(1))


def _peak_memory(path) -> tuple[int, int, int, int]:
    """Peak traced bytes of one streamed epoch and of reading the table whole, in a fresh process."""
    table, _ = make_table(path, rows=20_000, chunk_size=100, theta_dim=2, x_dim=200)
    for chunk in range(table.num_chunks):
        write(table, chunk, lambda t: np.repeat(t, 100, axis=1))
    chunk_bytes = 8 * 100 * 202
    table_bytes = chunk_bytes * table.num_chunks  # 32 MB
    source = TableChunks(table, limit=20_000)
    config = StreamingConfig.for_memory(8 * chunk_bytes, chunk_bytes)
    assert config.buffer_chunks == 2

    def peak(read) -> int:
        tracemalloc.start()
        try:
            read()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    loader = ChunkLoader(source, range(table.num_chunks), batch_size=200, config=config, seed=0)
    streamed = peak(lambda: sum(len(t) for t, _ in loader.epoch(1)))
    in_memory = peak(lambda: table.read("ok"))
    return streamed, in_memory, chunk_bytes, table_bytes


def test_memory_stays_within_a_few_chunks_of_a_much_larger_table(tmp_path):
    # tracemalloc counts every thread's allocations, so it is measured in a fresh process (threads
    # left by earlier tests allocate too). The budget is 8 chunks; reads add decompression
    # temporaries: measured 11.3 chunks alone, 12.6 in the full suite under load.
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        streamed, in_memory, chunk_bytes, table_bytes = pool.apply(_peak_memory, (tmp_path,))
    assert in_memory > table_bytes  # what the loader replaces holds the whole table
    assert streamed < 2 * 8 * chunk_bytes < table_bytes / 10


def test_a_table_appended_to_while_read_gives_only_stored_rows(tmp_path):
    table, theta = make_table(tmp_path, rows=400, chunk_size=20)
    for chunk in range(10):
        write(table, chunk, toy)
    source = TableChunks(table, limit=400)
    assert source.num_chunks == 20

    def append():
        for chunk in range(10, 20):
            write(table, chunk, toy)
        more = table.reserve(np.full((40, 2), 0.25), np.zeros(40, dtype=int))  # beyond the limit
        table.write_batch(int(more[0]), int(more[0]) + 20, toy(np.full((20, 2), 0.25)))

    writer = threading.Thread(target=append)
    loader = ChunkLoader(source, range(20), batch_size=32, config=StreamingConfig(buffer_chunks=2), seed=1)
    writer.start()
    during = torch.cat([t for t, _ in loader.epoch(1)]).double().numpy()
    writer.join()
    after = torch.cat([t for t, _ in loader.epoch(2)]).double().numpy()

    stored = theta.astype(np.float32).astype(np.float64)
    for seen in (during, after):
        rows = [int(np.flatnonzero((stored == row).all(axis=1))[0]) for row in seen]
        assert len(set(rows)) == len(rows) and max(rows) < 400
    assert len(during) >= 200 and len(after) == 400


# Statistics and training


@pytest.mark.parametrize("structured", [False, True])
def test_streamed_z_scoring_matches_sbi_on_the_same_rows(structured):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, [0.5, 2.0, 10.0, 1e-9], size=(1003, 4))
    x[[5, 600], 2] = np.nan
    mean, std = chunk_moments(ArrayChunks(np.zeros((1003, 1)), x, 97), range(11), structured=structured)
    reference = standardizing_net(torch.as_tensor(x, dtype=torch.float32), structured_dims=structured)
    torch.testing.assert_close(mean, reference._mean.reshape(mean.shape), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std, reference._std.reshape(std.shape), rtol=1e-4, atol=1e-7)


def _toy_data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-1, 1, size=(n, 2))
    return theta, toy(theta) + 0.05 * rng.normal(size=(n, 5))


def test_streaming_training_is_the_same_for_the_same_seed_and_learns():
    prior = torch.distributions.Independent(torch.distributions.Uniform(-torch.ones(2), torch.ones(2)), 1)
    theta, x = _toy_data(2000)
    source = ArrayChunks(theta, x, 100)
    training = TrainingConfig(max_num_epochs=4, seed=5)
    reports = []
    first = train_npe_streaming(prior, source, training=training, on_epoch=reports.append)
    again = train_npe_streaming(prior, source, training=training)

    assert first.validation_losses == again.validation_losses and first.epochs == 4
    for a, b in zip(first.network.state_dict().values(), again.network.state_dict().values()):
        assert torch.equal(a, b)
    assert [r.epoch for r in reports] == [1, 2, 3, 4] and first.validation_losses[-1] < first.validation_losses[0]
    assert first.num_simulations == 2000 and first.x_dim == 5

    hf_theta, hf_x = _toy_data(400, seed=1)
    before = [p.clone() for p in first.network.parameters()]
    tuned = fine_tune_streaming(first, ArrayChunks(hf_theta, hf_x + 0.1, 40), training=TrainingConfig(max_num_epochs=2))
    assert all(torch.equal(a, b) for a, b in zip(before, first.network.parameters()))
    samples = tuned.posterior().sample((50,), x=torch.as_tensor(hf_x[:1], dtype=torch.float32), show_progress_bars=False)
    assert samples.shape == (50, 2) and torch.isfinite(samples).all()


def test_a_training_job_over_its_memory_budget_streams_from_the_store(tmp_path):
    from mfsbi.inference import EstimatorConfig, estimator_from_bytes
    from mfsbi.simulators.registry import get_task

    task = get_task("ou2")
    store = SimulationStore(tmp_path / "store")
    table = store.require_table("ou2", "lf", theta_dim=2, x_dim=task.x_dim, chunk_size=100, provenance=PROVENANCE)
    theta = task.sample_prior(1000, seed=0)
    table.reserve(theta, np.arange(1000) // 100)
    for chunk in range(10):
        write(table, chunk, lambda t: task.low_fidelity(t, seed=chunk))

    def job(memory):
        return TrainJob(store.url, "ou2", "ou2", "lf", 1000, EstimatorConfig().to_dict(),
                        TrainingConfig(max_num_epochs=2).to_dict(), None, "cpu", training_memory=memory)

    # In memory: 1000 rows x 12 values x 4 bytes x IN_MEMORY_FACTOR = 480 kB.
    assert streams(job(400_000), table) and not streams(job(600_000), table)
    streamed, in_memory = train_estimator(job(400_000)), train_estimator(job(600_000))
    assert streamed.streamed and not in_memory.streamed and streamed.record()["streamed"]
    assert streamed.epochs == 2 and streamed.num_simulations == in_memory.num_simulations == 1000
    estimator_from_bytes(streamed.checkpoint, task.prior)  # a checkpoint like any other


def test_training_memory_takes_sizes_and_refuses_nonsense():
    from pydantic import ValidationError

    from mfsbi.flows.config import RunConfig

    assert RunConfig(task="ou2", training_memory="512MiB").training_memory == 512 * 2**20
    assert RunConfig(task="ou2", training_memory=4 * 2**30).training_memory == 4 * 2**30
    with pytest.raises(ValidationError, match="training_memory"):
        RunConfig(task="ou2", training_memory="lots")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_stay_on_the_gpu():
    loader = ChunkLoader(row_ids(500, 50), range(10), batch_size=64, device="cuda", seed=0)
    batches = list(loader.epoch(1))
    assert all(t.is_cuda and x.is_cuda for t, x in batches)
    assert sorted(int(r) for t, _ in batches for r in t[:, 0].tolist()) == list(range(500))

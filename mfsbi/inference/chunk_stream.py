r"""Training data larger than memory: simulations read chunk by chunk, shuffled, prefetched.

A :class:`ChunkSource` is anything that hands out the valid rows of one chunk at a time (the
simulation store's tables are one, through :mod:`mfsbi.runtime.training_jobs`; :class:`ArrayChunks`
wraps arrays already in memory). :class:`ChunkLoader` turns it into minibatches the way a
map-style ``DataLoader`` cannot without reading every row separately: whole chunks in a shuffled
order, rows shuffled within a buffer of several chunks, the next chunks read by a background
thread while the network trains. :func:`chunk_moments` computes the x z-scoring statistics in one
pass, as sbi's ``standardizing_net`` would over the same rows.

Hand-written because neither sbi 0.27 (whose loaders index an in-memory dataset) nor torch's
``DataLoader`` (one ``__getitem__`` per row, or an ``IterableDataset`` with none of this) shuffles
across chunks of a store; the randomness is numpy's, seeded per epoch, so the same seed gives the
same batches run after run whatever the reading thread's timing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ArrayChunks",
    "ChunkLoader",
    "ChunkSource",
    "StreamingConfig",
    "chunk_moments",
    "split_chunks",
]

# sbi's standardizing_net floors every std at this value (sbi.utils.sbiutils).
MIN_STD = 1e-7


@runtime_checkable
class ChunkSource(Protocol):
    """Simulations that can be read one chunk at a time."""

    @property
    def num_chunks(self) -> int:
        """The number of chunks."""

    def read_chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        r"""The rows of one chunk that may train (stored ok).

        Returns:
            ``theta`` of shape :math:`(m, d)` and ``x`` of shape :math:`(m, k)`; ``m`` may be 0.
        """


class ArrayChunks:
    r"""Arrays in memory, cut into chunks of ``chunk_size`` rows (notebooks and tests).

    Arguments:
        theta: parameters, shape :math:`(n, d)`.
        x: observations, shape :math:`(n, k)`.
        chunk_size: rows per chunk.
    """

    def __init__(self, theta: np.ndarray, x: np.ndarray, chunk_size: int):
        if len(theta) != len(x):
            raise ValueError(f"theta has {len(theta)} rows but x has {len(x)}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size: must be >= 1, got {chunk_size}")
        self._theta, self._x, self._chunk_size = np.asarray(theta), np.asarray(x), int(chunk_size)

    @property
    def num_chunks(self) -> int:
        return -(-len(self._theta) // self._chunk_size)

    def read_chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        rows = slice(chunk * self._chunk_size, (chunk + 1) * self._chunk_size)
        return self._theta[rows], self._x[rows]


@dataclass(frozen=True)
class StreamingConfig:
    r"""How much of a table out-of-core training holds at once.

    Arguments:
        buffer_chunks: chunks whose rows are shuffled together (more: closer to a full shuffle).
        prefetch_chunks: chunks read ahead by the background thread.
        validation_batch_size: rows per validation forward pass (no gradients: larger is cheaper).
    """

    buffer_chunks: int = 8
    prefetch_chunks: int = 2
    validation_batch_size: int = 2000

    def __post_init__(self) -> None:
        for name in ("buffer_chunks", "prefetch_chunks", "validation_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an int >= 1, got {value!r}")

    @classmethod
    def for_memory(cls, memory_bytes: int, chunk_bytes: int) -> StreamingConfig:
        """The largest buffer whose chunks fit in ``memory_bytes``.

        The loader holds the buffer twice (read, then shuffled), the prefetched chunks and the
        one being read; a chunk's bytes are counted as read (float64). Not counted: the store's
        decompression and conversion temporaries while a chunk is read (measured: a peak of 11-13
        chunks under a budget of 8, tests/test_streaming.py), so leave about half again as much.
        """
        prefetch = 2
        chunks = int(memory_bytes // max(chunk_bytes, 1))
        return cls(buffer_chunks=max(1, (chunks - prefetch - 1) // 2), prefetch_chunks=prefetch)


def split_chunks(num_chunks: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Splits chunks into training and validation chunks, fixed by the seed.

    Whole chunks, so that an epoch never reads a chunk for only some of its rows.

    Returns:
        The training chunks and the validation chunks (at least one each), sorted.
    """
    if num_chunks < 2:
        raise ValueError(f"streaming needs at least 2 chunks (one to validate on), the data has {num_chunks}")
    num_validation = min(max(1, round(validation_fraction * num_chunks)), num_chunks - 1)
    order = np.random.default_rng([seed, 0x5EED]).permutation(num_chunks)
    return np.sort(order[num_validation:]), np.sort(order[:num_validation])


def _valid_rows(theta: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # As sbi's append_simulations(exclude_invalid_x=True): rows with a NaN or inf never train.
    theta = np.asarray(theta, dtype=np.float32)
    x = np.asarray(x, dtype=np.float32)
    keep = np.isfinite(x).all(axis=1) & np.isfinite(theta).all(axis=1)
    if keep.all():
        return theta, x
    return theta[keep], x[keep]


def chunk_moments(source: ChunkSource, chunks: Sequence[int], structured: bool = False) -> tuple[Tensor, Tensor]:
    r"""The mean and std with which sbi would z-score the valid x of these chunks, in one pass.

    Per dimension (``structured=False``): Chan et al.'s pairwise merge of counts, means and sums of
    squared deviations, in float64, and the unbiased std floored at 1e-7, as ``standardizing_net``.
    Structured: the mean of all values and the mean over rows of each row's std (floored first).

    Returns:
        ``mean`` and ``std`` as float32 tensors (shape ``(k,)``, or ``()`` when structured).
    """
    count, mean, m2 = 0, None, None
    structured_sum, std_sum, width = 0.0, 0.0, 0
    for chunk in chunks:
        _, x = _valid_rows(*source.read_chunk(int(chunk)))
        if len(x) == 0:
            continue
        x = x.astype(np.float64)
        n = len(x)
        if structured:
            width = x.shape[1]
            structured_sum += float(x.sum())
            row_std = x.std(axis=1, ddof=1) if x.shape[1] > 1 else np.full(n, np.nan)
            std_sum += float(np.maximum(row_std, MIN_STD).sum())
            count += n
            continue
        chunk_mean = x.mean(axis=0)
        chunk_m2 = ((x - chunk_mean) ** 2).sum(axis=0)
        if mean is None:
            count, mean, m2 = n, chunk_mean, chunk_m2
            continue
        delta = chunk_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + chunk_m2 + delta**2 * (count * n / total)
        count = total
    if count < 2:
        raise ValueError(f"z-scoring x needs at least 2 valid rows, the chunks hold {count}")
    if structured:
        return (torch.tensor(structured_sum / (count * width), dtype=torch.float32),
                torch.tensor(std_sum / count, dtype=torch.float32))
    std = np.maximum(np.sqrt(m2 / (count - 1)), MIN_STD)
    return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)


_DONE = object()


class ChunkLoader:
    r"""Minibatches of (theta, x) from some chunks of a :class:`ChunkSource`.

    Every epoch reads each of its chunks once, in an order drawn from ``(seed, epoch)``; rows are
    shuffled within each buffer of ``buffer_chunks`` chunks (the rows left over from one buffer
    join the next), invalid rows dropped. Batches are float32 and on ``device``: on CUDA a buffer
    is copied once from pinned memory without blocking, and batches are slices of it there.

    Arguments:
        source: where the chunks come from.
        chunks: the chunks this loader reads (e.g. the training chunks of :func:`split_chunks`).
        batch_size: rows per batch (the last batch of an epoch may be smaller).
        config: buffer and prefetch sizes.
        seed: the seed of the chunk and row orders.
        shuffle: ``False`` reads chunks and rows in order (validation).
        device: where batches go.
    """

    def __init__(self, source: ChunkSource, chunks: Sequence[int], batch_size: int,
                 config: StreamingConfig = StreamingConfig(), seed: int = 0, shuffle: bool = True,
                 device: str = "cpu"):
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        self.source = source
        self.chunks = np.asarray(chunks, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.config = config
        self.seed = int(seed)
        self.shuffle = shuffle
        self.device = torch.device(device)

    def chunk_order(self, epoch: int) -> np.ndarray:
        """The order in which epoch ``epoch`` reads the chunks."""
        return self._order(self._rng(epoch))

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        # The first draw of an epoch's generator; its row shuffles draw after it.
        return rng.permutation(self.chunks) if self.shuffle else self.chunks

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(epoch)])

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of one epoch, as ``(theta, x)`` tensors on the loader's device."""
        rng = self._rng(epoch)
        order = self._order(rng)
        reading = _Prefetch(self.source, order, self.config.prefetch_chunks)
        try:
            theta_left = x_left = None
            buffered: list[tuple[np.ndarray, np.ndarray]] = []
            for item in reading:
                buffered.append(item)
                if len(buffered) < self.config.buffer_chunks:
                    continue
                theta_left, x_left = yield from self._emit(buffered, theta_left, x_left, rng, final=False)
                buffered = []
            yield from self._emit(buffered, theta_left, x_left, rng, final=True)
        finally:
            reading.close()

    def _emit(self, buffered, theta_left, x_left, rng, final: bool):
        # One buffer: joined with the previous remainder, shuffled, cut into batches.
        parts = ([(theta_left, x_left)] if theta_left is not None else []) + buffered
        parts = [p for p in parts if len(p[0])]
        if not parts:
            return None, None
        theta = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        x = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        del parts, buffered[:]
        if self.shuffle:
            permutation = rng.permutation(len(theta))
            theta, x = theta[permutation], x[permutation]
        full = len(theta) if final else len(theta) - len(theta) % self.batch_size
        theta_t, x_t = self._to_device(theta[:full]), self._to_device(x[:full])
        for start in range(0, full, self.batch_size):
            yield theta_t[start:start + self.batch_size], x_t[start:start + self.batch_size]
        if full == len(theta):
            return None, None
        return theta[full:].copy(), x[full:].copy()

    def _to_device(self, array: np.ndarray) -> Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)


class _Prefetch:
    """Reads chunks in a given order on a background thread, at most ``depth`` ahead of the consumer.

    A reading error is raised in the consumer; closing it early stops the thread.
    """

    def __init__(self, source: ChunkSource, order: np.ndarray, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(source, order), daemon=True,
                                        name="mfsbi-chunk-prefetch")
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, source: ChunkSource, order: np.ndarray) -> None:
        try:
            for chunk in order:
                if not self._put(_valid_rows(*source.read_chunk(int(chunk)))):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(error)
            return
        self._put(_DONE)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        # A read in progress finishes on its own (the thread is a daemon); no new one starts.
        self._thread.join(timeout=5.0)

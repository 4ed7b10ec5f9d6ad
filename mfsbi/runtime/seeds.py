"""Deterministic seeds derived from the run seed.

Every random choice of a run (parameters of a chunk, a batch's simulator seed, a training seed) draws
its seed from ``SeedSequence([run_seed, purpose, *keys])``: the same run seed gives the same numbers,
independent of how many workers run the batches or in which order they finish.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["derive_seed"]


def derive_seed(run_seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed for one purpose of one run.

    Arguments:
        run_seed: the user's seed.
        purpose: what the seed is for, e.g. ``"theta/lf"``; hashed to an integer.
        keys: further integers, e.g. a chunk index and a first row.

    Returns:
        A non-negative integer below 2**63.
    """
    entropy = [run_seed, zlib.crc32(purpose.encode()), *keys]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))

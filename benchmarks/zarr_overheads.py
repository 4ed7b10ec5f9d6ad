"""Where a chunked zarr write spends its time on this machine, layer by layer. A measurement, not a test.

The profile behind the store-vs-numpy.save gap in docs/performance.md: the same bytes written as

  numpy.save        one file (the reference of issue #7)
  os.write          one plain file per chunk
  zarr _put         zarr's LocalStore file write per chunk (temporary file + rename: atomic)
  LocalStore.set    the same through zarr's event loop and a thread (asyncio.to_thread)
  Array[...] = x    zarr's public write, one chunk after another
  gathered          zarr's async writes of all chunks at once (what SimulationTable does for x)
  gathered + lz4    the same with the store's x codec (Blosc LZ4)

for large chunks (x of GaussianBlob HF: 5 MiB) and small ones (a 10-row chunk of status/elapsed:
80 bytes). Memory is warmed first (benchmarks/_zarr_write.py says why); each writer gets a new
folder after os.sync() and repeats; medians are reported.

    python benchmarks/zarr_overheads.py [--out docs/zarr-overheads.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import sync
from zarr.storage import LocalStore
from zarr.storage._local import _put  # the file write itself, to separate it from zarr's machinery

import _zarr_write as Z

CASES = {"large chunks (200 × 5 MiB)": (200, 10, 65536), "small chunks (200 × 80 B)": (200, 10, 1)}


def writers(x: np.ndarray, chunks: int, rows: int) -> dict:
    parts = [x[i * rows: (i + 1) * rows] for i in range(chunks)]
    buffers = [Buffer.from_array_like(np.ascontiguousarray(p).reshape(-1).view("B")) for p in parts]

    def array(folder: Path, codec=None) -> zarr.Array:
        return zarr.create_array(LocalStore(folder), shape=x.shape, chunks=(rows, x.shape[1]), dtype="float64",
                                 compressors=codec, config={"write_empty_chunks": True})

    def plain(folder: Path) -> None:
        folder.mkdir()
        for i, buffer in enumerate(buffers):
            fd = os.open(folder / f"c{i}", os.O_WRONLY | os.O_CREAT)
            os.write(fd, buffer.as_buffer_like())
            os.close(fd)

    def store_set(folder: Path) -> None:
        async def run() -> None:
            store = LocalStore(folder)
            await store._open()
            for i, buffer in enumerate(buffers):
                await store.set(f"c/{i}/0", buffer)
        asyncio.run(run())

    def sequential(folder: Path) -> None:
        target = array(folder)
        for i, part in enumerate(parts):
            target[i * rows: (i + 1) * rows] = part

    def gathered(folder: Path, codec=None) -> None:
        target = array(folder, codec).async_array

        async def run() -> None:
            await asyncio.gather(*(target.setitem(slice(i * rows, (i + 1) * rows), p) for i, p in enumerate(parts)))
        sync(run())

    def save(folder: Path) -> None:
        folder.mkdir()
        np.save(folder / "x.npy", x)

    return {
        "numpy.save": save,
        "os.write": plain,
        "zarr _put": lambda f: [_put(f / "c" / str(i) / "0", b) for i, b in enumerate(buffers)],
        "LocalStore.set": store_set,
        "Array[...] = x": sequential,
        "gathered": gathered,
        "gathered + lz4": lambda f: gathered(f, BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "zarr-overheads.json")
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()
    report = {"zarr": zarr.__version__, "memory_warm_up_s": round(Z.warm_memory(3072), 2), "cases": {}}
    tmp = Path(tempfile.mkdtemp(prefix="mfsbi-zarr-"))
    try:
        for label, (chunks, rows, width) in CASES.items():
            x = np.random.default_rng(0).standard_normal((chunks * rows, width))
            times: dict[str, list[float]] = {}
            for rep in range(args.repetitions):
                for name, write in writers(x, chunks, rows).items():
                    folder = tmp / f"{name.replace(' ', '_')}-{rep}"
                    os.sync()
                    started = time.perf_counter()
                    write(folder)
                    times.setdefault(name, []).append(time.perf_counter() - started)
                    shutil.rmtree(folder)
            case = {name: {"ms_per_chunk": round(1e3 * float(np.median(t)) / chunks, 3),
                           "mb_per_s": round(x.nbytes / 1e6 / float(np.median(t)), 1)} for name, t in times.items()}
            report["cases"][label] = case
            print(label)
            for name, row in case.items():
                print(f"  {name:16s} {row['ms_per_chunk']:8.3f} ms per chunk  {row['mb_per_s']:9.1f} MB/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()

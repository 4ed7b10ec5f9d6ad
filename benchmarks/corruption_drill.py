"""Corruption drills: chunks of x, theta and status truncated, zeroed or bit-flipped; what verify sees.

On a copy of one simulated OU2 store (an HF table of 100 rows in chunks of 10, budget 100, and an LF
table of 1 000 rows in chunks of 100), one chunk file is damaged (a random chunk, a random bit) and
``verify_store`` runs. Counted per layout (3: crc32c on every array; 2: the codecs before it),
array and kind of damage:

* named: verify reports that chunk of that array as corrupt, with its rows;
* reported: verify reports some problem (of any kind);
* crashed: verify raised instead of reporting;
* silent: verify found nothing (the damage decoded into other numbers).

On layout 3, each damaged x or status chunk is then repaired (``repair_store``) and the table's
pending rows simulated again: counted are repairs whose table then holds bit-identical x, statuses,
θ and seeds, with the HF budget's ``reserved`` unchanged, and that verify passes.

    python benchmarks/corruption_drill.py --repeats 5 --out docs/corruption-drill.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from mfsbi.runtime.executor import SerialExecutor
from mfsbi.runtime.simulation import ensure_rows, run_pending
from mfsbi.simulators import get_task
from mfsbi.storage import SimulationStore, layout, repair_store, verify_store

ARRAYS = ("x", "theta", "status")
DAMAGE = ("truncated", "zeroed", "bit-flipped")
TABLES = {"hf": (100, 10, 100), "lf": (1000, 100, None)}  # rows, chunk size, budget


def _layout_2_arrays(group, theta_dim, x_dim, chunk_size):
    """``create_arrays`` before checksums (layout 2): the same compressors, no crc32c."""
    reserved = layout.reservation_chunk_rows(chunk_size, theta_dim)
    for name, (dtype, fill, wide, default) in layout.ARRAYS.items():
        if name in set(group.array_keys()):
            continue
        rows = reserved if name in layout.RESERVED_ARRAYS else chunk_size
        width = {"theta": theta_dim, "x": x_dim}.get(name)
        group.create_array(name, shape=(0, width) if wide else (0,), chunks=(rows, width) if wide else (rows,),
                           dtype=dtype, fill_value=fill, dimension_names=("row", f"{name}_dim") if wide else ("row",),
                           **({} if default else {"compressors": layout.X_CODEC}))


def _plan(path: Path):
    store = SimulationStore(path)
    return [ensure_rows(store, get_task("ou2"), table="ou2", fidelity=fidelity, num_rows=rows, chunk_size=chunk,
                        seed=11, config_hash="drill", budget=budget)
            for fidelity, (rows, chunk, budget) in TABLES.items()]


def build(path: Path, version: int) -> Path:
    import mfsbi.storage.store as store_module

    original = store_module.create_arrays
    if version == 2:
        store_module.create_arrays = _layout_2_arrays
    try:
        for table in _plan(path):
            run_pending(SerialExecutor(), str(path), "ou2", table, table="ou2", fidelity=table.fidelity)
    finally:
        store_module.create_arrays = original
    return path


def _arrays(path: Path, fidelity: str) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path / "ou2" / fidelity), mode="r")
    return {name: group[name][:] for name in ("x", "status", "theta", "seed")}


def damage(path: Path, fidelity: str, array: str, how: str, rng: np.random.Generator) -> tuple[int, Path]:
    handle = zarr.open_array(str(path / "ou2" / fidelity / array), mode="r")
    chunks = -(-handle.shape[0] // handle.chunks[0])
    chunk = int(rng.integers(chunks))
    file = path / "ou2" / fidelity / array / handle.metadata.encode_chunk_key((chunk,) + (0,) * (handle.ndim - 1))
    data = bytearray(file.read_bytes())
    if how == "truncated":
        data = data[: int(rng.integers(1, len(data)))]
    elif how == "zeroed":
        data = bytearray(len(data))
    else:
        data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    file.write_bytes(bytes(data))
    return chunk, file


def drill(base: Path, work: Path, version: int, fidelity: str, array: str, how: str,
          rng: np.random.Generator) -> dict:
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(base, store)
    before = _arrays(store, fidelity)
    chunk, _ = damage(store, fidelity, array, how, rng)
    result = {"layout": version, "fidelity": fidelity, "array": array, "damage": how, "chunk": chunk}
    try:
        report = verify_store(store)
    except Exception as error:  # noqa: BLE001 -- a crash is what is counted
        return {**result, "crashed": f"{type(error).__name__}: {error}"[:200], "named": False, "reported": False}
    key = f"ou2/{fidelity}"
    result.update(crashed=None, reported=not report.ok,
                  named=any(p.table == key and p.field == array and p.chunk == chunk for p in report),
                  problems=[p.message[:160] for p in report][:3])
    if version == 3 and array in ("x", "status") and result["named"]:
        done = repair_store(store)
        table = SimulationStore(store).table("ou2", fidelity)
        simulated = run_pending(SerialExecutor(), str(store), "ou2", table, table="ou2", fidelity=fidelity).simulated
        after = _arrays(store, fidelity)
        budget = table.budget()
        result.update(
            repaired_rows=sum(c.num_rows for c in done.repaired), simulated_again=simulated,
            identical=all(np.array_equal(after[k], before[k], equal_nan=True) for k in after),
            budget_unchanged=budget is None or budget.reserved == TABLES[fidelity][2],
            verified=verify_store(store).ok)
    return result


def summary(results: list[dict]) -> list[dict]:
    rows = []
    for version in (3, 2):
        for array in ARRAYS:
            for how in DAMAGE:
                group = [r for r in results if (r["layout"], r["array"], r["damage"]) == (version, array, how)]
                repaired = [r for r in group if "identical" in r]
                rows.append({
                    "layout": version, "array": array, "damage": how, "drills": len(group),
                    "named": sum(r["named"] for r in group), "reported": sum(r["reported"] for r in group),
                    "crashed": sum(r["crashed"] is not None for r in group),
                    "silent": sum(not r["reported"] and r["crashed"] is None for r in group),
                    "repaired": len(repaired),
                    "identical_after_resimulation": sum(r["identical"] and r["verified"] for r in repaired),
                    "budget_unchanged": sum(r["budget_unchanged"] for r in repaired)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| layout | array | damage | drills | chunk named | any problem | verify crashed | passed silently "
             "| repaired | same x after re-simulation, verify OK | HF budget unchanged |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        repaired = r["repaired"] if r["layout"] == 3 and r["array"] != "theta" else "-"
        lines.append(f"| {r['layout']} | {r['array']} | {r['damage']} | {r['drills']} | {r['named']} | {r['reported']} "
                     f"| {r['crashed']} | {r['silent']} | {repaired} "
                     f"| {r['identical_after_resimulation'] if repaired != '-' else '-'} "
                     f"| {r['budget_unchanged'] if repaired != '-' else '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="drills per layout, table, array and damage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/corruption-drill.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.time()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for version in (3, 2):
            base = build(Path(tmp) / f"base-{version}", version)
            for fidelity in TABLES:
                for array in ARRAYS:
                    for how in DAMAGE:
                        for _ in range(args.repeats):
                            results.append(drill(base, Path(tmp), version, fidelity, array, how, rng))
    rows = summary(results)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "seconds": round(time.time() - started, 1),
                                    "summary": rows, "table": table(rows), "drills": results}, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()

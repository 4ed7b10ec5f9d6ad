"""Chunk checksums: a truncated, zeroed or bit-flipped chunk is reported by `mfsbi verify` by table,
array, chunk and rows, never decoded into other numbers; `--repair` makes its rows pending and the
next simulation stores the same numbers again, within the same HF budget."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from mfsbi.app.cli import app
from mfsbi.runtime.executor import SerialExecutor
from mfsbi.runtime.simulation import ensure_rows, run_pending
from mfsbi.simulators import get_task
from mfsbi.storage import SimulationStore, repair_store, verify_store
from mfsbi.storage import layout
from mfsbi.storage.layout import reservation_chunk_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from corruption_drill import _layout_2_arrays  # noqa: E402 -- a table as written before checksums

ROWS, CHUNK = 30, 10
CORRUPTIONS = ("truncated", "zeroed", "bit-flipped")


def _simulated_store(path: Path) -> Path:
    """An OU2 HF table of 30 rows in chunks of 10, budget 30, every row simulated."""
    store = SimulationStore(path)
    table = ensure_rows(store, get_task("ou2"), table="ou2", fidelity="hf", num_rows=ROWS, chunk_size=CHUNK,
                        seed=3, config_hash="checksums", budget=ROWS)
    report = run_pending(SerialExecutor(), store.url, "ou2", table, table="ou2", fidelity="hf")
    assert report.simulated == ROWS
    return path


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    return _simulated_store(tmp_path_factory.mktemp("checksums") / "store")


@pytest.fixture
def store(simulated, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(simulated, copy)
    return copy


def _chunk_file(store: Path, array: str, chunk: int) -> Path:
    handle = zarr.open_array(str(store / "ou2" / "hf" / array), mode="r")
    coordinates = (chunk,) + (0,) * (handle.ndim - 1)
    return store / "ou2" / "hf" / array / handle.metadata.encode_chunk_key(coordinates)


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "zeroed":
        data = bytearray(len(data))
    else:
        data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _stored(store: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(store / "ou2" / "hf"), mode="r")
    return {name: group[name][:] for name in ("x", "status", "theta", "seed")}


@pytest.mark.parametrize("how", CORRUPTIONS)
@pytest.mark.parametrize("array", ["x", "theta", "status"])
def test_a_corrupt_chunk_is_one_problem_naming_table_array_chunk_and_rows(store, array, how):
    # theta's chunks are reservation chunks (many table chunks): its chunk 0 holds every row here.
    chunk = 0 if array == "theta" else 1
    rows = (0, ROWS) if array == "theta" else (10, 20)
    assert reservation_chunk_rows(CHUNK, 2) >= ROWS
    _corrupt(_chunk_file(store, array, chunk), how)

    report = verify_store(store)
    corrupt = [p for p in report if p.corrupt_chunk]
    assert [(p.table, p.field, p.chunk, p.rows, p.severity) for p in corrupt] == [("ou2/hf", array, chunk, rows, "error")]
    assert f"rows {rows[0]}..{rows[1] - 1}" in corrupt[0].message
    # The rows of the corrupt chunk are not checked as if their fill values were stored.
    assert report == corrupt, report

    result = CliRunner().invoke(app, ["verify", str(store)], terminal_width=200)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert f"corrupt chunk {chunk} (rows {rows[0]}..{rows[1] - 1})" in result.output
    assert "1 problems" in result.output


@pytest.mark.parametrize("array", ["x", "status"])
def test_repair_makes_the_rows_pending_and_the_next_run_stores_the_same_numbers_within_the_budget(store, array):
    original = _stored(store)
    _corrupt(_chunk_file(store, array, 1), "bit-flipped")

    result = CliRunner().invoke(app, ["verify", "--repair", str(store)], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "repaired ou2/hf chunk 1 (rows 10..19): 10 rows pending again" in result.output
    assert "HF budget unchanged: the rows stay reserved" in result.output
    assert "store OK: 1 tables, 30 rows" in result.output

    table = SimulationStore(store).table("ou2", "hf")
    assert table.counts() == {"pending": 10, "ok": 20, "failed": 0, "total": 30}
    assert table.rows("pending").tolist() == list(range(10, 20))
    budget = table.budget()
    assert (budget.total, budget.reserved) == (ROWS, ROWS)

    # The same plan finds all 30 rows reserved: it reserves nothing, and simulates exactly the 10.
    table = ensure_rows(SimulationStore(store), get_task("ou2"), table="ou2", fidelity="hf", num_rows=ROWS,
                        chunk_size=CHUNK, seed=3, config_hash="checksums", budget=ROWS)
    report = run_pending(SerialExecutor(), str(store), "ou2", table, table="ou2", fidelity="hf")
    assert report.simulated == 10
    after = _stored(store)
    for name in ("theta", "seed", "status"):
        assert np.array_equal(after[name], original[name]), name
    assert np.array_equal(after["x"], original["x"])  # same θ, same seeds, same batches: same numbers
    assert (table.budget().total, table.budget().reserved) == (ROWS, ROWS)
    assert verify_store(store).ok


def test_a_corrupt_theta_chunk_is_not_repaired_and_nothing_is_deleted(store):
    status = _stored(store)["status"]
    _corrupt(_chunk_file(store, "theta", 0), "truncated")

    done = repair_store(store)
    assert done.repaired == [] and [p.field for p in done.not_repaired] == ["theta"]
    result = CliRunner().invoke(app, ["verify", "--repair", str(store)], terminal_width=300)
    assert result.exit_code == 1
    assert "parameters are lost" in result.output
    assert np.array_equal(zarr.open_group(str(store / "ou2" / "hf"), mode="r")["status"][:], status)


def test_tables_written_before_checksums_still_read_verify_and_are_named(tmp_path, monkeypatch):
    import mfsbi.storage.store as store_module

    monkeypatch.setattr(store_module, "create_arrays", _layout_2_arrays)
    path = _simulated_store(tmp_path / "old")
    monkeypatch.undo()
    x = zarr.open_array(str(path / "ou2" / "hf" / "x"), mode="r")
    assert not any(isinstance(codec, zarr.codecs.Crc32cCodec) for codec in x.metadata.codecs)

    table = SimulationStore(path).table("ou2", "hf")
    assert table.counts()["ok"] == ROWS and np.isfinite(table.read("ok")[1]).all()
    report = verify_store(path)
    assert report.ok and report.without_checksums == ["ou2/hf"]
    result = CliRunner().invoke(app, ["verify", str(path)], terminal_width=300)
    assert result.exit_code == 0 and "store OK: 1 tables, 30 rows" in result.output
    assert "written before chunk checksums (ou2/hf)" in result.output

    # A new table of the same store gets checksums; the old one keeps its codecs.
    new = SimulationStore(path).require_table("ou2", "lf", theta_dim=2, x_dim=x.shape[1], chunk_size=CHUNK,
                                              provenance={"simulator": "s", "simulator_version": "1",
                                                          "config_hash": "h"})
    assert any(isinstance(c, zarr.codecs.Crc32cCodec) for c in new._array("x").metadata.codecs)
    assert new.attrs["mfsbi_table"] == layout.LAYOUT_VERSION == 3


def test_repair_refuses_while_a_run_holds_the_store_and_changes_nothing(store):
    from mfsbi.storage import StoreLock

    _corrupt(_chunk_file(store, "x", 1), "zeroed")
    with StoreLock(store, owner="a running flow"):
        result = CliRunner().invoke(app, ["verify", "--repair", str(store)], terminal_width=300)
    assert result.exit_code == 2 and "a running flow" in result.output, result.output
    assert [p.chunk for p in verify_store(store) if p.corrupt_chunk] == [1]

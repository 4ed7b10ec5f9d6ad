"""Tests of the zarr simulation store (mfsbi.storage): what a store holds and refuses: provenance,
task, fidelity and artifact names, intermediate fidelities, artifacts as plain files, memory and file URLs,
folders that are not a store, and bad rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from mfsbi.storage import BudgetExceededError, SimulationStore, StoreError, StoreMismatchError
from toy_store import PROVENANCE, make, run_all


@pytest.mark.parametrize(
    "change",
    [
        {"theta_dim": 2},
        {"x_dim": 5},
        {"chunk_size": 20},
        {"simulator": "other.hf"},
        {"simulator_version": "2.0"},
        {"config_hash": "zzz"},
    ],
)
def test_provenance_mismatch(tmp_path, change):
    store, _ = make(tmp_path)
    request = {"theta_dim": 3, "x_dim": 4, "chunk_size": 10, "provenance": dict(PROVENANCE)}
    (field, value), = change.items()

    if field in PROVENANCE:
        request["provenance"][field] = value
    else:
        request[field] = value

    with pytest.raises(StoreMismatchError, match=field) as info:
        store.require_table("toy", "lf", **request)

    assert info.value.field == field
    assert info.value.requested == value
    assert str(info.value.stored) in str(info.value)

    # The matching request opens it; extra provenance is neither checked nor refused.
    same = {"theta_dim": 3, "x_dim": 4, "chunk_size": 10, "provenance": {**PROVENANCE, "prior": "U"}}
    assert store.require_table("toy", "lf", **same).num_rows == 0


@pytest.mark.parametrize("task", ["..", ".", "a/b", "../x", "", ".hidden", "a\\b", "artifacts", "t s"])
def test_bad_task_names(tmp_path, task):
    store = SimulationStore(tmp_path / "store")

    with pytest.raises(StoreError):
        store.require_table(task, "lf", theta_dim=1, x_dim=1, chunk_size=1, provenance=PROVENANCE)
    with pytest.raises(StoreError):
        store.table(task, "lf")


@pytest.mark.parametrize(
    "name", ["../x", "/etc/passwd", "a/../../b", "a\\b", "a//b", "./a", "", "zarr.json", "a/zarr.json"]
)
def test_bad_artifact_names(tmp_path, name):
    store = SimulationStore(tmp_path / "store")

    with pytest.raises(StoreError):
        store.write_artifact(name, b"x")
    with pytest.raises(StoreError):
        store.read_artifact(name)

    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("fidelity", ["MF", "1mf", "m-f", "", "a" * 17, "zarr.json", "../hf"])
def test_bad_fidelity(tmp_path, fidelity):
    store = SimulationStore(tmp_path / "store")

    with pytest.raises(StoreError, match="fidelity"):
        store.require_table("toy", fidelity, theta_dim=1, x_dim=1, chunk_size=1, provenance=PROVENANCE)
    assert store.tables() == []


def test_intermediate_fidelity_tables(tmp_path):
    """A chain's intermediate level is a table of its own, listed between lf and hf, with a budget."""
    from mfsbi.storage import verify_store

    store = SimulationStore(tmp_path / "store")
    for fidelity in ("hf", "mf", "lf"):
        store.require_table("toy", fidelity, theta_dim=1, x_dim=1, chunk_size=2, provenance=PROVENANCE)
    assert store.tables() == [("toy", "lf"), ("toy", "mf"), ("toy", "hf")]
    mf = store.table("toy", "mf")
    mf.set_budget(3)
    mf.reserve(np.zeros((3, 1)), np.zeros(3, dtype=np.int64))
    with pytest.raises(BudgetExceededError):
        mf.reserve(np.zeros((1, 1)), np.zeros(1, dtype=np.int64))
    with pytest.raises(ValueError, match="budget"):
        store.table("toy", "lf").set_budget(5)
    assert store.summary()["tables"]["toy/mf"]["budget"] == {"total": 3, "reserved": 3, "remaining": 0}
    report = verify_store(tmp_path / "store")
    assert report.tables == 3 and report.ok, report


def test_artifacts_are_plain_files(tmp_path):
    store = SimulationStore(tmp_path / "store")
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    doc = json.dumps({"c2st": 0.52}).encode()

    store.write_artifact("plots/c2st.png", png)
    store.write_artifact("metrics.json", doc)

    assert (tmp_path / "store" / "artifacts" / "plots" / "c2st.png").read_bytes() == png
    assert store.artifact_path("metrics.json") == tmp_path / "store" / "artifacts" / "metrics.json"
    assert SimulationStore(tmp_path / "store", mode="r").read_artifact("plots/c2st.png") == png
    assert store.artifacts() == ["metrics.json", "plots/c2st.png"]

    store.write_artifact("metrics.json", b"{}")  # replaced
    assert store.read_artifact("metrics.json") == b"{}"

    with pytest.raises(FileNotFoundError):
        store.read_artifact("missing.pt")

    # The artifacts folder does not disturb the zarr hierarchy or the tables.
    assert store.tables() == []


def test_memory_and_file_urls(tmp_path):
    memory = SimulationStore("memory://mfsbi-test-store")
    memory.write_artifact("a/b.bin", b"abc")
    table = memory.require_table("toy", "lf", theta_dim=3, x_dim=4, chunk_size=4, provenance=PROVENANCE)
    table.reserve(np.ones((4, 3)), np.zeros(4, dtype=int))
    run_all(table)

    assert memory.path is None and memory.artifact_path("a/b.bin") is None
    assert memory.read_artifact("a/b.bin") == b"abc"
    assert SimulationStore("memory://mfsbi-test-store").table("toy", "lf").counts()["ok"] == 4
    assert memory.url == "memory://mfsbi-test-store"
    assert SimulationStore(memory.url).table("toy", "lf").counts()["ok"] == 4

    url = SimulationStore(f"file://{tmp_path}/viaurl")
    assert url.path == tmp_path / "viaurl"
    assert SimulationStore(url.url).path == tmp_path / "viaurl"
    url.write_artifact("x.txt", b"1")
    assert (tmp_path / "viaurl" / "artifacts" / "x.txt").read_bytes() == b"1"


def test_refuses_what_is_not_a_store(tmp_path):
    zarr.open_group(tmp_path / "plain", mode="a").attrs["foo"] = 1
    with pytest.raises(StoreError, match="not an mfsbi store"):
        SimulationStore(tmp_path / "plain")

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    with pytest.raises(StoreError, match="not a zarr store"):
        SimulationStore(tmp_path / "other")

    with pytest.raises(StoreError, match="no mfsbi store"):
        SimulationStore(tmp_path / "missing", mode="r")

    make(tmp_path)
    ro = SimulationStore(tmp_path / "store", mode="r")
    assert ro.tables() == [("toy", "lf")]

    with pytest.raises(StoreError, match="read-only"):
        ro.table("toy", "lf").reserve(np.zeros((1, 3)), np.zeros(1, dtype=int))
    with pytest.raises(StoreError, match="read-only"):
        ro.write_artifact("a", b"")


def test_input_validation(tmp_path):
    _, table = make(tmp_path)

    with pytest.raises(ValueError, match="theta"):
        table.reserve(np.zeros((2, 2)), np.zeros(2, dtype=int))
    with pytest.raises(ValueError, match="theta"):
        table.reserve(np.array([[0.0, np.nan, 1.0]]), np.zeros(1, dtype=int))
    with pytest.raises(ValueError, match="seed"):
        table.reserve(np.zeros((2, 3)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="seed"):
        table.reserve(np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="round"):
        table.reserve(np.zeros((2, 3)), np.zeros(2, dtype=int), round=-1)

    assert table.num_rows == 0

    table.reserve(np.zeros((2, 3)), np.zeros(2, dtype=int))

    with pytest.raises(ValueError, match="x"):
        table.write_batch(0, 2, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="rows"):
        table.write_batch(1, 3, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="reasons"):
        table.write_batch(0, 2, np.zeros((2, 4)), reasons=["a"])

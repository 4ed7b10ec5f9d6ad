"""Hostile and wrong input (issue #6) aimed at the store: foreign or mismatched stores are refused
byte-identical, and no name from user input (task, artifact, store path) reaches outside the store folder."""

import contextlib
import dataclasses
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostile import FEW, SOME, STARTED, no_services, refused, run_cli, sandbox, snapshot  # noqa: F401 (fixture)
from mfsbi.flows.config import RunConfig
from mfsbi.simulators import get_task
from mfsbi.simulators import registry
from mfsbi.storage import SimulationStore, StoreError


# ------------------------------------------------------------------ stores

def _make_store(path: Path, task_name: str = "ou2", table: str = "ou2", seed: int = 1) -> None:
    """A tiny real store, as `mfsbi run --task ou2 --seed SEED --method npe` would begin it."""
    from mfsbi.runtime.simulation import ensure_rows

    task = get_task(task_name)
    config = RunConfig(task="ou2", seed=seed)
    ensure_rows(SimulationStore(path), task, table=table, fidelity="hf", num_rows=10, chunk_size=10, seed=seed,
                config_hash=config.simulation_hash("hf", 10, task.version, seed), budget=10)


def test_a_store_of_another_seed_chunk_size_or_task_is_refused_byte_identical(tmp_path):
    _make_store(tmp_path / "ou2-store")
    _make_store(tmp_path / "other-task", task_name="ou3", table="ou2")  # another task's rows under "ou2"
    code, lines = run_cli("--store", tmp_path / "ou2-store", "--seed", "1", "--method", "npe")
    assert code == STARTED, lines  # the control: with its own settings the store is accepted

    @FEW
    @given(st.one_of(
        st.integers(0, 2**63 - 1).filter(lambda s: s != 1).map(lambda s: ("--seed", str(s))),
        st.integers(1, 100_000).filter(lambda c: c != 10).map(lambda c: ("chunk", c)),
        st.just(("other-task", None)),
    ))
    def check(case):
        store, extra = tmp_path / "ou2-store", ["--seed", "1"]
        if case[0] == "--seed":
            extra = list(case)
        elif case[0] == "chunk":
            (tmp_path / "cfg.json").write_text(json.dumps({"hf_chunk_size": case[1]}))
            extra += ["--config", tmp_path / "cfg.json"]
        else:
            store = tmp_path / "other-task"
        refused(tmp_path, "--store", store, "--method", "npe", *extra, names=("--store",))

    check()


def test_another_task_in_the_same_store_is_allowed_and_nothing_is_written(tmp_path):
    # A store holds one group per task by design: ou3 next to ou2 is no conflict.
    _make_store(tmp_path / "store")
    before = snapshot(tmp_path)
    code, lines = run_cli("--store", tmp_path / "store", "--task", "ou3", "--method", "npe")
    assert code == STARTED, lines
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("make", [
    lambda path: path.write_text("not a store"),
    lambda path: (path.mkdir(), (path / "notes.txt").write_text("mine")),
    lambda path: __import__("zarr").open_group(str(path), mode="w").attrs.update({"other": 1}),
    lambda path: __import__("zarr").open_array(str(path), mode="w", shape=(2,), dtype="f8"),
])
def test_a_file_a_foreign_folder_or_a_foreign_zarr_is_refused(tmp_path, make):
    make(tmp_path / "store")
    refused(tmp_path, "--store", tmp_path / "store", names=("--store",))


@SOME
@given(st.text(min_size=1, max_size=40).filter(lambda s: "://" not in s) | st.sampled_from(
    ["..", "../..", "/", ".", "~", "a\x00b", "x" * 5000, "file://", "zz://x", "s3://bucket/x"]))
def test_no_store_path_gets_anything_written_before_the_run(store):
    with sandbox() as root:
        (root / "inner").mkdir()
        with contextlib.chdir(root / "inner"):
            before = snapshot(root)
            code, lines = run_cli("--store", store, "--hf-sims", "10", "--method", "npe")
            assert code in (2, STARTED) and len(lines) == (code == 2), lines
            assert code == STARTED or "--store" in lines[0], lines
            assert snapshot(root) == before


# ------------------------------------------------------------------ names that become paths in the store

# "{outer}" is replaced by the watched folder around the store: an absolute name aimed into it.
HOSTILE = [
    "", ".", "..", "../escaped", "../../escaped", "a/../../escaped", "../../../../escaped", "/abs", "{outer}/escaped",
    "C:\\escaped", "c:escaped", "..\\escaped", "a\\..\\..\\escaped", "a\x00b", "artifacts", "ARTIFACTS", "Artifacts",
    "zarr.json", "ZARR.JSON", ".zgroup", ".zattrs", "x/zarr.json", "x/.zarray", ".mfsbi.lock", "ou2\n", "\n", "~",
    "%2e%2e/escaped", "..\u2215escaped", "\uff0e\uff0e/escaped", "\u202e", "é", "a//b", "a/", "/", " ", "a/./b",
    "x" * 300, "x/" * 600 + "x", "\x1b[31mred", "\udcff", "\ud800",
]
NAMES = st.text(max_size=20) | st.lists(
    st.sampled_from(["..", ".", "a", "", "\\", "zarr.json", "artifacts", "\x00"]), min_size=1, max_size=5).map("/".join)


def _outside(outer: Path, store: Path) -> dict[str, tuple]:
    return {k: v for k, v in snapshot(outer).items() if not (outer / k).is_relative_to(store)}


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


@contextlib.contextmanager
def watched_store():
    """A fresh store four folders deep in a watched folder; yields both."""
    with tempfile.TemporaryDirectory() as folder:
        outer = Path(folder) / "outer"
        path = outer / "d1" / "d2" / "d3" / "store"
        SimulationStore(path)
        yield outer, path


def _check_task_name(name: str) -> None:
    """Creates a table called `name` in a fresh store; nothing may change outside the store."""
    with watched_store() as (outer, path):
        name = name.replace("{outer}", str(outer))
        before = _outside(outer, path)
        provenance = {"simulator": "s", "simulator_version": "1", "config_hash": "h"}
        try:
            SimulationStore(path).require_table(name, "hf", theta_dim=2, x_dim=3, chunk_size=2, provenance=provenance)
            # A valid name: one folder directly in the store.
            assert (path / name).parent == path and _inside(path / name / "hf" / "zarr.json", path)
        finally:
            assert _outside(outer, path) == before


def _check_artifact_name(name: str) -> None:
    """Writes an artifact called `name` in a fresh store; nothing may change outside its artifacts."""
    with watched_store() as (outer, path):
        name = name.replace("{outer}", str(outer))
        before = _outside(outer, path)
        store = SimulationStore(path)
        try:
            store.write_artifact(name, b"payload")
        except StoreError:
            with pytest.raises(StoreError):
                store.read_artifact(name)
            raise
        finally:
            assert _outside(outer, path) == before
            assert SimulationStore(path, mode="r").tables() == []  # the hierarchy is still readable
        assert _inside(path / "artifacts" / name, path / "artifacts")
        assert (path / "artifacts" / name).read_bytes() == b"payload" == store.read_artifact(name)


# Odd but harmless artifact names: literal folder names inside artifacts/.
HARMLESS = ["~", "é", " ", "%2e%2e/escaped", "..\u2215escaped", "\uff0e\uff0e/escaped", "artifacts", "ARTIFACTS",
            "Artifacts", ".mfsbi.lock", "ou2/mf-npe-lf10000-hf100-seed0/posterior.pt", "x" * 200]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_task_names_are_refused_and_write_nothing(name):
    with pytest.raises(StoreError):
        _check_task_name(name)


@SOME
@given(NAMES)
def test_no_task_name_writes_outside_the_store(name):
    with contextlib.suppress(StoreError):
        _check_task_name(name)


@pytest.mark.parametrize("name", [n for n in HOSTILE if n not in HARMLESS])
def test_hostile_artifact_names_are_refused_and_write_nothing(name):
    with pytest.raises(StoreError):
        _check_artifact_name(name)


@pytest.mark.parametrize("name", HARMLESS)
def test_odd_but_harmless_artifact_names_stay_in_the_artifacts(name):
    _check_artifact_name(name)


@SOME
@given(NAMES)
def test_no_artifact_name_writes_outside_the_artifacts(name):
    with contextlib.suppress(StoreError):
        _check_artifact_name(name)


def _run_user_task(method: str, name: str) -> tuple[int, list[str]]:
    """`mfsbi run` with a user's task called `name`; nothing may be written."""
    # Task.name of a user's module:attribute task becomes a table group and an artifact folder.
    registry.register_task("hostile-name", lambda: dataclasses.replace(get_task("ou2"), name=name))
    try:
        with sandbox() as root:
            before = snapshot(root)
            code, lines = run_cli("--task", "hostile-name", "--method", method, "--store", "store", "--hf-sims", "10")
            assert snapshot(root) == before
    finally:
        registry._FACTORIES.pop("hostile-name", None)
    assert code in (2, STARTED), lines
    assert code == STARTED or (len(lines) == 1 and lines[0].startswith("error: --task:")), lines
    return code, lines


@pytest.mark.parametrize("name", HOSTILE)
def test_a_users_task_with_a_hostile_name_is_refused_before_anything_is_written(name):
    assert _run_user_task("npe", name)[0] == 2


@SOME
@given(st.sampled_from(["npe", "mf-tsnpe", "mf-abc"]),
       NAMES | st.text(st.sampled_from("ab.-_"), min_size=150, max_size=200))
def test_whatever_the_store_refuses_as_a_task_name_the_cli_refuses_first(method, name):
    from mfsbi.storage.names import check_task

    code, _ = _run_user_task(method, name)
    with contextlib.suppress(StoreError):
        check_task(name)
        return
    assert code == 2

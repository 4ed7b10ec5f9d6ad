"""Hostile and wrong input (issue #6) on the command line, in observation files and in config files:
one line naming the problem, exit code 2, nothing written. Stores and names: test_hostile_names.py."""

import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hostile import FEW, SOME, STARTED, no_services, refused, run_cli, sandbox  # noqa: F401 (fixture)
from mfsbi.app import cli
from mfsbi.flows.config import MAX_SIMULATIONS, RunConfig
from mfsbi.simulators import available_tasks

FIELDS = sorted(RunConfig.model_fields)


# ------------------------------------------------------------------ command-line options

def _not_importable(spec: str) -> bool:
    # A random spec must not import a real module (`this` prints, `antigravity` opens a browser).
    module = spec.partition(":")[0].split(".")[0]
    return ":" not in spec or not module.isidentifier()


@SOME
@given(st.one_of(
    st.text(max_size=30).filter(lambda s: s not in available_tasks() and _not_importable(s)),
    st.sampled_from(["", ":", ".x:y", "os:system", "os:getcwd", "mfsbi.simulators:Task", "no_such_module:x",
                     "[/x]", ":smile:", "ou2\n", "OU2", "ou2 ", "../ou2", "/etc/passwd", "a\x00b", "x" * 5000]),
))
def test_unknown_or_garbage_task_names_are_refused(name):
    with sandbox() as root:
        refused(root, "--task", name, "--store", "store", names=("--task",))


@SOME
@given(st.sampled_from(["--hf-sims", "--lf-sims"]), st.one_of(
    st.integers(max_value=0), st.integers(min_value=MAX_SIMULATIONS + 1),
    st.floats().filter(lambda f: not f.is_integer()),
    st.sampled_from(["", "abc", "1e3", "0x10", "ten", "1,000", "--", "1 2"]),
))
def test_non_positive_non_integer_and_huge_budgets_are_refused(flag, value):
    with sandbox() as root:
        refused(root, flag, value, "--store", "store", names=(flag,))


# Values outside each option's range: (option, strategy).
BAD_FLOATS = [
    ("--max-failure-fraction", st.floats(max_value=-1e-300) | st.floats(min_value=1, exclude_min=True)),
    ("--acquisition-fraction", st.floats(max_value=-1e-300) | st.floats(min_value=1, exclude_min=True)),
    ("--truncation-quantile", st.floats(max_value=0) | st.floats(min_value=1)),
    ("--simulation-timeout", st.floats(max_value=0) | st.floats(min_value=7 * 24 * 3600, exclude_min=True)),
]


@SOME
@given(st.sampled_from(BAD_FLOATS).flatmap(
    lambda case: st.tuples(st.just(case[0]), case[1] | st.sampled_from([math.nan, math.inf, -math.inf])),
))
def test_bad_floats_are_refused(case):
    flag, value = case
    with sandbox() as root:
        line = refused(root, flag, repr(value), "--store", "store", names=(flag,))
        assert math.isfinite(value) or "not a finite number" in line, line


@pytest.mark.parametrize("option", ["--bogus", "--hf_sims", "-x", "--config-file"])
def test_unknown_options_are_refused_in_one_line(option):
    with sandbox() as root:
        refused(root, option, "1", names=(option,))


# ------------------------------------------------------------------ observation files (ou2: x has 10 values)

FLOATS = hnp.floating_dtypes()
OBSERVATIONS = st.one_of(
    # wrong shapes
    hnp.arrays(FLOATS, st.sampled_from([(), (0,), (9,), (11,), (2, 10), (10, 1), (1, 1, 10), (100,)])),
    # right shape, with NaN or inf somewhere
    st.tuples(hnp.arrays(FLOATS, st.sampled_from([(10,), (1, 10)])), st.integers(0, 9),
              st.sampled_from([math.nan, math.inf, -math.inf])).map(lambda t: _poke(*t)),
    # not numbers
    hnp.arrays(st.one_of(hnp.unicode_string_dtypes(), hnp.byte_string_dtypes(), hnp.complex_number_dtypes(),
                         hnp.datetime64_dtypes(), st.just(np.dtype(bool))), (10,)),
)


def _poke(array, index, value):
    array = array.copy()
    array.reshape(-1)[index] = value
    return array


@SOME
@given(OBSERVATIONS)
def test_observation_files_of_wrong_shape_type_or_with_nan_are_refused(array):
    with sandbox() as root:
        np.save(root / "x_o.npy", array)
        refused(root, "--observation", "x_o.npy", "--store", "store", names=("--observation",))


def _npz(path: Path) -> None:
    with open(path, "wb") as file:  # np.savez would append .npz to the name
        np.savez(file, np.zeros(10))


def _huge_header(path: Path) -> None:
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, {"descr": "<f8", "fortran_order": False, "shape": (10**13,)})
        file.write(bytes(80))


@pytest.mark.parametrize("make", [
    lambda path: None,                                            # missing
    lambda path: path.mkdir(),                                    # a folder
    _npz,                                                         # an .npz archive under an .npy name
    lambda path: np.save(path, np.array([None] * 10, dtype=object), allow_pickle=True),
    _huge_header,                                                 # claims 10^13 values
])
def test_missing_archived_pickled_and_huge_observation_files_are_refused(make):
    with sandbox() as root:
        make(root / "x_o.npy")
        refused(root, "--observation", "x_o.npy", "--store", "store", names=("--observation",))


@pytest.mark.parametrize("option, suffix", [("--observation", ".npy"), ("--config", ".toml")])
@pytest.mark.parametrize("stem", ["x" * 5000, "a\x00b", "no/such/folder/file"])
def test_unreadable_file_names_are_refused(option, suffix, stem):
    with sandbox() as root:
        refused(root, option, stem + suffix, "--store", "store", names=(option,))


@FEW
@given(st.binary(max_size=300))
def test_corrupt_observation_files_are_refused(data):
    with sandbox() as root:
        (root / "x_o.npy").write_bytes(data)
        refused(root, "--observation", "x_o.npy", "--store", "store", names=("--observation",))


# ------------------------------------------------------------------ config files

def write(path: Path, values: dict) -> Path:
    if path.suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        path.write_text(yaml.safe_dump(values))
    return path


EXTENSIONS = st.sampled_from(["cfg.json", "cfg.yaml", "cfg.yml"])


@SOME
@given(EXTENSIONS, st.text(min_size=1, max_size=20).filter(lambda k: k.replace("-", "_") not in FIELDS))
def test_unknown_config_keys_are_refused_naming_key_and_file(name, key):
    with sandbox() as root:
        write(root / name, {"hf_sims": 10, key: 1})
        line = refused(root, "--config", name, names=(name,))
        assert f"unknown key {key!r}" in line


@FEW
@given(st.sampled_from(FIELDS).filter(lambda f: len(f) > 4), st.data())
def test_a_misspelt_key_gets_the_closest_field_suggested(field, data):
    i = data.draw(st.integers(0, len(field) - 1))
    typo = (field[:i] + field[i + 1:]).replace("_", data.draw(st.sampled_from(["_", "-"])))
    with sandbox() as root:
        (root / "cfg.toml").write_text(f'"{typo}" = 1\n')
        line = refused(root, "--config", "cfg.toml", names=("cfg.toml",))
        assert "did you mean '" in line and line.split("did you mean '")[1].split("'")[0].replace("-", "_") in FIELDS


@pytest.mark.parametrize("typo, suggestion", [
    ("hf_sim", "hf_sims"), ("hf-sim", "hf-sims"), ("obsevation", "observation"), ("seeed", "seed"),
    ("lf-chunk", "lf-chunk-size"),
])
def test_the_suggestion_is_the_closest_field_in_the_files_spelling(typo, suggestion):
    with sandbox() as root:
        (root / "cfg.toml").write_text(f'"{typo}" = 1\n')
        line = refused(root, "--config", "cfg.toml", names=("cfg.toml",))
        assert line == f"error: cfg.toml: unknown key {typo!r}; did you mean {suggestion!r}?"


def _wrong_values(field: str) -> st.SearchStrategy:
    """Values of a type the field does not take (strictly: no `true` for a number, no "5" for 5)."""
    annotation = str(RunConfig.model_fields[field].annotation)
    containers = st.lists(st.integers(), min_size=1, max_size=3) | st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                  min_size=1, max_size=2)
    if "list" in annotation:
        return st.text() | st.integers() | st.booleans()
    if "Literal" in annotation or "str" in annotation:
        return st.integers() | st.booleans() | containers
    if "bool" in annotation:
        return st.integers() | st.text() | containers
    if "int" in annotation:
        return st.text() | st.booleans() | containers | st.floats(-1e6, 1e6).filter(lambda f: not f.is_integer())
    return st.text() | st.booleans() | containers  # float


@SOME
@given(EXTENSIONS, st.sampled_from([f for f in FIELDS if f != "observation"]).flatmap(
    lambda f: st.tuples(st.just(f), st.sampled_from([f, f.replace("_", "-")]), _wrong_values(f))))
def test_wrong_types_in_config_files_are_refused_naming_the_key(name, case):
    field, key, value = case
    with sandbox() as root:
        write(root / name, {key: value})
        line = refused(root, "--config", name, names=(f"{name}: {key}",))
        assert line.startswith(f"error: {name}: {key}"), line


@pytest.mark.parametrize("key, value", [
    ("hf_sims", "50"), ("hf-sims", 50.0), ("seed", True), ("resume", "yes"), ("resume", 1),
    ("max_failure_fraction", "0.1"), ("observation", [True] * 10), ("task", 2),
])
def test_values_a_lax_parser_would_coerce_are_refused(key, value):
    # `hf_sims = "50"` is a quoting mistake, `seed = true` a wrong line: neither becomes a number.
    with sandbox() as root:
        write(root / "cfg.json", {key: value})
        refused(root, "--config", "cfg.json", "--store", "store", names=(f"cfg.json: {key}",))


@FEW
@given(EXTENSIONS, st.one_of(
    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=30).filter(lambda v: len(v) != 10),
    st.tuples(st.lists(st.floats(-9, 9), min_size=10, max_size=10), st.integers(0, 9),
              st.sampled_from([math.nan, math.inf, -math.inf])).map(lambda t: t[0][:t[1]] + [t[2]] + t[0][t[1] + 1:]),
))
def test_config_observations_of_wrong_length_or_not_finite_are_refused(name, observation):
    with sandbox() as root:
        write(root / name, {"observation": observation})
        refused(root, "--config", name, "--store", "store", names=(f"{name}: observation",))


@pytest.mark.parametrize("name, text", [
    ("cfg.toml", "hf_sims = [\n"), ("cfg.toml", "hf_sims = 1\nhf_sims = 2\n"), ("cfg.toml", "= 3"),
    ("cfg.json", '{"hf_sims": 1,}'), ("cfg.json", '{"hf_sims": 1, "hf_sims": 2}'), ("cfg.json", ""),
    ("cfg.yaml", "hf_sims: [\n"), ("cfg.yaml", "a: !!python/object/apply:os.system ['echo hacked']\n"),
    ("cfg.yaml", "\tx: 1"), ("cfg.json", "[" * 100_000),
    ("missing.toml", None), ("folder.toml", ...), ("cfg.ini", "[run]\nhf_sims = 1\n"), ("cfg", "hf_sims = 1\n"),
])
def test_corrupt_missing_and_unsupported_config_files_are_refused(name, text):
    with sandbox() as root:
        if text is ...:
            (root / name).mkdir()
        elif text is not None:
            (root / name).write_text(text)
        refused(root, "--config", name, names=("--config",))


def _empty_document(data: bytes, name: str) -> bool:
    """Whether random bytes happen to be a valid, empty config (then the bad --store must answer)."""
    try:
        text = data.decode("utf-8-sig")
        value = tomllib.loads(text) if name.endswith(".toml") else json.loads(text) if name.endswith(
            ".json") else yaml.safe_load(text)
    except Exception:  # noqa: BLE001
        return False
    return value in ({}, None)


@SOME
@given(st.sampled_from(["cfg.toml", "cfg.json", "cfg.yaml"]), st.binary(max_size=200))
def test_random_bytes_as_config_are_refused(name, data):
    with sandbox() as root:
        (root / name).write_bytes(data)
        (root / "not-a-store").write_text("a regular file")
        line = refused(root, "--config", name, "--store", "not-a-store", names=("--config", name, "--store"))
        assert ("--store" in line) == _empty_document(data, name), line


@FEW
@given(st.sampled_from(["cfg.json", "cfg.yaml"]),
       st.one_of(st.lists(st.integers(), max_size=3), st.text(min_size=1), st.integers(), st.floats(), st.booleans()))
def test_a_config_that_is_not_a_table_is_refused(name, document):
    with sandbox() as root:
        text = json.dumps(document) if name.endswith(".json") else yaml.safe_dump(document)
        (root / name).write_text(text)
        refused(root, "--config", name, names=("--config",))


def test_explicit_options_win_over_the_file_and_the_file_over_defaults(no_services):
    with sandbox() as root:
        (root / "cfg.toml").write_text('hf-sims = 50\nseed = 3\nmethod = "npe"\nhf_chunk_size = 5\nstore = "a"\n')
        code, lines = run_cli("--config", "cfg.toml", "--seed", "7", "--store", "b")
        assert code == STARTED, lines
        config = no_services[-1]
        got = (config.hf_sims, config.seed, config.method, config.hf_chunk_size, config.store)
        assert got == (50, 7, "npe", 5, "b")
        assert config.lf_sims == 10_000  # neither: the default
        # An explicit value equal to the default still wins over the file.
        code, lines = run_cli("--config", "cfg.toml", "--hf-sims", "100", "--store", "b")
        assert code == STARTED and no_services[-1].hf_sims == 100
        # The file's observation is used, unless --observation names a .npy file.
        write(root / "cfg.json", {"observation": [0.5] * 10, "store": "a"})
        assert run_cli("--config", "cfg.json")[0] == STARTED and no_services[-1].observation == [0.5] * 10
        np.save(root / "x_o.npy", np.ones(10))
        assert run_cli("--config", "cfg.json", "--observation", "x_o.npy")[0] == STARTED
        assert no_services[-1].observation == [1.0] * 10
        assert not (root / "a").exists() and not (root / "b").exists()


def test_the_example_config_builds(tmp_path):
    example = Path(__file__).parent.parent / "docs" / "example-config.toml"
    config = cli.build_config(config_file=example, explicit={"store"}, store=str(tmp_path / "store"))
    expected = tomllib.loads(example.read_text())
    expected.pop("store")
    assert {key.replace("-", "_"): value for key, value in expected.items()} == config.model_dump(
        include={key.replace("-", "_") for key in expected})
    assert config.store == str(tmp_path / "store") and not (tmp_path / "store").exists()

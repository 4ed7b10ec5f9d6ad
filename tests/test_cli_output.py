"""What the CLI prints: --version, --json documents, tables that keep names whole, --method's choices."""

import json

import pytest
from typer.testing import CliRunner

import mfsbi
from mfsbi.app import console as console_module
from mfsbi.app.cli import app
from mfsbi.flows.methods import SEQUENTIAL, Method, available_methods, register_method, unregister_method
from mfsbi.simulators import available_tasks

runner = CliRunner()  # its output is not a terminal, as a pipe; result.stdout holds stdout alone


def _invoke(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kwargs)


@pytest.fixture
def no_api(tmp_path, monkeypatch):
    """No Prefect API: no PREFECT_API_URL, and an empty MFSBI_HOME (no serve.json)."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("MFSBI_HOME", str(tmp_path / "home"))


@pytest.fixture
def toy_method():
    """A sequential method registered after import, as a plugin would."""
    register_method(Method("toy-x", SEQUENTIAL, uses_lf=False, propose=lambda *args, **kwargs: None))
    yield "toy-x"
    unregister_method("toy-x")


def test_version():
    result = _invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"mfsbi {mfsbi.__version__}\n"


def test_tasks_json_lists_every_task_with_its_fields():
    result = _invoke("tasks", "--json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["name"] for r in records] == available_tasks()
    for record in records:
        assert set(record) == {"name", "theta_dim", "x_dim", "parameter_names", "low_fidelity_parameters",
                               "references", "fidelities", "coupled", "cost_seconds", "description"}
        assert len(record["parameter_names"]) == record["theta_dim"]
        assert set(record["low_fidelity_parameters"]) <= set(record["parameter_names"])
        assert record["fidelities"][0] == "lf" and record["fidelities"][-1] == "hf"
        assert list(record["cost_seconds"]) == record["fidelities"]
    ou2 = next(r for r in records if r["name"] == "ou2")
    assert ou2["references"] == ["euler-maruyama", "paper"] and ou2["low_fidelity_parameters"] == ["mu", "sigma"]
    chain = next(r for r in records if r["name"] == "ou2-euler")
    assert chain["fidelities"] == ["lf", "mf", "hf"] and chain["coupled"] and ou2["fidelities"] == ["lf", "hf"]


@pytest.mark.parametrize("width", [None, 80, 60])
def test_tasks_table_keeps_every_task_name_whole(monkeypatch, width):
    # None: as piped (the console is as wide as its lines); 80, 60: a terminal of that width.
    if width is not None:
        monkeypatch.setattr(console_module.console, "width", width)
    result = _invoke("tasks", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for name in available_tasks():
        assert any(f" {name} " in line for line in lines), name
    assert "…" not in result.stdout


def test_run_help_lists_the_methods_and_devices():
    result = _invoke("run", "--help", env={"COLUMNS": "80"})
    assert result.exit_code == 0
    words = result.stdout.replace(",", " ").replace(";", " ").replace("|", " ").split()
    for name in available_methods():
        assert name in words, name
    assert "<auto|cpu|cuda>" in result.stdout


def test_a_method_registered_at_runtime_is_shown_and_accepted(toy_method, tmp_path):
    assert toy_method in _invoke("run", "--help").stdout
    result = _invoke("run", "--method", toy_method, "--hf-sims", 0, "--store", tmp_path / "store")
    assert result.exit_code == 2
    assert result.output.startswith("error: --hf-sims"), result.output
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("option, value", [("--method", "magic"), ("--device", "tpu"), ("--device", "CPU")])
def test_a_bad_choice_is_one_line_naming_the_option_and_the_choices(tmp_path, option, value):
    result = _invoke("run", option, value, "--store", tmp_path / "store")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {option}: "), lines
    assert ("mf-npe" if option == "--method" else "cuda") in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "store").exists()


def _tiny_store(path):
    """A real store holding one reserved HF table (10 rows, budget 10), as a run begins it."""
    from mfsbi.flows.config import RunConfig
    from mfsbi.runtime.simulation import ensure_rows
    from mfsbi.simulators import get_task
    from mfsbi.storage import SimulationStore

    task = get_task("ou2")
    config = RunConfig(task="ou2", seed=1)
    ensure_rows(SimulationStore(path), task, table="ou2", fidelity="hf", num_rows=10, chunk_size=10, seed=1,
                config_hash=config.simulation_hash("hf", 10, task.version, 1), budget=10)


def test_status_json_without_an_api(tmp_path, no_api):
    store = tmp_path / "store"
    _tiny_store(store)
    result = _invoke("status", "--json", store)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document == {
        "store": str(store),
        "tables": [{"task": "ou2", "fidelity": "hf", "ok": 0, "failed": 0, "pending": 10, "role": "budget",
                    "budget": {"reserved": 10, "total": 10}}],
        "flow_runs": None,
    }
    plain = _invoke("status", store)
    assert plain.exit_code == 0
    assert "10 / 10" in plain.stdout and "no Prefect API reachable" in plain.stdout


def test_status_json_of_no_store_is_one_line_on_stderr(tmp_path, no_api):
    result = _invoke("status", "--json", tmp_path / "nothing")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: STORE:")


def test_runs_json_without_an_api_is_one_line_on_stderr(no_api):
    result = _invoke("runs", "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: no Prefect API") and len(result.stderr.strip().splitlines()) == 1


def test_run_json_prints_the_summary_alone_on_stdout(tmp_path, prefect_server, shared_dask):
    store = tmp_path / "store"
    # NPE, the cheapest run that prints every part of a summary (what is printed is the claim here;
    # MF-NPE's summary through the CLI: tests/test_cli.py).
    result = _invoke("run", "--json", "--task", "ou2", "--method", "npe", "--hf-sims", 20,
                     "--store", store, "--seed", 0, "--n-workers", 1, "--num-test-observations", 1,
                     "--num-nltp-pairs", 5, "--max-num-epochs", 3)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # one document, nothing around it
    assert summary["task"] == "ou2" and summary["method"] == "npe"
    assert "euler-maruyama" in summary["metrics"]["c2st"] and summary["calibration"]["num_pairs"] == 5
    assert isinstance(summary["posterior"], str) and summary["posterior"].endswith(".pt")
    assert "Prefect API" in result.stderr  # the notes went to stderr


def test_the_embedded_servers_ui_calls_its_own_api(prefect_server):
    """Else the UI calls the default port 4200 and every page is empty (seen with headless Chromium)."""
    import json
    import urllib.request

    with urllib.request.urlopen(prefect_server.removesuffix("/api") + "/ui-settings", timeout=10) as response:
        assert json.load(response)["api_url"] == prefect_server

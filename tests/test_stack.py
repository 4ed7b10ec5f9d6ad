"""Where the CLI finds the services: the environment first, else a live `mfsbi serve`'s serve.json."""

import json
import os
import subprocess
import sys

import pytest

from mfsbi.app.stack import read_serve_file, resolve_api_url, resolve_dask_address, ui_url


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MFSBI_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("MFSBI_DASK_ADDRESS", raising=False)
    return tmp_path


def _serve_file(home, pid):
    (home / "serve.json").write_text(json.dumps({
        "pid": pid, "prefect_api_url": "http://127.0.0.1:4300/api", "ui_url": "http://127.0.0.1:4300",
        "dask_address": "tcp://127.0.0.1:8800"}))


def test_nothing_known_without_environment_or_serve(home):
    assert read_serve_file() is None
    assert resolve_api_url() is None and resolve_dask_address() is None


def test_a_live_serve_is_found(home):
    _serve_file(home, pid=os.getpid())
    assert resolve_api_url() == "http://127.0.0.1:4300/api"
    assert resolve_dask_address() == "tcp://127.0.0.1:8800"


def test_a_dead_serve_is_ignored(home):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _serve_file(home, pid=int(finished.stdout))
    assert resolve_api_url() is None and resolve_dask_address() is None


def test_the_environment_wins_over_serve(home, monkeypatch):
    _serve_file(home, pid=os.getpid())
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9999/api")
    monkeypatch.setenv("MFSBI_DASK_ADDRESS", "tcp://127.0.0.1:9998")
    assert resolve_api_url() == "http://127.0.0.1:9999/api"
    assert resolve_dask_address() == "tcp://127.0.0.1:9998"


def test_ui_url_drops_the_api_suffix():
    assert ui_url("http://127.0.0.1:4200/api") == "http://127.0.0.1:4200"
    assert ui_url("http://127.0.0.1:4200") == "http://127.0.0.1:4200"

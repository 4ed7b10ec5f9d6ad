"""Shared by the hostile-input tests (issue #6): `mfsbi run` in a sandbox folder with Prefect and Dask
replaced by a stand-in, and a check that a refusal is one line, exit 2 and nothing written."""

import contextlib
import functools
import hashlib
import tempfile
from pathlib import Path

import pytest
import typer
import typer.main
import typer.testing
from hypothesis import settings
from typer.testing import CliRunner

from mfsbi.app import cli
from mfsbi.flows.config import RunConfig

__all__ = ["FEW", "SOME", "STARTED", "no_services", "refused", "run_cli", "sandbox", "snapshot"]

runner = CliRunner()
FEW = settings(max_examples=15, deadline=None)
SOME = settings(max_examples=30, deadline=None)
STARTED = 99  # exit code of the stand-in for Prefect and Dask below


@pytest.fixture(scope="module", autouse=True)
def no_services():
    """Input that passes build_config would start Prefect and Dask: stop there with exit 99 instead."""
    started: list[RunConfig] = []

    def refuse(config, verbose):
        started.append(config)
        raise typer.Exit(STARTED)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "_run_with_services", refuse)
        # typer's CliRunner rebuilds the click command from the app at every invoke: 0.22 of the 0.37 s
        # a refusal took (cProfile, 10 refusals). These modules invoke the same app hundreds of times and
        # register no method or option meanwhile, so build it once.
        patch.setattr(typer.testing, "_get_command", functools.cache(typer.main.get_command))
        yield started


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its kind, size, mtime and content hash."""
    state = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        state[str(path.relative_to(root))] = (path.is_dir(), info.st_size, info.st_mtime_ns, digest)
    return state


@contextlib.contextmanager
def sandbox():
    """A fresh folder that is also the working directory: relative names land in it."""
    with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
        yield Path(folder)


def run_cli(*args) -> tuple[int, list[str]]:
    result = runner.invoke(cli.app, ["run", *(str(a) for a in args)], catch_exceptions=False)
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


def refused(root: Path, *args, names: tuple[str, ...]) -> str:
    """Runs `mfsbi run ARGS` and checks: exit 2, one line naming one of `names`, root unchanged."""
    before = snapshot(root)
    code, lines = run_cli(*args)
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert any(name in lines[0] for name in names), lines[0]
    assert snapshot(root) == before
    return lines[0]

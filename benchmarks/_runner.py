"""The one way a benchmark runs ``mfsbi``: the command, its services, its summary, its seconds, the commit.

Every benchmark that runs the ``mfsbi`` CLI goes through this module (issue 32, item 3):

* :data:`MFSBI`: the CLI, always ``python -m mfsbi.app.cli`` of this interpreter: the code that
  ``PYTHONPATH`` and this environment hold, whatever ``PATH`` says;
* :func:`run`: one command to its end, as a :class:`Record`: exit code, output, the run's
  summary (``--json``'s stdout, else the store's ``summary.json``), wall and CPU seconds, the commit;
* :func:`start`: one command as a process the caller watches, kills and waits for (the drills);
* :func:`services`: the services of ``mfsbi serve`` (:func:`mfsbi.app.stack.start_stack`) for many
  runs, and the CPU seconds of their Dask workers; :func:`prefect_server`: a Prefect API alone
  (:func:`mfsbi.app.prefect_server.prefect_api`, what ``mfsbi run`` starts by itself);
* :func:`code_state`: the commit (and whether the tree differs from it).

CPU seconds are this process's children's (``resource.getrusage(RUSAGE_CHILDREN)`` before and
after): the command and every process of it that it waited for (a local Dask cluster's workers);
the workers of a Dask scheduler started elsewhere (:func:`services`) count in
:meth:`Services.worker_cpu` instead.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Optional, Union

from mfsbi.app.prefect_server import prefect_api
from mfsbi.app.results import run_summary
from mfsbi.app.stack import Stack, start_stack

__all__ = ["MFSBI", "ROOT", "Record", "Services", "code_state", "command", "prefect_server", "protocol", "run",
           "services", "start", "stored_summary"]

ROOT = Path(__file__).resolve().parent.parent
#: The CLI of this interpreter's environment (a console script need not be installed or on PATH).
MFSBI = [sys.executable, "-m", "mfsbi.app.cli"]


def command(args: Sequence[Union[str, int, float, Path]]) -> list[str]:
    """The process arguments of ``mfsbi ARGS`` (``args`` start with the subcommand, e.g. ``run``)."""
    return [*MFSBI, *map(str, args)]


def code_state() -> dict[str, Any]:
    """The repository's commit (``git_commit``) and whether tracked files differ from it (``git_dirty``)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", None
    return {"git_commit": commit, "git_dirty": dirty}


def protocol(args: Any) -> dict[str, Any]:
    """A benchmark's arguments as its JSON records them (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def stored_summary(store: Union[str, Path]) -> dict:
    """The ``summary.json`` of the store's run: its only one, else the latest amortised run's (``latest.json``).

    Raises:
        FileNotFoundError: the store holds no summary.
    """
    found = glob.glob(str(Path(store) / "artifacts" / "*" / "*" / "summary.json"))
    if len(found) == 1:
        return json.loads(Path(found[0]).read_text())
    if not found:
        raise FileNotFoundError(f"{store}: no artifacts/TASK/RUN/summary.json (the run did not finish)")
    return run_summary(store)[1]


@dataclass
class Record:
    """One finished ``mfsbi`` command.

    Arguments:
        args: the arguments after ``mfsbi``.
        returncode: its exit code.
        stdout: what it printed on stdout.
        stderr: what it printed on stderr (``""`` when it went to a log file).
        wall_seconds, cpu_seconds: wall clock, and the CPU (user + system) of the command and of
            the processes it waited for.
        summary: the run's summary (``None``: the command failed, or it is not a run).
        started_at: UTC, ISO 8601.
        commit: :func:`code_state` when it started.
    """

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    wall_seconds: float
    cpu_seconds: float
    summary: Optional[dict]
    started_at: str
    commit: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The command as a user types it: ``mfsbi run ...``."""
        return " ".join(["mfsbi", *self.args])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(args: Sequence[Union[str, int, float, Path]], *, env: Optional[dict[str, str]] = None,
        cwd: Optional[Path] = None, log: Optional[Path] = None, append: bool = False,
        store: Optional[Union[str, Path]] = None, timeout: Optional[float] = None) -> Record:
    """Runs ``mfsbi ARGS`` to its end and times it.

    Arguments:
        args: the arguments after ``mfsbi``, e.g. ``["run", "--task", "ou2", "--json"]``.
        env: the command's environment (default this process's).
        cwd: its working folder.
        log: a file for its stderr (default: kept in :attr:`Record.stderr`); ``append``: added to it.
        store: where to read the summary when ``args`` has no ``--json`` (default: none is read).
        timeout: seconds before it is killed (``subprocess.TimeoutExpired`` is raised).

    Returns:
        The :class:`Record`; a failed command is returned too (``returncode`` not 0, no summary).
    """
    args = [str(a) for a in args]
    commit, started_at = code_state(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    with contextlib.ExitStack() as files:
        stderr: Union[int, IO] = files.enter_context(open(log, "a" if append else "w")) if log else subprocess.PIPE
        cpu, clock = _children_cpu(), time.perf_counter()
        done = subprocess.run(command(args), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=stderr, text=True,
                              errors="replace", timeout=timeout)
        wall, cpu = time.perf_counter() - clock, _children_cpu() - cpu
    summary = None
    if done.returncode == 0 and "--json" in args:
        summary = json.loads(done.stdout)
    elif done.returncode == 0 and store is not None:
        summary = stored_summary(store)
    return Record(args, done.returncode, done.stdout, done.stderr or "", round(wall, 3), round(cpu, 3), summary,
                  started_at, commit)


def start(args: Sequence[Union[str, int, float, Path]], *, env: Optional[dict[str, str]] = None,
          stdout: Union[int, IO, None] = subprocess.DEVNULL, stderr: Union[int, IO, None] = subprocess.PIPE,
          ) -> subprocess.Popen:
    """Starts ``mfsbi ARGS`` and returns its process (the caller waits for it, or kills it)."""
    return subprocess.Popen(command(args), env=env, stdout=stdout, stderr=stderr)


#: A Prefect API for the runs, as a context manager yielding its URL: ``PREFECT_API_URL`` if set,
#: else a local server (the one ``mfsbi run`` starts by itself), set in this process while open.
prefect_server = prefect_api


@dataclass
class Services:
    """Running services of ``mfsbi serve``: their addresses, and the CPU of their Dask workers."""

    stack: Stack
    client: Any  # distributed.Client of the stack's scheduler

    @property
    def dask_address(self) -> str:
        return self.stack.dask_address

    @property
    def api(self) -> str:
        return self.stack.prefect_api_url

    def worker_cpu(self) -> dict[str, tuple[int, float]]:
        """Per worker: its pid and the CPU seconds (user + system) its process has used so far."""

        # Defined here: a local function travels by value to the workers, which cannot import this module.
        def process_cpu() -> tuple[int, float]:
            times = os.times()
            return os.getpid(), times.user + times.system

        return self.client.run(process_cpu)

    @staticmethod
    def cpu_delta(before: dict, after: dict) -> Optional[float]:
        """The workers' CPU seconds between two readings; None when a worker was restarted in between."""
        if set(before) != set(after) or any(before[w][0] != after[w][0] for w in before):
            return None
        return round(sum(after[w][1] - before[w][1] for w in before), 2)


@contextlib.contextmanager
def services(home: Path, workers: int, timeout: float = 300.0) -> Iterator[Services]:
    """``mfsbi serve``'s services, started here for many runs; stopped (and this process's environment
    restored) on exit.

    A Prefect server and its work pool's worker, a Dask scheduler and ``workers`` single-threaded
    workers with mfsbi's preload (:func:`mfsbi.app.stack.start_stack`), on free ports of 127.0.0.1,
    plain TCP (a run reaches them by ``--dask-address`` alone). Their state and logs go to ``home``
    (``$MFSBI_HOME`` while they run). ``PREFECT_API_URL`` and its auth string are set in this
    process, so every command started inside reaches the server.
    """
    from distributed import Client  # 0.7-0.8 s to import (-X importtime); only services() needs it

    saved = dict(os.environ)
    os.environ["MFSBI_HOME"] = str(home)
    stack = None
    try:
        stack = start_stack(workers, prefect_port=0, dask_port=0, dashboard_port=0, timeout=timeout,
                            say=lambda line: print(f"services: {line}", flush=True), tls=False)
        with Client(stack.dask_address, timeout="60s") as client:
            client.wait_for_workers(workers, timeout=timeout)
            yield Services(stack, client)
    finally:
        if stack is not None:
            stack.stop()
        os.environ.clear()
        os.environ.update(saved)

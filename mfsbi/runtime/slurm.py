"""Dask workers as SLURM jobs (dask-jobqueue), for ``--cluster slurm`` and ``mfsbi serve --cluster slurm``.

dask-jobqueue's ``SLURMCluster`` submits the worker jobs and Dask's ``Adaptive`` scales them with the
work (many jobs while LF simulations fan out, few while one network trains). What mfsbi adds, and
why: a packaged configuration with settings that suit its simulators (one single-threaded worker
per job, the worker preload), TLS with per-run certificates (the scheduler listens beyond
127.0.0.1), GPU training jobs that join the same scheduler, a clear error when SLURM does not start
a job, and closing every job it submitted, GPU jobs included.
"""

from __future__ import annotations

import contextlib
import copy
import getpass
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mfsbi.runtime.home import private_folder, private_home, write_private
from mfsbi.runtime.tls import client_environment, scheduler_http_closed

__all__ = ["DEFAULT_CONFIG", "ClusterConfigError", "ClusterStartError", "SlurmSettings", "client_tls_environment",
           "gpu_job_command", "load_slurm_settings", "scheduler_options", "slurm_cluster"]

DEFAULT_CONFIG = Path(__file__).with_name("slurm.yaml")
log = logging.getLogger("mfsbi")


class ClusterConfigError(ValueError):
    """A ``--cluster`` value or file that cannot be used (one line: the field and the fix)."""


class ClusterStartError(RuntimeError):
    """SLURM did not start a worker job in time (the job's pending reason is in the message)."""


@dataclass(frozen=True)
class SlurmSettings:
    """A ``--cluster`` configuration, read and checked.

    Arguments:
        source: the file it came from.
        jobqueue: dask-jobqueue's ``jobqueue.slurm`` settings (its defaults, then the file's).
        minimum_jobs, maximum_jobs: the adaptive range of CPU worker jobs.
        target_duration, wait_count: Dask Adaptive's ``target_duration`` and ``wait_count``.
        start_timeout: seconds to wait for the first worker.
        tls: encrypt and authenticate scheduler <-> worker traffic with per-run certificates.
        dashboard: serve the scheduler's dashboard (no authentication) on its address.
        gpu_jobs: GPU worker jobs to start for training.
        gpu: ``jobqueue.slurm`` overrides for the GPU jobs.
    """

    source: Path
    jobqueue: dict[str, Any]
    minimum_jobs: int
    maximum_jobs: int
    target_duration: str
    wait_count: int
    start_timeout: float
    tls: bool
    dashboard: bool
    gpu_jobs: int
    gpu: dict[str, Any]


def _merged(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        out[key.replace("_", "-")] = value
    return out


def load_slurm_settings(spec: str) -> SlurmSettings:
    """``slurm`` (the packaged settings) or a YAML file shaped like ``mfsbi/runtime/slurm.yaml``.

    A file's keys override the packaged ones, section by section.
    """
    # deferred: dask-jobqueue is optional (the `cluster` extra; app.inputs turns its ImportError into one line), and
    # dask costs 0.14 s on `mfsbi status/serve`, which load this module through app.stack -> runtime.cluster
    import dask
    import dask_jobqueue  # noqa: F401 -- loads jobqueue's defaults into dask.config

    path = DEFAULT_CONFIG if spec == "slurm" else Path(spec).expanduser()
    if not path.is_file():
        raise ClusterConfigError(f"cluster: {spec!r} is neither 'slurm' nor an existing YAML file; "
                                 f"copy {DEFAULT_CONFIG} and pass its path")
    try:
        packaged = yaml.safe_load(DEFAULT_CONFIG.read_text())
        given = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ClusterConfigError(f"cluster: {path} is not valid YAML ({error.__class__.__name__}); fix the file")
    if not isinstance(given, dict) or not set(given) <= {"jobqueue", "mfsbi"}:
        raise ClusterConfigError(f"cluster: {path} must have only the sections 'jobqueue' and 'mfsbi' "
                                 f"(see {DEFAULT_CONFIG})")
    jobqueue = _merged(dask.config.get("jobqueue.slurm"), packaged["jobqueue"]["slurm"])
    jobqueue = _merged(jobqueue, (given.get("jobqueue") or {}).get("slurm") or {})
    ours = _merged(packaged["mfsbi"]["slurm"], (given.get("mfsbi") or {}).get("slurm") or {})
    gpu = _merged(packaged["mfsbi"]["slurm-gpu"], (given.get("mfsbi") or {}).get("slurm-gpu") or {})
    unknown = set(ours) - set(packaged["mfsbi"]["slurm"])
    if unknown:
        raise ClusterConfigError(f"cluster: unknown key mfsbi.slurm.{sorted(unknown)[0]} in {path}; "
                                 f"known: {', '.join(sorted(packaged['mfsbi']['slurm']))}")
    try:
        minimum, maximum = int(ours["minimum-jobs"]), int(ours["maximum-jobs"])
        settings = SlurmSettings(source=path, jobqueue=jobqueue, minimum_jobs=minimum, maximum_jobs=maximum,
                                 target_duration=str(ours["target-duration"]), wait_count=int(ours["wait-count"]),
                                 start_timeout=float(ours["start-timeout"]), tls=bool(ours["tls"]),
                                 dashboard=bool(ours["dashboard"]), gpu_jobs=int(ours["gpu-jobs"]), gpu=gpu)
    except (TypeError, ValueError):
        raise ClusterConfigError(f"cluster: mfsbi.slurm in {path} needs whole numbers for minimum-jobs, "
                                 f"maximum-jobs and gpu-jobs, seconds for start-timeout") from None
    if not 1 <= minimum <= maximum:
        raise ClusterConfigError(f"cluster: mfsbi.slurm.minimum-jobs ({minimum}) must be at least 1 and at "
                                 f"most maximum-jobs ({maximum}) in {path}")
    return settings


def gpu_job_command(settings: SlurmSettings, address: str, tls_args: list[str]) -> list[str]:
    """The ``sbatch`` command of one GPU training worker that joins the scheduler at ``address``."""
    job = {**settings.jobqueue, **settings.gpu}
    worker = [*shlex.split(job.get("python") or sys.executable), "-m", "distributed.cli.dask_worker", address,
              "--nthreads", "1", "--memory-limit", str(job["memory"]), "--no-dashboard",
              *map(str, job["worker-extra-args"]), *tls_args]
    memory_mb = _megabytes(job["memory"])
    command = ["sbatch", "--parsable", "--job-name", "mfsbi-gpu-worker", f"--cpus-per-task={job['cores']}",
               f"--mem={memory_mb}M", f"--time={job['walltime']}"]
    if job.get("queue"):
        command.append(f"--partition={job['queue']}")
    if job.get("account"):
        command.append(f"--account={job['account']}")
    # The prologue is shell by design (the site's own lines); every worker argument is quoted, and
    # only the job id is left for the shell to expand.
    prologue = "; ".join(job.get("job-script-prologue") or [])
    shell = (prologue + "; " if prologue else "") + "exec " + shlex.join(worker) + ' --name "mfsbi-gpu-$SLURM_JOB_ID"'
    return [*command, *map(str, job.get("job-extra-directives") or []), "--wrap", shell]


def _megabytes(memory: str) -> int:
    from dask.utils import parse_bytes  # deferred: as in load_slurm_settings

    return max(1, int(parse_bytes(str(memory)) // 2**20))


def _pending_reasons(job_ids: list[str]) -> str:
    if not job_ids:
        return "no job was submitted"
    out = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T %r"], capture_output=True,
                         text=True, timeout=30)
    jobs = []
    for line in out.stdout.splitlines():
        job, state, reason = (line.split(None, 2) + ["", ""])[:3]
        if job:
            why = reason if reason and reason != "None" else "its worker has not joined the scheduler yet"
            jobs.append(f"job {job} {state}: {why}")
    return "; ".join(jobs) or (out.stderr.strip() or "the jobs are no longer in squeue")


@contextlib.contextmanager
def slurm_cluster(settings: SlurmSettings) -> Iterator[Any]:
    """Yields a started, adaptive ``SLURMCluster`` with at least one worker; closes every job at the end.

    Raises:
        ClusterStartError: sbatch refused the job, or no worker joined within ``start_timeout``.
    """
    from dask_jobqueue import SLURMCluster  # deferred: optional (the `cluster` extra)

    home = private_home()
    jobqueue = dict(settings.jobqueue)
    jobqueue["log-directory"] = jobqueue.get("log-directory") or str(home / "slurm-logs")
    jobqueue["shared-temp-directory"] = jobqueue.get("shared-temp-directory") or str(home / "slurm-tls")
    for folder in (jobqueue["log-directory"], jobqueue["shared-temp-directory"]):
        # Mode 700 when made here: the logs and the workers' TLS key are this user's only.
        Path(os.path.expandvars(folder)).expanduser().mkdir(mode=0o700, parents=True, exist_ok=True)
    arguments = _cluster_arguments(jobqueue, dashboard=settings.dashboard)
    with contextlib.nullcontext() if settings.dashboard else scheduler_http_closed():
        cluster = SLURMCluster(security=True if settings.tls else None, **arguments)
    gpu_jobs: list[str] = []
    stop = threading.Event()
    replacer = threading.Thread(target=_replace_ended_jobs, args=(cluster, stop), name="mfsbi-slurm-jobs",
                                daemon=True)
    try:
        cluster.adapt(minimum_jobs=settings.minimum_jobs, maximum_jobs=settings.maximum_jobs,
                      target_duration=settings.target_duration, wait_count=settings.wait_count)
        _wait_for_first_worker(cluster, settings.start_timeout)
        replacer.start()
        tls_args = _worker_tls_args(cluster)
        for _ in range(settings.gpu_jobs):
            gpu_jobs.append(_submit(gpu_job_command(settings, cluster.scheduler_address, tls_args)))
        log.info("SLURM cluster: scheduler %s, %d-%d worker jobs, %d GPU job(s)", cluster.scheduler_address,
                 settings.minimum_jobs, settings.maximum_jobs, len(gpu_jobs))
        yield cluster
    finally:
        stop.set()
        if replacer.is_alive():
            replacer.join(timeout=30)
        if gpu_jobs:
            subprocess.run(["scancel", *gpu_jobs], capture_output=True, timeout=30)
        cluster.close()
        # The workers' TLS key and certificates: temporary files the cluster keeps open; closing
        # them deletes them now rather than whenever the cluster object is collected.
        for name in ("_job_key", "_job_cert", "_job_ca_file"):
            handle = getattr(cluster, name, None)
            if handle is not None:
                handle.close()


# Deprecated aliases of job-extra-directives / job-script-prologue: dask-jobqueue warns when given.
_DEPRECATED = {"extra", "env-extra", "job-extra"}


def _cluster_arguments(jobqueue: dict[str, Any], dashboard: bool = False) -> dict[str, Any]:
    """``jobqueue.slurm`` settings as SLURMCluster's keywords (its jobs re-read dask.config lazily,
    so a temporary ``dask.config.set`` would not last the cluster's life)."""
    arguments = {}
    for key, value in jobqueue.items():
        if value is None or (key in _DEPRECATED and not value):
            continue
        arguments["job_name" if key == "name" else key.replace("-", "_")] = value
    arguments["scheduler_options"] = scheduler_options(jobqueue, dashboard)
    return arguments


def scheduler_options(jobqueue: dict[str, Any], dashboard: bool) -> dict[str, Any]:
    """The scheduler's options: bound to one address, and its dashboard only when asked for.

    dask-jobqueue's scheduler listens on every interface when ``interface`` is null, and its
    dashboard on every interface without authentication. Here it binds the configured
    ``interface``'s address, else the address the node reaches others by (``distributed.utils.get_ip``,
    the one its workers were told anyway); the dashboard, when on, binds the same address.
    ``scheduler-options`` ``host`` / ``interface`` / ``dashboard_address`` given in the file win.
    """
    from distributed.utils import get_ip, get_ip_interface  # deferred: distributed costs 0.3 s; as in load_slurm_settings

    options = {key.replace("-", "_"): value for key, value in (jobqueue.get("scheduler-options") or {}).items()}
    if options.get("interface") and not options.get("host"):
        host = get_ip_interface(options.pop("interface"))
    else:
        interface = jobqueue.get("interface")
        host = options.get("host") or (get_ip_interface(interface) if interface else get_ip())
    options["host"] = host
    options["dashboard"] = bool(dashboard)
    given = str(options.get("dashboard_address") or "")
    if not given or given.startswith(":"):  # a port alone means every interface: bind it to the host
        options["dashboard_address"] = f"{host}:{given.lstrip(':') or 0}"
    return options


# Seconds between two looks at squeue for worker jobs that ended.
JOB_CHECK_SECONDS = 5.0


def _replace_ended_jobs(cluster: Any, stop: threading.Event) -> None:
    """Forgets worker jobs that SLURM ended (scancel, walltime, node failure), so that Adaptive submits new ones.

    Hand-written because dask-jobqueue keeps an ended job in the cluster's plan: Adaptive then
    believes the job still runs, and once every job is gone nothing replaces them (seen here:
    `scancel` of every worker job left the run waiting forever; dask-jobqueue#122 describes the
    same for walltime).
    """
    while not stop.wait(JOB_CHECK_SECONDS):
        try:
            out = subprocess.run(["squeue", "-h", "-o", "%i", "-u", getpass.getuser()], capture_output=True,
                                 text=True, timeout=30)
            if out.returncode != 0:
                continue  # slurmctld busy or restarting: look again later, never forget on no answer
            known = set(out.stdout.split())
            connected = {str(w.get("name")) for w in cluster.scheduler_info.get("workers", {}).values()}
            ended = [name for name, job in list(cluster.workers.items())
                     if getattr(job, "job_id", None) and str(job.job_id) not in known and str(name) not in connected]
            if ended:
                log.warning("SLURM ended worker job(s) %s; submitting replacements",
                            ", ".join(str(cluster.workers[n].job_id) for n in ended if n in cluster.workers))
                cluster.loop.add_callback(_forget_jobs, cluster, ended)
        except Exception as error:  # noqa: BLE001 -- the watchdog must not end the run; it says why
            log.warning("could not check the SLURM worker jobs: %s: %s", type(error).__name__, error)


def _forget_jobs(cluster: Any, names: list[str]) -> None:
    """On the cluster's event loop: drop ended jobs from its plan (the next Adaptive round replaces them)."""
    for name in names:
        cluster.worker_spec.pop(name, None)
        cluster.workers.pop(name, None)


def _submit(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ClusterStartError(f"sbatch refused the GPU training job: {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]


def _worker_tls_args(cluster: Any) -> list[str]:
    """The TLS options dask-jobqueue gave its own workers, for the GPU workers started here."""
    args = shlex.split(cluster.job_script().splitlines()[-1])
    return [value for i, value in enumerate(args)
            if value.startswith("--tls-") or (i and args[i - 1].startswith("--tls-"))]


def _wait_for_first_worker(cluster: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cluster.scheduler_info.get("workers"):
        if time.monotonic() > deadline:
            ids = [str(job.job_id) for job in cluster.workers.values() if getattr(job, "job_id", None)]
            reason = _pending_reasons(ids) if ids else "sbatch refused every worker job; see the log above"
            raise ClusterStartError(f"no SLURM worker job started within {timeout:.0f} s ({reason}); nothing "
                                    f"was simulated: run the same command again when SLURM has room, or "
                                    f"raise mfsbi.slurm.start-timeout")
        time.sleep(0.5)


def client_tls_environment(cluster: Any, folder: Path) -> dict[str, str]:
    """Dask settings, as environment variables, with which another process's Client joins ``cluster``.

    For ``mfsbi serve --cluster``: its Prefect worker's flow runs connect to the scheduler held by
    the serve process. The per-run certificate and key are written to ``folder`` (mode 600);
    delete the folder when the cluster closes. Empty when the cluster does not use TLS.
    """
    security = getattr(cluster, "security", None)
    if security is None or not getattr(security, "require_encryption", False):
        return {}
    private_folder(folder)
    paths = {}
    for name, value in (("ca.pem", security.tls_ca_file), ("client.pem", security.tls_client_cert),
                        ("client-key.pem", security.tls_client_key)):
        if value and "\n" in value:  # an in-memory PEM (Security.temporary): give it a file
            path = folder / name
            write_private(path, value)
            value = str(path)
        paths[name] = value
    return client_environment(paths["ca.pem"], paths["client.pem"], paths["client-key.pem"])

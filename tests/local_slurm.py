"""A real single-node SLURM cluster on this machine, for the `slurm` tests and the SLURM drills.

Debian's ``slurm-wlm`` and ``munge`` (``apt-get install slurm-wlm munge``) run as child processes of
the caller, in the foreground, with every file (munge key and socket, slurm.conf, state, spool, logs)
under one folder: nothing in /etc is touched, and a system-wide munged or slurmctld is left alone.
The node gets this machine's cores and memory (less 1 GiB). Needs root (slurmd runs jobs as their
user, and SlurmUser is root so that no service account is needed); the facts behind the settings are
in ../shared/STACK.md.

    python tests/local_slurm.py /tmp/slurm        # starts one, prints `export SLURM_CONF=...`, Ctrl-C stops it
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["LocalSlurm", "SlurmUnavailable", "slurm_missing_reason"]

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")


class SlurmUnavailable(RuntimeError):
    """SLURM could not be started here (packages missing, not root, or a daemon failed)."""


def _which(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)


def slurm_missing_reason() -> str | None:
    """Why a local SLURM cannot start here, or None when it can."""
    missing = [name for name in BINARIES if _which(name) is None]
    if missing:
        return f"slurm-wlm/munge not installed (missing {', '.join(missing)}): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "a local SLURM needs root (slurmd runs jobs as their user)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return kib // 1024


class LocalSlurm:
    """Starts munged, slurmctld and slurmd under ``root`` and stops exactly those processes.

    Arguments:
        root: folder for every file of the cluster (created).
        partition: the partition's name (the default partition).

    After :meth:`start`, ``environ`` holds ``SLURM_CONF`` for the client commands (sbatch, squeue ...).
    """

    def __init__(self, root: Path, partition: str = "debug") -> None:
        self.root = Path(root)
        self.partition = partition
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def environ(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        for folder in ("state", "spool", "log", "munge"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        os.chmod(self.root / "munge", 0o700)
        cpus = os.cpu_count() or 1
        memory = max(1024, _memory_mb() - 1024)
        lines = [
            "ClusterName=mfsbi-test", f"SlurmctldHost={self.host}", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={self.root / 'munge' / 'munge.socket'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            f"StateSaveLocation={self.root / 'state'}", f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}", f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            "ReturnToService=2", "MpiDefault=none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "SchedulerParameters=sched_interval=1",
            "MinJobAge=5", "KillWait=5",
            f"NodeName={self.host} CPUs={cpus} RealMemory={memory} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                env={**os.environ, **self.environ}, start_new_session=True)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster (``sinfo``, ``squeue`` ...)."""
        return subprocess.run(list(command), env={**os.environ, **self.environ}, capture_output=True,
                              text=True, check=check, timeout=30)

    def start(self, timeout: float = 60.0) -> "LocalSlurm":
        """Starts the three daemons and waits until the node is idle; raises SlurmUnavailable otherwise."""
        reason = slurm_missing_reason()
        if reason:
            raise SlurmUnavailable(reason)
        self._write_config()
        munge = self.root / "munge"
        self._spawn("munged", [_which("munged"), "--foreground", "--force", f"--socket={munge / 'munge.socket'}",
                               f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
                               f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"])
        self._wait(lambda: (munge / "munge.socket").exists(), timeout, "munged")
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self.run("sinfo", "-h", check=False).returncode == 0, timeout, "slurmctld")
        self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf)])
        self._wait(lambda: self.node_state() == "idle", timeout, "slurmd (node idle)")
        return self

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()

    def jobs(self) -> list[str]:
        """Ids of the jobs SLURM still knows as pending or running."""
        out = self.run("squeue", "-h", "-o", "%i", check=False).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def set_partition(self, state: str) -> None:
        """``UP``, ``DOWN`` (jobs are accepted and wait) or ``INACTIVE`` (sbatch refuses them)."""
        self.run("scontrol", "update", f"PartitionName={self.partition}", f"State={state}")

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [name for name, p in self.processes.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                self.stop()
                logs = sorted(str(p) for p in (self.root / "log").glob("*"))
                raise SlurmUnavailable(f"{what} not ready ({'exited: ' + ', '.join(dead) if dead else 'timeout'}); "
                                       f"logs: {', '.join(logs)}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancels every job, then stops the daemons this object started, by pid (never by name)."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--user", "root"], env={**os.environ, **self.environ},
                           capture_output=True, timeout=30)
            deadline = time.monotonic() + 15
            while self.jobs() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def __enter__(self) -> "LocalSlurm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    cluster = LocalSlurm(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/mfsbi-slurm")).start()
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill PID` stops the daemons too
    try:
        signal.pause()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        cluster.stop()

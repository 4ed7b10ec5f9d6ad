"""Static checks of the deploy files: docker-compose.yml, the Dockerfiles, prefect.yaml, slurm.yaml.

No Docker engine is needed: the files are parsed with PyYAML and every program they run is looked
up among the console scripts of the installed distributions and the importable modules.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILES = [ROOT / "deploy" / "Dockerfile.cpu", ROOT / "deploy" / "Dockerfile.cuda"]
PREFECT_YAML = ROOT / "deploy" / "prefect.yaml"
SLURM_YAML = ROOT / "mfsbi" / "runtime" / "slurm.yaml"
FLOWS = {"mfsbi-amortized": "amortized_flow", "mfsbi-sequential": "sequential_flow", "mfsbi-mf-abc": "abc_flow",
         "mfsbi-infer": "infer_flow"}

# Programs of the base images and of Debian/Ubuntu that the Dockerfiles use to set themselves up.
SYSTEM_PROGRAMS = {"apt-get", "add-apt-repository", "rm", "mkdir", "chown", "useradd", "python", "python3.11",
                   "pip", "pg_isready"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def console_scripts() -> set[str]:
    return {ep.name for ep in importlib.metadata.entry_points(group="console_scripts")}


def check_program(argv: list[str]) -> None:
    """The program exists: a console script of an installed package, or an importable ``python -m``."""
    program = argv[0]
    if program in ("python", "python3", "python3.11") and argv[1:2] == ["-m"]:
        importlib.import_module(argv[2])
        return
    if program in ("python", "python3") and argv[1:2] == ["-c"]:
        compile(argv[2], "<command>", "exec")
        return
    assert program in console_scripts() | SYSTEM_PROGRAMS, f"{program!r} is not a program of the stack"
    if program in ("dask", "prefect", "mfsbi"):
        check_subcommand(argv)
    for flag, value in zip(argv, argv[1:]):
        if flag == "--preload":
            importlib.import_module(value)


@functools.lru_cache(maxsize=None)
def prefect_help(words: tuple[str, ...]) -> str:
    result = subprocess.run([sys.executable, "-m", "prefect", *words, "--help"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def check_subcommand(argv: list[str]) -> None:
    """``dask scheduler``/``dask worker``, ``prefect server start``..., ``mfsbi deploy`` accept these flags."""
    from typer.testing import CliRunner

    if argv[0] == "mfsbi":
        from mfsbi.app.cli import app

        result = CliRunner().invoke(app, [*argv[1:2], "--help"])
        assert result.exit_code == 0, result.output
        return
    if argv[0] == "prefect":
        helptext = prefect_help(tuple(w for w in argv[1:] if not w.startswith("-"))[:2])
    else:
        from distributed.cli import dask_scheduler, dask_worker

        command = {"scheduler": dask_scheduler.main, "worker": dask_worker.main}[argv[1]]
        from click.testing import CliRunner as ClickRunner

        result = ClickRunner().invoke(command, ["--help"])
        assert result.exit_code == 0, result.output
        helptext = result.output
    for flag in (w for w in argv[1:] if w.startswith("--")):
        assert flag in helptext, f"{' '.join(argv[:3])} has no option {flag}"


def test_compose_parses_and_has_the_services():
    services = compose()["services"]
    assert {"postgres", "prefect-server", "dask-scheduler", "dask-worker", "dask-worker-gpu",
            "prefect-worker"} <= set(services)
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    importlib.import_module("asyncpg")  # the driver that URL needs is installed with prefect
    assert "--resources" in services["dask-worker-gpu"]["command"]
    assert "GPU=1" in services["dask-worker-gpu"]["command"]
    devices = services["dask-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "replicas" in services["dask-worker"]["deploy"]
    assert services["dask-worker"]["command"][services["dask-worker"]["command"].index("--nthreads") + 1] == "1"
    assert services["prefect-worker"]["command"][:5] == ["prefect", "worker", "start", "--pool", "mfsbi-process"]


def test_every_published_port_is_bound_to_localhost():
    published = 0
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            spec = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port.get('published')}"
            assert spec.startswith("127.0.0.1:"), f"{name} publishes {spec} beyond 127.0.0.1"
            published += 1
    assert published >= 3


def test_no_secret_literal_is_committed():
    text = COMPOSE.read_text()
    for name, service in compose()["services"].items():
        environment = service.get("environment", {})
        items = environment.items() if isinstance(environment, dict) else (e.split("=", 1) for e in environment)
        for key, value in items:
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY", key):
                assert str(value).startswith("${"), f"{name}: {key} must come from .env"
    # Credentials inside URLs come from variables too.
    # (a ${VAR:?message} may hold spaces: a substitution counts as one piece)
    credentials = re.findall(r"://([^:/@\s]+):(\$\{[^}]*\}|[^@\s]+)@", text)
    assert credentials, "the database URL takes its credentials from variables"
    for user, password in credentials:
        assert user.startswith("${") and password.startswith("${"), f"a credential literal in a URL: {user}"


@pytest.mark.parametrize("secret, uses_at_least", [("POSTGRES_PASSWORD", 2), ("PREFECT_AUTH_STRING", 3)])
def test_compose_refuses_an_empty_secret(secret, uses_at_least):
    """The database password (postgres, the server's URL) and the API's credentials (server, clients)."""
    text = COMPOSE.read_text()
    uses = re.findall(rf"(?<!\$)\$\{{{secret}([^}}]*)\}}", text)
    assert len(uses) >= uses_at_least
    for rest in uses:
        assert rest.startswith(":?") and secret in rest, f"${{{secret}{rest}}}: no :? check"
    assert not re.search(rf"(?<![${{])\${secret}", text), f"an unbraced ${secret} has no :? check"


def test_env_example_defines_every_variable_the_compose_file_uses():
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text()))
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
    assert used, "the compose file takes its settings from .env"
    assert used <= set(example), f"missing from .env.example: {sorted(used - set(example))}"
    # Empty, so that `cp .env.example .env` without editing refuses to start (the :? checks).
    assert example["POSTGRES_PASSWORD"] == "", "no password is committed, not even a placeholder"
    assert example["PREFECT_AUTH_STRING"] == "", "no credentials are committed"


def test_every_compose_command_exists():
    for name, service in compose()["services"].items():
        if "command" in service:
            check_program(service["command"])
        test = service.get("healthcheck", {}).get("test")
        if test and test[0] == "CMD":
            check_program(test[1:])
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_commands_exist(path):
    instructions = dockerfile_instructions(path)
    assert instructions[0][0] in ("FROM", "ARG")
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert froms[0].startswith("python:3.11-slim" if path.suffix == ".cpu" else "nvidia/cuda:")
    assert any(op == "USER" and arg.split()[0] not in ("root", "0") for op, arg in instructions), "non-root user"
    env = " ".join(arg for op, arg in instructions if op == "ENV")
    assert "DO_NOT_TRACK=1" in env and "PREFECT_SERVER_ANALYTICS_ENABLED=false" in env
    runs = [arg for op, arg in instructions if op == "RUN"]
    torch_step = next(i for i, r in enumerate(runs) if "pip install" in r and "torch" in r)
    project_step = next(i for i, r in enumerate(runs) if re.search(r"pip install \.(\s|$)", r))
    assert torch_step < project_step, "torch is installed before the project"
    if path.suffix == ".cpu":
        assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in runs[torch_step]
    else:
        assert '"torch>=2.5,<2.14"' in runs[torch_step]
    for run in runs:
        for part in re.split(r"&&|;", run):
            argv = shlex.split(part)
            if argv:
                check_program(argv)
    for op, arg in instructions:
        if op in ("CMD", "ENTRYPOINT"):
            check_program(json.loads(arg))
    for op, arg in instructions:
        if op == "COPY":
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_prefect_yaml_entrypoints_resolve_to_the_flows():
    from prefect import Flow

    from mfsbi.flows.config import RunConfig

    spec = yaml.safe_load(PREFECT_YAML.read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == set(FLOWS)
    for name, deployment in deployments.items():
        path, attribute = deployment["entrypoint"].split(":")
        assert (ROOT / path).is_file()
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, attribute)
        assert isinstance(flow, Flow) and flow.name == name and attribute == FLOWS[name]
        assert deployment["work_pool"]["name"] == "mfsbi-process"
        if name == "mfsbi-infer":  # the nightly inference pass: its own model (mfsbi.app.infer_plan)
            from mfsbi.app.infer_plan import InferConfig

            InferConfig(**deployment["parameters"]["config"])
            continue
        RunConfig(**deployment["parameters"]["config"])  # the same model validates the parameters
    schedules = deployments["mfsbi-amortized"]["schedules"]
    assert schedules[0]["cron"] and schedules[0]["active"] is False


def test_slurm_config_makes_one_single_threaded_preloaded_tls_worker_per_job(tmp_path, monkeypatch):
    """The packaged `--cluster slurm` settings, as the job script dask-jobqueue would submit."""
    from dask_jobqueue import SLURMCluster

    from mfsbi.runtime.slurm import DEFAULT_CONFIG, load_slurm_settings
    from mfsbi.runtime import slurm as slurm_module

    assert DEFAULT_CONFIG == SLURM_YAML
    settings = load_slurm_settings("slurm")
    assert settings.jobqueue["cores"] == 1 and settings.jobqueue["processes"] == 1
    arguments = slurm_module._cluster_arguments({**settings.jobqueue, "shared-temp-directory": str(tmp_path),
                                                 "log-directory": str(tmp_path)})
    cluster = SLURMCluster(security=True, **arguments)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -J mfsbi-worker" in script and "--nthreads 1" in script
    assert "--preload mfsbi.runtime.worker_setup" in script and "export OMP_NUM_THREADS=1" in script
    assert cluster.scheduler_address.startswith("tls://") and "--tls-key" in script
    importlib.import_module("mfsbi.simulators.plastic_network")


def test_the_deploy_command_registers_what_prefect_yaml_declares():
    from mfsbi.app.deployments import INFER_DESCRIPTION, INFER_ENTRYPOINT, deployment_families, deployment_names

    spec = yaml.safe_load(PREFECT_YAML.read_text())
    families = deployment_families()
    assert sorted(d["name"] for d in spec["deployments"]) == sorted(deployment_names())
    for deployment in spec["deployments"]:
        if deployment["name"] == "mfsbi-infer":
            module, function = INFER_ENTRYPOINT.split(":")
            assert deployment["entrypoint"] == f"{module.replace('.', '/')}.py:{function}"
            assert deployment["description"] == INFER_DESCRIPTION
            continue
        family = families[deployment["name"]]
        module, function = family.entrypoint.split(":")
        assert deployment["entrypoint"] == f"{module.replace('.', '/')}.py:{function}"
        assert deployment["description"] == family.description


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (v1, Debian) is not installed")
def test_docker_compose_validates_the_file():
    import subprocess

    argv = ["docker-compose", "--env-file", ".env.example", "--profile", "gpu", "config", "-q"]
    env = {key: value for key, value in os.environ.items() if key not in ("POSTGRES_PASSWORD", "PREFECT_AUTH_STRING")}
    # .env.example's secrets are empty on purpose: compose refuses each of them...
    refused = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                             env={**env, "PREFECT_AUTH_STRING": "test:only"})
    assert refused.returncode != 0 and "set POSTGRES_PASSWORD in .env" in refused.stderr, refused.stderr
    refused = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                             env={**env, "POSTGRES_PASSWORD": "test-only-password"})
    assert refused.returncode != 0 and "set PREFECT_AUTH_STRING in .env" in refused.stderr, refused.stderr
    # ...and accepts the file once both are set (the shell's environment wins over --env-file).
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                            env={**env, "POSTGRES_PASSWORD": "test-only-password", "PREFECT_AUTH_STRING": "test:only"})
    assert result.returncode == 0, result.stderr

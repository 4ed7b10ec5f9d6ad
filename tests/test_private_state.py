"""Only you can reach what you start: $MFSBI_HOME private, secrets checked before use, SLURM bound and quoted."""

import os
import shlex
import stat

import pytest

from mfsbi.app.prefect_server import ServiceError, prefect_api, serve_auth_string
from mfsbi.runtime.home import (PrivateStateError, create_private_once, open_private_log, private_folder, private_home,
                                read_secret)


@pytest.fixture
def home(tmp_path, monkeypatch):
    folder = tmp_path / "home"
    monkeypatch.setenv("MFSBI_HOME", str(folder))
    monkeypatch.delenv("PREFECT_SERVER_API_AUTH_STRING", raising=False)
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return folder


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_home_is_made_700_and_an_open_one_is_tightened(home):
    assert _mode(private_home()) == 0o700
    home.chmod(0o755)  # as an older mfsbi left it under the default umask
    private_home()
    assert _mode(home) == 0o700


def test_another_users_folder_is_refused(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("making a folder of another user needs root")
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o755)
    os.chown(folder, 65534, 65534)
    monkeypatch.setenv("MFSBI_HOME", str(folder))
    with pytest.raises(PrivateStateError, match="belongs to uid 65534, not to you"):
        private_home()
    assert _mode(folder) == 0o755  # not touched


def test_a_secret_is_made_once_complete_and_private(tmp_path):
    path = tmp_path / "secret"
    assert create_private_once(path, "first\n") and _mode(path) == 0o600
    assert not create_private_once(path, "second\n")
    assert read_secret(path, "the secret") == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]  # no temporary file left


@pytest.mark.parametrize("spoil, message", [
    (lambda path: path.write_text(""), "is empty"),
    (lambda path: path.chmod(0o644), r"readable or writable by others \(mode 644\); run `chmod 600"),
    (lambda path: (path.unlink(), path.symlink_to(path.with_name("elsewhere"))), "cannot open"),
], ids=["empty", "open-mode", "a-link"])
def test_a_spoiled_secret_is_refused_with_one_line(tmp_path, spoil, message):
    path = tmp_path / "secret"
    create_private_once(path, "value\n")
    path.with_name("elsewhere").write_text("value\n")
    spoil(path)
    with pytest.raises(PrivateStateError, match=message) as error:
        read_secret(path, "the secret")
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_another_users_secret_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a file of another user needs root")
    path = tmp_path / "secret"
    create_private_once(path, "value\n")
    os.chown(path, 65534, 65534)
    with pytest.raises(PrivateStateError, match="belongs to uid 65534"):
        read_secret(path, "the secret")


def test_an_empty_auth_string_stops_the_run_before_a_server_starts(home):
    private_home()
    (home / "prefect-auth-string").touch(mode=0o600)  # a crash between creating and writing it
    with pytest.raises(ServiceError, match="prefect-auth-string is empty.*delete it"):
        serve_auth_string()
    with pytest.raises(ServiceError, match="is empty"), prefect_api():
        pass
    assert not (home / "prefect" / "server.log").exists()


def test_the_auth_string_is_made_once_and_shared(home):
    first = serve_auth_string()
    assert first.startswith("mfsbi:") and len(first) > 30 and serve_auth_string() == first
    assert _mode(home) == 0o700 and _mode(home / "prefect-auth-string") == 0o600


def test_a_log_left_open_by_an_older_version_is_made_private(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("old\n")
    log.chmod(0o644)
    with open_private_log(log) as handle:
        handle.write(b"new\n")
    assert _mode(log) == 0o600 and log.read_text() == "old\nnew\n"
    assert _mode(private_folder(tmp_path / "logs")) == 0o700


def test_an_open_tls_key_is_refused(tmp_path):
    from mfsbi.runtime.tls import certificates, client_security

    files = certificates(tmp_path / "tls")
    files.key.chmod(0o640)
    with pytest.raises(PrivateStateError, match="the Dask TLS key"):
        certificates(tmp_path / "tls")
    with pytest.raises(PrivateStateError, match="the Dask TLS key"):
        client_security("tls://127.0.0.1:8786", tmp_path / "tls")


def test_the_slurm_scheduler_binds_one_address_and_its_dashboard_is_off_unless_asked():
    from distributed.utils import get_ip

    from mfsbi.runtime.slurm import load_slurm_settings, scheduler_options

    settings = load_slurm_settings("slurm")
    assert settings.jobqueue["interface"] is None and settings.dashboard is False
    options = scheduler_options(settings.jobqueue, settings.dashboard)
    assert options["host"] == get_ip() and options["host"] not in ("", "0.0.0.0")
    assert options["dashboard"] is False and options["dashboard_address"] == f"{get_ip()}:0"
    asked = scheduler_options({**settings.jobqueue, "scheduler-options": {"dashboard_address": ":8787"}}, True)
    assert asked["dashboard"] is True and asked["dashboard_address"] == f"{get_ip()}:8787"
    chosen = scheduler_options({**settings.jobqueue, "scheduler-options": {"host": "10.1.2.3"}}, False)
    assert chosen["host"] == "10.1.2.3" and chosen["dashboard_address"] == "10.1.2.3:0"
    looped = scheduler_options({**settings.jobqueue, "interface": "lo"}, False)
    assert looped["host"] == "127.0.0.1"


def test_the_gpu_jobs_wrap_quotes_every_worker_argument():
    from mfsbi.runtime.slurm import gpu_job_command, load_slurm_settings

    settings = load_slurm_settings("slurm")
    odd = {**settings.jobqueue, "python": "'/opt/my env/bin/python'"}
    gpu = {**settings.gpu, "worker-extra-args": ["--preload", "x; touch /tmp/owned"]}
    settings = type(settings)(**{**settings.__dict__, "jobqueue": odd, "gpu": gpu})
    wrapped = gpu_job_command(settings, "tls://10.0.0.1:8786", ["--tls-key", "/a b/key.pem"])[-1]
    worker = shlex.split(wrapped.split("exec ", 1)[1])
    assert worker[0] == "/opt/my env/bin/python" and "x; touch /tmp/owned" in worker
    assert worker[worker.index("--tls-key") + 1] == "/a b/key.pem"
    assert wrapped.endswith('--name "mfsbi-gpu-$SLURM_JOB_ID"')  # the job id alone is left to the shell

"""TLS of `mfsbi serve`'s Dask scheduler: certificates made once, and a client without them refused."""

import os
import socket
import subprocess
import sys
import time

import pytest

from mfsbi.runtime.tls import certificates, client_security, dask_cli_arguments


def test_certificates_are_made_once_private_and_remade_when_broken(tmp_path):
    folder = tmp_path / "tls"
    files = certificates(folder)
    assert folder.stat().st_mode & 0o777 == 0o700
    for path in (files.cert, files.key):
        assert path.stat().st_mode & 0o777 == 0o600
    first = files.key.read_text()
    assert "PRIVATE KEY" in first and "CERTIFICATE" in files.cert.read_text()
    assert certificates(folder).key.read_text() == first  # reused, not remade
    files.cert.write_text("not a certificate")
    assert certificates(folder).key.read_text() != first  # an unreadable certificate is replaced


def test_a_tcp_address_needs_no_security_and_a_tls_one_needs_certificates(tmp_path):
    assert client_security("tcp://127.0.0.1:8786", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="uses TLS and no certificate"):
        client_security("tls://127.0.0.1:8786", tmp_path / "none")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_tls_scheduler_accepts_its_certificate_and_refuses_other_clients(tmp_path):
    from distributed import Client
    from distributed.security import Security

    files = certificates(tmp_path / "tls")
    port = _free_port()
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--dashboard-address", "127.0.0.1:0", "--protocol", "tls", *dask_cli_arguments(files)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"tls://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline and scheduler.poll() is None, "the scheduler did not start"
                time.sleep(0.3)
        with Client(address, timeout="20s", security=client_security(address, tmp_path / "tls")) as client:
            assert client.scheduler_info()["address"] == address
        with pytest.raises(OSError):  # no certificate at all: plain TCP to the TLS port
            Client(f"tcp://127.0.0.1:{port}", timeout="3s")
        with pytest.raises(OSError):  # a certificate the scheduler's CA did not sign
            Client(address, timeout="3s", security=Security.temporary())
    finally:
        os.killpg(scheduler.pid, 15)
        scheduler.wait(timeout=30)

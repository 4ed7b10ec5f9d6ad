"""TLS for the Dask scheduler of ``mfsbi serve``: certificates made on first use, kept in ``$MFSBI_HOME/tls``.

A Dask scheduler runs whatever a connected client sends, so on a shared login node a scheduler on
127.0.0.1 is open to every user of the node. With TLS (distributed's mutual TLS: the scheduler,
its workers and its clients each present a certificate signed by the same CA, and the scheduler
refuses connections without one) only processes that can read the key connect, and the key is
mode 600 in the user's own ``MFSBI_HOME``.

The certificate is distributed's own ``Security.temporary()`` (a self-signed key and certificate
for every role), written once to files so that separate processes share it; it is made again
when it is missing, unreadable or within a day of expiring. (``mfsbi run``'s local cluster uses
TLS too, with certificates that live only in its memory: :mod:`mfsbi.runtime.cluster`.)
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from mfsbi.runtime.home import private_folder, read_secret, write_private

__all__ = ["Certificates", "certificates", "client_environment", "client_security", "dask_cli_arguments",
           "scheduler_http_closed"]

# What a scheduler started without its dashboard still serves over HTTP: only its health check,
# not distributed's default info pages (worker logs, call stacks) and metrics, which have no
# authentication either.
HEALTH_ONLY = {"distributed.scheduler.http.routes": ["distributed.http.health"]}


@dataclass(frozen=True)
class Certificates:
    """The files of one TLS identity: the CA every role trusts, and the certificate and key they present."""

    ca_file: Path
    cert: Path
    key: Path


def _valid(certificate: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    except (OSError, ValueError):
        return False
    remaining = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    return remaining > datetime.timedelta(days=1)


def certificates(folder: Path) -> Certificates:
    """The certificates in ``folder`` (mode 700), made now if missing or about to expire.

    Arguments:
        folder: where they live, e.g. ``$MFSBI_HOME/tls``.

    Returns:
        The file paths; the CA file and the certificate are the same self-signed certificate.

    Raises:
        PrivateStateError: the key is not this user's, is readable by others or is empty.
    """
    # deferred: distributed costs 0.3 s; `mfsbi status/serve/submit/runs` load this module through app.stack
    from distributed.security import Security

    private_folder(folder)
    files = _files(folder)
    if not (files.key.exists() and _valid(files.cert)):
        made = Security.temporary()
        write_private(files.key, made.tls_client_key)  # the key first: a cert on disk implies its key
        write_private(files.cert, made.tls_client_cert)
    read_secret(files.key, "the Dask TLS key")
    return files


def _files(folder: Path) -> Certificates:
    return Certificates(ca_file=folder / "cert.pem", cert=folder / "cert.pem", key=folder / "key.pem")


def dask_cli_arguments(files: Certificates) -> list[str]:
    """The options of ``dask scheduler`` and ``dask worker`` that make them use ``files``."""
    return ["--tls-ca-file", str(files.ca_file), "--tls-cert", str(files.cert), "--tls-key", str(files.key)]


def client_environment(ca_file: str, cert: str, key: str) -> dict[str, str]:
    """Dask settings, as environment variables, with which another process's Client uses TLS."""
    return {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": ca_file,
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": cert,
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": key}


def client_security(address: str, folder: Path):
    """The ``Security`` a Client to ``address`` should use, or None for a plain ``tcp://`` scheduler.

    Dask's own settings win (``DASK_DISTRIBUTED__COMM__TLS__*``, as ``mfsbi serve`` gives its
    Prefect worker); otherwise a ``tls://`` scheduler is assumed to be ``mfsbi serve``'s, whose
    certificates are in ``folder``.

    Raises:
        FileNotFoundError: a ``tls://`` address, no TLS settings and no certificates in ``folder``.
        PrivateStateError: the key in ``folder`` is not this user's, is readable by others or is empty.
    """
    import dask  # deferred: dask + distributed cost 0.3 s (as in certificates)
    from distributed.security import Security

    if not address.startswith("tls://"):
        return None
    if dask.config.get("distributed.comm.tls.ca-file", None):
        return Security()
    files = _files(folder)
    if not (files.cert.exists() and files.key.exists()):
        raise FileNotFoundError(f"the Dask scheduler {address} uses TLS and no certificate was found: set "
                                f"DASK_DISTRIBUTED__COMM__TLS__CA_FILE/__CLIENT__CERT/__CLIENT__KEY, or use the "
                                f"MFSBI_HOME of the `mfsbi serve` that started it ({folder} holds none)")
    read_secret(files.key, "the Dask TLS key")
    return Security(require_encryption=True, tls_ca_file=str(files.ca_file), tls_client_cert=str(files.cert),
                    tls_client_key=str(files.key))


def scheduler_http_closed():
    """A context in which a scheduler made in this process serves only its health check over HTTP."""
    import dask  # deferred: dask costs 0.14 s (as in certificates)

    return dask.config.set(HEALTH_ONLY)

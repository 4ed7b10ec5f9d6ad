"""Tried as another user of the same machine would: a second uid (``runuser -u nobody``) against a run's services.

The services are the session's (tests/conftest.py), started as ``mfsbi run`` starts them: the
Prefect server of :func:`prefect_api` and the local cluster of ``dask_client(None)``. The second
user gets none of this user's environment, and its own Python: this interpreter if it may run it,
else the system's python3 of the same version with this environment's packages on its path (an
attacker can install distributed too). Where no second uid can be used, the tests are skipped with
the reason.
"""

import json
import os
import pwd
import shutil
import site
import stat
import subprocess
import sys
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest

from mfsbi.app.prefect_server import client_auth_string

OTHER_USER = "nobody"


def _candidates() -> list[str]:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = [sys.executable]
    for folder in ("/usr/bin", "/usr/local/bin"):
        if os.access(Path(folder) / version, os.X_OK):
            found.append(str(Path(folder) / version))
    return found


@pytest.fixture(scope="session")
def other_user():
    """Runs a Python script as ``nobody`` with an empty environment; returns what it printed as JSON."""
    if os.geteuid() != 0:
        pytest.skip(f"runuser needs root to act as a second user (this is uid {os.geteuid()})")
    if not shutil.which("runuser"):
        pytest.skip("no runuser on this machine: no second uid to try from")
    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        pytest.skip(f"no user {OTHER_USER!r} on this machine")
    packages = os.pathsep.join(site.getsitepackages())
    why_not = []
    for python in _candidates():
        command = ["runuser", "-u", OTHER_USER, "--", "env", "-i", "PATH=/usr/bin:/bin", "HOME=/tmp",
                   f"PYTHONPATH={packages}", "PYTHONDONTWRITEBYTECODE=1", python]
        probe = subprocess.run([*command, "-c", "import distributed"], capture_output=True, text=True, timeout=120)
        if probe.returncode == 0:
            break
        why_not.append(f"{python}: {(probe.stderr.strip().splitlines() or ['exit %d' % probe.returncode])[-1]}")
    else:
        pytest.skip(f"{OTHER_USER} cannot run Python with distributed here ({'; '.join(why_not)})")

    def run(script: str, *arguments: str) -> dict:
        done = subprocess.run([*command, "-c", script, *arguments], capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    return run


@pytest.fixture
def reachable_home(prefect_server):
    """The session's ``$MFSBI_HOME`` with its parents traversable by others (mode +x, as a 711 or 755
    home on a login node is), so that only the home's own mode can stop the second user; restored after."""
    home = Path(os.environ["MFSBI_HOME"])
    changed = {}
    for parent in home.parents:
        mode = stat.S_IMODE(parent.stat().st_mode)
        if not mode & 0o001:
            changed[parent] = mode
            parent.chmod(mode | 0o001)
    try:
        yield home
    finally:
        for parent, mode in changed.items():
            parent.chmod(mode)


_READ_HOME = r"""
import json, os, sys
home, public = sys.argv[1], sys.argv[2]
def attempt(action):
    try:
        action()
        return "allowed"
    except PermissionError:
        return "denied"
    except OSError as error:
        return type(error).__name__
print(json.dumps({
    "stat home": attempt(lambda: os.stat(home)),
    "list home": attempt(lambda: os.listdir(home)),
    "read auth string": attempt(lambda: open(os.path.join(home, "prefect-auth-string")).read()),
    "list prefect": attempt(lambda: os.listdir(os.path.join(home, "prefect"))),
    "read database": attempt(lambda: open(os.path.join(home, "prefect", "prefect.db"), "rb").read(16)),
    "read public file": attempt(lambda: open(public).read()),
}))
"""


def test_another_user_cannot_read_mfsbi_home(other_user, reachable_home):
    home = reachable_home
    client_auth_string()  # the session's server made it
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "prefect-auth-string").stat().st_mode) == 0o600
    assert (home / "prefect" / "prefect.db").is_file()  # what the second user is asked to read exists
    for folder, folders, files in os.walk(home / "prefect"):  # all the embedded server wrote
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
        for name in files:
            assert stat.S_IMODE(os.stat(Path(folder) / name).st_mode) & 0o077 == 0, name
    # The control: a 755 folder beside the home, with a 644 file the second user can read.
    public = home.parent / "public"
    public.mkdir(exist_ok=True)
    public.chmod(0o755)
    (public / "note").write_text("readable")
    (public / "note").chmod(0o644)
    outcome = other_user(_READ_HOME, str(home), str(public / "note"))
    assert outcome.pop("stat home") == "allowed" and outcome.pop("read public file") == "allowed", outcome
    assert set(outcome.values()) == {"denied"}, outcome


_CALL_API = r"""
import json, sys, urllib.request, urllib.error, base64
url = sys.argv[1]
def status(path, method="GET", header=None):
    request = urllib.request.Request(url + path, method=method, data=b"{}" if method == "POST" else None,
                                     headers={"Content-Type": "application/json", **(header or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
guess = {"Authorization": "Basic " + base64.b64encode(b"mfsbi:guess").decode()}
print(json.dumps({"health": status("/health"), "flow runs": status("/flow_runs/filter", "POST"),
                  "flow runs, guessed string": status("/flow_runs/filter", "POST", guess),
                  "deployments": status("/deployments/filter", "POST")}))
"""


def test_another_user_gets_401_from_the_runs_prefect_api(other_user, prefect_server):
    outcome = other_user(_CALL_API, prefect_server)
    assert outcome.pop("health") == 200, outcome  # the control: the server is reachable, /health is open
    assert set(outcome.values()) == {401}, outcome
    # This user, with the auth string, is let in: the 401 is the string's doing.
    token = b64encode(client_auth_string().encode()).decode()
    request = urllib.request.Request(f"{prefect_server}/flow_runs/filter", data=b"{}", method="POST",
                                     headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


_CONNECT_DASK = r"""
import json, sys
from distributed import Client
from distributed.security import Security
def attempt(address, **kwargs):
    try:
        with Client(address, timeout="3s", **kwargs) as client:
            client.submit(sum, [1, 2]).result(timeout=10)
            return "connected"
    except (OSError, TimeoutError) as error:
        return "refused"
tls, open_tcp = sys.argv[1], sys.argv[2]
print(json.dumps({"plain tcp": attempt(tls.replace("tls://", "tcp://")),
                  "tls, own certificate": attempt(tls, security=Security.temporary()),
                  "control: an open tcp scheduler": attempt(open_tcp)}))
"""


def test_another_user_cannot_use_the_runs_dask_scheduler(other_user, dask_cluster_client):
    from distributed import LocalCluster

    address = dask_cluster_client.scheduler.address
    assert address.startswith("tls://127.0.0.1:")
    assert "bokeh" not in str(dask_cluster_client.scheduler_info().get("services"))
    # The control: a plain-TCP scheduler (what `mfsbi run` had before), with one in-process worker.
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None) as open_cluster:
        outcome = other_user(_CONNECT_DASK, address, open_cluster.scheduler_address)
    assert outcome.pop("control: an open tcp scheduler") == "connected", outcome
    assert set(outcome.values()) == {"refused"}, outcome

"""The README's "From a recording to a posterior" runs as written: observe, run, sample, ppc, infer."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mfsbi.simulators import get_task
from test_observe_nwb import SEED, THETA, write_nwb

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    section = README.read_text().split("## From a recording to a posterior", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_the_section_is_five_mfsbi_commands_on_one_recording():
    commands = readme_commands()
    assert [shlex.split(c)[:2] for c in commands] == [["mfsbi", "observe"], ["mfsbi", "run"], ["mfsbi", "sample"],
                                                       ["mfsbi", "ppc"], ["mfsbi", "infer"]]
    assert all("recordings" in c or "cells" in c for c in commands)


@pytest.mark.slow
def test_the_readme_path_from_a_recording_to_a_posterior_runs_as_written(tmp_path):
    voltage = get_task("pyramidal").high_fidelity.voltage(THETA, SEED, row=0)  # mV
    (tmp_path / "recordings").mkdir()
    write_nwb(tmp_path / "recordings" / "cell1.nwb", voltage / 1e3)  # NWB stores volts
    # A user's shell: the CLI starts its own Prefect API and Dask cluster, nothing of the test session's.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MFSBI_"))}
    env["MFSBI_HOME"] = str(tmp_path / "home")
    for command in readme_commands():
        argv = shlex.split(command)
        done = subprocess.run([sys.executable, "-m", "mfsbi.app.cli", *argv[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    x_o = np.load(tmp_path / "cell1.npy")
    assert x_o.shape == (4,) and np.isfinite(x_o).all()
    assert np.load(tmp_path / "cell1-samples.npy").shape == (1000, 2)
    assert list((tmp_path / "cells").rglob("ppc-*.json"))
    assert list((tmp_path / "cells" / "artifacts" / "inference").rglob("result.json"))

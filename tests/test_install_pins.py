"""constraints.txt: every way of installing uses it, and it agrees with pyproject.toml.

That it installs is checked by CI itself: `.ci/run` installs with it (the README's test command).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.split(";")[0].strip()
    return pins


def test_constraints_pin_every_requirement_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for extra in ("test", "cluster") for r in project["optional-dependencies"][extra]]
    pins = _pins()
    assert "mfsbi" not in pins
    assert pins.get("torch", "2.13.0") == "2.13.0"  # installed first, from the CPU wheel
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name == "torch":
            continue
        assert name in pins, f"{name} is not pinned"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    assert pins["numpy"].startswith(("2.3.", "2.2.", "2.1.", "2.0.", "1."))  # brian2: numpy < 2.4


def test_constraints_say_how_to_regenerate_them():
    head = CONSTRAINTS.read_text().splitlines()[:2]
    assert "uv" in head[0] and head[1].lstrip("# ").startswith("uv pip compile pyproject.toml")


def test_every_install_command_uses_the_constraints():
    readme = (ROOT / "README.md").read_text()
    installs = re.findall(r"^python3 -m venv .*$", readme, flags=re.M)
    assert len(installs) == 2  # the quickstart and the tests
    for command in installs:
        assert "pip install torch==2.13.0 && pip install -c constraints.txt -e " in command
    ci = (ROOT / ".ci" / "run").read_text()
    assert installs[1] in ci  # CI runs the README's test command verbatim
    assert "pip check" in ci
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (ROOT / "deploy" / dockerfile).read_text()
        assert "pip install . -c constraints.txt" in text and "constraints.txt ./" in text
        assert "!constraints.txt" in (ROOT / "deploy" / f"{dockerfile}.dockerignore").read_text()

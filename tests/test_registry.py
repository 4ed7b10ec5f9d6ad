"""Users plug in their own task: an entry point, a registered factory, or package.module:attribute."""

import dataclasses
import logging
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest

from mfsbi.simulators import (
    Task,
    TaskNotFoundError,
    available_tasks,
    get_task,
    import_task_modules,
    register_task,
    registry,
)

USER_MODULE = '''
import numpy as np
import torch
from sbi.utils import BoxUniform
from mfsbi.simulators import Task


class Sim:
    def __call__(self, theta, seed):
        return theta + np.random.default_rng(seed).normal(size=theta.shape)


def make():
    return Task(name="mine", prior=BoxUniform(torch.zeros(2), torch.ones(2)), parameter_names=("a", "b"),
                low_fidelity=Sim(), high_fidelity=Sim(), x_dim=2, low_fidelity_parameters=(0, 1))


TASK = make()
NOT_A_TASK = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_tasks_for_test.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_tasks_for_test"
    sys.modules.pop("user_tasks_for_test", None)


@pytest.mark.parametrize("attribute", ["make", "TASK"])
def test_a_user_task_resolves_from_a_factory_or_an_object(user_module, attribute):
    task = get_task(f"{user_module}:{attribute}")
    assert isinstance(task, Task) and task.name == "mine"
    assert task.simulator("hf")(np.zeros((3, 2)), seed=1).shape == (3, 2)


def test_a_wrong_attribute_is_refused_clearly(user_module):
    with pytest.raises(TaskNotFoundError, match="neither a mfsbi Task nor a factory"):
        get_task(f"{user_module}:NOT_A_TASK")
    with pytest.raises(TaskNotFoundError, match="has no attribute"):
        get_task(f"{user_module}:missing")


def test_every_builtin_task_builds():
    names = available_tasks()
    assert {"ou2", "ou3", "ou4", "slcp", "sir", "gaussian-blob", "pyramidal", "plastic-network"} <= set(names)
    for name in names:
        task = get_task(name)
        low, high = task.parameter_ranges()
        assert (low < high).all() and len(low) == task.theta_dim


# Entry points: the built-in tasks and a third-party package's, found through the installed metadata.

BUILTIN_TASKS = {
    "ou2", "ou3", "ou4", "ou2-euler", "slcp", "sir", "gaussian-blob", "pyramidal", "pyramidal-reduced",
    "plastic-network", "plastic-network-tiny", "plastic-network-paper",
    "ou2-lf-biased-small", "ou2-lf-biased-medium", "ou2-lf-biased-large", "ou2-lf-noise",
}

PLUGIN_MODULE = '''
from mfsbi.simulators import get_task

CALLS = []


def make():
    CALLS.append(1)
    return get_task("user_tasks_for_test:TASK")


NOT_A_TASK = 3
'''

BROKEN_MODULE = '''
raise RuntimeError("broken plugin\\nsecond line")
'''


@pytest.fixture
def registered():
    """Restores the runtime registrations after a test."""
    saved = dict(registry._FACTORIES)
    yield
    registry._FACTORIES.clear()
    registry._FACTORIES.update(saved)


@pytest.fixture
def plugin(tmp_path, monkeypatch, user_module):
    """A third-party distribution on sys.path: a dist-info folder whose entry_points.txt names tasks."""
    (tmp_path / "plugin_tasks_for_test.py").write_text(PLUGIN_MODULE)
    (tmp_path / "broken_tasks_for_test.py").write_text(BROKEN_MODULE)
    info = tmp_path / "mfsbi_plugin_for_test-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mfsbi-plugin-for-test\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[mfsbi.tasks]\n"
        "plugin-task = plugin_tasks_for_test:make\n"
        "plugin-not-a-task = plugin_tasks_for_test:NOT_A_TASK\n"
        "plugin-broken = broken_tasks_for_test:make\n"
        "plugin-missing-module = no_such_module_for_test:make\n"
        "plugin-missing-attribute = plugin_tasks_for_test:missing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # also invalidates the import caches
    yield "plugin_tasks_for_test"
    for name in ("plugin_tasks_for_test", "broken_tasks_for_test"):
        sys.modules.pop(name, None)


def test_the_builtin_tasks_are_the_entry_points_of_mfsbi():
    found = {ep.name: ep for ep in entry_points(group=registry.ENTRY_POINT_GROUP) if ep.dist.name == "mfsbi"}
    assert set(found) == BUILTIN_TASKS
    assert all(ep.module.startswith("mfsbi.simulators.") for ep in found.values())
    assert BUILTIN_TASKS <= set(available_tasks())
    assert not BUILTIN_TASKS & set(registry._FACTORIES)  # none registers itself any more


def test_listing_the_tasks_imports_no_task_module():
    code = (
        "import sys; from mfsbi.simulators import available_tasks; names = available_tasks(); "
        "print(len(names), sorted(m for m in sys.modules if m.startswith('mfsbi.simulators.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    count, modules = out.stdout.strip().split(" ", 1)
    assert int(count) >= len(BUILTIN_TASKS)
    # The task interface only (base, and recording: what Task.recording holds), no task module.
    assert eval(modules) == ["mfsbi.simulators.base", "mfsbi.simulators.recording", "mfsbi.simulators.registry"]


def test_a_third_party_entry_point_is_a_task(plugin):
    assert {"plugin-task", "plugin-broken"} <= set(available_tasks())
    assert plugin not in sys.modules  # listed from the metadata, not imported
    task = get_task("plugin-task")
    assert isinstance(task, Task) and task.name == "mine"
    assert sys.modules[plugin].CALLS == [1]


def test_a_registered_name_wins_over_an_entry_point(plugin, registered):
    ou2 = get_task("ou2")
    register_task("ou2", lambda: dataclasses.replace(ou2, name="overridden"))
    register_task("plugin-task", lambda: dataclasses.replace(ou2, name="overridden too"))
    assert get_task("ou2").name == "overridden"
    assert get_task("plugin-task").name == "overridden too"
    assert plugin not in sys.modules
    assert available_tasks().count("ou2") == 1


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("plugin-broken", "RuntimeError: broken plugin second line"),
        ("plugin-missing-module", "ModuleNotFoundError: No module named 'no_such_module_for_test'"),
        ("plugin-missing-attribute", "AttributeError"),
    ],
)
def test_an_entry_point_that_fails_to_load_is_one_clear_line(plugin, name, error):
    with pytest.raises(TaskNotFoundError) as caught:
        get_task(name)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"task {name!r}: cannot load entry point {name} = ")
    assert error in message


def test_an_entry_point_that_names_no_task_is_refused(plugin):
    with pytest.raises(TaskNotFoundError, match="neither a mfsbi Task nor a factory"):
        get_task("plugin-not-a-task")


def test_import_task_modules_imports_without_building_and_skips_broken_ones(plugin, caplog):
    with caplog.at_level(logging.WARNING, logger=registry.__name__):
        import_task_modules()
    assert sys.modules[plugin].CALLS == []  # imported, no factory called
    assert "mfsbi.simulators.ou" in sys.modules
    assert "broken_tasks_for_test" not in sys.modules
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert "plugin-broken" in warned and "no_such_module_for_test" in warned


def test_an_unknown_name_lists_every_task(plugin):
    listed = r"unknown task 'nope': choose one of gaussian-blob, ou2, .*plugin-task, .* or give your own"
    with pytest.raises(TaskNotFoundError, match=listed):
        get_task("nope")

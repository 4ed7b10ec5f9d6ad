"""Users plug in their own task as package.module:attribute, a Task or a factory."""

import sys

import numpy as np
import pytest

from mfsbi.simulators import Task, TaskNotFoundError, available_tasks, get_task

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

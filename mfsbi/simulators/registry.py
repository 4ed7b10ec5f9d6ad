"""Finding a task by name: the built-in ones, or a user's ``package.module:attribute``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from mfsbi.simulators.base import Task

__all__ = ["TaskNotFoundError", "available_tasks", "get_task", "register_task"]

_FACTORIES: dict[str, Callable[[], Task]] = {}


class TaskNotFoundError(LookupError):
    """A task name or ``module:attribute`` spec that does not resolve to a task."""


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Makes ``factory`` available as ``--task name``.

    Arguments:
        name: the registry name.
        factory: a callable without arguments returning a :class:`Task`.
    """
    _FACTORIES[name] = factory


def _load_builtins() -> None:
    # Imported here, not at module import, so that `import mfsbi.simulators` stays cheap and a
    # broken optional simulator cannot break the others.
    from mfsbi.simulators import gaussian_blob, ou, plastic_network, pyramidal, sir, slcp  # noqa: F401


def available_tasks() -> list[str]:
    """The names of the registered tasks, sorted."""
    _load_builtins()
    return sorted(_FACTORIES)


def get_task(spec: str) -> Task:
    """Resolves a task by registry name or by ``package.module:attribute``.

    Arguments:
        spec: ``"ou2"``, or ``"mypkg.tasks:my_task"`` where the attribute is a :class:`Task` or a
            callable without arguments that returns one.

    Returns:
        The task.
    """
    _load_builtins()
    if spec in _FACTORIES:
        return _FACTORIES[spec]()
    if ":" not in spec:
        raise TaskNotFoundError(
            f"unknown task {spec!r}: choose one of {', '.join(available_tasks())} "
            "or give your own as package.module:attribute"
        )
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise TaskNotFoundError(f"task {spec!r}: cannot import module {module_name!r} ({error})") from error
    try:
        obj = getattr(module, attribute)
    except AttributeError as error:
        raise TaskNotFoundError(f"task {spec!r}: module {module_name!r} has no attribute {attribute!r}") from error
    task = obj if isinstance(obj, Task) else obj() if callable(obj) else None
    if not isinstance(task, Task):
        raise TaskNotFoundError(
            f"task {spec!r}: {attribute!r} is neither a mfsbi Task nor a factory returning one"
        )
    return task

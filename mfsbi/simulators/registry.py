"""Finding a task by name: an entry point, a name registered at run time, or ``package.module:attribute``.

Tasks are plugins: a package names its task factories in the entry-point group
:data:`ENTRY_POINT_GROUP` (``mfsbi.tasks``), mfsbi's own included (pyproject.toml)::

    [project.entry-points."mfsbi.tasks"]
    my-task = "mypkg.tasks:my_task"

Only the metadata is read to list the tasks; a task's module is imported when that task is asked
for, so that ``import mfsbi.simulators`` stays cheap and a broken simulator cannot break the others.
This module imports no task module, and no task module imports it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from mfsbi.simulators.base import Task

__all__ = [
    "ENTRY_POINT_GROUP",
    "TaskNotFoundError",
    "available_tasks",
    "get_task",
    "import_task_modules",
    "register_task",
]

ENTRY_POINT_GROUP = "mfsbi.tasks"

# Names registered at run time; they win over an entry point of the same name.
_FACTORIES: dict[str, Callable[[], Task]] = {}

logger = logging.getLogger(__name__)


class TaskNotFoundError(LookupError):
    """A task name or ``module:attribute`` spec that does not resolve to a task."""


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Makes ``factory`` available as ``--task name`` in this process, before any entry point.

    Arguments:
        name: the registry name.
        factory: a callable without arguments returning a :class:`Task`.
    """
    _FACTORIES[name] = factory


def _task_entry_points() -> dict[str, EntryPoint]:
    """The entry points of :data:`ENTRY_POINT_GROUP` by name; the first on ``sys.path`` wins."""
    # Read anew on every call (a few ms): a distribution put on sys.path later is seen.
    found: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry_point.name, entry_point)
    return found


def _one_line(error: BaseException) -> str:
    # Import errors can span lines (a SyntaxError's source line): a CLI error is one line.
    return " ".join(f"{type(error).__name__}: {error}".split())


def _load(entry_point: EntryPoint) -> Any:
    """The object an entry point names, or a one-line TaskNotFoundError."""
    try:
        return entry_point.load()
    except Exception as error:  # noqa: BLE001 - any failure of a plugin's import is the plugin's
        raise TaskNotFoundError(
            f"task {entry_point.name!r}: cannot load entry point "
            f"{entry_point.name} = {entry_point.value} ({_one_line(error)})"
        ) from error


def available_tasks() -> list[str]:
    """The names of the tasks, entry points and registered ones, sorted (nothing is imported)."""
    return sorted(set(_task_entry_points()) | set(_FACTORIES))


def import_task_modules() -> None:
    """Imports the module of every task entry point, without building any task.

    For a process that is about to run tasks (a Dask worker's preload): it pays the imports at
    start instead of at its first job. A module that fails to import is logged and skipped; asking
    for its task later raises :class:`TaskNotFoundError`.
    """
    for entry_point in _task_entry_points().values():
        try:
            importlib.import_module(entry_point.module)
        except Exception as error:  # noqa: BLE001 - one broken plugin must not stop the others
            logger.warning(
                "task entry point %s = %s: cannot import its module (%s)",
                entry_point.name, entry_point.value, _one_line(error),
            )


def get_task(spec: str) -> Task:
    """Resolves a task by name (registered, then entry point) or by ``package.module:attribute``.

    Arguments:
        spec: ``"ou2"``, or ``"mypkg.tasks:my_task"`` where the attribute is a :class:`Task` or a
            callable without arguments that returns one.

    Returns:
        The task.
    """
    if spec in _FACTORIES:
        return _FACTORIES[spec]()
    found = _task_entry_points()
    if spec in found:
        obj = _load(found[spec])
        if isinstance(obj, Task):
            return obj
        if not callable(obj):
            raise TaskNotFoundError(
                f"task {spec!r}: entry point {spec} = {found[spec].value} is neither a mfsbi Task "
                "nor a factory returning one"
            )
        return obj()
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

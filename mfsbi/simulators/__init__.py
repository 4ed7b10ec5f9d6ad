"""Pure simulators: tasks with a prior, a low- and a high-fidelity simulator. No Prefect, no storage."""

from mfsbi.simulators.base import Fidelity, FidelityLevel, ReferencePosterior, Simulator, Task, check_theta_batch
from mfsbi.simulators.recording import Recording, RecordingError
from mfsbi.simulators.registry import (
    TaskNotFoundError,
    available_tasks,
    get_task,
    import_task_modules,
    register_task,
)

__all__ = [
    "Fidelity",
    "FidelityLevel",
    "Recording",
    "RecordingError",
    "ReferencePosterior",
    "Simulator",
    "Task",
    "TaskNotFoundError",
    "available_tasks",
    "check_theta_batch",
    "get_task",
    "import_task_modules",
    "register_task",
]

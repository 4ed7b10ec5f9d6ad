"""What `mfsbi run` accepts: options, a config file and an observation file, checked before anything runs.

Every refusal is a :class:`UsageError` whose message is the one line the user sees (exit code 2);
nothing has been written when it is raised.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from mfsbi.app.config_file import ConfigFileError, load_config_file, merge_options, one_line
from mfsbi.app.console import fail
from mfsbi.app.results import RunNotFoundError, load_posterior, run_summary

if TYPE_CHECKING:
    from mfsbi.flows.config import RunConfig

__all__ = ["UsageError", "build_config", "check_cluster", "load_observation", "parse_costs", "parse_sims"]


class UsageError(Exception):
    """Bad input; its message is the one line the user sees."""


def parse_sims(text: str) -> dict[str, Any]:
    """``--sims lf=100000,mf=2000,hf=100`` as RunConfig fields: ``lf_sims``, ``hf_sims``, ``level_sims``.

    Arguments:
        text: comma-separated ``fidelity=count`` pairs, cheapest first or in any order.

    Returns:
        The fields the text sets (a fidelity left out keeps its own option or default).

    Raises:
        UsageError: a pair that is not ``name=count`` with a whole count, or a fidelity given twice.
    """
    fields: dict[str, Any] = {}
    levels: dict[str, int] = {}
    seen: set[str] = set()
    for pair in (part.strip() for part in text.split(",")):
        name, sep, count = pair.partition("=")
        name, count = name.strip().lower(), count.strip()
        if not sep or not name or not count.lstrip("-").isdigit():
            raise UsageError(f"--sims: {pair!r} is not fidelity=count; write e.g. lf=100000,mf=2000,hf=100")
        if name in seen:
            raise UsageError(f"--sims: {name} is given twice; give each fidelity once")
        seen.add(name)
        if name in ("lf", "hf"):
            fields[f"{name}_sims"] = int(count)
        else:
            levels[name] = int(count)
    if levels:
        fields["level_sims"] = levels
    return fields


def parse_costs(text: str) -> dict[str, float]:
    """``--simulation-cost lf=0.01,hf=60`` as ``{fidelity: seconds per simulation}``.

    Raises:
        UsageError: a pair that is not ``fidelity=seconds``, or a fidelity given twice.
    """
    costs: dict[str, float] = {}
    for pair in (part.strip() for part in text.split(",")):
        name, sep, value = pair.partition("=")
        name = name.strip().lower()
        try:
            seconds = float(value)
        except ValueError:
            seconds = None
        if not sep or not name or seconds is None:
            raise UsageError(f"--simulation-cost: {pair!r} is not fidelity=seconds; write e.g. lf=0.01,hf=60")
        if name in costs:
            raise UsageError(f"--simulation-cost: {name} is given twice; give each fidelity once")
        costs[name] = seconds
    return costs


def load_observation(path: Path, x_dim: int, label: str = "--observation") -> list[float]:
    """Reads one observation from a ``.npy`` file (no pickles), shape ``(k,)`` or ``(1, k)``.

    Arguments:
        path: the file.
        x_dim: the task's ``k``.
        label: how messages name the option.

    Returns:
        The ``k`` finite values.

    Raises:
        UsageError: one line naming ``label`` and the problem.
    """
    try:
        exists, is_file = path.exists(), path.is_file()
    except (OSError, ValueError) as error:  # a name too long, a NUL in it
        raise UsageError(f"{label}: cannot read {str(path)!r} ({one_line(error)})") from None
    if not exists:
        raise UsageError(f"{label}: file {str(path)!r} does not exist")
    if not is_file:
        raise UsageError(f"{label}: {str(path)!r} is not a regular file")
    try:
        # Memory-mapped: a header that claims a huge shape is refused below, not allocated.
        x_o = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise UsageError(f"{label}: {str(path)!r} is not a readable .npy array ({one_line(error)})") from None
    if not isinstance(x_o, np.ndarray):  # an .npz archive under another name
        x_o.close()
        raise UsageError(f"{label}: {str(path)!r} is an .npz archive; save one array with numpy.save")
    if x_o.dtype.kind not in "fiu":
        raise UsageError(f"{label}: {str(path)!r} holds {x_o.dtype}, expected numbers")
    if x_o.ndim == 2 and x_o.shape[0] == 1:
        x_o = x_o[0]
    if x_o.shape != (x_dim,):
        raise UsageError(f"{label}: shape {x_o.shape} does not match the task's x of shape ({x_dim},)")
    values = np.asarray(x_o, dtype=np.float64)
    if not np.isfinite(values).all():
        raise UsageError(f"{label}: {str(path)!r} holds NaN or inf; give finite values")
    return [float(v) for v in values]


def stored_posterior_at(store: str, run_name: str | None, task: str | None, observation: Path) -> tuple:
    """A stored run's posterior, its summary and task, and x_o from ``observation`` (``mfsbi sample``, ``ppc``).

    Returns:
        ``(prefix, summary, posterior, task, x_o)``; bad input ends the command with one line.
    """
    from mfsbi.simulators import TaskNotFoundError, get_task  # deferred: torch, 1.5 s at every CLI start

    try:
        prefix, summary = run_summary(store, run_name)
        posterior = load_posterior(store, prefix, task=task)  # refuses a user's task unless --task names it
        task_obj = get_task(task or summary["config"]["task"])
        x_o = np.asarray(load_observation(observation, task_obj.x_dim))
    except RunNotFoundError as error:
        fail(f"--store: {error}")
    except (UsageError, TaskNotFoundError) as error:
        fail(str(error))
    return prefix, summary, posterior, task_obj, x_o


def build_config(*, config_file: Path | None = None, explicit: Collection[str] | None = None,
                 **options: Any) -> RunConfig:
    """Validates the options into a RunConfig, checks the task, the observation and the store.

    Arguments:
        config_file: a TOML, JSON or YAML file of RunConfig fields (``--config``).
        explicit: the options given on the command line: they override the file; the others only
            fill in what the file leaves out. Default: every option passed.
        options: RunConfig fields, and ``observation`` as a ``.npy`` path or None.

    Returns:
        The config; nothing has been written.

    Raises:
        UsageError: with one line naming the option (or the file and key) and the problem.
    """
    # deferred: at every CLI start these would cost torch (1.5 s: preflight, plan, simulators), zarr (0.4 s: storage)
    # and 6 ms (flows.config, -X importtime)
    from mfsbi.app.preflight import PreflightError, check_store
    from mfsbi.flows.config import RunConfig, describe_validation_error
    from mfsbi.flows.plan import RunPlan
    from mfsbi.simulators import TaskNotFoundError, get_task
    from mfsbi.storage import StoreError
    from mfsbi.storage import check_artifact_name, check_task

    observation_path = options.pop("observation", None)
    explicit = set(options) if explicit is None else set(explicit)
    if observation_path is not None:  # --observation FILE.npy wins over the file's list
        explicit.add("observation")
    file = None
    if config_file is not None:
        try:
            file = load_config_file(config_file, RunConfig.model_fields)
        except ConfigFileError as error:
            raise UsageError(str(error)) from None
    values, label = merge_options(options, file, explicit)

    for name, value in values.items():
        # A NaN passes no bound check with a useful message ("should be <= 1 (got nan)").
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{label(name)}: {value} is not a finite number")
    try:
        # Strict: a file's `hf_sims = true` or `hf_sims = 1.5` is an error, not 1.
        config = RunConfig.model_validate(values, strict=True)
    except ValidationError as error:
        raise UsageError(label.relabel(describe_validation_error(error))) from None
    try:
        task = get_task(config.task)
    except TaskNotFoundError as error:
        raise UsageError(f"{label('task')}: {error}") from None
    except Exception as error:  # noqa: BLE001 -- a user's module or factory that fails is bad input too
        raise UsageError(f"{label('task')}: {config.task!r} could not be loaded "
                         f"({type(error).__name__}: {error})") from None
    try:
        # Task names become folder names in the store: check them before anything is written.
        plan = RunPlan.of(config, task)
        for planned in plan.planned_tables():
            check_task(planned.table)
        check_artifact_name(f"{plan.prefix}/summary.json")
    except StoreError as error:
        raise UsageError(f"{label('task')}: the task's name cannot name a store folder ({error})") from None
    if observation_path is not None:
        config = config.model_copy(update={"observation": load_observation(observation_path, task.x_dim)})
    elif config.observation is not None and len(config.observation) != task.x_dim:
        raise UsageError(f"{label('observation')}: {len(config.observation)} values, but the task's x has "
                         f"{task.x_dim}; give {task.x_dim} numbers")
    if config.device == "cuda" and not (config.dask_address or config.cluster or os.environ.get("MFSBI_DASK_ADDRESS")):
        import torch  # deferred: as above

        if not torch.cuda.is_available():
            raise UsageError(f"{label('device')}: cuda was asked for but no CUDA device is visible here; "
                             "use auto or cpu, or --dask-address of a cluster with a GPU worker")
    if config.cluster:
        check_cluster(config.cluster, config.dask_address, label)
    from mfsbi.storage import StoreError, check_unlocked  # deferred: as above

    try:
        check_store(config, task)
        # Another live run holding the store is bad input for this one: exit 2, nothing written.
        check_unlocked(config.store, error=UsageError)
    except PreflightError as error:
        raise UsageError(label.relabel(str(error))) from None
    except StoreError as error:  # MFSBI_LOCK_STALE_AFTER is not a number of seconds
        raise UsageError(str(error)) from None
    except (OSError, ValueError, ImportError) as error:
        # A NUL in the path, a name too long, a URL whose file system is not installed.
        raise UsageError(f"{label('store')}: {config.store!r} cannot be opened "
                         f"({type(error).__name__}: {error})") from None
    return config


def check_cluster(cluster: str, dask_address: str | None, label: Any = lambda name: f"--{name.replace('_', '-')}") -> None:
    """``--cluster``: one of it and ``--dask-address``, dask-jobqueue installed, sbatch here, a valid file.

    Raises:
        UsageError: one line naming the option and the fix.
    """
    if dask_address:
        raise UsageError(f"{label('cluster')}: give either it or {label('dask_address')}, not both")
    try:
        # deferred: runtime.slurm and yaml cost 22 ms (-X importtime) at every CLI start; only --cluster needs them
        from mfsbi.runtime.slurm import ClusterConfigError, load_slurm_settings

        load_slurm_settings(cluster)
    except ImportError:
        raise UsageError(f"{label('cluster')}: needs dask-jobqueue: pip install 'mfsbi[cluster]'") from None
    except ClusterConfigError as error:
        raise UsageError(f"{label('cluster')}: {str(error).removeprefix('cluster: ')}") from None
    if shutil.which("sbatch") is None:
        raise UsageError(f"{label('cluster')}: sbatch is not on PATH; run where SLURM's commands are "
                         "(a login node), or leave --cluster out for a local cluster")

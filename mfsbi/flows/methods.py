"""The methods mfsbi runs, in one registry: what each is, which flow runs it, which settings it reads.

A method is data: its family (which flow runs it and which deployment offers it), whether it
pretrains on LF simulations, whether it trains an ensemble, what its runs are called, what it checks
before a run, and its plug-in: for the sequential family how a round after the first picks its
parameters (``propose``), for the amortised family how the run trains its estimator (``train``, an
:class:`AmortizedTraining`). The flows ask the registry instead of comparing method names, so a new
method is its plug-in function plus one :func:`register_method` call (docs/adding-a-method.md).

A family names its flow, and a built-in amortised method its training, by a Prefect-style
entrypoint (``module:function``) loaded on first use: the flow modules import this registry, and
this registry never imports them (docs/decisions.md, "Layers").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from mfsbi.flows.options import (
    ABCOptions, AcquisitionOptions, CommonOptions, ComputeBudgetOptions, EnsembleOptions, SequentialOptions,
    TransferGuardOptions,
)
from mfsbi.flows.proposals import Proposal, acquired_and_truncated, truncated

if TYPE_CHECKING:  # the flows import this module: these names are for the type hints only
    from mfsbi.flows.config import RunConfig
    from mfsbi.flows.run import Run
    from mfsbi.flows.summary import RunSummary
    from mfsbi.runtime.training_jobs import TrainResult
    from mfsbi.simulators import Task

__all__ = [
    "ABC", "AMORTIZED", "FAMILIES", "SEQUENTIAL", "AmortizedTraining", "Entrypoint", "Family", "Method",
    "MethodNotFoundError", "available_methods", "get_method", "methods_of", "register_method", "unregister_method",
]


class AmortizedTraining(Protocol):
    """How an amortised method trains: simulates what it needs, trains, returns the members it keeps.

    The amortised flow then evaluates, calibrates and stores them, whatever the method.

    Arguments:
        run: the run (:class:`~mfsbi.flows.run.Run`: its config, store, seeds, ``simulate``, ``train_job``,
            ``train``, ``pretrained_through_chain``).
        summary: the run summary; the strategy records what it simulated in it, at least ``hf`` and
            ``hf_budget`` (:func:`mfsbi.flows.strategies.simulate_hf_budget` does both).

    Returns:
        The trained members: one estimator, or an ensemble's (evaluated as sbi's ``EnsemblePosterior``).
    """

    def __call__(self, run: Run, summary: RunSummary) -> list[TrainResult]: ...


@dataclass(frozen=True)
class Entrypoint:
    """A function named by ``module:function``, imported when first called (or loaded).

    The built-in methods name their flows' functions this way: the registry cannot import the flow
    modules, which import it.
    """

    entrypoint: str

    def load(self) -> Callable[..., Any]:
        """The function (imports its module)."""
        module, _, attribute = self.entrypoint.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)


def _ensemble_and_budget(config: RunConfig) -> str:
    """The amortised family's run names: ``-e<members>`` for an ensemble, ``-compute<seconds>s`` for a budget."""
    suffix = f"-e{config.ensemble}" if config.ensemble > 1 else ""
    if config.compute_budget is not None:
        suffix += f"-compute{config.compute_budget:g}s"
    return suffix


def _rounds_and_observation(config: RunConfig) -> str:
    """The sequential family's run names: the rounds, an ensemble's members when not the default, the observation.

    Two runs that differ only in their members would otherwise share a name, and so a table: the
    second was refused as a resume of the first. Default-sized runs keep the names stores hold.
    """
    members = ""
    if config.method_spec.ensemble and config.ensemble_size != AcquisitionOptions.model_fields["ensemble_size"].default:
        members = f"-e{config.ensemble_size}"
    return f"-r{config.rounds}{members}-{config.observation_tag}"


@dataclass(frozen=True)
class Family:
    """Methods run by the same flow and offered by the same deployment.

    Arguments:
        name: ``amortized``, ``sequential`` or ``abc``.
        entrypoint: the Prefect flow, as ``module:function``.
        deployment: the deployment's name (``mfsbi deploy``, deploy/prefect.yaml).
        default_method: the method a deployment run gets when its parameters name none.
        options: the option groups every method of the family reads, beyond :class:`CommonOptions`.
        at_observation: whether a run conditions on one x_o (its name and tables then say which).
        description: one line for help texts and the deployment.
        name_suffix: what the family's run names add after the counts (default: the observation's tag
            if ``at_observation``, else nothing); a method may override it.
    """

    name: str
    entrypoint: str
    deployment: str
    default_method: str
    options: tuple[type[BaseModel], ...] = ()
    at_observation: bool = False
    description: str = ""
    name_suffix: Callable[[RunConfig], str] | None = None

    def load_flow(self) -> Callable[..., Any]:
        """The flow object (imports its module)."""
        return Entrypoint(self.entrypoint).load()

    def run_name_suffix(self, config: RunConfig) -> str:
        """What a run name of this family adds after the counts (before ``-seed<seed>``)."""
        if self.name_suffix is not None:
            return self.name_suffix(config)
        return f"-{config.observation_tag}" if self.at_observation else ""

    @property
    def module_path(self) -> str:
        """The entrypoint as Prefect's module path (``package.module.function``)."""
        return self.entrypoint.replace(":", ".")


AMORTIZED = Family("amortized", "mfsbi.flows.amortized:amortized_flow", "mfsbi-amortized", "mf-npe",
                   options=(EnsembleOptions, TransferGuardOptions), name_suffix=_ensemble_and_budget,
                   description="NPE or MF-NPE on one task, every simulation stored in the zarr store.")
SEQUENTIAL = Family("sequential", "mfsbi.flows.sequential:sequential_flow", "mfsbi-sequential", "mf-tsnpe",
                    options=(SequentialOptions,), at_observation=True, name_suffix=_rounds_and_observation,
                    description="TSNPE, MF-TSNPE or A-MF-TSNPE at one observation.")
ABC = Family("abc", "mfsbi.flows.mf_abc:abc_flow", "mfsbi-mf-abc", "mf-abc", options=(ABCOptions,),
             at_observation=True,
             description="Multifidelity rejection ABC (Prescott and Baker 2020) at one observation.")
FAMILIES: tuple[Family, ...] = (AMORTIZED, SEQUENTIAL, ABC)


@dataclass(frozen=True)
class Method:
    """One method.

    Arguments:
        name: what ``--method`` says.
        family: which flow runs it.
        uses_lf: pretrain on the LF table (MF methods) or not.
        ensemble: train ``ensemble_size`` members per round (and read :class:`AcquisitionOptions`).
        propose: sequential family: how rounds after the first draw their parameters.
        train: amortised family: how the run trains its estimator (:class:`AmortizedTraining`).
        check: refuses, before anything is written, settings the method cannot run: raises ValueError
            with one line naming the option and the fix (``mfsbi run``'s preflight shows it).
        name_suffix: what its run names add after the counts; default: its family's.
        description: one line for help texts.
        options: option groups this method reads beyond its family's.
    """

    name: str
    family: Family
    uses_lf: bool
    ensemble: bool = False
    propose: Proposal | None = None
    train: AmortizedTraining | None = None
    check: Callable[[RunConfig, Task], None] | None = None
    name_suffix: Callable[[RunConfig], str] | None = None
    description: str = ""
    options: tuple[type[BaseModel], ...] = field(default=())

    def __post_init__(self) -> None:
        if (self.family is SEQUENTIAL) != (self.propose is not None):
            raise ValueError(f"method {self.name!r}: a proposal is what a sequential method needs, and only it")
        if (self.family is AMORTIZED) != (self.train is not None):
            raise ValueError(f"method {self.name!r}: a training strategy (train=) is what an amortised method needs, "
                             "and only it")

    def run_name_suffix(self, config: RunConfig) -> str:
        """What this method's run names add after the counts (before ``-seed<seed>``)."""
        return self.name_suffix(config) if self.name_suffix is not None else self.family.run_name_suffix(config)

    @property
    def option_groups(self) -> tuple[type[BaseModel], ...]:
        """Every option model this method reads: the common one, its family's, its own."""
        return (CommonOptions, *self.family.options, *self.options)

    @property
    def option_names(self) -> frozenset[str]:
        """The run settings this method reads."""
        return frozenset(name for group in self.option_groups for name in group.model_fields)

    def members(self, ensemble_size: int) -> int:
        """Estimators trained per round."""
        return ensemble_size if self.ensemble else 1


class MethodNotFoundError(LookupError):
    """A method name that is not registered."""


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Makes ``method`` available as ``--method NAME`` everywhere (CLI, config files, deployments).

    Arguments:
        method: the method; a registered name is replaced.

    Returns:
        The method, so that a module can keep it: ``MY_METHOD = register_method(Method(...))``.
    """
    _METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Removes a registered method (a plugin's, or a test's); unknown names are ignored."""
    _METHODS.pop(name, None)


def get_method(name: str) -> Method:
    """The registered method called ``name``; MethodNotFoundError names the choices."""
    try:
        return _METHODS[name]
    except KeyError:
        raise MethodNotFoundError(f"unknown method {name!r}: choose one of {', '.join(available_methods())}") from None


def available_methods() -> list[str]:
    """Registered method names, in registration order (the built-ins: amortised, sequential, ABC)."""
    return list(_METHODS)


def methods_of(family: Family) -> list[str]:
    """The registered methods a family's flow runs."""
    return [name for name, method in _METHODS.items() if method.family is family]


def _planner_check(config: RunConfig, task: Task) -> None:
    """MF-NPE within a compute budget: one estimator per allocation, costs declared for the run's fidelities."""
    if config.compute_budget is None:
        return
    if config.ensemble > 1:
        raise ValueError("--ensemble: the compute-budget planner trains one estimator per allocation; "
                         "leave --ensemble at 1")
    unknown = sorted(set(config.simulation_cost) - {"lf", "hf", *config.level_sims})
    if unknown:
        raise ValueError(f"--simulation-cost: {unknown[0]!r} is not a fidelity of this run "
                         f"(lf, {', '.join(config.level_sims) + ', ' if config.level_sims else ''}hf)")


def _multilevel_check(config: RunConfig, task: Task) -> None:
    """ML-NPE: a coupled task, one estimator."""
    if not task.coupled:
        raise ValueError(f"--method: ml-npe trains on coupled pairs, and task {task.name!r} does not couple its "
                         "fidelities (the same θ and seed do not give outputs that share their noise); use "
                         "mf-npe, or a coupled task (see `mfsbi tasks --json`: coupled)")
    if config.ensemble > 1:
        raise ValueError("--ensemble: ml-npe trains one estimator; leave --ensemble at 1")


# The built-in methods (PAPER.md).
register_method(Method("npe", AMORTIZED, uses_lf=False, train=Entrypoint("mfsbi.flows.strategies:npe"),
                       description="NPE on the HF budget alone"))
register_method(Method("mf-npe", AMORTIZED, uses_lf=True, train=Entrypoint("mfsbi.flows.strategies:mf_npe"),
                       check=_planner_check, options=(ComputeBudgetOptions,),
                       description="MF-NPE: pretrain on LF, fine-tune on HF"))
register_method(Method("ml-npe", AMORTIZED, uses_lf=True,
                       train=Entrypoint("mfsbi.flows.multilevel:train_multilevel_run"), check=_multilevel_check,
                       description="multilevel NPE (Hikida et al. 2025) on LF rows and coupled LF/HF pairs"))
register_method(Method("tsnpe", SEQUENTIAL, uses_lf=False, propose=truncated,
                       description="truncated sequential NPE"))
register_method(Method("mf-tsnpe", SEQUENTIAL, uses_lf=True, propose=truncated, options=(TransferGuardOptions,),
                       description="TSNPE from the LF-pretrained estimator"))
register_method(Method("a-mf-tsnpe", SEQUENTIAL, uses_lf=True, ensemble=True, propose=acquired_and_truncated,
                       options=(AcquisitionOptions, TransferGuardOptions),
                       description="MF-TSNPE with an ensemble and active acquisition"))
register_method(Method("mf-abc", ABC, uses_lf=True, description="multifidelity rejection ABC"))

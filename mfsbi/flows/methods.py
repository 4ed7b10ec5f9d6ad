"""The methods mfsbi runs, in one registry: what each is, which flow runs it, which settings it reads.

A method is data: its family (which flow runs it and which deployment offers it), whether it
pretrains on LF simulations, whether it trains an ensemble, and for the sequential family how a
round after the first picks its parameters. The flows ask the registry instead of comparing method
names, so a new sequential variant is its proposal function (an inference module) plus one
:func:`register_method` call (docs/adding-a-method.md).

A family names its flow by its Prefect entrypoint (``module:function``), the same string its
deployment registers: the flow modules import this registry, and this registry never imports them
(docs/decisions.md, "Layers").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from mfsbi.flows.options import (
    ABCOptions, AcquisitionOptions, CommonOptions, ComputeBudgetOptions, EnsembleOptions, SequentialOptions,
    TransferGuardOptions,
)
from mfsbi.flows.proposals import Proposal, acquired_and_truncated, truncated

__all__ = [
    "ABC", "AMORTIZED", "FAMILIES", "SEQUENTIAL", "Family", "Method", "MethodNotFoundError", "available_methods",
    "get_method", "methods_of", "register_method", "unregister_method",
]


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
    """

    name: str
    entrypoint: str
    deployment: str
    default_method: str
    options: tuple[type[BaseModel], ...] = ()
    at_observation: bool = False
    description: str = ""

    def load_flow(self) -> Callable[..., Any]:
        """The flow object (imports its module)."""
        module, _, attribute = self.entrypoint.partition(":")
        return getattr(importlib.import_module(module), attribute)

    @property
    def module_path(self) -> str:
        """The entrypoint as Prefect's module path (``package.module.function``)."""
        return self.entrypoint.replace(":", ".")


AMORTIZED = Family("amortized", "mfsbi.flows.amortized:amortized_flow", "mfsbi-amortized", "mf-npe",
                   options=(EnsembleOptions, TransferGuardOptions), description="NPE or MF-NPE on one task, every simulation stored in the zarr store.")
SEQUENTIAL = Family("sequential", "mfsbi.flows.sequential:sequential_flow", "mfsbi-sequential", "mf-tsnpe",
                    options=(SequentialOptions,), at_observation=True,
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
        multilevel: amortised family: train multilevel NPE on coupled pairs (the task must be coupled)
            instead of fine-tuning.
        description: one line for help texts.
        options: option groups this method reads beyond its family's.
    """

    name: str
    family: Family
    uses_lf: bool
    ensemble: bool = False
    propose: Proposal | None = None
    multilevel: bool = False
    description: str = ""
    options: tuple[type[BaseModel], ...] = field(default=())

    def __post_init__(self) -> None:
        if (self.family is SEQUENTIAL) != (self.propose is not None):
            raise ValueError(f"method {self.name!r}: a proposal is what a sequential method needs, and only it")

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


# The built-in methods (PAPER.md).
register_method(Method("npe", AMORTIZED, uses_lf=False, description="NPE on the HF budget alone"))
register_method(Method("mf-npe", AMORTIZED, uses_lf=True, options=(ComputeBudgetOptions,),
                       description="MF-NPE: pretrain on LF, fine-tune on HF"))
register_method(Method("ml-npe", AMORTIZED, uses_lf=True, multilevel=True,
                       description="multilevel NPE (Hikida et al. 2025) on LF rows and coupled LF/HF pairs"))
register_method(Method("tsnpe", SEQUENTIAL, uses_lf=False, propose=truncated,
                       description="truncated sequential NPE"))
register_method(Method("mf-tsnpe", SEQUENTIAL, uses_lf=True, propose=truncated, options=(TransferGuardOptions,),
                       description="TSNPE from the LF-pretrained estimator"))
register_method(Method("a-mf-tsnpe", SEQUENTIAL, uses_lf=True, ensemble=True, propose=acquired_and_truncated,
                       options=(AcquisitionOptions, TransferGuardOptions),
                       description="MF-TSNPE with an ensemble and active acquisition"))
register_method(Method("mf-abc", ABC, uses_lf=True, description="multifidelity rejection ABC"))

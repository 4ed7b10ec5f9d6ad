"""How a sequential round after the first draws its parameters: the extension point of the family.

Every round after the first truncates the prior to the highest-probability region of the current
posterior at x_o (TSNPE); a :class:`Proposal` then decides which parameters of that region (or of
the prior) the round simulates. A new sequential variant is one such function, typically a thin
call into an inference module, and one registry entry (:mod:`mfsbi.flows.methods`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Proposal", "ProposalContext", "acquired_and_truncated", "truncated"]


@dataclass(frozen=True)
class ProposalContext:
    """What a proposal sees of its round.

    Arguments:
        estimators: the previous round's trained estimators (one, or the ensemble's members).
        posterior: their sbi posterior (the equal-weight mixture for an ensemble).
        truncated: the prior restricted to the posterior's HPR at ``x_o`` (``.sample((n,), seed=)``).
        x_o: the observation.
        size: how many parameters the round simulates.
        seed: the round's proposal seed (derived from the run seed).
        config: the run's :class:`~mfsbi.flows.config.RunConfig`.
    """

    estimators: list[Any]
    posterior: Any
    truncated: Any
    x_o: np.ndarray
    size: int
    seed: int
    config: Any


# runtime_checkable: Prefect builds a pydantic schema of a flow's parameters, which checks with isinstance.
@runtime_checkable
class Proposal(Protocol):
    """Draws a round's parameters: ``(theta of shape (size, d), facts for the round's record)``."""

    def __call__(self, context: ProposalContext) -> tuple[Any, dict[str, Any]]: ...


def truncated(context: ProposalContext) -> tuple[Any, dict[str, Any]]:
    """TSNPE: every parameter from the truncated prior."""
    return context.truncated.sample((context.size,), seed=context.seed), {}


def acquired_and_truncated(context: ProposalContext) -> tuple[Any, dict[str, Any]]:
    """A-MF-TSNPE: the top share by ensemble disagreement from a prior pool, the rest truncated."""
    from mfsbi.inference import Ensemble, propose_round  # deferred: sbi+torch 3.6 s; the CLI loads this module at start

    config = context.config
    theta, acquisition = propose_round(
        Ensemble(list(context.estimators)), context.truncated, context.x_o, budget=context.size,
        fraction_acquired=config.acquisition_fraction, pool_size=config.pool_size, total_budget=config.hf_sims,
        kind=config.acquisition, seed=context.seed,
    )
    return theta, {"acquired": int(acquisition["acquired"]), "pool_size": int(acquisition["pool_size"]),
                   "selected_scores": acquisition["selected_scores"], "pool_scores": acquisition["pool_scores"]}

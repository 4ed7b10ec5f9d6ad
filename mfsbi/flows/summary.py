"""A run's typed summary: what ``summary.json`` holds, built by the flows, read by the CLI.

Dataclasses instead of a dict filled in several places: each family sets the fields it has, and
:meth:`RunSummary.to_dict` writes the same ``summary.json`` as before (fields left ``None`` are
omitted, so every family's file keeps exactly its keys).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HFState", "Metrics", "RoundRecord", "RunSummary"]


def _asdict_omitting_none(record: Any, optional: str) -> dict[str, Any]:
    """``dataclasses.asdict`` without the ``optional`` field when it is None (a family lacks it)."""
    out = dataclasses.asdict(record)
    if out[optional] is None:
        del out[optional]
    return out


@dataclass
class Metrics:
    """Metrics of one posterior; C2ST and MMD per reference, averaged over the observations used.

    ``c2st_per_observation`` is recorded when there are several observations (amortised runs).
    """

    c2st: dict[str, float] = field(default_factory=dict)
    c2st_per_observation: dict[str, list[float]] | None = None
    mmd: dict[str, float] = field(default_factory=dict)
    nltp: float | None = None
    nrmse: float | None = None
    num_c2st_observations: int = 0
    num_nltp_pairs: int = 0

    def as_rows(self) -> list[tuple[str, str]]:
        """(metric, value) rows for tables: CLI, Prefect artifacts."""
        rows = []
        for name, value in self.c2st.items():
            rows.append((f"C2ST vs {name} reference (mean of {self.num_c2st_observations} obs.)", f"{value:.3f}"))
        for name, value in self.mmd.items():
            rows.append((f"MMD² vs {name} reference", f"{value:.4f}"))
        if self.nltp is not None:
            rows.append((f"NLTP ({self.num_nltp_pairs} held-out pairs)", f"{self.nltp:.3f}"))
        if self.nrmse is not None:
            rows.append(("NRMSE", f"{self.nrmse:.3f}"))
        return rows

    def to_dict(self) -> dict[str, Any]:
        return _asdict_omitting_none(self, "c2st_per_observation")


@dataclass
class RoundRecord:
    """One sequential round, as its artifact, the CLI's table and ``summary.json`` show it."""

    round: int
    new_simulations: int
    total_simulations: int
    failed: int
    simulated_now: int
    acceptance_rate: float | None
    acquired: int
    selected_scores: dict | None
    pool_scores: dict | None
    # C2ST at x_o after this round, by reference ("c2st_<name>" in the files).
    c2st: dict[str, float] = field(default_factory=dict)
    # Calibration at x_o against the reference after this round: verdict, TARP ATC, p-values.
    calibration: dict[str, Any] | None = None
    # The check without a reference: the previous round's posterior on this round's new rows
    # (truncated SBC + TARP, mfsbi.flows.coverage); None in round 0.
    coverage: dict[str, Any] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("c2st", "seconds", "calibration", "coverage")}
        for name in ("calibration", "coverage"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out.update({f"c2st_{name}": value for name, value in self.c2st.items()})
        out["seconds"] = self.seconds
        return out


@dataclass
class HFState:
    """The HF table of a run at its end (sequential and ABC runs; amortised ones record the report)."""

    stored_ok: int
    failed: int
    budget: dict[str, Any]
    simulated_now: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return _asdict_omitting_none(self, "simulated_now")


@dataclass
class RunSummary:
    """Everything a run reports. Paths are inside the store (``artifacts/...``)."""

    task: str
    method: str
    run: str
    seed: int
    device: str
    mfsbi_version: str
    lf: dict[str, Any] | None = None              # the LF table's SimulationReport
    pretrained: str | None = None                 # the shared LF-pretrained checkpoint
    pretrain: dict[str, Any] | None = None        # its training, when this run trained it
    levels: list[dict[str, Any]] | None = None    # intermediate fidelities fine-tuned through, in order
    rounds: list[RoundRecord] | None = None
    hf: dict[str, Any] | HFState | None = None    # amortised: the SimulationReport; else HFState
    hf_budget: dict[str, Any] | None = None
    hf_twins: dict[str, Any] | None = None        # ML-NPE: the HF rows' twins one level below
    train: dict[str, Any] | list[dict[str, Any]] | None = None   # a list for an ensemble
    abc: dict[str, Any] | None = None
    posterior: str | list[str] | None = None
    metrics: Metrics = field(default_factory=Metrics)
    planner: dict[str, Any] | None = None         # --compute-budget: evaluations, decisions, curve, ledger
    planner_plot: str | None = None
    transfer_guard: dict[str, Any] | None = None  # sequential MF: fine-tuned vs from scratch on a round's rows
    selection: dict[str, Any] | None = None       # MF-NPE: candidates cross-validated on the HF budget's rows
    out_of_fold: dict[str, Any] | None = None     # NLTP of the kept estimator's kind, out of fold, in the budget
    posterior_weights: list[float] | None = None  # MF-NPE stacked: each stored posterior member's mixture weight
    calibration: dict[str, Any] | None = None     # SBC + TARP of the final posterior, and its verdict
    coverage_at_x_o: dict[str, Any] | None = None  # sequential: truncated SBC + TARP out of fold, no reference
    scratch_check: dict[str, Any] | None = None   # sequential MF: the chain against from scratch at x_o
    calibration_plot: str | None = None
    budget_plot: str | None = None
    samples: str | None = None
    pair_plot: str | None = None
    wall_seconds: float | None = None
    finished_at: str | None = None
    config: dict[str, Any] | None = None

    @property
    def hf_stored_ok(self) -> int:
        return self.hf["stored_ok"] if isinstance(self.hf, dict) else self.hf.stored_ok

    @property
    def hf_budget_used(self) -> tuple[int, int]:
        """(reserved, total) of the HF budget."""
        budget = self.hf_budget if self.hf_budget is not None else self.hf.budget
        return budget["reserved"], budget["total"]

    def to_dict(self) -> dict[str, Any]:
        """The ``summary.json`` document."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "rounds":
                value = [row.to_dict() for row in value]
            elif hasattr(value, "to_dict"):
                value = value.to_dict()
            out[f.name] = value
        return out

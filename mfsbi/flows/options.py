"""The settings of a run, in groups: those every method reads, and those of one family of methods.

Each :class:`~mfsbi.flows.methods.Method` names the groups it reads (its options model);
:class:`~mfsbi.flows.config.RunConfig` is their union, one flat, frozen model, so that a run's
settings validate the same way from the command line, a config file and a deployment's parameters,
and serialise to the same flat ``config`` of ``summary.json``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ABCOptions", "AcquisitionOptions", "CommonOptions", "ComputeBudgetOptions", "Device", "EnsembleOptions", "FINE_TUNING_LEARNING_RATE",
    "HF_LEARNING_RATE", "LF_BATCH_SIZE", "MAX_SIMULATIONS", "SequentialOptions", "TransferGuardOptions",
]

Device = Literal["auto", "cpu", "cuda"]

# A budget above this is almost surely a typo, and would allocate more than memory holds.
MAX_SIMULATIONS = 100_000_000

# Learning rates of HF training when --hf-learning-rate is not given (docs/benchmark-ou2.md):
# fine-tuning an LF-pretrained estimator (MF-NPE) at 1e-4 beat the paper's 5e-4 in every one of
# 6 seed x budget cells on OU2; training from scratch (NPE) and the sequential rounds keep 5e-4.
FINE_TUNING_LEARNING_RATE = 1e-4
HF_LEARNING_RATE = 5e-4

# LF pretraining's minibatch (docs/performance.md, "Fast training"): on 1e4 OU2 LF, 500 instead of
# the paper's 200 pretrained 1.73x faster (5 seeds) to the same held-out LF loss, and MF-NPE's C2ST
# after fine-tuning stayed within the seed spread; a batch of the paper's flow costs about the
# same at 200 and 500 rows on CPU (per-operation overhead). HF steps keep 200.
LF_BATCH_SIZE = 500


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CommonOptions(_Options):
    """What every method reads: the task, budgets, store, seeds, where it runs, evaluation."""

    task: str = Field(description="registry name (see `mfsbi tasks`) or package.module:attribute")
    method: str = Field("mf-npe", description="a registered method (see `mfsbi run --help`)")
    lf_sims: int = Field(10_000, ge=1, le=MAX_SIMULATIONS, description="low-fidelity simulations")
    hf_sims: int = Field(100, ge=1, le=MAX_SIMULATIONS, description="high-fidelity budget")
    level_sims: dict[str, int] = Field(
        default_factory=dict,
        description="budgets of the task's intermediate fidelities by name ({'mf': 2000}; `--sims lf=..,mf=..,hf=..`): "
                    "MF methods pretrain on LF and fine-tune through each level given, in the chain's order",
    )
    store: str = Field("mfsbi-store", description="zarr store: a folder or a zarr store URL")
    seed: int = Field(0, ge=0, lt=2**63)
    device: Device = "auto"
    dask_address: str | None = Field(None, description="an existing Dask scheduler; default: a local cluster")
    cluster: str | None = Field(
        None, description="'slurm' or a YAML file: Dask workers as SLURM jobs (mfsbi/runtime/slurm.yaml)"
    )
    n_workers: int | None = Field(None, ge=1, le=512, description="local cluster workers; default: one per core")
    lf_chunk_size: int | None = Field(
        None, ge=1, le=1_000_000,
        description="LF rows per zarr chunk; default 1000, more for simulators faster than 1 ms (~8 MiB of x)",
    )
    hf_chunk_size: int = Field(10, ge=1, le=100_000, description="HF rows per zarr chunk")
    num_test_observations: int | None = Field(
        None, ge=0, le=10_000,
        description="held-out HF observations for C2ST (outside the budget); default 5 for a task with an exact "
                    "reference (the paper's protocol), else 0")
    num_nltp_pairs: int | None = Field(
        None, ge=0, le=1_000_000,
        description="held-out HF test pairs for NLTP and calibration (outside the budget, `--test-pairs`); default "
                    "100 for a task with an exact reference (the paper's protocol), else 0: the run reports out of fold")
    test_seed: int = Field(2026, ge=0, lt=2**63, description="seed of the held-out test set, fixed across run seeds")
    posterior_samples: int = Field(1000, ge=10, le=10_000_000)
    max_num_epochs: int = Field(2**31 - 1, ge=1, description="cap on epochs (early stopping ends training before)")
    lf_learning_rate: float = Field(5e-4, gt=0, lt=1)
    lf_batch_size: int = Field(
        LF_BATCH_SIZE, ge=1, le=1_000_000,
        description="minibatch of LF pretraining; default 500 (the paper: 200; 500 measured 1.7x faster, "
                    "same held-out loss and C2ST, docs/performance.md)",
    )
    hf_learning_rate: float | None = Field(
        None, gt=0, lt=1,
        description="learning rate on HF data; default 1e-4 fine-tuning MF-NPE from LF, else 5e-4 (measured)",
    )
    max_failure_fraction: float = Field(0.2, ge=0, le=1, description="stop when more simulations fail")
    simulation_timeout: float | None = Field(
        None, gt=0, le=7 * 24 * 3600,
        description="seconds one simulation may take; batches then run in their own process, killed on overrun",
    )
    training_memory: int | None = Field(
        None, ge=2**20,
        description="bytes of training data a training may hold ('512MiB', '4GiB'); more streams from the store "
                    "chunk by chunk; default half the worker's memory",
    )
    observation: list[float] | None = Field(None, description="an observation to condition on (x_o)")
    observation_index: int = Field(0, ge=0, le=100_000,
                                   description="methods at one observation, without --observation: this held-out test observation")
    resume: bool = Field(False, description="continue a sequential run whose rounds are already in the store")

    @field_validator("training_memory", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        if isinstance(value, str):
            from dask.utils import parse_bytes  # deferred: dask costs 0.13 s; the CLI loads this module at start

            try:
                return parse_bytes(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a size; give e.g. 512MiB or 4GiB") from None
        return value

    @field_validator("level_sims")
    @classmethod
    def _level_budgets(cls, value: dict[str, int]) -> dict[str, int]:
        for name, count in value.items():
            if name in ("lf", "hf"):
                raise ValueError(f"{name!r} is not an intermediate level: its budget is {name}_sims")
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SIMULATIONS:
                raise ValueError(f"level {name!r}: give a whole number of simulations from 1 to {MAX_SIMULATIONS}")
        # Sorted: the run's name lists the levels, and must not depend on the order they were given in.
        return dict(sorted(value.items()))

    @field_validator("observation")
    @classmethod
    def _finite(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not all(v == v and abs(v) != float("inf") for v in value):
            raise ValueError("observation holds NaN or inf; give finite values")
        return value


class EnsembleOptions(_Options):
    """Amortised methods: an ensemble of estimators, each trained (or fine-tuned) with its own seed."""

    ensemble: int = Field(1, ge=1, le=100,
                          description="members of an NPE / MF-NPE ensemble (sbi's EnsemblePosterior); 1: one estimator")


class TransferGuardOptions(_Options):
    """MF methods (MF-NPE, MF-TSNPE, A-MF-TSNPE): the fine-tuned estimator against one trained from scratch."""

    transfer_guard: Literal["stack", "select", "report", "off"] = Field(
        "stack", description="MF-NPE: cross-validate its candidates (pretrained as it is, anchored and plain "
                             "fine-tuning, from scratch) on the HF budget's own rows; stack: keep their mixture "
                             "weighted by stacking of the out-of-fold scores, select: keep the default (fine-tuned) "
                             "unless another is clearly better, report: keep the fine-tuned, off: fine-tune once. "
                             "Sequential MF: compare with from scratch on the last round's new rows (stack and select: "
                             "keep from scratch only if clearly better)")


class SequentialOptions(_Options):
    """Truncated sequential rounds at one observation (PAPER.md defaults)."""

    rounds: int = Field(5, ge=1, le=1000, description="rounds R of the sequential methods")
    truncation_quantile: float = Field(1e-6, gt=0, lt=1, description="ε of the highest-probability region")
    evaluate_rounds: bool = Field(True, description="C2ST after every round (when the task has a reference)")
    coverage_folds: int = Field(5, ge=0, le=50,
                                description="the check near x_o that needs no reference: the final posterior's "
                                            "training repeated this many times, each without one fold of the last "
                                            "round's rows, for truncated SBC + TARP out of fold (0: only the "
                                            "per-round check, no extra training)")
    scratch_check: Literal["mix", "correct", "report", "off"] = Field(
        "report", description="sequential MF methods: after the last round, train from scratch on the run's HF "
                              "rows and compare its marginals at x_o with the chain's; correct: keep from scratch "
                              "when they disagree (the chain may keep the LF's bias), mix: keep the equal mixture "
                              "of both, report: keep the chain, off: no extra training")


class AcquisitionOptions(_Options):
    """An ensemble of estimators and the acquisition of part of each round's parameters (A-MF-TSNPE)."""

    ensemble_size: int = Field(5, ge=2, le=100, description="members E of the A-MF-TSNPE ensemble")
    acquisition_fraction: float = Field(0.2, ge=0, le=1, description="share B of a round's budget chosen by acquisition")
    acquisition: Literal["log-variance", "density-variance"] = "log-variance"
    pool_size: int | None = Field(None, ge=1, le=10_000_000, description="acquisition pool; default by budget (PAPER.md)")


class ABCOptions(_Options):
    """Multifidelity rejection ABC (Prescott & Baker 2020)."""

    abc_proposals: int | None = Field(None, ge=1, le=MAX_SIMULATIONS, description="MF-ABC LF proposals; default --lf-sims")
    abc_quantile: float = Field(0.05, gt=0, le=1, description="MF-ABC ε as a quantile of the LF distances")
    abc_eta_accept: float = Field(1.0, gt=0, le=1, description="MF-ABC continuation probability when LF accepts")
    abc_eta_reject: float = Field(0.1, gt=0, le=1, description="MF-ABC continuation probability when LF rejects")


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> object:
    """``"2h"``, ``"90m"``, ``"45s"``, ``"1.5h"`` or a number of seconds, as seconds (other input unchanged)."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz").strip()
    unit = text[len(number):].strip() or "s"
    try:
        return float(number) * _DURATION_UNITS[unit]
    except (KeyError, ValueError):
        raise ValueError(f"{value!r} is not a duration; give e.g. 2h, 90m or 3600s") from None


class ComputeBudgetOptions(_Options):
    """MF-NPE with a compute budget instead of counts: the planner of mfsbi.flows.compute_budget."""

    compute_budget: float | None = Field(
        None, gt=0, le=10 * 365 * 86400,
        description="seconds of compute (simulation + training, summed over workers; '2h', '90m'): start at the "
                    "--sims counts and grow one fidelity at a time where the fitted learning curves expect the most "
                    "gain per second, until the budget or the expected gain runs out")
    simulation_cost: dict[str, float] = Field(
        default_factory=dict,
        description="declared seconds per simulation by fidelity ({'hf': 60}), used by the planner instead of the "
                    "measured ones (to plan as if a simulator were that slow); the summary says they were declared")
    planner_growth: float = Field(2.0, gt=1, le=100, description="a planner step multiplies one fidelity's count by this")
    planner_min_gain: float = Field(0.01, ge=0, description="stop when no step is expected to lower the held-out "
                                                           "HF loss by this many nats")
    planning_pairs: int = Field(100, ge=2, le=100_000, description="held-out HF pairs the planner scores allocations "
                                                                  "on (simulated in the budget)")

    @field_validator("compute_budget", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value)

    @field_validator("simulation_cost")
    @classmethod
    def _costs(cls, value: dict[str, float]) -> dict[str, float]:
        for name, seconds in value.items():
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds < 1e7:
                raise ValueError(f"fidelity {name!r}: give seconds per simulation, 0 or more")
        return dict(sorted(value.items()))

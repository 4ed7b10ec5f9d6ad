r"""Estimators, multifidelity training and metrics (torch + sbi; no Prefect, no storage).

Inputs are torch tensors or numpy arrays and a torch prior; outputs are trained estimators,
sbi posteriors, checkpoint bytes and floats.

MF-NPE in two calls::

    lf = pretrain(prior, theta_lf, x_lf)
    hf = fine_tune(lf, theta_hf, x_hf)
    samples = hf.posterior().sample((1000,), x=x_o)

Multilevel NPE (coupled simulations of several fidelities)::

    ml = train_ml_npe(prior, [(theta_0, x_0), (theta_1, x_1, x_0_at_theta_1)])
"""

from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    estimator_from_bytes,
    estimator_to_bytes,
    load_estimator,
    save_estimator,
)
from .config import PAPER_CODE_LF_LEARNING_RATE, EstimatorConfig, TrainingConfig
from .calibration import (
    Calibration, calibration, calibration_at, calibration_from_samples, clearly_miscalibrated, samples_on_pairs,
)
from .metrics import c2st, median_bandwidth, mmd_squared, nltp, nrmse, pair_log_probs
from .training import (
    EpochCallback,
    EpochReport,
    TrainedEstimator,
    build_network,
    fine_tune,
    pretrain,
    refit_x_standardizer,
    train_npe,
    x_standardizer,
)
from .transfer import TransferCheck, check_transfer
from .multilevel import CoupledLevel, adjusted_gradient, coupled_levels, ml_npe_loss, ml_npe_terms, train_ml_npe
from .allocation import Evaluation, LearningCurve, Step, fit_learning_curve, next_step
from .chunk_stream import ArrayChunks, ChunkLoader, ChunkSource, StreamingConfig, chunk_moments, split_chunks
from .streaming import fine_tune_streaming, train_npe_streaming
from .sequential import (
    DEFAULT_TRUNCATION_QUANTILE,
    TruncatedPrior,
    TruncationError,
    train_round,
    truncated_prior,
)
from .acquisition import (
    ACQUISITION_KINDS,
    Ensemble,
    acquisition_scores,
    continue_ensemble,
    default_pool_size,
    propose_round,
    select_top,
    train_ensemble,
)
from .mf_abc import (
    ABCResult,
    DEFAULT_ETA1,
    DEFAULT_ETA2,
    abc_distances,
    continuation_decisions,
    continuation_probabilities,
    distance_scale,
    epsilon_from_quantile,
    mf_abc,
    mf_abc_weights,
    proposals_within_budget,
)

__all__ = [
    "CoupledLevel",
    "adjusted_gradient",
    "coupled_levels",
    "ml_npe_loss",
    "ml_npe_terms",
    "train_ml_npe",
    "Evaluation",
    "LearningCurve",
    "Step",
    "fit_learning_curve",
    "next_step",
    "TransferCheck",
    "check_transfer",
    "Calibration",
    "calibration",
    "calibration_at",
    "clearly_miscalibrated",
    "ArrayChunks",
    "ChunkLoader",
    "ChunkSource",
    "StreamingConfig",
    "chunk_moments",
    "fine_tune_streaming",
    "split_chunks",
    "train_npe_streaming",
    "EpochCallback",
    "EpochReport",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "EstimatorConfig",
    "PAPER_CODE_LF_LEARNING_RATE",
    "TrainedEstimator",
    "TrainingConfig",
    "build_network",
    "c2st",
    "estimator_from_bytes",
    "estimator_to_bytes",
    "fine_tune",
    "load_estimator",
    "median_bandwidth",
    "mmd_squared",
    "nltp",
    "nrmse",
    "pair_log_probs",
    "pretrain",
    "refit_x_standardizer",
    "save_estimator",
    "train_npe",
    "x_standardizer",
    "DEFAULT_TRUNCATION_QUANTILE",
    "TruncatedPrior",
    "TruncationError",
    "train_round",
    "truncated_prior",
    "ACQUISITION_KINDS",
    "Ensemble",
    "acquisition_scores",
    "continue_ensemble",
    "default_pool_size",
    "propose_round",
    "select_top",
    "train_ensemble",
    "ABCResult",
    "DEFAULT_ETA1",
    "DEFAULT_ETA2",
    "abc_distances",
    "continuation_decisions",
    "continuation_probabilities",
    "distance_scale",
    "epsilon_from_quantile",
    "mf_abc",
    "mf_abc_weights",
    "proposals_within_budget",
]

r"""Will the LF model help? A check on a small HF pilot, before the HF budget is spent.

From ``K`` pilot pairs (theta_i, x_hf_i) with the LF output at the same theta_i, and the
LF-pretrained estimator:

- **Ranking of the pilot's pairing** (no training): the pretrained estimator, with its x z-scoring
  refit on the pilot's HF outputs as MF-NPE's fine-tuning starts, scores log q(theta_j | x_hf_i)
  for every pair i, j. For each pilot i, the fraction of the other pilots' theta_j scored below its
  own theta_i; their mean is the *ranking AUC* (0.5: the estimator cannot tell a pilot's theta from
  another's; 1: always can). A permutation test of the pairing (scipy's ``permutation_test``) gives
  its p-value, exact under the null that the scores ignore which theta went with which x; a
  bootstrap (scipy's ``bootstrap``) over the pilots gives its 90 % interval (one-sided 95 % bounds).
  The verdict compares the interval with a margin rather than testing AUC = 0.5: an estimator
  pretrained on an LF of pure noise still depends on x by accident, so its AUC on HF pairs is not
  exactly 0.5, and a significant but small AUC is no head start. The LF
  posterior as it is can be confidently wrong on HF outputs (OU2's LF misses the HF transient) and
  still be the better start; the refit z-scoring is the first thing fine-tuning changes.
- **Cross-validated transfer**: in ``folds`` folds, the pretrained estimator
  fine-tuned on the other folds and an estimator trained from scratch on them (MF-NPE and NPE at a
  budget of ``K (folds - 1) / folds``) are scored by log q(theta_i | x_hf_i) on the held-out fold.
  The per-pair differences (fine-tuned minus scratch) are tested by scipy's Wilcoxon signed-rank
  test (robust to the heavy tails a network trained on a few dozen pairs gives).
- **The verdict** (written here: no library has a decision rule for transfer): when the
  cross-validated test rejects at ``level``, its direction (*helps* / *harmful*), unless the ranking's
  interval lies wholly on the other side of ``margin`` (then *no-evidence*). Otherwise the ranking:
  *helps* when its interval lies above ``margin``, *harmful* when below (the LF carries too little
  about theta for the pretrained estimator to tell the pilots apart: nothing to give fine-tuning,
  and with such an LF MF-NPE measured a loss against NPE; docs/calibration.md); else *no-evidence*.
- **Already explained**: the pretrained estimator as it is, on every pilot pair, against the prior
  (the estimate with no data) and against the scratch estimators' cross-validated score.
- **Output similarity**: per output, the correlation of LF and HF at the same theta and their mean
  absolute difference, both after the same z-scoring (the LF training rows' mean and std, as
  the pretrained network holds them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import bootstrap, permutation_test, rankdata, wilcoxon
from torch.distributions import Distribution

from .config import EstimatorConfig, TrainingConfig
from .training import TrainedEstimator, fine_tune, restandardized_copy, train_npe, x_standardizer

__all__ = ["HARMFUL", "HELPS", "NO_EVIDENCE", "TransferCheck", "check_transfer"]

HELPS, NO_EVIDENCE, HARMFUL = "helps", "no-evidence", "harmful"


@dataclass(frozen=True)
class TransferCheck:
    """What a pilot says about transfer from LF to HF (mean log-probabilities per pilot pair)."""

    num_pilot: int
    folds: int
    log_prob_prior: float
    log_prob_pretrained: float            # the LF-pretrained estimator as it is, on every pilot pair
    log_prob_restandardized: float        # the same with its x z-scoring refit on the pilot's HF outputs
    ranking_auc: float                    # mean fraction of other pilots' theta ranked below the true theta
    ranking_auc_lower: float              # its one-sided 95 % bootstrap bounds (a 90 % interval)
    ranking_auc_upper: float
    ranking_pvalue: float                 # permutation test of the pairing (alternative: AUC > 0.5)
    log_prob_scratch: float               # cross-validated: trained on the other folds only
    log_prob_fine_tuned: float            # cross-validated: pretrained, fine-tuned on the other folds
    difference: float                     # fine-tuned minus scratch, mean over the pilot pairs
    standard_error: float
    median_difference: float
    wilcoxon_pvalue: float
    output_correlation: tuple[float, ...]       # per output: corr(LF, HF) at the same theta
    output_mean_abs_difference: tuple[float, ...]  # per output: mean |LF - HF|, in LF-std units
    verdict: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _log_prob(estimator: TrainedEstimator, theta: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return (-estimator.network.loss(theta, x)).double().numpy()


def _pairing_scores(network: torch.nn.Module, theta: torch.Tensor, x: torch.Tensor, rows: int = 8192) -> np.ndarray:
    """``L[i, j] = log q(theta_j | x_i)`` for every pair of pilots, in batches of about ``rows`` pairs."""
    n = len(theta)
    per_batch = max(1, rows // n)  # whole rows of L per network call: few calls, bounded memory
    with torch.no_grad():
        blocks = [-network.loss(theta.repeat(len(x[i:i + per_batch]), 1), x[i:i + per_batch].repeat_interleave(n, 0))
                  for i in range(0, n, per_batch)]
    return torch.cat(blocks).double().numpy().reshape(n, n)


def _ranking(scores: np.ndarray, permutations: int, seed: int) -> tuple[float, float, float, float]:
    """Ranking AUC of the diagonal of ``scores``, its permutation p-value and one-sided 95 % bootstrap bounds."""
    n = len(scores)
    # Row i: each theta_j's rank among the n candidates for x_i, as the fraction of the others below it.
    fraction_below = (rankdata(np.nan_to_num(scores, nan=-np.inf), axis=1) - 1) / (n - 1)
    rows = np.arange(n)

    def auc(order, axis=-1):
        return fraction_below[rows, order].mean(axis=axis)

    rng = np.random.default_rng([seed, 23])
    tested = permutation_test((rows,), auc, permutation_type="pairings", n_resamples=permutations,
                              alternative="greater", vectorized=True, random_state=rng)
    own = fraction_below[rows, rows]
    if np.ptp(own) == 0:
        lower = upper = float(own[0])  # every pilot ranked alike: no spread to bootstrap
    else:
        lower, upper = map(float, bootstrap((own,), np.mean, confidence_level=0.90, method="percentile",
                                            n_resamples=permutations, random_state=rng).confidence_interval)
    return float(own.mean()), float(tested.pvalue), lower, upper


def _folds(n: int, folds: int, seed: int) -> list[np.ndarray]:
    return np.array_split(np.random.default_rng([seed, 17]).permutation(n), folds)


def _similarity(pretrained: TrainedEstimator, x_lf: np.ndarray, x_hf: np.ndarray) -> tuple[tuple, tuple]:
    standardize = x_standardizer(pretrained.network)
    if standardize is not None:
        mean, std = standardize._mean.double().numpy(), standardize._std.double().numpy()
    else:
        mean, std = x_lf.mean(0), x_lf.std(0) + 1e-12
    z_lf, z_hf = (x_lf - mean) / std, (x_hf - mean) / std
    correlation = []
    for j in range(x_lf.shape[1]):
        a, b = z_lf[:, j], z_hf[:, j]
        # A constant output has no correlation: NaN, written as such (not 0, which would read as evidence).
        correlation.append(float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan"))
    return tuple(correlation), tuple(float(v) for v in np.abs(z_lf - z_hf).mean(0))


def check_transfer(
    pretrained: TrainedEstimator,
    prior: Distribution,
    theta: Any,
    x_hf: Any,
    x_lf: Any,
    *,
    fine_tuning: TrainingConfig,
    scratch: TrainingConfig,
    estimator: EstimatorConfig = EstimatorConfig(),
    folds: int = 10,
    level: float = 0.05,
    margin: float = 0.6,
    permutations: int = 9999,
    seed: int = 0,
) -> TransferCheck:
    """Cross-validated transfer check on a pilot of paired simulations (see the module).

    Arguments:
        pretrained: the LF-pretrained estimator.
        prior: the prior (its log-probability is the no-data baseline).
        theta: ``(K, d)`` pilot parameters; x_hf, x_lf: ``(K, k)`` outputs at them.
        fine_tuning: the settings of the fine-tuning (MF-NPE's HF step).
        scratch: the settings of the training from scratch (NPE's).
        estimator: the architecture of the scratch estimators.
        folds: cross-validation folds (2 <= folds <= K).
        level: the significance level of the Wilcoxon and permutation tests.
        margin: the ranking AUC that separates *helps* (interval above) from *harmful* (below);
            chosen on development seeds (docs/calibration.md).
        permutations: resamples of the permutation test and of the bootstrap.
        seed: seeds the folds, the trainings and the resampling.

    Returns:
        A :class:`TransferCheck`.
    """
    theta = np.asarray(theta, dtype=np.float64)
    x_hf, x_lf = np.asarray(x_hf, dtype=np.float64), np.asarray(x_lf, dtype=np.float64)
    valid = np.isfinite(x_hf).all(1) & np.isfinite(x_lf).all(1)
    theta, x_hf, x_lf = theta[valid], x_hf[valid], x_lf[valid]
    n = len(theta)
    if not 2 <= folds <= n:
        raise ValueError(f"the pilot has {n} valid pairs: need 2 <= folds ({folds}) <= pairs; simulate a larger pilot")
    theta_t = torch.as_tensor(theta, dtype=torch.float32)
    x_t = torch.as_tensor(x_hf, dtype=torch.float32)
    with torch.no_grad():
        prior_lp = prior.log_prob(theta_t).double().numpy()
    pretrained_lp = _log_prob(pretrained, theta_t, x_t)
    scratch_lp, tuned_lp = np.empty(n), np.empty(n)
    for k, held in enumerate(_folds(n, folds, seed)):
        train = np.setdiff1d(np.arange(n), held)
        fold_seed = int(np.random.default_rng([seed, k]).integers(2**31))
        own = train_npe(prior, theta[train], x_hf[train], estimator=estimator,
                        training=dataclasses.replace(scratch, seed=fold_seed))
        tuned = fine_tune(pretrained, theta[train], x_hf[train], training=dataclasses.replace(fine_tuning, seed=fold_seed))
        scratch_lp[held] = _log_prob(own, theta_t[held], x_t[held])
        tuned_lp[held] = _log_prob(tuned, theta_t[held], x_t[held])
    scores = _pairing_scores(restandardized_copy(pretrained, x_t), theta_t, x_t)
    auc, auc_p, auc_lower, auc_upper = _ranking(scores, permutations, seed)
    d = tuned_lp - scratch_lp
    mean, se, median = float(d.mean()), float(d.std(ddof=1) / np.sqrt(n)), float(np.median(d))
    p_value = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    informative, uninformative = auc_lower > margin, auc_upper < margin
    if p_value < level:
        cross_validated = HELPS if median > 0 else HARMFUL
        contradicted = uninformative if cross_validated == HELPS else informative
        verdict = NO_EVIDENCE if contradicted else cross_validated
    else:
        verdict = HELPS if informative else HARMFUL if uninformative else NO_EVIDENCE
    reason = (f"ranking of the pilot's pairing by the LF-pretrained estimator (x z-scoring refit on the HF pilot): "
              f"AUC {auc:.3f} (90 % interval {auc_lower:.3f}–{auc_upper:.3f}; permutation p={auc_p:.3g}); "
              f"held-out log q(θ|x_HF), fine-tuned minus from scratch, {folds}-fold over {n} pilot pairs: "
              f"median {median:+.3f}, mean {mean:+.3f} ± {se:.3f} (SE), Wilcoxon p={p_value:.3g}. "
              f"The Wilcoxon test decides where it rejects at {level:g} and the AUC's interval does not lie wholly "
              f"on the other side of {margin:g}; else the interval: above {margin:g} helps, below harmful")
    correlation, difference = _similarity(pretrained, x_lf, x_hf)
    return TransferCheck(
        num_pilot=n, folds=folds, log_prob_prior=float(prior_lp.mean()), log_prob_pretrained=float(pretrained_lp.mean()),
        log_prob_restandardized=float(np.diagonal(scores).mean()), ranking_auc=auc, ranking_auc_lower=auc_lower,
        ranking_auc_upper=auc_upper, ranking_pvalue=auc_p,
        log_prob_scratch=float(scratch_lp.mean()), log_prob_fine_tuned=float(tuned_lp.mean()), difference=mean,
        standard_error=se, median_difference=median, wilcoxon_pvalue=p_value, output_correlation=correlation,
        output_mean_abs_difference=difference, verdict=verdict, reason=reason,
    )

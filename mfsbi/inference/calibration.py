r"""Calibration of a posterior estimate: SBC ranks and TARP expected coverage (sbi's diagnostics).

Both use pairs (theta_i, x_i) with theta_i drawn from the distribution the estimate should
match: the prior and the simulator for an amortised estimate (held-out simulations), or the exact
posterior at one x_o for a sequential one (reference samples, x_i = x_o for all i). A calibrated
estimate gives uniform SBC ranks per parameter and a TARP coverage curve on the diagonal.

The verdict is a decision rule written here (sbi returns the statistics, not a verdict):
*calibrated* when neither test rejects at ``level`` (TARP's KS test, and the per-parameter SBC KS
tests with a Bonferroni correction over the parameters). When TARP rejects, the direction is the
sign of its area to curve (ATC > 0: coverage above the diagonal, the estimate too wide,
*under-confident*; ATC <= 0: too narrow or off-centre, *over-confident*). When only SBC rejects,
the rank histogram of its most rejected parameter decides (Talts et al. 2018): with u the rank
over the number of samples, a mean of u away from 1/2 (a t-test at the same corrected level) is
*biased*; otherwise a variance of u above 1/12 (U-shaped ranks) is *over-confident*, below it
(∩-shaped) *under-confident*.

On exact posteriors (2 and 4 parameters, 50 and 100 pairs) the verdict was not *calibrated* in
2.8-6.2 % of pair sets; that and its power against known distortions are measured by
benchmarks/calibration_power.py (docs/calibration.md, "Power and false alarms of the verdict").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import warnings

import numpy as np
import torch
from sbi.diagnostics import check_tarp
from sbi.diagnostics.sbc import check_uniformity_frequentist
from sbi.diagnostics.tarp import _run_tarp, get_tarp_references
from sbi.utils.diagnostics_utils import get_posterior_samples_on_batch
from scipy.stats import ttest_1samp
from torch import Tensor

__all__ = ["BIASED", "CALIBRATED", "CALIBRATION_BATCH_BYTES", "MISLEADING_VERDICTS", "OVER_CONFIDENT",
           "UNDER_CONFIDENT", "Calibration", "calibration", "calibration_at", "calibration_from_samples",
           "clearly_miscalibrated", "pairs_per_batch", "samples_on_pairs"]

CALIBRATED, OVER_CONFIDENT, UNDER_CONFIDENT, BIASED = "calibrated", "over-confident", "under-confident", "biased"
# The verdicts whose credible regions cover the truth less often than they claim. An under-confident
# estimate errs on the safe side (its regions are too wide), so it does not count as misleading.
MISLEADING_VERDICTS = (BIASED, OVER_CONFIDENT)


@dataclass(frozen=True)
class Calibration:
    """SBC and TARP statistics of one estimate on ``num_pairs`` pairs, and the verdict."""

    num_pairs: int
    num_posterior_samples: int
    sbc_ks_pvalues: tuple[float, ...]     # per parameter: KS test of the ranks against uniform
    tarp_atc: float                       # area between coverage and diagonal for alpha > 0.5
    tarp_ks_pvalue: float                 # KS test of the coverage curve against the diagonal
    level: float
    verdict: str
    test: str                             # the rule and the numbers behind the verdict, in words
    ranks: tuple[tuple[int, ...], ...]    # (num_pairs, d) SBC ranks, for the rank plot
    coverage: tuple[float, ...]           # TARP expected coverage at each credibility level
    credibility: tuple[float, ...]

    def to_dict(self, with_curves: bool = False) -> dict[str, Any]:
        """The numbers for ``summary.json``; ``with_curves`` adds ranks and the coverage curve."""
        out = asdict(self)
        if not with_curves:
            for key in ("ranks", "coverage", "credibility"):
                del out[key]
        return out


def _rank_shape(u: np.ndarray, level: float) -> tuple[str, str]:
    """How ranks ``u`` (in [0, 1], one parameter) depart from uniform: off-centre first, else their spread."""
    n = len(u)
    # Off-centre: a t-test of the mean against 1/2 with the ranks' own variance. A z-test with the
    # uniform's variance 1/12 named 16-19 % of clearly over-confident posteriors (SD x 0.5) biased:
    # U-shaped ranks have a larger variance, so their mean wanders further from 1/2
    # (docs/calibration.md, "Power and false alarms of the verdict").
    shift = ttest_1samp(u, 0.5)
    if shift.pvalue < level:
        return BIASED, f"rank mean {u.mean():.2f} (t = {shift.statistic:+.1f}, p = {shift.pvalue:.2g})"
    # Spread: under uniform u the sample variance is 1/12 with variance about 1/(180 n).
    z_spread = (u.var() - 1 / 12) / np.sqrt(1 / (180 * n))
    verdict = OVER_CONFIDENT if z_spread > 0 else UNDER_CONFIDENT
    return verdict, f"rank mean {u.mean():.2f}, variance {u.var():.3f} vs 1/12 ({z_spread:+.1f} SE)"


def _verdict(ks_pvalues: np.ndarray, u: np.ndarray, atc: float, tarp_p: float, level: float) -> tuple[str, str]:
    sbc_p = float(np.min(ks_pvalues))
    threshold = level / len(ks_pvalues)
    numbers = (f"TARP KS p={tarp_p:.3g}, ATC={atc:+.3f}; SBC KS min p={sbc_p:.3g} "
               f"(vs {threshold:.3g}: {level:g} Bonferroni over {len(ks_pvalues)} parameters)")
    if tarp_p >= level and sbc_p >= threshold:
        return CALIBRATED, f"neither test rejects at {level:g}: {numbers}"
    if tarp_p < level:
        verdict = UNDER_CONFIDENT if atc > 0 else OVER_CONFIDENT
        return verdict, f"TARP rejects at {level:g}, direction from the sign of ATC: {numbers}"
    # SBC alone: the most significant rejected parameter's rank histogram names the departure.
    j = int(np.argmin(ks_pvalues))
    verdict, shape = _rank_shape(u[:, j], threshold)
    return verdict, f"SBC rejects for parameter {j}, {shape}: {numbers}"


def _from_samples(samples: Tensor, theta: Tensor, num_posterior_samples: int, level: float) -> Calibration:
    # The SBC rank is sbi's definition: how many posterior samples lie below the true value.
    ranks = (samples < theta[None]).sum(0)
    # TARP as sbi's run_tarp does it: references drawn over the box of theta, theta z-scored.
    # sbi's default of n // 10 bins is 0 (an error) under 10 pairs.
    ecp, alpha = _run_tarp(samples, theta, get_tarp_references(theta), num_bins=max(2, len(theta) // 10),
                           z_score_theta=True)
    ks = check_uniformity_frequentist(ranks, num_posterior_samples).double().numpy()
    atc, tarp_p = check_tarp(ecp, alpha)
    verdict, test = _verdict(ks, ranks.double().numpy() / num_posterior_samples, float(atc), float(tarp_p), level)
    return Calibration(
        num_pairs=len(theta), num_posterior_samples=num_posterior_samples,
        sbc_ks_pvalues=tuple(float(p) for p in ks), tarp_atc=float(atc), tarp_ks_pvalue=float(tarp_p),
        level=level, verdict=verdict, test=test,
        ranks=tuple(tuple(int(r) for r in row) for row in ranks.long().tolist()),
        coverage=tuple(float(v) for v in ecp), credibility=tuple(float(v) for v in alpha),
    )


def _checked(theta, x, level: float) -> tuple[Tensor, Tensor]:
    theta = torch.as_tensor(np.asarray(theta), dtype=torch.float32)
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    if theta.ndim != 2 or x.ndim != 2 or len(theta) != len(x) or len(theta) < 2:
        raise ValueError(f"calibration needs (n, d) theta and (n, k) x with n >= 2, got {tuple(theta.shape)} "
                         f"and {tuple(x.shape)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    return theta, x


#: Bytes the repeated observations of one batch of calibration pairs may take by default (256 MiB).
CALIBRATION_BATCH_BYTES = 2**28


def pairs_per_batch(num_posterior_samples: int, x_dim: int, max_bytes: int) -> int:
    """How many pairs one batched sampling call may take within ``max_bytes``.

    sbi's batched sampler repeats each pair's x for every draw: a batch of b pairs holds
    ``b * num_posterior_samples * x_dim`` floats of x, and the network's first layer as many
    again (4 bytes each). 100 pairs x 1 000 draws x 16 384 values took 6.5 GB in one call.
    """
    return max(1, int(max_bytes) // max(1, 8 * num_posterior_samples * x_dim))


def samples_on_pairs(posterior: Any, x: Tensor, num_posterior_samples: int,
                     max_bytes: int = CALIBRATION_BATCH_BYTES) -> Tensor:
    """``(num_posterior_samples, n, d)`` draws at each of the n observations, sampled in batches within ``max_bytes``."""
    step = pairs_per_batch(num_posterior_samples, x.shape[1], max_bytes)
    with warnings.catch_warnings():
        # sbi caps its own sampling batch (a memory guard of its own) and says so on every call.
        warnings.filterwarnings("ignore", message="Capping max_sampling_batch_size")
        return torch.cat([get_posterior_samples_on_batch(x[i:i + step], posterior, (num_posterior_samples,),
                                                         use_batched_sampling=True).cpu()
                          for i in range(0, len(x), step)], dim=1)


def calibration_from_samples(samples: Tensor, theta: Tensor | np.ndarray, *, level: float = 0.05,
                             seed: int = 0) -> Calibration:
    """SBC and TARP from draws already made: ``samples[:, i]`` are draws for the pair whose truth is ``theta[i]``.

    For out-of-fold calibration, where each pair is sampled from the estimator that did not train on it.

    Arguments:
        samples: ``(num_posterior_samples, n, d)`` posterior draws.
        theta: ``(n, d)`` the true parameters.
        level: the tests' significance level.
        seed: seeds TARP's reference points (the caller's RNG state is kept): the same draws give
            the same verdict.

    Returns:
        A :class:`Calibration`.
    """
    theta = torch.as_tensor(np.asarray(theta), dtype=torch.float32)
    samples = torch.as_tensor(samples, dtype=torch.float32)
    if samples.ndim != 3 or samples.shape[1:] != theta.shape or len(theta) < 2:
        raise ValueError(f"samples must be (num_samples, n, d) for theta (n, d) with n >= 2, got "
                         f"{tuple(samples.shape)} and {tuple(theta.shape)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _from_samples(samples, theta, samples.shape[0], level)


def calibration(posterior: Any, theta: Tensor | np.ndarray, x: Tensor | np.ndarray, *,
                num_posterior_samples: int = 1000, level: float = 0.05, seed: int = 0,
                max_batch_bytes: int = CALIBRATION_BATCH_BYTES) -> Calibration:
    """SBC ranks and TARP coverage of an amortised ``posterior`` on held-out pairs ``(theta, x)``.

    Arguments:
        posterior: an sbi posterior (``DirectPosterior``, ``EnsemblePosterior``).
        theta: ``(n, d)`` parameters drawn from the prior.
        x: ``(n, k)`` their simulated observations.
        num_posterior_samples: posterior samples per pair.
        level: the tests' significance level.
        seed: seeds the posterior samples and TARP's reference points; the caller's RNG is untouched.
        max_batch_bytes: the memory one sampling call's repeated observations may take
            (:func:`pairs_per_batch`); the pairs are sampled in as many calls as that needs.

    Returns:
        A :class:`Calibration`.
    """
    theta, x = _checked(theta, x, level)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        # One set of samples for both diagnostics (sbi's run_sbc and run_tarp would each draw their own).
        samples = samples_on_pairs(posterior, x, num_posterior_samples, max_batch_bytes)
        return _from_samples(samples, theta, num_posterior_samples, level)


def calibration_at(posterior: Any, x_o: Tensor | np.ndarray, reference_theta: Tensor | np.ndarray, *,
                   num_posterior_samples: int = 1000, level: float = 0.05, seed: int = 0) -> Calibration:
    """Local calibration at one observation: SBC and TARP with exact-posterior draws as the true values.

    For theta_i drawn from p(theta | x_o), the ranks among draws of q(theta | x_o) are uniform and
    the TARP curve is the diagonal when q matches p at x_o: the check for a sequential estimate,
    which is trained for x_o only. Each reference draw is ranked against its own posterior draws.

    Arguments:
        posterior: an sbi posterior.
        x_o: the observation, ``(k,)`` or ``(1, k)``.
        reference_theta: ``(n, d)`` draws of the exact (reference) posterior at x_o.
        num_posterior_samples, level, seed: as for :func:`calibration`.

    Returns:
        A :class:`Calibration`.
    """
    x_o = torch.as_tensor(np.asarray(x_o), dtype=torch.float32).reshape(1, -1)
    theta, _ = _checked(reference_theta, x_o.expand(len(reference_theta), -1), level)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        drawn = posterior.sample((num_posterior_samples * len(theta),), x=x_o, show_progress_bars=False)
        samples = drawn.cpu().reshape(num_posterior_samples, len(theta), -1)
        return _from_samples(samples, theta, num_posterior_samples, level)


def clearly_miscalibrated(result: Calibration | None) -> bool:
    """Whether a candidate estimate's calibration should cost it a choice between candidates of similar score.

    True when the verdict is *biased* or *over-confident* (:data:`MISLEADING_VERDICTS`): its
    credible regions miss the truth more often than they claim. *Under-confident* (too wide, safe)
    and *calibrated* are not penalised, nor is a missing calibration (``None``: too few pairs).
    On exact posteriors the verdict was one of these two in 2.3-4.8 % of pair sets at 50 or 100
    pairs (a calibrated candidate is wrongly penalised that often), as was an under-confident one
    (SD x 1.3 to 2) in 0.5-5 %; docs/calibration-power.json has the rates and the power.

    Arguments:
        result: the candidate's calibration on held-out pairs, or None.

    Returns:
        Whether the candidate is clearly miscalibrated.
    """
    return result is not None and result.verdict in MISLEADING_VERDICTS

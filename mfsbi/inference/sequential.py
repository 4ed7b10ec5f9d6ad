r"""Truncated sequential NPE (TSNPE) and its multifidelity variant (MF-TSNPE), on sbi 0.27.

PAPER.md, "Algorithms": round r simulates M/R HF pairs from the current proposal, trains on all
pairs so far, then truncates the proposal to

    p~(theta) ∝ p(theta) · 1[theta ∈ HPR_eps(q(theta | x_o))],

the highest-probability region of the current posterior estimate that holds 1 - eps of its mass.
sbi provides the truncation (``get_density_thresholder`` + ``RestrictedPrior``); this module adds
seeding, a measured acceptance rate and a cap on rejection sampling, and the round-to-round
training on top of :func:`mfsbi.inference.training.fine_tune`.

Why the plain NPE loss is right here (Deistler et al. 2022, "Truncated proposals for scalable and
hassle-free simulation-based inference"): inside the HPR the truncated proposal is proportional
to the prior, so training on its pairs with the ordinary NPE loss learns
p(x | theta) p~(theta) / p~(x), which equals the true posterior p(theta | x_o) wherever that
posterior has (all but eps of) its mass. No atomic / APT proposal correction is needed; that is
the point of TSNPE.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch
from sbi.utils import RestrictedPrior, get_density_thresholder
from torch import Tensor
from torch.distributions import Distribution

from .config import EstimatorConfig, TrainingConfig
from .training import ArrayLike, TrainedEstimator, fine_tune, train_npe

__all__ = [
    "DEFAULT_TRUNCATION_QUANTILE",
    "TruncatedPrior",
    "TruncationError",
    "train_round",
    "truncated_prior",
]

#: eps of the highest-probability region (PAPER.md: 1e-6; the neuron task used 1e-3).
DEFAULT_TRUNCATION_QUANTILE = 1e-6


class TruncationError(RuntimeError):
    """Rejection sampling from a truncated prior hit its proposal cap."""


def _as_x_o(x_o: ArrayLike) -> Tensor:
    x = torch.as_tensor(np.asarray(x_o) if not isinstance(x_o, Tensor) else x_o)
    x = x.detach().to(dtype=torch.float32, device="cpu")
    if x.ndim == 1:
        x = x.unsqueeze(0)
    if x.ndim != 2 or x.shape[0] != 1:
        raise ValueError(f"x_o must be one observation, shape (k,) or (1, k), got {tuple(x.shape)}")
    return x


def _as_sbi_posterior(posterior: Any) -> Any:
    # A TrainedEstimator or an acquisition Ensemble gives its sbi posterior through .posterior();
    # an sbi posterior (DirectPosterior, EnsemblePosterior) has log_prob and is used as it is.
    if not hasattr(posterior, "log_prob") and callable(getattr(posterior, "posterior", None)):
        return posterior.posterior()
    return posterior


class _AtObservation:
    """q(theta | x_o) as the plain ``sample`` / ``log_prob`` distribution sbi's thresholder wants.

    The log-density is the unnormalised one (``norm_posterior=False``): the leakage factor is a
    constant in theta, so the HPR is the same, and skipping it avoids an extra unseeded
    rejection-sampling run inside sbi (the network's theta logit transform leaks no mass anyway).
    """

    def __init__(self, posterior: Any, x_o: Tensor) -> None:
        self.posterior, self.x_o = posterior, x_o

    def sample(self, sample_shape: tuple[int, ...]) -> Tensor:
        return self.posterior.sample(sample_shape, x=self.x_o, show_progress_bars=False)

    @torch.no_grad()
    def log_prob(self, theta: Tensor) -> Tensor:
        return self.posterior.log_prob(theta, x=self.x_o, norm_posterior=False)


class TruncatedPrior(RestrictedPrior):
    r"""sbi's ``RestrictedPrior`` with seeded, capped rejection sampling and a measured acceptance.

    Build it with :func:`truncated_prior`. ``log_prob`` is sbi's (prior log-density inside the
    region, -inf outside, normalised by ``acceptance_rate``).

    Arguments:
        prior: the prior proposals are drawn from.
        accept_reject_fn: ``theta (n, d) -> bool (n,)``, True inside the HPR.
        posterior: the sbi posterior the region was cut from (used by ``sample_with="sir"``).
        acceptance_rate: measured fraction of prior samples accepted.
        quantile: eps, the posterior mass left outside the region.
        max_proposals: cap on prior proposals per ``sample`` call.
        batch_size: prior proposals evaluated per step.
    """

    def __init__(
        self,
        prior: Distribution,
        accept_reject_fn: Any,
        posterior: Any,
        *,
        acceptance_rate: float,
        quantile: float,
        max_proposals: int,
        batch_size: int = 10_000,
    ) -> None:
        super().__init__(prior, accept_reject_fn, posterior=posterior, sample_with="rejection")
        # sbi reads acceptance_rate as the normalising constant of log_prob; ours is measured once.
        self.acceptance_rate = torch.as_tensor(float(acceptance_rate))
        self.quantile = float(quantile)
        self.max_proposals = int(max_proposals)
        self.batch_size = int(batch_size)

    @property
    def prior(self) -> Distribution:
        """The untruncated prior."""
        return self._prior

    def accepts(self, theta: ArrayLike) -> Tensor:
        r"""Whether each theta lies in the truncated region.

        Arguments:
            theta: parameters, shape ``(n, d)``.

        Returns:
            Bool tensor of shape ``(n,)``.
        """
        t = torch.as_tensor(np.asarray(theta) if not isinstance(theta, Tensor) else theta)
        with torch.no_grad():
            return self._accept_reject_fn(t.to(torch.float32)).bool().reshape(-1)

    def sample(  # type: ignore[override]
        self,
        sample_shape: Union[torch.Size, tuple[int, ...]] = torch.Size(),
        seed: Optional[int] = None,
        sample_with: Optional[str] = None,
        **kwargs: Any,
    ) -> Tensor:
        r"""Draws from the truncated prior by rejection from the prior.

        Arguments:
            sample_shape: e.g. ``(n,)``.
            seed: seeds torch's generator for this call only (the caller's RNG state is kept);
                ``None`` draws from the caller's global generator.
            sample_with: ``"rejection"`` (default) or ``"sir"`` (sbi's, from the posterior).

        Returns:
            Samples of shape ``(*sample_shape, d)``.

        Raises:
            TruncationError: more than ``max_proposals`` prior draws were needed.
        """
        if seed is None:
            return self._sample(sample_shape, sample_with, **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._sample(sample_shape, sample_with, **kwargs)

    @torch.no_grad()
    def _sample(self, sample_shape: Any, sample_with: Optional[str], **kwargs: Any) -> Tensor:
        shape = torch.Size(sample_shape)
        if (sample_with or self._sample_with) != "rejection":
            kwargs.setdefault("print_rejected_frac", False)
            return super().sample(shape, sample_with=sample_with, **kwargs)
        # sbi's own rejection loop has no proposal cap (a near-empty region spins forever).
        num = shape.numel()
        accepted: list[Tensor] = []
        have, proposed = 0, 0
        while have < num:
            if proposed >= self.max_proposals:
                rate = float(self.acceptance_rate)
                raise TruncationError(
                    f"truncated prior: only {have} of {num} samples after {proposed} prior proposals "
                    f"(max_proposals={self.max_proposals}; measured acceptance rate {rate:.2e}). "
                    "The HPR is too small for rejection from the prior: raise max_proposals, use "
                    "sample_with='sir', or check the posterior estimate at x_o."
                )
            step = min(self.batch_size, self.max_proposals - proposed)
            candidates = self._prior.sample((step,))
            proposed += step
            keep = self._accept_reject_fn(candidates).bool().reshape(-1)
            accepted.append(candidates[keep])
            have += int(keep.sum())
        samples = torch.cat(accepted)[:num]
        return samples.reshape(*shape, -1)


def truncated_prior(
    posterior: Any,
    prior: Distribution,
    x_o: ArrayLike,
    *,
    quantile: float = DEFAULT_TRUNCATION_QUANTILE,
    num_samples_to_estimate_support: int = 10_000,
    num_samples_to_estimate_acceptance: int = 10_000,
    max_proposals: int = 2_000_000,
    seed: int = 0,
) -> TruncatedPrior:
    r"""The TSNPE proposal: the prior restricted to the (1 - eps)-HPR of q(theta | x_o).

    The density threshold is sbi's ``get_density_thresholder``: the ``quantile``-th lowest
    log q of ``num_samples_to_estimate_support`` posterior samples. With eps = 1e-6 and 1e4
    samples this is the lowest sample's log-density (index ``int(eps·n) = 0``), so the region is
    "everything at least as probable as the least probable of n posterior draws".

    Arguments:
        posterior: an sbi posterior (``DirectPosterior``, ``EnsemblePosterior``) or anything with
            ``.posterior()`` returning one (``TrainedEstimator``, ``Ensemble``).
        prior: the prior to restrict.
        x_o: the observation, shape ``(k,)`` or ``(1, k)``.
        quantile: eps, the posterior mass left outside the region.
        num_samples_to_estimate_support: posterior samples that set the threshold.
        num_samples_to_estimate_acceptance: prior samples that measure the acceptance rate.
        max_proposals: cap on prior proposals per ``sample`` call of the result.
        seed: seeds the posterior samples behind the threshold and the acceptance measurement.

    Returns:
        A :class:`TruncatedPrior` with ``.sample((n,), seed=...)``, ``.accepts(theta)``,
        ``.acceptance_rate`` and ``.prior``.
    """
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"quantile must lie in [0, 1), got {quantile!r}")
    if num_samples_to_estimate_support < 1 or num_samples_to_estimate_acceptance < 1:
        raise ValueError("the numbers of samples must be >= 1")
    sbi_posterior = _as_sbi_posterior(posterior)
    x = _as_x_o(x_o)
    sbi_posterior.set_default_x(x)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        accept_reject_fn = get_density_thresholder(
            _AtObservation(sbi_posterior, x),
            quantile=quantile,
            num_samples_to_estimate_support=num_samples_to_estimate_support,
        )
        proposals = prior.sample((num_samples_to_estimate_acceptance,))
        rate = float(accept_reject_fn(proposals).float().mean())
    return TruncatedPrior(
        prior,
        accept_reject_fn,
        sbi_posterior,
        acceptance_rate=rate,
        quantile=quantile,
        max_proposals=max_proposals,
    )


def train_round(
    previous: Optional[TrainedEstimator],
    theta_all: ArrayLike,
    x_all: ArrayLike,
    *,
    prior: Distribution,
    training: TrainingConfig = TrainingConfig(),
    estimator: EstimatorConfig = EstimatorConfig(),
    pretrained_for_first_round: Optional[TrainedEstimator] = None,
    refit_x_zscore_later_rounds: bool = False,
    device: str = "cpu",
) -> TrainedEstimator:
    r"""One (MF-)TSNPE round: trains q(theta | x) on all HF pairs simulated so far.

    - Round 1, TSNPE (``previous`` and ``pretrained_for_first_round`` both ``None``): NPE from
      scratch (:func:`train_npe`).
    - Round 1, MF-TSNPE: fine-tunes the LF-pretrained estimator (:func:`fine_tune`, x z-scoring
      refitted on the HF data, as in MF-NPE).
    - Later rounds: continue from ``previous``'s weights on ALL pairs so far (:func:`fine_tune`).
      By default the x z-scoring is NOT refitted: later rounds' data sit inside the truncated
      region, and re-standardising x on them would change the input map the previous weights were
      trained for; sbi's own multi-round loop likewise keeps the round-1 statistics (the network
      is built once). ``refit_x_zscore_later_rounds=True`` refits on all pairs instead.

    The loss is the plain NPE loss in every round (see the module docstring: truncated proposals
    ∝ prior inside the HPR, so no proposal correction is needed).

    Arguments:
        previous: the previous round's estimator, ``None`` in round 1.
        theta_all: all HF parameters so far (every round's), shape ``(n, d)``.
        x_all: the matching HF observations, shape ``(n, k)``; NaN/inf rows are dropped.
        prior: the (untruncated) prior; the theta transform of a from-scratch network uses it.
        training: training settings of this round (use a different ``seed`` per round for fresh
            validation splits).
        estimator: architecture, used only when training from scratch.
        pretrained_for_first_round: the LF-pretrained estimator (MF-TSNPE), or ``None`` (TSNPE).
        refit_x_zscore_later_rounds: refit the x z-scoring in rounds after the first.
        device: ``"cpu"`` or ``"cuda"``.

    Returns:
        The round's estimator; ``num_simulations`` counts the valid pairs it trained on.
    """
    start = previous if previous is not None else pretrained_for_first_round
    if start is None:
        return train_npe(prior, theta_all, x_all, estimator=estimator, training=training, device=device)
    if tuple(start.prior.event_shape) != tuple(prior.event_shape):
        raise ValueError(
            f"the starting estimator's prior has event_shape {tuple(start.prior.event_shape)}, "
            f"the prior {tuple(prior.event_shape)}"
        )
    # Round 1 of MF-TSNPE refits on HF as MF-NPE does; later rounds keep the statistics by default.
    refit = True if previous is None else refit_x_zscore_later_rounds
    return fine_tune(start, theta_all, x_all, training=training, refit_x_zscore=refit, device=device)

"""A toy sequential variant's proposal, standing in for the inference module of a new method.

Half of each round from the prior itself, the rest from the truncated prior: nothing a user would
want, but different enough from TSNPE that the test can see it was used. Pure: torch only.
"""

import torch


def half_from_prior(context):
    """Draws ``context.size`` parameters: the first half from the prior, the rest truncated."""
    from_prior = context.size // 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(context.seed)
        prior_draws = context.truncated.prior.sample((from_prior,))
    truncated_draws = context.truncated.sample((context.size - from_prior,), seed=context.seed)
    return torch.cat([prior_draws, truncated_draws]), {"from_prior": from_prior}

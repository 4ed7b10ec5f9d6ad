"""A toy amortised method's training strategy, standing in for the module of a new method.

NPE on the first half of the HF budget: it simulates the whole budget as NPE does and trains one
estimator on the first ``hf_sims // 2`` rows. Nothing a user would want, but different enough from
NPE that the test can see it was used (the training's row count, its label, its loss plot).
"""

from mfsbi.flows.strategies import simulate_hf_budget


def npe_on_half_the_budget(run, summary):
    """Simulates the HF budget, trains one estimator from scratch on its first half."""
    simulate_hf_budget(run, summary)
    half = run.config.hf_sims // 2
    job = run.train_job(table=run.hf_table, fidelity="hf", limit=half, learning_rate=run.config.hf_training_rate(False),
                        seed=run.seed("train"), pretrained=None)
    return run.train([job], label=f"train on the first {half} HF rows (toy)")


def one_estimator(config, task):
    """The toy's own check: it trains one estimator."""
    if config.ensemble > 1:
        raise ValueError("--ensemble: toy-npe trains one estimator; leave --ensemble at 1")

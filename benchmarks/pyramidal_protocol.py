"""The neuron headline table's protocol: variants, budgets, and the paper's numbers beside them.

Shared by ``pyramidal_table.py`` (which runs it) and ``pyramidal_report.py`` (which tabulates it).
"""

VARIANTS = ("pyramidal", "pyramidal-reduced")
NPE_BUDGETS = (50, 100, 200, 500, 1000, 2000, 5000, 10000)
MF_BUDGETS = (50, 100, 200, 500, 1000)
AMF_BUDGETS = (50, 100)
AMF_OBSERVATIONS = (0, 1, 2)
LF_SIMS = 10000
TEST_SEED = 2026            # RunConfig.test_seed: the held-out pairs are the same for every run seed
PAPER = {  # PAPER.md, neuron task: CPU seconds (simulation + training) and NLTP.
    "npe": {"hf": 10000, "lf": 0, "simulation": 4940, "training": 70, "nltp": -5.87},
    "mf-npe": {"hf": 1000, "lf": 10000, "simulation": 1032, "training": 97, "nltp": -5.73},
    "a-mf-tsnpe": {"hf": 50, "lf": 10000, "simulation": 607, "training": 557, "nltp": -5.08},
}

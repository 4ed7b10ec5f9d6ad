"""Run names derive from the method, and every built-in method's names are the ones stores already hold.

The expected strings were printed by ``RunConfig(...).run_name`` before run names moved from
:class:`~mfsbi.flows.config.RunConfig` to the methods (issue 32): stores, ``--resume`` and the
artifacts' folders are found by these names, so a change here orphans existing runs.
"""

import pytest

from mfsbi.flows.config import RunConfig

CASES = [
    ({"method": "npe"}, "npe-hf100-seed0"),
    ({"method": "npe", "ensemble": 3}, "npe-hf100-e3-seed0"),
    ({"method": "npe", "hf_sims": 50, "seed": 2}, "npe-hf50-seed2"),
    ({"method": "npe", "compute_budget": 5}, "npe-hf100-compute5s-seed0"),  # refused by preflight, named all the same
    ({"method": "mf-npe"}, "mf-npe-lf10000-hf100-seed0"),
    ({"method": "mf-npe", "ensemble": 4}, "mf-npe-lf10000-hf100-e4-seed0"),
    ({"method": "mf-npe", "compute_budget": 7200}, "mf-npe-lf10000-hf100-compute7200s-seed0"),
    ({"method": "mf-npe", "compute_budget": 90.5, "lf_sims": 200, "hf_sims": 20}, "mf-npe-lf200-hf20-compute90.5s-seed0"),
    ({"method": "mf-npe", "ensemble": 2, "compute_budget": 60}, "mf-npe-lf10000-hf100-e2-compute60s-seed0"),
    ({"method": "mf-npe", "level_sims": {"mf": 200}, "lf_sims": 1000, "hf_sims": 50}, "mf-npe-lf1000-mf200-hf50-seed0"),
    ({"method": "mf-npe", "level_sims": {"mf": 200}, "compute_budget": 60}, "mf-npe-lf10000-mf200-hf100-compute60s-seed0"),
    ({"method": "ml-npe"}, "ml-npe-lf10000-hf100-seed0"),
    ({"method": "ml-npe", "level_sims": {"mf": 300}, "lf_sims": 1000, "hf_sims": 40, "seed": 3},
     "ml-npe-lf1000-mf300-hf40-seed3"),
    ({"method": "tsnpe"}, "tsnpe-hf100-r5-obs0-seed0"),
    ({"method": "tsnpe", "rounds": 3, "observation_index": 2}, "tsnpe-hf100-r3-obs2-seed0"),
    ({"method": "tsnpe", "ensemble": 3, "compute_budget": 10}, "tsnpe-hf100-r5-obs0-seed0"),
    ({"method": "mf-tsnpe", "observation": [0.1, 0.2]}, "mf-tsnpe-lf10000-hf100-r5-x93033c4c-seed0"),
    ({"method": "mf-tsnpe", "level_sims": {"mf": 100}}, "mf-tsnpe-lf10000-mf100-hf100-r5-obs0-seed0"),
    ({"method": "a-mf-tsnpe", "ensemble_size": 5, "rounds": 4}, "a-mf-tsnpe-lf10000-hf100-r4-obs0-seed0"),
    # Added later: an ensemble of other than the default 5 members is in the name (it was not: two such runs collided).
    ({"method": "a-mf-tsnpe", "ensemble_size": 2}, "a-mf-tsnpe-lf10000-hf100-r5-e2-obs0-seed0"),
    ({"method": "mf-tsnpe", "ensemble_size": 2}, "mf-tsnpe-lf10000-hf100-r5-obs0-seed0"),  # not an ensemble method
    ({"method": "mf-abc"}, "mf-abc-lf10000-hf100-obs0-seed0"),
    ({"method": "mf-abc", "ensemble": 2}, "mf-abc-lf10000-hf100-obs0-seed0"),
    ({"method": "mf-abc", "observation_index": 3, "lf_sims": 500}, "mf-abc-lf500-hf100-obs3-seed0"),
    ({"method": "mf-abc", "observation": [1.0, 2.0, 3.0]}, "mf-abc-lf10000-hf100-xd4ab5ad5-seed0"),
]


@pytest.mark.parametrize(("settings", "expected"), CASES, ids=[name for _, name in CASES])
def test_built_in_run_names_are_unchanged(settings, expected):
    assert RunConfig(task="ou2", **settings).run_name == expected

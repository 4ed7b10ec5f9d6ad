"""The Run's plan (names, tables, seeds) and the typed summary's JSON form."""

import pytest

from mfsbi.flows.config import RunConfig
from mfsbi.flows.plan import RunPlan
from mfsbi.flows.summary import HFState, Metrics, RoundRecord, RunSummary
from mfsbi.runtime.seeds import derive_seed


@pytest.mark.parametrize("method, hf_table, tables", [
    ("npe", "ou2", {("ou2", "hf"), ("ou2-test", "hf")}),
    ("mf-npe", "ou2", {("ou2", "hf"), ("ou2", "lf"), ("ou2-test", "hf")}),
    ("tsnpe", "ou2.tsnpe-hf100-r5-obs0-seed0", {("ou2.tsnpe-hf100-r5-obs0-seed0", "hf"), ("ou2-test", "hf")}),
    ("a-mf-tsnpe", "ou2.a-mf-tsnpe-lf10000-hf100-r5-obs0-seed0",
     {("ou2.a-mf-tsnpe-lf10000-hf100-r5-obs0-seed0", "hf"), ("ou2", "lf"), ("ou2-test", "hf")}),
    ("mf-abc", "ou2.mf-abc-lf10000-hf100-obs0-seed0",
     {("ou2.mf-abc-lf10000-hf100-obs0-seed0", "hf"), ("ou2", "lf"), ("ou2-test", "hf")}),
])
def test_a_plan_names_the_tables_each_family_writes(method, hf_table, tables):
    plan = RunPlan.of(RunConfig(task="ou2", method=method))
    assert plan.hf_table == hf_table
    assert {(t.table, t.fidelity) for t in plan.planned_tables()} == tables
    assert plan.prefix == f"ou2/{plan.name}" and plan.artifact("x.pt") == f"artifacts/ou2/{plan.name}/x.pt"
    test = [t for t in plan.planned_tables() if t.table == "ou2-test"]
    assert test[0].seed == 2026 and all(t.seed == 0 for t in plan.planned_tables() if t.table != "ou2-test")
    assert plan.seed("train") == derive_seed(0, "train") and plan.test_seed("c2st", 1) == derive_seed(2026, "c2st", 1)


def test_an_amortised_run_with_its_own_observation_and_no_held_out_pairs_writes_no_test_table():
    plan = RunPlan.of(RunConfig(task="ou2", method="npe", observation=[0.0] * 10, num_test_observations=0,
                                num_nltp_pairs=0))
    assert [t.table for t in plan.planned_tables()] == ["ou2"]


def test_the_summary_omits_what_a_family_does_not_have():
    header = dict(task="ou2", method="tsnpe", run="r", seed=0, device="cpu", mfsbi_version="0")
    rounds = [RoundRecord(0, 8, 8, 0, 8, 1.0, 0, None, None, c2st={"paper": 0.7}, seconds=1.5)]
    summary = RunSummary(**header, rounds=rounds, hf=HFState(8, 0, {"total": 8, "reserved": 8}),
                         posterior=["a.pt"], metrics=Metrics(num_c2st_observations=1))
    document = summary.to_dict()
    assert list(document) == [*header, "rounds", "hf", "posterior", "metrics"]
    assert list(document["rounds"][0]) == ["round", "new_simulations", "total_simulations", "failed", "simulated_now",
                                           "acceptance_rate", "acquired", "selected_scores", "pool_scores",
                                           "c2st_paper", "seconds"]
    assert document["hf"] == {"stored_ok": 8, "failed": 0, "budget": {"total": 8, "reserved": 8}}
    assert "c2st_per_observation" not in document["metrics"]
    assert summary.hf_budget_used == (8, 8) and summary.hf_stored_ok == 8
    amortised = RunSummary(**{**header, "method": "npe"}, hf={"stored_ok": 5}, hf_budget={"reserved": 5, "total": 9},
                           metrics=Metrics(c2st_per_observation={}))
    assert amortised.hf_budget_used == (5, 9) and "c2st_per_observation" in amortised.to_dict()["metrics"]

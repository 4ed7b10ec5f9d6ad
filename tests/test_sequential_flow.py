"""Sequential methods through the flow: every method end to end, the budget, resume after a crash."""

from pathlib import Path

import numpy as np
import pytest
from prefect import flow

from mfsbi.flows.config import RunConfig
from mfsbi.runtime.executor import SerialExecutor
from mfsbi.storage import SimulationStore


def _config(tmp_path, method, **overrides):
    values = dict(task="ou2", method=method, lf_sims=300, hf_sims=24, rounds=3, store=str(tmp_path / "store"),
                  seed=5, num_test_observations=1, num_nltp_pairs=0, posterior_samples=200, max_num_epochs=3,
                  lf_chunk_size=100, hf_chunk_size=5, ensemble_size=2, pool_size=50, truncation_quantile=1e-3,
                  evaluate_rounds=False,  # the per-round C2ST only reports: one test turns it on
                  coverage_folds=2)  # the final check near x_o out of 2 folds, not 5: two trainings per member
    values.update(overrides)
    return RunConfig(**values)


@flow
def _sequential(config):
    from mfsbi.flows.sequential import run_sequential

    return run_sequential(config, SerialExecutor()).to_dict()


#: MF-TSNPE's tests run with an LF biased on purpose (issue 34): the checks near x_o and the
#: from-scratch cross-check on the task they were built for; the other methods run on OU2.
BIASED = "ou2-lf-biased-large"


@pytest.fixture(scope="module")
def mf_tsnpe_run(tmp_path_factory, prefect_server):
    """MF-TSNPE with ``_config`` on ``BIASED``, run once: its own test checks it, the resume test compares with it."""
    config = _config(tmp_path_factory.mktemp("mf-tsnpe"), "mf-tsnpe", task=BIASED)
    return config, _sequential(config)


@pytest.mark.parametrize("method", ["tsnpe", "mf-tsnpe", "a-mf-tsnpe"])
def test_each_sequential_method_runs_and_respects_the_budget(tmp_path, prefect_server, method, request):
    # The per-round C2ST (two references, a classifier each round) only reports: one method checks it.
    per_round = method == "a-mf-tsnpe"
    if method == "mf-tsnpe":
        config, summary = request.getfixturevalue("mf_tsnpe_run")
    else:
        # A-MF-TSNPE runs without the from-scratch cross-check (--scratch-check off: no extra training);
        # TSNPE without the final check near x_o (its five trainings; the MF methods' checks are read).
        config = _config(tmp_path, method, evaluate_rounds=per_round,
                         scratch_check="off" if method == "a-mf-tsnpe" else "report",
                         coverage_folds=0 if method == "tsnpe" else 2)
        summary = _sequential(config)
    assert [row["new_simulations"] for row in summary["rounds"]] == [8, 8, 8]
    table = SimulationStore(config.store).table(f"{config.task}.{config.run_name}", "hf")
    assert table.counts()["ok"] == 24 and table.counts()["pending"] == 0
    assert table.budget().reserved == table.budget().total == 24
    for r in range(3):
        assert len(table.read("ok", rounds=[r])[0]) == 8
    assert set(summary["metrics"]["c2st"]) == {"euler-maruyama", "paper"}
    # Calibration at x_o against exact-posterior draws, after every round (when rounds are evaluated)
    # and for the final posterior.
    assert all(row["calibration"]["verdict"] in ("calibrated", "over-confident", "under-confident", "biased")
               for row in summary["rounds"] if per_round)
    assert summary["calibration"]["num_pairs"] == 200 and summary["calibration"]["on"].startswith("x_o")
    outputs = Path(config.store) / "artifacts" / config.task / config.run_name
    assert (outputs / "calibration.png").stat().st_size > 0
    assert (outputs / "pairplot.png").stat().st_size > 0
    assert (outputs / "c2st-vs-budget.png").exists() == per_round
    c2st_keys = {"c2st_euler-maruyama", "c2st_paper"}
    assert all((c2st_keys <= set(row)) == per_round and ("calibration" in row) == per_round for row in summary["rounds"])
    if method == "a-mf-tsnpe":
        # Rounds after the first take round(0.2 * 8) = 2 acquired candidates.
        assert [row["acquired"] for row in summary["rounds"]] == [0, 2, 2]
        assert len(summary["posterior"]) == 2
    if method != "tsnpe":
        assert "pretrained" in summary
        # The transfer guard: the chain after round 2 against estimators trained from scratch on the
        # same 16 rows, scored on round 3's 8 new rows before round 3 trained on them.
        guard = summary["transfer_guard"]
        assert guard["compared"] and guard["num_pairs"] == 8 and guard["mode"] == "stack"
        assert guard["better"] == ("fine-tuned" if guard["difference"] >= 0 else "from scratch")
        # stack (the default; as select in a sequential run) keeps from scratch only on a clear gain: the
        # interval's lower end above the margin.
        clear = guard["scratch_gain_interval"][0] > guard["margin"]
        assert guard["kept"] == guard["chosen"] == ("from scratch" if clear else "fine-tuned")
        # The check near x_o without a reference: per round from round 2, and the final one out of fold.
        assert [r.get("coverage") is None for r in summary["rounds"]] == [True, False, False]
        final = summary["coverage_at_x_o"]
        assert final["of"] == "the final posterior" and final["pairs"] == 8 - (2 if method == "a-mf-tsnpe" else 0)
        assert final["used"] <= final["pairs"] and (final["verdict"] is None) == (final["used"] < 2)
        assert [r["simulations"] for r in guard["scratch_train"]] == [16] * (2 if method == "a-mf-tsnpe" else 1)
        # The from-scratch cross-check at the end: as many estimators as the chain, on all 24 HF rows,
        # compared at x_o; by default (report) the run keeps the chain either way.
        check, members = summary.get("scratch_check"), 2 if method == "a-mf-tsnpe" else 1
        if config.scratch_check == "off":
            assert check is None and len(summary["posterior"]) == members
        elif guard["kept"] == "from scratch":
            assert not check["compared"]
        else:
            assert check["compared"] and check["hf_rows"] == 24 and check["members"] == members
            assert check["disagree"] == (max(check["shift"]) > check["threshold"])
            assert check["mode"] == "report" and check["kept"] == "chain"
            assert [Path(p).name for p in summary["posterior"]] == [f"round-2-member-{e}.pt" for e in range(members)]
            assert len(check["posterior"]) == members
    else:
        assert "transfer_guard" not in summary and "scratch_check" not in summary
    # Later rounds sample from the truncated prior: their θ lie in the region the acceptance measured.
    assert all(0 < row["acceptance_rate"] <= 1 for row in summary["rounds"])


def test_resume_after_a_crash_resimulates_nothing_and_gives_the_same_result(tmp_path, prefect_server, monkeypatch,
                                                                           mf_tsnpe_run):
    import mfsbi.flows.run_training as run_module

    reference_config, reference = mf_tsnpe_run  # the same config in another store

    real_train = run_module.train_jobs

    def crash_in_round_two(executor, jobs, label):
        if "round 2/" in label:  # round 2's training, after its rows were simulated and stored
            raise RuntimeError("simulated crash")
        return real_train(executor, jobs, label=label)

    monkeypatch.setattr(run_module, "train_jobs", crash_in_round_two)
    crashed = _config(tmp_path / "b", "mf-tsnpe", task=BIASED)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _sequential(crashed)
    table = SimulationStore(crashed.store).table(f"{crashed.task}.{crashed.run_name}", "hf")
    assert table.counts()["ok"] == 16  # rounds 1 and 2 stored before the crash
    monkeypatch.setattr(run_module, "train_jobs", real_train)

    resumed = _sequential(crashed.model_copy(update={"resume": True}))
    assert [row["simulated_now"] for row in resumed["rounds"]] == [0, 0, 8]
    assert table.counts()["ok"] == 24 and table.budget().reserved == 24
    a = SimulationStore(reference_config.store).table(f"{reference_config.task}.{reference_config.run_name}", "hf").read("ok")
    b = table.read("ok")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert resumed["metrics"]["c2st"] == reference["metrics"]["c2st"]
    assert resumed["scratch_check"] == reference["scratch_check"]  # the cross-check is seeded too


@pytest.mark.parametrize("mode", ["correct", "mix"])  # report: the default, in the test of every method
def test_the_cross_check_keeps_what_its_mode_says_and_resume_trains_nothing(tmp_path, prefect_server,
                                                                               monkeypatch, mf_tsnpe_run, mode):
    import shutil
    from functools import partial

    import mfsbi.flows.run_training as run_module
    import mfsbi.flows.scratch_check as scratch_module
    from mfsbi import load_posterior

    config, reference = mf_tsnpe_run
    # The seeded module run keeps the chain at its guard, so it has a cross-check to decide again.
    assert reference["transfer_guard"]["kept"] == "fine-tuned" and reference["scratch_check"]["compared"]
    shutil.copytree(config.store, tmp_path / "store")
    copy = config.model_copy(update={"store": str(tmp_path / "store"), "resume": True, "scratch_check": mode})
    outputs = tmp_path / "store" / "artifacts" / config.task / config.run_name
    (outputs / scratch_module.SCRATCH_CHECK_FILE).unlink()  # the decision again, on the stored estimators
    monkeypatch.setattr(scratch_module, "marginal_agreement",
                        partial(scratch_module.marginal_agreement, threshold=-1.0))  # any shift disagrees

    def no_training(executor, jobs, label):
        raise AssertionError(f"resume trained again: {label}")

    monkeypatch.setattr(run_module, "train_jobs", no_training)
    summary = _sequential(copy)
    check = summary["scratch_check"]
    assert check["disagree"] and check["shift"] == reference["scratch_check"]["shift"]
    kept = {"correct": "from scratch", "mix": "mixture"}[mode]
    assert check["kept"] == kept
    assert summary["posterior"] == {"from scratch": check["posterior"],
                                    "mixture": reference["posterior"] + check["posterior"]}[kept]
    assert summary["coverage_at_x_o"]["of"] == f"the chain (the cross-check kept {kept})"
    assert summary["metrics"]["c2st"] != reference["metrics"]["c2st"]  # another estimate was evaluated
    posterior = load_posterior(tmp_path / "store", f"{config.task}/{config.run_name}")
    assert posterior.sample((5,), show_progress_bars=False).shape == (5, 2)


def test_sequential_negative_transfer_trains_the_last_round_from_scratch_and_resumes_the_decision(
        tmp_path, prefect_server, monkeypatch, caplog):
    import mfsbi.flows.run_training as run_module
    import mfsbi.flows.sequential as sequential

    real_compare, real_train = sequential.compare_with_scratch, run_module.train_jobs
    # The fine-tuned chain scores 5 nats worse than it does: the guard must choose from scratch.
    monkeypatch.setattr(sequential, "compare_with_scratch",
                        lambda tuned, scratch, **kw: real_compare(tuned - 5.0, scratch, **kw))
    trained = []

    def crash_in_the_last_round(executor, jobs, label):
        trained.append((label, [job.pretrained is None for job in jobs]))
        if "round 3/" in label:  # after the guard decided, before the last round's training
            raise RuntimeError("simulated crash")
        return real_train(executor, jobs, label=label)

    monkeypatch.setattr(run_module, "train_jobs", crash_in_the_last_round)
    config = _config(tmp_path, "mf-tsnpe")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _sequential(config)
    assert any("negative transfer" in r.getMessage() for r in caplog.records)
    guard_runs = [t for t in trained if t[0].startswith("transfer guard")]
    assert len(guard_runs) == 1 and guard_runs[0][1] == [True]
    assert trained[-1][0].startswith("mf-tsnpe round 3/") and trained[-1][1] == [True]  # from scratch

    trained.clear()
    monkeypatch.setattr(run_module, "train_jobs", lambda executor, jobs, label: (
        trained.append((label, [job.pretrained is None for job in jobs])) or real_train(executor, jobs, label=label)))
    resumed = _sequential(config.model_copy(update={"resume": True}))
    # The stored decision is reused: no second guard training, the last round trains from scratch.
    # Then the final check near x_o repeats that training without each fold: from scratch too.
    assert [t[0].split(":")[0] for t in trained] == ["mf-tsnpe round 3/3", "coverage check"]
    assert trained[0][1] == [True] and all(trained[1][1])
    guard = resumed["transfer_guard"]
    assert guard["better"] == guard["kept"] == "from scratch" and guard["difference"] < 0
    assert resumed["scratch_check"] == {"compared": False, "reason": "the last round already trained from scratch"}


@flow
def _abc(config):
    from mfsbi.flows.mf_abc import run_abc

    return run_abc(config, SerialExecutor()).to_dict()


@pytest.mark.parametrize("budget", [20, 40])
def test_mf_abc_runs_within_its_hf_budget(tmp_path, prefect_server, budget):
    config = _config(tmp_path, "mf-abc", lf_sims=2000, hf_sims=budget, abc_quantile=0.05)
    summary = _abc(config)
    table = SimulationStore(config.store).table(f"{config.task}.{config.run_name}", "hf")
    assert table.num_rows == summary["abc"]["hf_used"] <= budget
    assert table.budget().reserved <= table.budget().total == budget
    assert summary["abc"]["proposals_used"] <= 2000
    assert 0.4 <= summary["metrics"]["c2st"]["euler-maruyama"] <= 1.0
    # Rerunning reserves and simulates nothing new.
    again = _abc(config)
    assert again["hf"]["simulated_now"] == 0 and table.num_rows == summary["abc"]["hf_used"]


def test_mf_abc_without_any_acceptance_stops_with_a_clear_message(tmp_path, prefect_server):
    from mfsbi.flows.mf_abc import ABCNoAcceptanceError

    config = _config(tmp_path, "mf-abc", lf_sims=2000, hf_sims=1, abc_quantile=0.001)
    with pytest.raises(ABCNoAcceptanceError, match="raise --hf-sims"):
        _abc(config)
    assert SimulationStore(config.store).table(f"{config.task}.{config.run_name}", "hf").num_rows <= 1

"""The transfer check: the library's verdicts, and the command whose HF pilot the run then reuses."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mfsbi.inference import TrainingConfig, check_transfer, pretrain
from mfsbi.inference.transfer import HARMFUL, HELPS, NO_EVIDENCE
from mfsbi.simulators import get_task

QUICK = TrainingConfig(max_num_epochs=8)


@pytest.fixture(scope="module")
def ou2_pretrained():
    task = get_task("ou2")
    theta = task.sample_prior(1_000, seed=0)
    return task, pretrain(task.prior, theta, task.low_fidelity(theta, seed=1), training=TrainingConfig(max_num_epochs=20))


def test_the_check_reports_every_number_and_a_verdict(ou2_pretrained):
    task, pretrained = ou2_pretrained
    theta = task.sample_prior(40, seed=5)
    x_hf, x_lf = task.high_fidelity(theta, seed=6), task.low_fidelity(theta, seed=6)
    check = check_transfer(pretrained, task.prior, theta, x_hf, x_lf, fine_tuning=QUICK, scratch=QUICK, folds=4)
    assert check.verdict in (HELPS, NO_EVIDENCE, HARMFUL) and check.num_pilot == 40 and check.folds == 4
    assert 0 <= check.wilcoxon_pvalue <= 1 and "Wilcoxon" in check.reason and "AUC" in check.reason
    assert check.ranking_auc_lower <= check.ranking_auc <= check.ranking_auc_upper and 0 < check.ranking_pvalue <= 1
    # The prior's mean log-density on the pilot is exact: ou2's prior is uniform on a box.
    assert check.log_prob_prior == pytest.approx(float(task.prior.log_prob(torch.as_tensor(theta[:1], dtype=torch.float32))))
    # The LF of ou2 follows its HF closely at the same θ; a shuffled LF does not.
    assert min(check.output_correlation) > 0.3
    from mfsbi.inference.transfer import _similarity

    shuffled, _ = _similarity(pretrained, x_lf[::-1], x_hf)
    assert max(abs(c) for c in shuffled) < max(check.output_correlation)
    again = check_transfer(pretrained, task.prior, theta, x_hf, x_lf, fine_tuning=QUICK, scratch=QUICK, folds=4)
    assert again == check
    json.dumps(check.to_dict())


MIDDLE, HIGH, LOW = (0.6, 0.1, 0.5, 0.7), (0.8, 1e-4, 0.7, 0.9), (0.5, 0.5, 0.45, 0.55)  # AUC, p, 90 % interval


@pytest.mark.parametrize("shift, ranking, verdict", [
    (+1.0, MIDDLE, HELPS), (-1.0, MIDDLE, HARMFUL), (0.0, MIDDLE, NO_EVIDENCE),   # the Wilcoxon test decides
    (0.0, HIGH, HELPS), (0.0, LOW, HARMFUL),                                      # else the ranking's interval
    (+1.0, LOW, NO_EVIDENCE), (-1.0, HIGH, NO_EVIDENCE),                          # the two contradict each other
    (+1.0, HIGH, HELPS), (-1.0, LOW, HARMFUL),
])
def test_the_verdict_follows_the_decision_rule(ou2_pretrained, monkeypatch, shift, ranking, verdict):
    import mfsbi.inference.transfer as transfer

    task, pretrained = ou2_pretrained
    theta = task.sample_prior(20, seed=5)
    x = task.high_fidelity(theta, seed=6)

    # Scored estimators: the fine-tuned one is given a fixed advantage (or disadvantage) per pair.
    def scored(estimator, theta_t, x_t):
        noise = np.random.default_rng(len(theta_t)).normal(0, 0.1, len(theta_t))
        return noise + (shift if estimator == "fine-tuned" else 0.0)

    monkeypatch.setattr(transfer, "_log_prob", scored)
    monkeypatch.setattr(transfer, "train_npe", lambda *a, **k: "scratch")
    monkeypatch.setattr(transfer, "fine_tune", lambda *a, **k: "fine-tuned")
    monkeypatch.setattr(transfer, "_ranking", lambda *a, **k: ranking)
    check = check_transfer(pretrained, task.prior, theta, x, x, fine_tuning=QUICK, scratch=QUICK, folds=5, margin=0.6)
    assert check.verdict == verdict, check.reason
    assert (check.ranking_auc, check.ranking_pvalue, check.ranking_auc_lower, check.ranking_auc_upper) == ranking


def test_the_ranking_statistic_on_known_scores():
    from mfsbi.inference.transfer import _ranking

    rng = np.random.default_rng(0)
    noise = rng.normal(size=(40, 40))
    auc, p, lower, upper = _ranking(noise + 3 * np.eye(40), 999, seed=0)   # every pilot's own theta scores best
    assert auc > 0.95 and p < 0.01 and lower <= auc <= upper
    assert _ranking(np.zeros((40, 40)), 999, seed=0) == (0.5, 1.0, 0.5, 0.5)  # scores that ignore theta
    # Scores that ignore the pairing: the permutation test's false rejections stay near its level.
    p_values = [_ranking(np.random.default_rng(s).normal(size=(30, 30)), 199, seed=s)[1] for s in range(100)]
    assert 0.0 < np.mean(np.array(p_values) < 0.05) < 0.12


def test_pairing_scores_are_log_q_of_every_theta_given_every_x_whatever_the_batching():
    from mfsbi.inference.transfer import _pairing_scores

    class Additive(torch.nn.Module):  # -loss = log q(theta | x) = 10 theta + x, easy to read back
        def loss(self, theta, x):
            return -(10 * theta.sum(1) + x.sum(1))

    theta, x = torch.arange(7.0).reshape(7, 1), 100 * torch.arange(7.0).reshape(7, 1)
    expected = np.add.outer(x[:, 0].numpy(), 10 * theta[:, 0].numpy())  # row i: x_i; column j: theta_j
    for rows in (1, 20, 10_000):
        assert np.array_equal(_pairing_scores(Additive(), theta, x, rows=rows), expected)


def test_the_ranking_sees_the_pairing_with_the_hf_z_scoring(ou2_pretrained):
    from mfsbi.inference.training import restandardized_copy, x_standardizer
    from mfsbi.inference.transfer import _pairing_scores, _ranking

    task, pretrained = ou2_pretrained
    theta = task.sample_prior(40, seed=5)
    x_hf = task.high_fidelity(theta, seed=6)
    before = x_standardizer(pretrained.network)._mean.clone()
    network = restandardized_copy(pretrained, x_hf)
    # The copy z-scores as fine-tuning on the pilot would; the pretrained estimator is untouched.
    assert torch.allclose(x_standardizer(network)._mean, torch.as_tensor(x_hf.mean(0), dtype=torch.float32), atol=1e-4)
    assert torch.equal(x_standardizer(pretrained.network)._mean, before)
    theta_t, x_t = torch.as_tensor(theta, dtype=torch.float32), torch.as_tensor(x_hf, dtype=torch.float32)
    paired = _ranking(_pairing_scores(network, theta_t, x_t), 999, seed=0)
    shuffled = _ranking(_pairing_scores(network, theta_t[np.random.default_rng(1).permutation(40)], x_t), 999, seed=0)
    assert paired[2] > 0.6 and paired[1] < 0.01, paired   # ou2's LF carries mu and sigma: a head start
    assert shuffled[0] < paired[2] and shuffled[1] > 0.05, shuffled


def test_too_small_a_pilot_is_refused(ou2_pretrained):
    task, pretrained = ou2_pretrained
    theta = task.sample_prior(4, seed=5)
    x = task.high_fidelity(theta, seed=6)
    with pytest.raises(ValueError, match="simulate a larger pilot"):
        check_transfer(pretrained, task.prior, theta, x, x, fine_tuning=QUICK, scratch=QUICK, folds=10)


def test_check_transfer_then_the_run_reuses_the_pilot(tmp_path, prefect_server, shared_dask):
    from mfsbi.app.cli import app

    store = tmp_path / "store"
    common = ["--task", "ou2", "--lf-sims", "300", "--store", str(store), "--seed", "1", "--n-workers", "1",
              "--max-num-epochs", "3"]
    result = CliRunner().invoke(app, ["check-transfer", *common, "--pilot-hf", "20", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["verdict"] in ("helps", "no-evidence", "harmful") and report["num_pilot"] == 20
    assert report["hf_simulated_now"] == 20 and report["hf_budget"] == {"reserved": 20, "total": 20}
    assert (store / report["report"]).is_file()
    # Again, on the terminal: nothing simulated twice, the same verdict.
    again = CliRunner().invoke(app, ["check-transfer", *common, "--pilot-hf", "20"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "verdict" in again.output and report["verdict"] in again.output and "Wilcoxon" in again.output
    assert json.loads((store / report["report"]).read_text())["hf_simulated_now"] == 0

    # One fine-tuning (--transfer-guard off): what is checked is the pilot's rows and checkpoint reused.
    result = CliRunner().invoke(app, ["run", *common, "--method", "mf-npe", "--hf-sims", "30", "--json",
                                      "--num-test-observations", "1", "--num-nltp-pairs", "10",
                                      "--transfer-guard", "off"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # The 20 pilot rows are the run's first 20: only 10 more HF were simulated, the budget is 30.
    assert summary["hf"]["simulated"] == 10 and summary["hf_budget"]["total"] == 30
    assert summary["hf_budget"]["reserved"] == 30
    assert "pretrain" not in summary  # the check's pretrained checkpoint was reused
    assert summary["pretrained"] == report["pretrained"]

    refused = CliRunner().invoke(app, ["check-transfer", *common, "--pilot-hf", "5"])
    assert refused.exit_code != 0 and "--pilot-hf" in refused.output

"""The amortised flow end to end on tiny budgets: real Prefect API, real local Dask cluster, real store."""

import json

import numpy as np
import pytest
import zarr

from mfsbi.flows.config import RunConfig


def _tiny(tmp_path, **overrides):
    values = dict(task="ou2", method="mf-npe", lf_sims=300, hf_sims=30, store=str(tmp_path / "store"), seed=3,
                  n_workers=2, num_test_observations=1, num_nltp_pairs=10, posterior_samples=200,
                  max_num_epochs=5, lf_chunk_size=100, hf_chunk_size=10)
    values.update(overrides)
    return RunConfig(**values)


def test_mf_npe_flow_end_to_end(tmp_path, prefect_server, shared_dask):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                                FlowRunFilterName)

    from mfsbi.flows.amortized import amortized_flow

    config = _tiny(tmp_path)
    summary = amortized_flow(config).to_dict()

    # Every simulation is in the store, readable with plain zarr.
    root = zarr.open_group(str(tmp_path / "store"), mode="r")
    assert (np.asarray(root["ou2/lf/status"]) == 1).sum() == 300
    assert (np.asarray(root["ou2/hf/status"]) == 1).sum() == 30
    assert np.isfinite(np.asarray(root["ou2/hf/x"])).all()
    assert summary["lf"]["stored_ok"] == 300 and summary["hf"]["stored_ok"] == 30
    # Posterior, plot and summary are saved in the store.
    for name in ("pairplot.png", "summary.json"):
        assert (tmp_path / "store" / "artifacts" / "ou2" / config.run_name / name).stat().st_size > 0
    saved = json.loads((tmp_path / "store" / "artifacts" / "ou2" / config.run_name / "summary.json").read_text())
    assert set(saved["metrics"]["c2st"]) == {"euler-maruyama", "paper"}
    assert all(0.4 <= v <= 1.0 for v in saved["metrics"]["c2st"].values())
    assert np.isfinite(saved["metrics"]["nltp"])
    # Calibration on the 10 held-out pairs: SBC and TARP numbers, a verdict, the plot in the store.
    calibration = saved["calibration"]
    assert calibration["verdict"] in ("calibrated", "over-confident", "under-confident", "biased")
    assert calibration["num_pairs"] == 10 and calibration["num_posterior_samples"] == 200
    assert len(calibration["sbc_ks_pvalues"]) == 2 and 0 <= calibration["tarp_ks_pvalue"] <= 1
    assert saved["calibration_plot"].endswith("calibration.png")
    assert (tmp_path / "store" / saved["calibration_plot"]).read_bytes()[:4] == b"\x89PNG"
    # MF-NPE cross-validated its candidates 5-fold on its own 30 HF rows: every candidate scored out of
    # fold with an interval; it kept their stacked mixture, each weighted candidate's kept form in it
    # (the pretrained estimator one member, a trained candidate its 5 fold-stopped members).
    selection = saved["selection"]
    assert set(selection["scores"]) == {"pretrained", "anchored", "fine-tuned", "scratch"}
    assert selection["kept"] == "stacked" and selection["mode"] == "stack" and "stacking" in selection["reason"]
    weights = selection["weights"]
    assert set(weights) <= set(selection["scores"]) and sum(weights.values()) == pytest.approx(1.0)
    assert min(weights.values()) >= 0.01 and selection["chosen_by_rule"] in selection["scores"]
    expected = [0] * (1 if "pretrained" in weights else 0) + [24] * (5 * len(set(weights) - {"pretrained"}))
    trained = summary["train"] if isinstance(summary["train"], list) else [summary["train"]]
    assert sorted(t["simulations"] for t in trained) == expected
    assert len(saved["posterior_weights"]) == len(trained) and sum(saved["posterior_weights"]) == pytest.approx(1.0)
    assert selection["folds"] == 5 and selection["rows"] == 30
    for row in selection["scores"].values():
        assert row["lower"] <= row["mean"] <= row["upper"]
    assert all(len(fold) == 5 and all(t["simulations"] == 24 for t in fold)
               for fold in selection["trainings"].values())
    assert np.isfinite(saved["out_of_fold"]["nltp"]) and saved["out_of_fold"]["rows"] == 30
    # Each training says where it ran and on which CPU kernels (numbers compare only between equals).
    import torch

    trained = saved["train"] if isinstance(saved["train"], list) else [saved["train"]]
    for record in [saved["pretrain"], *trained]:
        if record["epochs"]:  # the pretrained estimator kept as it is trained nothing now
            assert record["device"] == "cpu" and record["worker"]
            assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()

    # The run and its metrics artifact are visible through the Prefect API.
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=["ou2 mf-npe lf=300 hf=30 seed=3"])))
        assert runs and runs[0].state.is_completed()
        # Filtered by the run: the session's server holds more artifacts than one page (200).
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id])))
        assert any(a.flow_run_id == runs[0].id and a.type == "markdown" and "C2ST" in a.data for a in artifacts)
        assert any(a.flow_run_id == runs[0].id and a.type == "markdown" and "calibration (SBC + TARP" in a.data
                   for a in artifacts)
        assert any(a.flow_run_id == runs[0].id and a.type == "image" and "calibration" in (a.description or "")
                   for a in artifacts)


def test_same_seed_gives_the_same_numbers(tmp_path, prefect_server, dask_cluster_client):
    from prefect import flow

    from mfsbi.flows.amortized import run_amortized
    from mfsbi.runtime.executor import DaskExecutor

    @flow
    def twice():
        a = run_amortized(_tiny(tmp_path / "a", method="npe"), DaskExecutor(dask_cluster_client))
        b = run_amortized(_tiny(tmp_path / "b", method="npe"), DaskExecutor(dask_cluster_client))
        return a, b

    a, b = twice()
    assert a.metrics == b.metrics
    xa = zarr.open_group(str(tmp_path / "a" / "store"), mode="r")["ou2/hf/x"]
    xb = zarr.open_group(str(tmp_path / "b" / "store"), mode="r")["ou2/hf/x"]
    assert np.array_equal(np.asarray(xa), np.asarray(xb))


def test_a_run_over_its_training_memory_pretrains_streaming_from_the_store(tmp_path, prefect_server, shared_dask):
    from mfsbi.flows.amortized import amortized_flow

    # 3000 LF rows x 12 values x 4 bytes x IN_MEMORY_FACTOR = 1.44 MB > 1 MiB; the 30 HF rows fit.
    summary = amortized_flow(_tiny(tmp_path, lf_sims=3000, training_memory="1MiB")).to_dict()
    members = summary["train"] if isinstance(summary["train"], list) else [summary["train"]]
    assert summary["pretrain"]["streamed"] and not any(m["streamed"] for m in members)
    assert summary["pretrain"]["simulations"] == 3000 and summary["config"]["training_memory"] == 2**20
    assert all(0.4 <= v <= 1.0 for v in summary["metrics"]["c2st"].values())


def test_a_clearly_better_candidate_is_kept_and_its_checkpoint_is_the_posterior(tmp_path, prefect_server, shared_dask,
                                                                              monkeypatch):
    import mfsbi.flows.selection as selection
    from mfsbi.flows.amortized import amortized_flow

    real = selection.log_q

    def pretrained_scores_better(estimator, theta, x):
        return real(estimator, theta, x) + 5.0  # log_q scores only the pretrained estimator here

    monkeypatch.setattr(selection, "log_q", pretrained_scores_better)
    config = _tiny(tmp_path, lf_sims=200, hf_sims=20, transfer_guard="select")  # one candidate kept, by the rule
    summary = amortized_flow(config).to_dict()
    selection_summary = summary["selection"]
    assert selection_summary["kept"] == "pretrained" and "clearly better" in selection_summary["reason"]
    # The posterior is the pretrained checkpoint itself: nothing was trained for it now.
    store = tmp_path / "store"
    assert (store / summary["posterior"]).read_bytes() == (store / summary["pretrained"]).read_bytes()
    assert summary["train"]["epochs"] == 0


def test_the_kept_estimator_does_not_depend_on_the_test_pairs(tmp_path, prefect_server, shared_dask):
    """No leak: whatever test data a run reports on, the same estimator is kept (issue 30, item 1)."""
    import torch

    from mfsbi.flows.amortized import amortized_flow
    from mfsbi.inference import estimator_from_bytes
    from mfsbi.simulators import get_task

    config_prior = get_task("ou2").prior
    weights, mixtures = [], []
    for pairs in (0, 100, 1000):
        # 50 posterior samples a pair: the test pairs' evaluation only reports, and what is checked is the choice.
        config = _tiny(tmp_path / str(pairs), lf_sims=200, hf_sims=20, num_nltp_pairs=pairs,
                       num_test_observations=0, posterior_samples=50)
        summary = amortized_flow(config).to_dict()
        store = tmp_path / str(pairs) / "store"
        paths = summary["posterior"] if isinstance(summary["posterior"], list) else [summary["posterior"]]
        members = [estimator_from_bytes((store / p).read_bytes(), config_prior) for p in paths]
        weights.append([m.network.state_dict() for m in members])
        mixtures.append(summary["posterior_weights"])
        assert summary["metrics"]["num_nltp_pairs"] == pairs
    assert mixtures[0] and mixtures[1] == mixtures[0] and mixtures[2] == mixtures[0]  # the stacked mixture's weights
    for other in weights[1:]:
        assert len(other) == len(weights[0])
        assert all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(weights[0], other))

"""The amortised flow end to end on tiny budgets: real Prefect API, real local Dask cluster, real store."""

import json

import numpy as np
import zarr

from mfsbi.flows.config import RunConfig


def _tiny(tmp_path, **overrides):
    values = dict(task="ou2", method="mf-npe", lf_sims=300, hf_sims=30, store=str(tmp_path / "store"), seed=3,
                  n_workers=2, num_test_observations=2, num_nltp_pairs=10, posterior_samples=200,
                  max_num_epochs=5, lf_chunk_size=100, hf_chunk_size=10)
    values.update(overrides)
    return RunConfig(**values)


def test_mf_npe_flow_end_to_end(tmp_path, prefect_server):
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
    for name in ("posterior.pt", "pairplot.png", "summary.json"):
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
    # The transfer guard trained from scratch on the same 30 HF rows and compared on the 10 pairs.
    guard = saved["transfer_guard"]
    assert guard["compared"] and guard["num_pairs"] == 10 and guard["mode"] == "select"
    assert guard["kept"] == guard["better"] == ("fine-tuned" if guard["difference"] >= 0 else "from scratch")
    assert guard["scratch_train"]["simulations"] == 30
    # Each training says where it ran and on which CPU kernels (numbers compare only between equals).
    import torch

    for step in ("pretrain", "train"):
        assert saved[step]["device"] == "cpu" and saved[step]["worker"]
        assert saved[step]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()

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
    assert summary["pretrain"]["streamed"] and not summary["train"]["streamed"]
    assert summary["pretrain"]["simulations"] == 3000 and summary["config"]["training_memory"] == 2**20
    assert all(0.4 <= v <= 1.0 for v in summary["metrics"]["c2st"].values())


def test_negative_transfer_keeps_the_estimator_from_scratch_and_says_so(tmp_path, prefect_server, monkeypatch, caplog):
    import mfsbi.flows.amortized as amortized

    real = amortized._log_probs
    calls = []

    def scratch_scores_better(run, results, theta, x):
        calls.append(results)
        values = real(run, results, theta, x)
        return values - 5.0 if len(calls) == 1 else values  # the first scored is the fine-tuned

    monkeypatch.setattr(amortized, "_log_probs", scratch_scores_better)
    config = _tiny(tmp_path, lf_sims=200, hf_sims=20)
    summary = amortized.amortized_flow(config).to_dict()
    guard = summary["transfer_guard"]
    assert guard["better"] == guard["kept"] == "from scratch" and guard["difference"] < 0
    # The run's estimator is the one from scratch: its training record, and its checkpoint as the posterior.
    assert summary["train"] == guard["scratch_train"]
    assert any("negative transfer" in r.getMessage() for r in caplog.records)

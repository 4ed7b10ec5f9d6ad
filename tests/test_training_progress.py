"""Training progress per epoch: from sbi's loop, across Dask workers, into the Prefect UI."""

import numpy as np
from prefect import flow

from mfsbi.flows.config import RunConfig
from mfsbi.runtime import progress


def test_every_epoch_is_reported_and_sbis_prints_are_kept_off_stdout(capsys):
    import torch

    from mfsbi.inference import TrainingConfig, train_npe
    from mfsbi.simulators import get_task

    task = get_task("ou2")
    theta = torch.as_tensor(task.sample_prior(300, seed=0), dtype=torch.float32)
    x = torch.as_tensor(task.high_fidelity(theta.double().numpy(), seed=1), dtype=torch.float32)
    reports = []
    trained = train_npe(task.prior, theta, x, training=TrainingConfig(max_num_epochs=5, seed=3),
                        on_epoch=reports.append)
    assert [r.epoch for r in reports] == list(range(1, trained.epochs + 1))
    assert reports[-1].best_validation_loss == min(r.validation_loss for r in reports)
    assert np.isclose(reports[-1].best_validation_loss, trained.best_validation_loss, atol=1e-5)
    assert "converged" not in capsys.readouterr().out
    # The callback changes nothing: the same seed gives the same weights without it.
    again = train_npe(task.prior, theta, x, training=TrainingConfig(max_num_epochs=5, seed=3))
    assert all(torch.equal(a, b) for a, b in zip(trained.network.state_dict().values(),
                                                 again.network.state_dict().values()))


def test_epochs_on_dask_workers_reach_the_flow_process_and_the_prefect_ui(tmp_path, prefect_server,
                                                                         dask_cluster_client, monkeypatch,
                                                                         caplog):
    import prefect.artifacts
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from mfsbi.flows import training_progress

    # Publish every epoch, and count the updates that reached this test's server (they run in the
    # publisher thread, which must see the same Prefect settings as the flow).
    monkeypatch.setattr(training_progress, "PUBLISH_EVERY", 0.01)
    updates = []
    original = prefect.artifacts.update_progress_artifact

    def counted(*args, **kwargs):
        result = original(*args, **kwargs)
        updates.append(args[1] if len(args) > 1 else kwargs.get("progress"))
        return result

    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", counted)

    from mfsbi.flows.amortized import run_amortized
    from mfsbi.runtime.executor import DaskExecutor

    events = []
    progress.listen_epochs(events.append)
    config = RunConfig(task="ou2", method="npe", hf_sims=40, store=str(tmp_path / "store"), seed=2,
                       num_test_observations=1, num_nltp_pairs=0, posterior_samples=100, max_num_epochs=4,
                       hf_chunk_size=10)

    @flow(name="progress-probe")
    def probe():
        return run_amortized(config, DaskExecutor(dask_cluster_client))

    try:
        state = probe(return_state=True)
        summary = state.result()
    finally:
        progress.listen_epochs(events.append, on=False)
    mine = [e for e in events if e["label"] == "train on 40 HF"]
    assert [e["epoch"] for e in mine] == list(range(1, summary.train["epochs"] + 1))
    with get_client(sync_client=True) as client:
        # Filtered by this flow run: the session's server holds more artifacts than one page (200).
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert any(a.type == "progress" and a.data == 100.0 and "train on 40 HF: done after" in (a.description or "")
               for a in artifacts)
    assert len(updates) >= 2, updates  # intermediate epochs, not only the final 100 %
    assert not [r for r in caplog.records if "progress artifact not updated" in r.getMessage()]

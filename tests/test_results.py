"""A run's posterior as a plain sbi object: ``mfsbi.load_posterior``, ensembles, and the README's example."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from prefect import flow

import mfsbi
from mfsbi.app.results import RunNotFoundError
from mfsbi.flows.config import RunConfig
from mfsbi.runtime.executor import SerialExecutor

README = Path(__file__).resolve().parents[1] / "README.md"


def _config(tmp_path, method="mf-npe", **overrides):
    values = dict(task="ou2", method=method, lf_sims=300, hf_sims=30, store=str(tmp_path / "store"), seed=1,
                  num_test_observations=1, num_nltp_pairs=10, posterior_samples=100, max_num_epochs=3,
                  lf_chunk_size=100, hf_chunk_size=10)
    values.update(overrides)
    return RunConfig(**values)


@flow
def _run(config):
    family = config.method_spec.family.name
    if family == "amortized":
        from mfsbi.flows.amortized import run_amortized as body
    elif family == "sequential":
        from mfsbi.flows.sequential import run_sequential as body
    else:
        from mfsbi.flows.mf_abc import run_abc as body
    return body(config, SerialExecutor()).to_dict()


@pytest.fixture(scope="module")
def ensemble_store(tmp_path_factory, prefect_server):
    tmp = tmp_path_factory.mktemp("ensemble")
    summary = _run(_config(tmp, ensemble=2))
    return tmp / "store", summary


def test_an_ensemble_run_gives_sbis_ensemble_posterior(ensemble_store):
    from sbi.inference.posteriors import EnsemblePosterior

    store, summary = ensemble_store
    assert summary["run"] == "mf-npe-lf300-hf30-e2-seed1"
    assert len(summary["posterior"]) == 2 and len(summary["train"]) == 2
    assert summary["train"][0]["simulations"] == 30
    posterior = mfsbi.load_posterior(store)
    assert isinstance(posterior, EnsemblePosterior) and len(posterior.posteriors) == 2
    x_o = torch.zeros(10)
    samples = posterior.sample((50,), x=x_o, show_progress_bars=False)
    assert samples.shape == (50, 2) and torch.isfinite(posterior.log_prob(samples, x=x_o)).all()


def test_member_zero_of_an_ensemble_is_the_single_estimator(ensemble_store, tmp_path):
    """--ensemble 1 without the choice (--transfer-guard off: one fine-tuning, the paper's MF-NPE) is the
    first member of an ensemble: it is trained with the same seed."""
    store, _ = ensemble_store
    single = _run(_config(tmp_path, transfer_guard="off"))
    assert single["run"] == "mf-npe-lf300-hf30-seed1" and isinstance(single["posterior"], str)
    member = (store / "artifacts" / "ou2" / "mf-npe-lf300-hf30-e2-seed1" / "posterior-member-0.pt").read_bytes()
    alone = (tmp_path / "store" / "artifacts" / "ou2" / "mf-npe-lf300-hf30-seed1" / "posterior.pt").read_bytes()
    a, b = (torch.load(__import__("io").BytesIO(d), weights_only=True)["state_dict"] for d in (member, alone))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_sequential_run_has_its_observation_as_default_x(tmp_path, prefect_server):
    from sbi.inference.posteriors import DirectPosterior

    # No check near x_o (coverage_folds=0: five more trainings) and no per-round C2ST: this test reads neither.
    config = _config(tmp_path, "tsnpe", hf_sims=10, rounds=2, hf_chunk_size=5, truncation_quantile=1e-3,
                     coverage_folds=0, evaluate_rounds=False)
    summary = _run(config)
    posterior = mfsbi.load_posterior(tmp_path / "store", summary["run"] and f"ou2/{summary['run']}")
    assert isinstance(posterior, DirectPosterior)
    assert posterior.default_x is not None and posterior.sample((5,), show_progress_bars=False).shape == (5, 2)


def test_what_load_posterior_refuses(tmp_path, prefect_server):
    with pytest.raises(RunNotFoundError, match="not an mfsbi store|no trained posterior"):
        mfsbi.load_posterior(tmp_path / "nothing")
    config = _config(tmp_path, "mf-abc", lf_sims=2000, hf_sims=40, abc_quantile=0.05)
    summary = _run(config)
    with pytest.raises(RunNotFoundError, match="samples"):
        mfsbi.load_posterior(config.store, f"ou2/{summary['run']}")
    with pytest.raises(RunNotFoundError, match="no run"):
        mfsbi.load_posterior(config.store, "ou2/no-such-run")


def test_a_users_task_is_imported_only_when_named(ensemble_store, tmp_path):
    """A store names its run's task: `module:attribute` is never imported because a file says so."""
    import shutil

    store, summary = ensemble_store
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    path = copy / "artifacts" / "ou2" / summary["run"] / "summary.json"
    saved = json.loads(path.read_text())
    saved["config"]["task"] = "evil_module_that_must_not_be_imported:task"
    path.write_text(json.dumps(saved))
    with pytest.raises(RunNotFoundError, match="pass task="):
        mfsbi.load_posterior(copy)
    assert mfsbi.load_posterior(copy, task="ou2") is not None


def test_the_readme_example_runs(ensemble_store, monkeypatch):
    """The README's "Use the result in Python" block, run as written against a real store."""
    import matplotlib

    matplotlib.use("Agg")
    store, _ = ensemble_store
    text = README.read_text()
    block = re.search(r"## Use the result in Python.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(store.parent)
    namespace: dict = {}
    exec(compile(block.replace("mfsbi-store", str(store)).replace("num_posterior_samples=1000", "num_posterior_samples=50")
                 .replace("(200,", "(20,"), "README", "exec"), namespace)
    assert np.isfinite(np.asarray(namespace["log_p"])).all()
    assert len(namespace["ranks"]) == 20


def test_a_stacked_runs_member_weights_are_applied_when_loaded(ensemble_store, tmp_path):
    """MF-NPE's stacked mixture stores one weight per member (``posterior_weights``); loading applies them."""
    import shutil

    store, _ = ensemble_store
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    path = copy / "artifacts" / "ou2" / "mf-npe-lf300-hf30-e2-seed1" / "summary.json"
    saved = json.loads(path.read_text())
    assert mfsbi.load_posterior(copy)._weights.tolist() == pytest.approx([0.5, 0.5])  # none stored: equal
    path.write_text(json.dumps({**saved, "posterior_weights": [0.9, 0.1]}))
    assert mfsbi.load_posterior(copy)._weights.tolist() == pytest.approx([0.9, 0.1])

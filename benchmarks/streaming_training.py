"""Out-of-core training (issue 16): equivalence with in-memory training, and a table beyond memory.

    python benchmarks/streaming_training.py equivalence --seeds 0 1 2 --out docs/streaming-equivalence.json
    python benchmarks/streaming_training.py equivalence-blob --seeds 0 1 2 --out docs/streaming-equivalence-blob.json
    python benchmarks/streaming_training.py beyond-memory --store /big/store --gigabytes 36 --out docs/streaming-beyond-memory.json

``equivalence``: NPE on 1e4 OU2 HF simulations, stored in a zarr table of 1000-row chunks, trained
in memory (sbi's loop, ``train_npe``) and streamed from the table (``train_npe_streaming`` over the
same rows), per seed: epochs, seconds per epoch, the loss on 2000 held-out pairs and C2ST against the exact
reference posterior at held-out observations; the streamed training is run twice to show it is
the same for the same seed.

``equivalence-blob``: the same on GaussianBlob HF simulations (256 x 256 images, the CNN embedding
with structured z-scoring, as ``Run.train_job`` builds it), at a size one CPU core can train in
about an hour (``--rows``, ``--chunk``, epochs capped equally for both modes by ``--max-epochs``).
The task has no reference posterior, so C2ST compares estimators with each other at held-out
observations: the streamed and the in-memory estimator of the same seed, against the seed-to-seed
spread (in-memory estimators of two different seeds; streamed ones of two different seeds); and
each estimator against the prior (how far training moved it). The loss is the mean -log q(theta | x)
on the same held-out HF pairs for all; the streamed training is run twice per seed (same loss, same
samples).

``beyond-memory``: a synthetic wide task (3 parameters, x of ``--x-dim`` values: random Fourier
features of theta plus noise) written to a store until the table holds ``--gigabytes`` GB of x, then
pretrained for ``--epochs`` epochs streaming from it under a memory budget; reports the table's
size, the peak RSS of the process (ru_maxrss) and seconds per epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mfsbi.inference import StreamingConfig, TrainingConfig, c2st, train_npe, train_npe_streaming
from mfsbi.runtime.training_jobs import TableChunks
from mfsbi.simulators.registry import get_task
from mfsbi.storage import SimulationStore

PROVENANCE = {"simulator": "benchmarks/streaming_training.py", "simulator_version": "1", "config_hash": "-"}


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _stored(store: SimulationStore, name: str, theta: np.ndarray, x: np.ndarray, chunk: int):
    table = store.require_table(name, "lf", theta_dim=theta.shape[1], x_dim=x.shape[1], chunk_size=chunk,
                                provenance=PROVENANCE)
    table.reserve(theta, np.zeros(len(theta), dtype=np.int64))
    for start in range(0, len(theta), chunk):
        table.write_batch(start, min(start + chunk, len(theta)), x[start:start + chunk])
    return table


def equivalence(args) -> dict:
    task = get_task("ou2")
    torch.set_num_threads(1)
    store = SimulationStore(Path(args.workdir) / "equivalence-store")
    test_theta = task.sample_prior(args.observations, seed=2026)
    test_x = task.high_fidelity(test_theta, seed=2026)
    reference = task.references[next(iter(task.references))]
    # The validation sets differ by design (whole chunks vs random rows): the loss compared is on
    # the same held-out pairs for both, mean -log q(theta | x).
    held_theta = task.sample_prior(args.held_out, seed=2027)
    held_x = torch.as_tensor(task.high_fidelity(held_theta, seed=2027), dtype=torch.float32)
    held_theta = torch.as_tensor(held_theta, dtype=torch.float32)
    rows = []
    for seed in args.seeds:
        theta = task.sample_prior(args.rows, seed=100 + seed)
        x = task.high_fidelity(theta, seed=100 + seed)
        table = _stored(store, f"ou2-seed{seed}", theta, x, args.chunk)
        training = TrainingConfig(seed=seed, max_num_epochs=args.max_epochs)
        stored_theta, stored_x = table.read("ok")
        runs = {
            "in-memory": lambda: train_npe(task.prior, stored_theta, stored_x, training=training),
            "streaming": lambda: train_npe_streaming(task.prior, TableChunks(table, args.rows), training=training,
                                                     streaming=StreamingConfig(buffer_chunks=4)),
        }
        for mode, train in runs.items():
            for repeat in range(2 if mode == "streaming" else 1):
                trained = train()
                with torch.no_grad():
                    held_out_loss = float(trained.network.loss(held_theta, held_x).mean())
                scores = []
                for i in range(args.observations):
                    x_o = torch.as_tensor(test_x[i:i + 1], dtype=torch.float32)
                    with torch.random.fork_rng():
                        torch.manual_seed(i)
                        drawn = trained.posterior().sample((1000,), x=x_o, show_progress_bars=False).numpy()
                    scores.append(c2st(reference(test_x[i], 1000, 7 + i), drawn, seed=i))
                row = {"seed": seed, "mode": mode, "repeat": repeat, "epochs": trained.epochs,
                       "seconds": round(trained.seconds, 2), "seconds_per_epoch": round(trained.seconds / trained.epochs, 3),
                       "best_validation_loss": round(trained.best_validation_loss, 4),
                       "held_out_loss": round(held_out_loss, 4), "c2st": round(float(np.mean(scores)), 4), "c2st_each": [round(s, 4) for s in scores]}
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = {}
    for mode in ("in-memory", "streaming"):
        first = [r for r in rows if r["mode"] == mode and r["repeat"] == 0]
        summary[mode] = {key: {"mean": round(float(np.mean([r[key] for r in first])), 4),
                               "std": round(float(np.std([r[key] for r in first], ddof=1)), 4)}
                         for key in ("held_out_loss", "best_validation_loss", "c2st", "seconds_per_epoch", "epochs")}
    same = all(a["held_out_loss"] == b["held_out_loss"] and a["c2st_each"] == b["c2st_each"]
               for a in rows for b in rows
               if a["mode"] == b["mode"] == "streaming" and a["seed"] == b["seed"] and a["repeat"] < b["repeat"])
    summary["streaming_same_for_same_seed"] = same
    summary["streaming_to_in_memory_seconds_per_epoch"] = round(
        summary["in-memory"]["seconds_per_epoch"]["mean"] / summary["streaming"]["seconds_per_epoch"]["mean"], 3)
    return {"rows": rows, "summary": summary}


def _held_out_loss(trained, theta: torch.Tensor, x: torch.Tensor, batch: int) -> float:
    """Mean -log q(theta | x) over held-out pairs, in batches (the CNN's activations of a batch)."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(theta), batch):
            total += float(trained.network.loss(theta[start:start + batch], x[start:start + batch]).sum())
    return total / len(theta)


def equivalence_blob(args) -> dict:
    import itertools
    import tempfile

    from mfsbi.inference import EstimatorConfig

    task = get_task("gaussian-blob")
    torch.set_num_threads(1)
    # As Run.train_job: a CNN for images, its input z-scored as one block.
    estimator = EstimatorConfig(embedding=task.embedding, x_shape=task.x_shape, z_score_x="structured")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    scratch = tempfile.TemporaryDirectory(prefix="equivalence-blob-", dir=args.workdir)
    store = SimulationStore(Path(scratch.name) / "store")
    test_theta = task.sample_prior(args.observations, seed=2026)
    test_x = task.high_fidelity(test_theta, seed=2026)
    held_theta = task.sample_prior(args.held_out, seed=2027)
    held_x = torch.as_tensor(task.high_fidelity(held_theta, seed=2027), dtype=torch.float32)
    held_theta = torch.as_tensor(held_theta, dtype=torch.float32)
    prior_samples = [task.sample_prior(args.samples, seed=3000 + i) for i in range(args.observations)]
    rows, samples = [], {}
    for seed in args.seeds:
        theta = task.sample_prior(args.rows, seed=100 + seed)
        x = task.high_fidelity(theta, seed=100 + seed)
        table = _stored(store, f"blob-seed{seed}", theta, x, args.chunk)
        del theta, x
        training = TrainingConfig(seed=seed, max_num_epochs=args.max_epochs, batch_size=args.batch_size)
        runs = {
            "in-memory": lambda: train_npe(task.prior, *table.read("ok"), estimator=estimator, training=training),
            "streaming": lambda: train_npe_streaming(task.prior, TableChunks(table, args.rows), estimator=estimator,
                                                     training=training,
                                                     streaming=StreamingConfig(buffer_chunks=args.buffer_chunks)),
        }
        for mode, train in runs.items():
            for repeat in range(2 if mode == "streaming" else 1):
                trained = train()
                held_out_loss = _held_out_loss(trained, held_theta, held_x, args.loss_batch)
                drawn = []
                for i in range(args.observations):
                    x_o = torch.as_tensor(test_x[i:i + 1], dtype=torch.float32)
                    with torch.random.fork_rng():
                        torch.manual_seed(i)
                        drawn.append(trained.posterior().sample((args.samples,), x=x_o,
                                                                show_progress_bars=False).numpy())
                samples[seed, mode, repeat] = drawn
                vs_prior = [c2st(prior_samples[i], drawn[i], seed=i) for i in range(args.observations)]
                row = {"seed": seed, "mode": mode, "repeat": repeat, "epochs": trained.epochs,
                       "stopped_early": trained.epochs < args.max_epochs,
                       "seconds": round(trained.seconds, 2),
                       "seconds_per_epoch": round(trained.seconds / trained.epochs, 3),
                       "best_validation_loss": round(trained.best_validation_loss, 4),
                       "validation_losses": [round(v, 4) for v in trained.validation_losses],
                       "held_out_loss": round(held_out_loss, 4),
                       "held_out_loss_exact": held_out_loss,
                       "posterior_mean": [np.round(d.mean(axis=0, dtype=np.float64), 3).tolist() for d in drawn],
                       "posterior_std": [np.round(d.std(axis=0, dtype=np.float64), 3).tolist() for d in drawn],
                       "c2st_vs_prior": round(float(np.mean(vs_prior)), 4),
                       "c2st_vs_prior_each": [round(s, 4) for s in vs_prior]}
                if mode == "streaming" and repeat == 1:
                    first = next(r for r in rows if r["seed"] == seed and r["mode"] == mode and r["repeat"] == 0)
                    row["same_as_repeat_0"] = (held_out_loss == first["held_out_loss_exact"]
                                               and list(trained.validation_losses) == first["validation_losses_exact"]
                                               and all(np.array_equal(a, b) for a, b in
                                                       zip(drawn, samples[seed, mode, 0])))
                row["validation_losses_exact"] = list(trained.validation_losses)
                print(json.dumps({k: v for k, v in row.items() if not k.endswith("_exact")}), flush=True)
                rows.append(row)
        table = None
    scratch.cleanup()

    def compare(a: tuple, b: tuple) -> dict:
        scores = [c2st(samples[a][i], samples[b][i], seed=i) for i in range(args.observations)]
        return {"a": list(a), "b": list(b), "c2st": round(float(np.mean(scores)), 4),
                "c2st_each": [round(s, 4) for s in scores]}

    # C2ST between estimators at the same observations (no reference posterior exists).
    same_seed = [compare((s, "in-memory", 0), (s, "streaming", 0)) for s in args.seeds]
    pairs = list(itertools.combinations(args.seeds, 2))
    in_memory_seeds = [compare((a, "in-memory", 0), (b, "in-memory", 0)) for a, b in pairs]
    streaming_seeds = [compare((a, "streaming", 0), (b, "streaming", 0)) for a, b in pairs]
    for group in (same_seed, in_memory_seeds, streaming_seeds):
        for entry in group:
            print(json.dumps(entry), flush=True)

    def mean_std(values) -> dict:
        return {"mean": round(float(np.mean(values)), 4),
                "std": round(float(np.std(values, ddof=1)), 4) if len(values) > 1 else None}

    summary = {}
    for mode in ("in-memory", "streaming"):
        first = [r for r in rows if r["mode"] == mode and r["repeat"] == 0]
        summary[mode] = {key: mean_std([r[key] for r in first])
                         for key in ("held_out_loss", "best_validation_loss", "c2st_vs_prior", "seconds_per_epoch",
                                     "epochs")}
    summary["c2st_streamed_vs_in_memory_same_seed"] = mean_std([e["c2st"] for e in same_seed])
    summary["c2st_in_memory_seed_to_seed"] = mean_std([e["c2st"] for e in in_memory_seeds])
    summary["c2st_streamed_seed_to_seed"] = mean_std([e["c2st"] for e in streaming_seeds])
    summary["c2st_same_seed_not_above_seed_to_seed"] = (
        summary["c2st_streamed_vs_in_memory_same_seed"]["mean"] <= summary["c2st_in_memory_seed_to_seed"]["mean"])
    summary["streaming_same_for_same_seed"] = all(r["same_as_repeat_0"] for r in rows if "same_as_repeat_0" in r)
    summary["streaming_to_in_memory_seconds_per_epoch"] = round(
        summary["in-memory"]["seconds_per_epoch"]["mean"] / summary["streaming"]["seconds_per_epoch"]["mean"], 3)
    for row in rows:
        for key in [k for k in row if k.endswith("_exact")]:
            del row[key]
    settings = {"rows": args.rows, "chunk_rows": args.chunk, "chunks": -(-args.rows // args.chunk),
                "buffer_chunks": args.buffer_chunks, "max_num_epochs": args.max_epochs,
                "observations": args.observations, "samples": args.samples, "held_out": args.held_out,
                "estimator": estimator.to_dict(), "training": TrainingConfig(max_num_epochs=args.max_epochs, batch_size=args.batch_size).to_dict()}
    return {"settings": settings, "rows": rows,
            "c2st_pairs": {"streamed_vs_in_memory_same_seed": same_seed, "in_memory_seed_to_seed": in_memory_seeds,
                           "streamed_seed_to_seed": streaming_seeds},
            "summary": summary}


class WideTask:
    """theta ~ U(-1, 1)^3; x = sin(theta W + phase) + 0.1 noise, ``x_dim`` values (fixed W, phase)."""

    def __init__(self, x_dim: int):
        rng = np.random.default_rng(0)
        self.weights = rng.normal(scale=2.0, size=(3, x_dim))
        self.phase = rng.uniform(0, 2 * np.pi, size=x_dim)
        self.prior = torch.distributions.Independent(torch.distributions.Uniform(-torch.ones(3), torch.ones(3)), 1)

    def simulate(self, theta: np.ndarray, seed: int) -> np.ndarray:
        noise = np.random.default_rng(seed).standard_normal((len(theta), self.weights.shape[1]))
        return np.sin(theta @ self.weights + self.phase) + 0.1 * noise


def beyond_memory(args) -> dict:
    torch.set_num_threads(args.threads)
    task = WideTask(args.x_dim)
    store = SimulationStore(args.store)
    chunk = max(1, (8 * 2**20) // (8 * args.x_dim))  # ~8 MiB of x per chunk, as the LF default
    rows = int(args.gigabytes * 1e9 // (8 * args.x_dim)) // chunk * chunk
    name = f"wide{args.x_dim}"
    started = time.perf_counter()
    table = store.require_table(name, "lf", theta_dim=3, x_dim=args.x_dim, chunk_size=chunk, provenance=PROVENANCE)
    if table.num_rows < rows:
        theta = np.random.default_rng(1).uniform(-1, 1, size=(rows, 3))
        table.reserve(theta[table.num_rows:], np.arange(table.num_rows, rows) // chunk)
    for batch in table.pending_batches():
        theta, seed = table.theta_rows(*batch.rows)
        table.write_batch(*batch.rows, task.simulate(theta, batch.seed))
    write_seconds = time.perf_counter() - started
    on_disk = sum(p.stat().st_size for p in Path(args.store, name, "lf", "x").rglob("*") if p.is_file())
    print(f"table: {rows} rows x {args.x_dim}, {on_disk / 1e9:.1f} GB of x on disk, written in {write_seconds:.0f} s",
          flush=True)

    budget = int(args.memory_gib * 2**30)
    streaming = StreamingConfig.for_memory(budget, 8 * chunk * (3 + args.x_dim))
    epochs: list[dict] = []
    last = [time.perf_counter()]

    def on_epoch(report):
        now = time.perf_counter()
        epochs.append({"epoch": report.epoch, "seconds": round(now - last[0], 1),
                       "validation_loss": round(report.validation_loss, 4), "peak_rss_gb": round(_peak_rss_gb(), 2)})
        last[0] = now
        print(json.dumps(epochs[-1]), flush=True)

    rss_before = _peak_rss_gb()
    trained = train_npe_streaming(task.prior, TableChunks(table, rows),
                                  training=TrainingConfig(max_num_epochs=args.epochs, batch_size=args.batch_size),
                                  streaming=streaming, on_epoch=on_epoch)
    return {"rows": rows, "x_dim": args.x_dim, "chunk_rows": chunk, "x_bytes_on_disk": on_disk,
            "x_gigabytes_float64": round(rows * args.x_dim * 8 / 1e9, 1), "write_seconds": round(write_seconds, 1),
            "memory_budget_gib": args.memory_gib, "streaming": dataclasses.asdict(streaming),
            "batch_size": args.batch_size, "threads": args.threads, "peak_rss_gb_before_training": round(rss_before, 2),
            "peak_rss_gb": round(_peak_rss_gb(), 2), "epochs": epochs, "training_seconds": round(trained.seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    eq = sub.add_parser("equivalence")
    eq.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    eq.add_argument("--rows", type=int, default=10_000)
    eq.add_argument("--chunk", type=int, default=1000)
    eq.add_argument("--observations", type=int, default=3)
    eq.add_argument("--held-out", type=int, default=2000, help="held-out HF pairs of the compared loss")
    eq.add_argument("--max-epochs", type=int, default=2**31 - 1)
    eq.add_argument("--workdir", default="/tmp/mfsbi-streaming")
    blob = sub.add_parser("equivalence-blob")
    blob.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    blob.add_argument("--rows", type=int, default=1000)
    blob.add_argument("--chunk", type=int, default=125)
    blob.add_argument("--buffer-chunks", type=int, default=4)
    blob.add_argument("--max-epochs", type=int, default=35)
    blob.add_argument("--batch-size", type=int, default=50)
    blob.add_argument("--observations", type=int, default=3)
    blob.add_argument("--samples", type=int, default=1000, help="posterior samples per observation")
    blob.add_argument("--held-out", type=int, default=500, help="held-out HF pairs of the compared loss")
    blob.add_argument("--loss-batch", type=int, default=250)
    blob.add_argument("--workdir", default="/tmp/mfsbi-streaming")
    big = sub.add_parser("beyond-memory")
    big.add_argument("--store", required=True)
    big.add_argument("--gigabytes", type=float, default=36.0)
    big.add_argument("--x-dim", type=int, default=4096)
    big.add_argument("--epochs", type=int, default=2)
    big.add_argument("--batch-size", type=int, default=200)
    big.add_argument("--memory-gib", type=float, default=1.0)
    big.add_argument("--threads", type=int, default=1)
    for p in (eq, blob, big):
        p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.time()
    run = {"equivalence": equivalence, "equivalence-blob": equivalence_blob, "beyond-memory": beyond_memory}[args.mode]
    result = run(args)
    result.update({"command": " ".join(["python", *sys.argv]), "seconds": round(time.time() - started, 1),
                   "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"})
    if args.mode == "equivalence-blob":  # the OU2 result keeps its keys
        result.update({"cpus": os.cpu_count(), "processor": _cpu_model(),
                       "torch": torch.__version__, "python": platform.python_version(),
                       "peak_rss_gb": round(_peak_rss_gb(), 2)})
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result.get("summary", {k: v for k, v in result.items() if k != "epochs"}), indent=1))


if __name__ == "__main__":
    main()

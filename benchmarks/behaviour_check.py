"""No change of behaviour (issue 32, item 7): the same stored arrays, weights and summary across a refactor.

For each pair ``BEFORE:AFTER`` of commits, runs the five commands of the house's first step (issue 13)
on both commits, each with ``--seed 0``, ``--n-workers 2`` and its own fresh store, and compares:

* every zarr array of the store (values, dtype, shape) and the attributes of every array and group,
  less :data:`EXCLUDED_ATTRS` (dates, host);
* every checkpoint ``*.pt`` under the store's ``artifacts/`` (``torch.load(weights_only=True)``,
  tensors with ``torch.equal``), less :data:`EXCLUDED_KEYS` (seconds, host);
* ``summary.json`` key for key, less :data:`EXCLUDED_KEYS`.

Each commit is checked out detached under ``--work`` and run with ``PYTHONPATH`` on its checkout
through ``benchmarks/_runner.run`` (this interpreter's environment). Commits that predate 37aea0b get
:data:`TARP_SEED_PATCH` (TARP's reference points seeded, as 37aea0b does with its default seed 0):
before it, MF-NPE's out-of-fold verdicts, which its choice reads, changed from run to run.
A commit's runs are kept under ``--work`` and reused (a pair sharing a commit, or a second call).

    python benchmarks/behaviour_check.py --pairs ceab0bc:e8e0e01 b91fbdc:da26407 da26407:5fd9ebd \
        31cf967:ce8cb8b --work /tmp/mfsbi-behaviour --out docs/behaviour-house.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import ROOT, protocol, run  # noqa: E402  (the benchmarks' folder is not a package)

__all__ = ["COMMANDS", "EXCLUDED_ATTRS", "EXCLUDED_ARRAYS", "EXCLUDED_KEYS", "compare_stores", "main"]

#: The five commands of the house's first step (issue 13), each run with --seed 0 --n-workers 2 --store.
COMMANDS: dict[str, list[str]] = {
    "quickstart-mf-npe": ["run", "--task", "ou2", "--method", "mf-npe", "--lf-sims", "10000", "--hf-sims", "100"],
    "npe": ["run", "--task", "ou2", "--method", "npe", "--hf-sims", "50"],
    "a-mf-tsnpe": ["run", "--task", "ou2", "--method", "a-mf-tsnpe", "--lf-sims", "2000", "--hf-sims", "40",
                   "--rounds", "2"],
    "tsnpe": ["run", "--task", "ou2", "--method", "tsnpe", "--hf-sims", "30", "--rounds", "2"],
    "mf-abc": ["run", "--task", "ou2", "--method", "mf-abc", "--lf-sims", "5000", "--hf-sims", "200"],
}
COMMON = ["--seed", "0", "--n-workers", "2"]

#: Summary and checkpoint keys left out: what the machine and the clock decide, not the code.
EXCLUDED_KEYS = {
    "seconds", "cpu_seconds", "simulator_seconds", "wall_seconds",  # time spent
    "finished_at", "started_at", "created_at", "updated_at",  # dates
    "worker",  # which Dask worker trained: the scheduler's placement
    "cpu_capability",  # the host's vector instructions
    "n_workers",  # worker count (the same on both sides, kept out as the brief asks)
    "store",  # the store's absolute path (each run has its own)
    "git_commit", "git_dirty", "commit",  # the code's id: differs by construction
}
#: Zarr attributes left out: dates and host identity (none else: every other attribute is compared).
EXCLUDED_ATTRS = {"created_at", "updated_at", "finished_at", "started_at", "host", "hostname", "pid"}
#: Arrays left out by name: ``elapsed`` holds each row's simulator seconds (the clock's).
EXCLUDED_ARRAYS = {"elapsed"}

#: 37aea0b's change to calibration_from_samples, with its default seed 0.
TARP_SEED_OLD = "    return _from_samples(samples, theta, samples.shape[0], level)\n"
TARP_SEED_PATCH = ("    with torch.random.fork_rng(devices=[]):\n"
                   "        torch.manual_seed(0)\n"
                   "        return _from_samples(samples, theta, samples.shape[0], level)\n")
TARP_SEED_COMMIT = "37aea0b"


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def checkout(commit: str, work: Path) -> tuple[Path, str, bool | None]:
    """The commit checked out detached under ``work``, patched if it predates 37aea0b.

    Returns:
        Its folder, the full commit id, and whether the TARP patch was applied (``None``: needed
        but the file differs, not applied).
    """
    sha = git("rev-parse", commit)
    folder = work / sha[:7] / "src"
    if not folder.exists():
        git("worktree", "add", "--detach", str(folder), sha)
    needs = subprocess.run(["git", "merge-base", "--is-ancestor", TARP_SEED_COMMIT, sha], cwd=ROOT).returncode != 0
    if not needs:
        return folder, sha, False
    source = folder / "mfsbi" / "inference" / "calibration.py"
    text = source.read_text()
    if TARP_SEED_PATCH in text:
        return folder, sha, True
    if text.count(TARP_SEED_OLD) != 1:
        return folder, sha, None
    source.write_text(text.replace(TARP_SEED_OLD, TARP_SEED_PATCH))
    return folder, sha, True


def run_commit(commit: str, work: Path, names: list[str], rerun: bool) -> dict[str, Any]:
    """Runs the commands ``names`` on one commit (each in its own fresh store); reuses finished runs.

    Returns:
        The commit, whether it was patched, and every finished run of it under ``work`` (``runs``).
    """
    folder, sha, patched = checkout(commit, work)
    env = {**os.environ, "PYTHONPATH": str(folder)}
    runs = {}
    for name, args in COMMANDS.items():
        store = work / sha[:7] / "stores" / name
        record_file = work / sha[:7] / f"{name}.json"
        if record_file.exists() and not (rerun and name in names):
            record = json.loads(record_file.read_text())
            if record["returncode"] == 0 or name not in names:
                runs[name] = record
                continue
        if name not in names:
            continue
        shutil.rmtree(store, ignore_errors=True)
        store.parent.mkdir(parents=True, exist_ok=True)
        print(f"{sha[:7]} {name} ...", file=sys.stderr, flush=True)
        done = run([*args, *COMMON, "--store", store], env=env, cwd=folder, log=record_file.with_suffix(".log"))
        record = {"command": " ".join(["mfsbi", *args, *COMMON, "--store", str(store)]), "store": str(store),
                  "returncode": done.returncode, "wall_seconds": done.wall_seconds}
        record_file.write_text(json.dumps(record, indent=1))
        print(f"{sha[:7]} {name}: exit {done.returncode}, {done.wall_seconds:.0f} s", file=sys.stderr, flush=True)
        runs[name] = record
    return {"commit": sha, "patched": patched, "runs": runs}


def _arrays(store: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    # The artifacts' files (summary.json, *.pt) are not zarr nodes: zarr warns once per file.
    warnings.filterwarnings("ignore", message="Object at .* is not recognized", category=UserWarning)
    root = zarr.open_group(str(store), mode="r")
    found[""] = root
    for path, node in root.members(max_depth=None):
        found[path] = node
    return found


def _attrs(node: Any) -> dict:
    return {k: v for k, v in dict(node.attrs).items() if k not in EXCLUDED_ATTRS}


def compare_stores(before: Path, after: Path) -> dict[str, Any]:
    """Every zarr array (values) and every node's attributes of two stores."""
    a, b = _arrays(before), _arrays(after)
    arrays = sorted(p for p, n in {**a, **b}.items() if isinstance(n, zarr.Array)
                    and p.rsplit("/", 1)[-1] not in EXCLUDED_ARRAYS)
    differing, attrs = [], []
    for path in arrays:
        if path not in a or path not in b:
            differing.append(f"{path}: only in {'after' if path not in a else 'before'}")
            continue
        x, y = a[path][...], b[path][...]
        if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            differing.append(f"{path}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
                             + (f", {int(np.sum(x != y))} values differ" if x.shape == y.shape else ""))
    for path in sorted(set(a) & set(b)):
        attrs += [f"{path or '/'}{d['key']}: {d['before']!r} vs {d['after']!r}"
                  for d in diff(_attrs(a[path]), _attrs(b[path]), "", set())]
    return {"arrays": len(arrays), "arrays_identical": len(arrays) - len(differing), "arrays_differing": differing,
            "attrs_differing": attrs}


def compare_checkpoints(before: Path, after: Path) -> dict[str, Any]:
    """Every ``*.pt`` under the stores' ``artifacts/``: tensors equal, other entries equal."""
    a = {p.relative_to(before).as_posix() for p in (before / "artifacts").rglob("*.pt")}
    b = {p.relative_to(after).as_posix() for p in (after / "artifacts").rglob("*.pt")}
    differing = [f"{p}: only in {'after' if p not in a else 'before'}" for p in sorted(a ^ b)]
    for rel in sorted(a & b):
        out = [d["key"] for d in diff(torch.load(before / rel, weights_only=True),
                                      torch.load(after / rel, weights_only=True), "", set())]
        differing += [f"{rel}: {d}" for d in out[:10]] + ([f"{rel}: ... {len(out) - 10} more"] if len(out) > 10 else [])
    files = sorted(a | b)
    bad = {d.split(":", 1)[0] for d in differing}
    return {"checkpoints": len(files), "checkpoints_identical": len(files) - len(bad), "checkpoints_differing":
            differing}


def diff(x: Any, y: Any, path: str, excluded: set[str]) -> list[dict]:
    """Key paths where two summaries or checkpoints differ (``excluded`` collects the left-out paths seen).

    Tensors are equal with the same dtype, shape and values (``torch.equal``); NaN equals NaN.
    """
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        same = (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype == y.dtype
                and x.shape == y.shape and torch.equal(x, y))
        return [] if same else [{"key": path, "before": "tensor", "after": "tensor"}]
    if isinstance(x, dict) and isinstance(y, dict):
        found = []
        for k in sorted(set(x) | set(y)):
            if k in EXCLUDED_KEYS:
                excluded.add(f"{path}/{k}")
            elif k not in x or k not in y:
                found.append({"key": f"{path}/{k}", "before": x.get(k, "<absent>"), "after": y.get(k, "<absent>")})
            else:
                found += diff(x[k], y[k], f"{path}/{k}", excluded)
        return found
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and len(x) == len(y):
        return [d for i, (u, v) in enumerate(zip(x, y)) for d in diff(u, v, f"{path}/{i}", excluded)]
    same = x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
    return [] if same else [{"key": path, "before": x, "after": y}]


def _leaves(value: Any) -> int:
    """How many values a JSON document holds outside :data:`EXCLUDED_KEYS` (what the summary check compares)."""
    if isinstance(value, dict):
        return sum(_leaves(v) for k, v in value.items() if k not in EXCLUDED_KEYS)
    if isinstance(value, list):
        return sum(_leaves(v) for v in value)
    return 1


def _summary(store: Path) -> dict:
    found = sorted((store / "artifacts").glob("*/*/summary.json"))
    return json.loads(found[-1].read_text()) if len(found) == 1 else {str(p.relative_to(store)): json.loads(
        p.read_text()) for p in found}


def compare_pair(before: dict, after: dict) -> dict[str, Any]:
    """The five commands of two commits, command by command."""
    commands, excluded = {}, set()
    for name in COMMANDS:
        rb, ra = before["runs"].get(name), after["runs"].get(name)
        if rb is None or ra is None:
            commands[name] = {"error": "not run on " + " and ".join(
                c["commit"][:7] for c, r in ((before, rb), (after, ra)) if r is None)}
            continue
        if rb["returncode"] or ra["returncode"]:
            commands[name] = {"error": f"exit {rb['returncode']} before, {ra['returncode']} after"}
            continue
        sb, sa = Path(rb["store"]), Path(ra["store"])
        commands[name] = {**compare_stores(sb, sa), **compare_checkpoints(sb, sa),
                          "summary_values_compared": _leaves(_summary(sb)),
                          "summary_differences": diff(_summary(sb), _summary(sa), "", excluded)}
    return {"before": before["commit"], "after": after["commit"], "commands": commands,
            "summary_keys_excluded_seen": sorted({re.sub(r"/\d+(?=/|$)", "/*", k) for k in excluded})}


def table(pairs: list[dict]) -> str:
    """A markdown table: per pair and command, arrays and checkpoints identical, summary differences."""
    rows = ["| pair | command | arrays identical | checkpoints identical | attrs differing "
            "| summary keys differing, of values compared |",
            "|---|---|---|---|---|---|"]
    for p in pairs:
        for name, c in p["commands"].items():
            if "error" in c:
                rows.append(f"| {p['before'][:7]} -> {p['after'][:7]} | {name} | {c['error']} | | | |")
                continue
            keys = ", ".join(d["key"] for d in c["summary_differences"][:4]) or "none"
            more = len(c["summary_differences"]) - 4
            rows.append(f"| {p['before'][:7]} -> {p['after'][:7]} | {name} | {c['arrays_identical']}/{c['arrays']} "
                        f"| {c['checkpoints_identical']}/{c['checkpoints']} | {len(c['attrs_differing'])} "
                        f"| {keys}{f' (+{more})' if more > 0 else ''} of {c['summary_values_compared']} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", required=True, help="BEFORE:AFTER commits")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mfsbi-behaviour"),
                        help="where the commits are checked out and their stores written")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "behaviour-house.json")
    parser.add_argument("--commands", nargs="+", choices=list(COMMANDS), default=list(COMMANDS),
                        help="which of the five commands to run now (runs already under --work are compared too)")
    parser.add_argument("--no-run", action="store_true", help="run nothing: compare the runs already under --work")
    parser.add_argument("--rerun", action="store_true", help="rerun --commands already finished under --work")
    parser.add_argument("--cleanup", action="store_true", help="remove the checkouts (git worktree) at the end")
    args = parser.parse_args()
    pairs = [tuple(p.split(":")) for p in args.pairs]
    if any(len(p) != 2 for p in pairs):
        parser.error("--pairs: each as BEFORE:AFTER, e.g. ceab0bc:e8e0e01")
    args.work.mkdir(parents=True, exist_ok=True)
    commits: dict[str, dict] = {}
    for c in dict.fromkeys(c for p in pairs for c in p):
        commits[c] = run_commit(c, args.work, [] if args.no_run else args.commands, args.rerun)
    result = {"protocol": protocol(args), "commands": {n: " ".join(["mfsbi", *a, *COMMON, "--store", "STORE"])
                                                       for n, a in COMMANDS.items()},
              "excluded": {"summary_and_checkpoint_keys": sorted(EXCLUDED_KEYS), "zarr_attrs": sorted(EXCLUDED_ATTRS),
                           "zarr_arrays": sorted(EXCLUDED_ARRAYS)},
              "tarp_seed_patch": {"before_37aea0b": {"old": TARP_SEED_OLD, "new": TARP_SEED_PATCH},
                                  "patched": {c["commit"][:7]: c["patched"] for c in commits.values()}},
              "runs": {c["commit"][:7]: c["runs"] for c in commits.values()},
              "pairs": [compare_pair(commits[b], commits[a]) for b, a in pairs]}
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(table(result["pairs"]))
    if args.cleanup:
        for c in commits.values():
            git("worktree", "remove", "--force", str(args.work / c["commit"][:7] / "src"))


if __name__ == "__main__":
    main()

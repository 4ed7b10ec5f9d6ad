"""Full-disk drills (kinds ``disk-full-lf``, ``disk-full-hf`` of benchmarks/fault_injection.py).

`mfsbi run` writes its store on a small file system of its own (tmpfs, else a loop device: root
only, benchmarks/_small_filesystem.py); once a random 5-95 % of the phase's rows are stored, a file
fills the file system to the last byte. Checked, besides the checks of every drill (rows lost,
duplicates, budget overruns, same result as an uninterrupted run):

* the run stops (exit code not 0) with exactly one ``error:`` line, naming the store and the space
  the failed write needed;
* ``mfsbi verify`` passes on the store right after the stop;
* once the file is removed, the same command (no ``--resume``) finishes.

Where nothing can be mounted the drill is not run: its outcome says why (``detail``: ``skipped: ...``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

import _runner as runner
from _small_filesystem import NoSmallFilesystem, fill, free_bytes, small_filesystem
from fault_injection import AMORTIZED, Outcome, _check, _command, _env, _log, _safe_tables, _stored, _wait_until

__all__ = ["DISK_KINDS", "SIZE_MIB", "disk_full_drill", "disk_table"]

DISK_KINDS = ("disk-full-lf", "disk-full-hf")
# Room for the whole store of the AMORTIZED run (1.9 MiB: `du -sh` of a finished one, 2026-12-07)
# several times over: the run must finish once the filler is gone.
SIZE_MIB = 16
# Slower than the kill drills' (LF 4 000 rows in ~8 s, HF 60 in ~6 s on 2 workers): with theirs the
# LF phase lasted ~2 s and a fill meant for mid-LF landed after it (seen: the first drill stopped on
# an artifact of the pretraining). Delays only sleep: the numbers are the reference run's.
DISK_SLOW = "lf_delay=0.004,hf_delay=0.2"
# LF chunks of 200 rows, not 1 000: with 4 LF chunks on 2 workers the LF writes come in two pairs,
# and a fill after the first pair's poll often landed after the second (seen twice). The chunking
# differs from the kill drills' reference run, so the metrics are not compared (same result: -).
CONFIG = {"lf_chunk_size": 200}


def disk_full_drill(kind: str, repeat: int, workdir: Path, rng: np.random.Generator) -> Outcome:
    """One run whose store's file system fills up mid-phase; then the same command after freeing it."""
    if kind not in DISK_KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {DISK_KINDS}")
    mount = workdir / f"{kind}-{repeat}-fs"
    try:
        with small_filesystem(mount, SIZE_MIB) as filesystem:
            outcome = _drill(kind, repeat, workdir, mount, rng)
            outcome.extra["filesystem"] = f"{filesystem} {SIZE_MIB} MiB"
            return outcome
    except NoSmallFilesystem as reason:
        return Outcome(kind, repeat, detail=f"skipped: {reason}")


def _drill(kind: str, repeat: int, workdir: Path, mount: Path, rng: np.random.Generator) -> Outcome:
    started = time.perf_counter()
    store, log, errors = mount / "store", workdir / f"{kind}-{repeat}.log", workdir / f"{kind}-{repeat}.err"
    env = _env(DISK_SLOW, log, workdir / "home")
    config = workdir / "disk-full.json"
    config.write_text(json.dumps(CONFIG))
    args = [*AMORTIZED, "--config", str(config)]
    with open(errors, "wb") as stderr:
        process = runner.start(_command(store, args), env=env, stderr=stderr)
        target = float(rng.uniform(0.05, 0.95))
        fidelity, total = ("lf", 4000) if kind == "disk-full-lf" else ("hf", 60)
        hit = _wait_until(process, lambda: _stored(store, lambda k: k.endswith(f"/{fidelity}")) >= target * total)
        if not hit:
            process.kill()
            process.wait()
            return Outcome(kind, repeat, detail=f"missed the fill point ({target:.2f})")
        free = free_bytes(mount)
        filled = fill(mount)
        rc = process.wait(timeout=900)
    text = errors.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    stop_line = lines[-1] if lines else ""
    named = len(lines) == 1 and str(store) in stop_line and "needed about" in stop_line
    time.sleep(0.5)  # any orphan of the stopped run gets to show itself in the log and the store
    verify = runner.run(["verify", store])
    before, stop_at = _safe_tables(store), len(_log(log))
    (mount / "filler").unlink()
    again = runner.run(_command(store, args), env=env, timeout=900)
    outcome = _check(kind, repeat, store, log, before, stop_at, None, started, [again.returncode])
    outcome.extra = {"fill_at": round(target, 3), "free_before_fill": free, "filler_bytes": filled, "stop_rc": rc,
                     "stop_line": stop_line, "stopped_with_one_line": rc != 0 and named,
                     # The write that found the disk full was the phase's own table's (mid-phase).
                     "stopped_mid_phase": f"table 'ou2-faulty/{fidelity}'" in stop_line,
                     "verified_after_stop": verify.returncode == 0, "traceback_printed": "Traceback" in text}
    if verify.returncode:
        outcome.detail += f"verify after the stop: {verify.stdout.strip()[-300:]} "
    if not outcome.extra["stopped_with_one_line"]:
        outcome.detail += f"stop (rc {rc}): {lines[-3:]} "
    if again.returncode:
        outcome.detail += again.stderr[-300:]
    return outcome


def disk_table(outcomes: list[Outcome]) -> str:
    """The full-disk facts of docs/reliability.md, per kind."""
    lines = ["| fault | drills | stopped mid-phase | stopped with one line naming the store and the space "
             "| store verified after "
             "the stop | same command finished after freeing space | rows lost | duplicates | budget overruns "
             "| in-flight work re-run once | same result as uninterrupted |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind in DISK_KINDS:
        group = [o for o in outcomes if o.kind == kind and not o.detail.startswith("skipped")]
        if not group:
            continue
        same = [o.same_result for o in group if o.same_result is not None]
        lines.append(f"| {kind} | {len(group)} | {sum(o.extra.get('stopped_mid_phase', False) for o in group)} "
                     f"| {sum(o.extra.get('stopped_with_one_line', False) for o in group)} "
                     f"| {sum(o.extra.get('verified_after_stop', False) for o in group)} "
                     f"| {sum(o.completed for o in group)} | {sum(o.rows_lost for o in group)} "
                     f"| {sum(o.duplicates for o in group)} | {sum(o.budget_overruns for o in group)} "
                     f"| {sum(o.rerun_in_flight for o in group)} | {f'{sum(same)}/{len(same)}' if same else '-'} |")
    return "\n".join(lines)

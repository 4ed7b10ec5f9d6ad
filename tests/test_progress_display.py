"""Progress where there is no terminal: plain lines in Prefect's log format, at a steady interval and at each step's end."""

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from mfsbi.app.cli import app
from mfsbi.app.progress_display import PlainProgress, progress_display
from mfsbi.runtime import progress

ROOT = Path(__file__).resolve().parents[1]
# Prefect's console format: "02:40:28.753 | INFO    | mfsbi.progress - <message>".
PREFECT_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| INFO    \| mfsbi\.progress - (?P<message>.+)$")


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _epoch(epoch, best_epoch, member=0, label="train on 40 HF"):
    return {"label": label, "member": member, "epoch": epoch, "training_loss": 1.5, "validation_loss": 2.25,
            "best_validation_loss": 2.0, "best_epoch": best_epoch, "stop_after_epochs": 20}


def test_rows_get_a_rate_based_time_left_and_one_line_at_the_end():
    lines, clock = [], FakeClock()
    plain = PlainProgress(lines.append, clock=clock)
    plain.step("simulate HF (ou2)", 0, 1000)
    plain.tick()
    assert lines == ["simulate HF (ou2): 0/1000 (0 %) · elapsed 0:00:00"]  # no rate yet: no estimate
    clock.now += 30
    plain.step("simulate HF (ou2)", 250, 1000)
    plain.tick()
    assert lines[-1] == "simulate HF (ou2): 250/1000 (25 %) · elapsed 0:00:30 · left ~0:01:30"
    clock.now += 90
    plain.step("simulate HF (ou2)", 1000, 1000)
    assert lines[-1] == "simulate HF (ou2): 1000/1000 (100 %) · done in 0:02:00"
    plain.step("simulate HF (ou2)", 1000, 1000)
    plain.tick()
    assert len(lines) == 3  # the end once; a finished step is not repeated


def test_a_resumed_step_judges_its_rate_by_the_rows_done_now():
    lines, clock = [], FakeClock()
    plain = PlainProgress(lines.append, clock=clock)
    plain.step("simulate LF (lf)", 600, 1000)  # 600 were in the store already
    clock.now += 10
    plain.step("simulate LF (lf)", 700, 1000)
    plain.tick()
    assert lines[-1].endswith("elapsed 0:00:10 · left ~0:00:30")


def test_a_training_shows_its_epoch_and_a_lower_bound_on_the_time_left():
    lines, clock = [], FakeClock()
    plain = PlainProgress(lines.append, max_epochs=50, clock=clock)
    plain.epoch(_epoch(1, 1))  # before its step is known: ignored, as by the bars
    plain.step("train on 40 HF", 0, 2)
    clock.now += 60  # start-up: loading the data, not an epoch's pace
    plain.epoch(_epoch(1, 1, member=0))
    plain.epoch(_epoch(1, 1, member=1))
    plain.tick()  # one epoch seen: no pace yet
    assert lines == ["train on 40 HF: 0/2 · epoch 1 · train 1.500 · val 2.250 (best 2.000 @ 1) · elapsed 0:01:00"]
    clock.now += 18
    plain.epoch(_epoch(10, 8, member=0))  # 2 s an epoch; stops at epoch 28 at the soonest: 36 s left
    plain.epoch(_epoch(4, 4, member=1))  # 6 s an epoch; at epoch 24: 120 s left, the step's least
    plain.tick()
    assert lines[-1] == ("train on 40 HF: 0/2 · epoch 10 · train 1.500 · val 2.250 (best 2.000 @ 8) · "
                         "elapsed 0:01:18 · left ≥0:02:00")
    capped = PlainProgress(lines.append, max_epochs=20, clock=clock)  # --max-num-epochs 20 comes first
    capped.step("train on 40 HF", 0, 1)
    capped.epoch(_epoch(1, 1))
    clock.now += 9
    capped.epoch(_epoch(10, 8))
    capped.tick()
    assert lines[-1].endswith("elapsed 0:00:09 · left ≥0:00:10")


def test_a_step_run_again_starts_over():
    lines, clock = [], FakeClock()
    plain = PlainProgress(lines.append, clock=clock)
    plain.step("evaluate", 0, 1)
    plain.step("evaluate", 1, 1)
    clock.now += 50
    plain.step("evaluate", 0, 1)
    clock.now += 2
    plain.step("evaluate", 1, 1)
    assert lines == ["evaluate: 1/1 (100 %) · done in 0:00:00", "evaluate: 1/1 (100 %) · done in 0:00:02"]


def test_a_console_that_is_no_terminal_gets_prefect_style_lines_at_the_interval():
    out = Console(file=io.StringIO(), force_terminal=False)
    with progress_display(out, interval=0.05):
        progress.report("simulate HF (ou2)", 0, 10)
        time.sleep(0.3)
        progress.report("simulate HF (ou2)", 10, 10)
    progress.report("simulate HF (ou2)", 0, 10)  # after the display: nobody listens
    lines = out.file.getvalue().splitlines()
    messages = [PREFECT_LINE.match(line)["message"] for line in lines]
    assert len(messages) >= 3 and all(m.startswith("simulate HF (ou2): 0/10 (0 %) · elapsed") for m in messages[:-1])
    assert messages[-1].startswith("simulate HF (ou2): 10/10 (100 %) · done in 0:00:00")


def test_a_terminal_gets_the_bars():
    out = Console(file=io.StringIO(), force_terminal=True, width=120)
    with progress_display(out, interval=0.01):
        progress.report("simulate HF (ou2)", 5, 10)
        time.sleep(0.1)
    text = out.file.getvalue()
    assert "━" in text and "5/10" in text and "mfsbi.progress" not in text


def test_the_cli_prints_plain_lines_when_stdout_is_no_terminal(tmp_path, prefect_server, capsys, monkeypatch):
    from mfsbi.app.cli import _run_with_services
    from mfsbi.app.inputs import build_config

    monkeypatch.setenv("MFSBI_PROGRESS_INTERVAL", "0.05")
    config = build_config(task="ou2", method="npe", hf_sims=10, store=str(tmp_path / "store"), max_num_epochs=7)

    def flow(config):  # a flow's progress, without the flow
        progress.report("simulate HF (ou2)", 0, 10)
        time.sleep(0.3)
        progress.report("simulate HF (ou2)", 10, 10)
        return "summary"

    assert _run_with_services(config, False, flow) == "summary"
    lines = capsys.readouterr().out.splitlines()  # pytest's capture: not a terminal
    assert lines[0].startswith("Prefect API: ")
    messages = [PREFECT_LINE.match(line)["message"] for line in lines[1:]]
    assert len(messages) >= 3 and messages[-1].startswith("simulate HF (ou2): 10/10 (100 %) · done in 0:00:00")


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan"])
def test_a_bad_interval_is_refused_in_one_line(tmp_path, monkeypatch, value):
    monkeypatch.setenv("MFSBI_PROGRESS_INTERVAL", value)
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["run", "--store", str(store), "--hf-sims", "10"], catch_exceptions=False)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: MFSBI_PROGRESS_INTERVAL: {value!r} is not a positive number of seconds; give e.g. 30 (or unset it)"]
    assert not store.exists()


# A real run in its own process: 113-123 s measured here at a load average of 12-17 on 2 cores; the CLI's
# wiring is also checked fast above (test_the_cli_prints_plain_lines_when_stdout_is_no_terminal).
@pytest.mark.slow
def test_mfsbi_run_with_stdout_piped_logs_plain_progress_lines(tmp_path, prefect_server):
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "MFSBI_PROGRESS_INTERVAL": "0.1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("COLUMNS", None)
    run = subprocess.run(
        [sys.executable, "-m", "mfsbi.app.cli", "run", "--task", "ou2", "--method", "npe", "--hf-sims", "100",
         "--num-test-observations", "0", "--num-nltp-pairs", "0", "--max-num-epochs", "20", "--n-workers", "1",
         "--store", str(tmp_path / "store")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=240, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "\x1b" not in run.stdout and not re.search(r"━.*\d+/\d+", run.stdout)  # no escapes, no bars
    messages = [m["message"] for m in map(PREFECT_LINE.match, run.stdout.splitlines()) if m]
    ends = [m for m in messages if re.search(r" · done in \d+:\d\d:\d\d$", m)]  # one per step, in order
    assert [m.split(":")[0] for m in ends] == ["simulate HF (ou2)", "train on 100 HF", "evaluate"], messages
    assert ends[0].startswith("simulate HF (ou2): 100/100 (100 %) · done in ")
    assert re.fullmatch(r"train on 100 HF: 1/1 · epoch \d+ · train .* \(best .*\) · done in .*", ends[1])
    training = [m for m in messages if m.startswith("train on 100 HF: 0/1 · epoch ")]  # every tick's line
    assert training and all(re.search(r" · elapsed \d+:\d\d:\d\d( · |$)", m) for m in training), training
    assert any(re.search(r" · left ≥\d+:\d\d:\d\d$", m) for m in training), training

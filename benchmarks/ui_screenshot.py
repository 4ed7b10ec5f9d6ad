"""Check with a real headless browser that the Prefect UI shows an mfsbi run's pictures offline.

A run publishes its pair plot and loss curves as Prefect image artifacts whose ``image_url`` is a
``data:image/png;base64,...`` URL (mfsbi/flows/run_artifacts.py ``publish_image``), so the UI needs no internet
to draw them. This script proves it end to end: it starts (or reuses, when ``PREFECT_API_URL`` is
set) a Prefect server, runs ``mfsbi run --task ou2 --method npe --hf-sims 20`` against it, finds the
flow run and its image artifacts through the API, then loads the UI pages in Chromium and checks the
*rendered* DOM. An artifact page passes when it holds an ``<img>`` whose ``src`` is exactly the data
URL the run published (the Vue app fetched the artifact and drew it); the flow-run page is loaded
too, as a screenshot and as a control (Prefect 3.9 shows artifacts there only as markers on the run
graph and in an "Artifacts" tab, so it holds no picture and its count is expected to be 0).

Needs the Debian bookworm package ``chromium-headless-shell`` (``apt-get install
chromium-headless-shell``, binary ``/usr/bin/chromium-headless-shell``). Run from the repository root:

    python benchmarks/ui_screenshot.py --out docs/ui-screenshot.json --screenshots docs/img

Exits 1 with a one-line reason when the check fails.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import _runner as runner

RUN_ARGS = ["--task", "ou2", "--method", "npe", "--hf-sims", "20", "--json"]  # --json: the run's name
# A Vue single-page app: the virtual-time budget lets its API calls and rendering finish before
# Chromium dumps the DOM and takes the screenshot (15 s of virtual time took 2-5 s of wall time here).
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
                 "--window-size=1400,1800", "--run-all-compositor-stages-before-draw"]
DATA_IMG = re.compile(r'<img\b[^>]*?\bsrc="(data:image/png[^"]*)"')


class CheckFailed(RuntimeError):
    """The UI did not show the pictures; the message is the one-line reason."""


def browse(chromium: str, url: str, screenshot: Path) -> tuple[str, float]:
    """Loads ``url`` once; returns the rendered DOM (and writes the screenshot) and the seconds taken."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mfsbi-chromium-") as profile:  # no shared profile lock
        done = subprocess.run([chromium, *BROWSER_FLAGS, f"--user-data-dir={profile}",
                               f"--screenshot={screenshot}", "--dump-dom", url],
                              capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise CheckFailed(f"{chromium} exited with {done.returncode} on {url}: {done.stderr.strip()[-200:]}")
    return done.stdout, time.monotonic() - started


def find_run(started: datetime):
    """The newest top-level flow run begun since ``started``, and its image artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType,
                                                FlowRunFilter, FlowRunFilterParentTaskRunId,
                                                FlowRunFilterStartTime)
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(is_null_=True),
                                          start_time=FlowRunFilterStartTime(after_=started)),
            sort=FlowRunSort.START_TIME_DESC, limit=1)
        if not runs:
            raise CheckFailed(f"no top-level flow run started after {started.isoformat()} on the server")
        images = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id]), type=ArtifactFilterType(any_=["image"])))
    if not images:
        raise CheckFailed(f"flow run {runs[0].id} ({runs[0].name}) published no image artifact")
    return runs[0], images


def check(args, api: str, report: dict) -> None:
    """Runs the flow, loads the pages and fills ``report``; raises CheckFailed with the reason."""
    ui = api.removesuffix("/api")
    # The UI calls the API URL it is served in /ui-settings; a wrong one (the 4200 default) leaves
    # every page empty with a "Can't connect to Server API" toast, whatever the artifacts hold.
    with urllib.request.urlopen(f"{ui}/ui-settings", timeout=10) as response:
        report["ui_api_url"] = json.load(response)["api_url"]
    if report["ui_api_url"] not in ("/api", api):
        raise CheckFailed(f"the UI at {ui} calls the API at {report['ui_api_url']}, not {api}")

    store = args.store or str(Path(args.tmp) / "store")
    started = datetime.now(timezone.utc) - timedelta(seconds=5)  # slack for the server's timestamps
    done = runner.run(["run", *RUN_ARGS, "--store", store], env={**os.environ, "PREFECT_API_URL": api})
    report["run"] = {"command": done.text, "seconds": round(done.wall_seconds, 1), "commit": done.commit}
    if done.returncode != 0:
        raise CheckFailed(f"mfsbi run exited with {done.returncode}: {done.stderr.strip()[-300:]}")
    run_name = done.summary["run"]  # e.g. npe-hf20-seed0, the prefix of its artifact keys
    flow_run, images = find_run(started)
    report["flow_run"] = {"id": str(flow_run.id), "name": flow_run.name, "state": flow_run.state_name, "run": run_name,
                          "image_artifacts": [a.key for a in images]}
    print(f"flow run {flow_run.id} ({flow_run.name}, {flow_run.state_name}): "
          f"{len(images)} image artifact(s) in {report['run']['seconds']} s")

    pages = [("flow-run", f"{ui}/runs/flow-run/{flow_run.id}", None)]
    pages += [(f"artifact-{a.key.removeprefix(run_name + '-').removesuffix('-png')}",
               f"{ui}/artifacts/artifact/{a.id}", a.data) for a in images]
    shots = Path(args.screenshots)
    shots.mkdir(parents=True, exist_ok=True)
    for name, url, published in pages:
        screenshot = shots / f"prefect-ui-{name}.png"
        screenshot.unlink(missing_ok=True)  # a stale file must not pass for a new one
        dom, seconds = browse(args.chromium, url, screenshot)
        sources = [html.unescape(src) for src in DATA_IMG.findall(dom)]
        page = {"page": name, "url": url, "data_url_images": len(sources), "seconds": round(seconds, 1),
                "screenshot": str(screenshot), "screenshot_bytes": screenshot.stat().st_size
                if screenshot.exists() else 0, "api_unreachable_toast": "Can't connect to Server API" in dom}
        if published is not None:  # an artifact page: its own picture, byte for byte
            page["shows_published_image"] = published in sources
        report["pages"].append(page)
        print(f"{name}: {len(sources)} data-URL <img> in the DOM, screenshot {screenshot} "
              f"({page['screenshot_bytes']} bytes), {page['seconds']} s"
              + (", API unreachable" if page["api_unreachable_toast"] else ""))

    for page in report["pages"]:
        if not page["screenshot_bytes"]:
            raise CheckFailed(f"no screenshot of {page['url']}")
        if page.get("shows_published_image") is False:
            raise CheckFailed(f"{page['url']} rendered {page['data_url_images']} data-URL image(s), "
                              "none of them the published picture")
    report["image_page"] = [p["page"] for p in report["pages"] if p.get("shows_published_image")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="zarr store of the run (default: a temporary folder)")
    parser.add_argument("--out", default="docs/ui-screenshot.json", help="JSON summary")
    parser.add_argument("--screenshots", default="docs/img", help="folder of the PNG screenshots")
    parser.add_argument("--chromium", default="/usr/bin/chromium-headless-shell", help="headless Chromium")
    args = parser.parse_args()

    from mfsbi.app.prefect_server import ServiceError, quiet_prefect_environment

    quiet_prefect_environment()  # before Prefect is imported: it reads its settings at import
    from prefect.settings import PREFECT_API_URL, temporary_settings

    clock = time.monotonic()
    report: dict = {"pages": [], "browser_flags": BROWSER_FLAGS}
    try:
        version = subprocess.run([args.chromium, "--version"], capture_output=True, text=True, timeout=30)
        report["chromium"] = version.stdout.strip()
    except OSError as error:
        print(f"FAIL: cannot run {args.chromium} ({error}); apt-get install chromium-headless-shell")
        return 1
    with tempfile.TemporaryDirectory(prefix="mfsbi-ui-") as tmp:
        args.tmp = tmp
        # A fresh embedded server (not the one of ~/.mfsbi) unless MFSBI_HOME or PREFECT_API_URL is set.
        os.environ.setdefault("MFSBI_HOME", str(Path(tmp) / "home"))
        report["reused_server"] = bool(os.environ.get("PREFECT_API_URL"))
        try:
            with runner.prefect_server() as api, temporary_settings(updates={PREFECT_API_URL: api}):
                report["api_url"] = api
                check(args, api, report)
            report["ok"], report["reason"] = True, None
        except (CheckFailed, ServiceError, OSError, subprocess.TimeoutExpired) as failure:
            report["ok"], report["reason"] = False, " ".join(str(failure).split())  # one line
    report["seconds"] = round(time.monotonic() - clock, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if not report["ok"]:
        print(f"FAIL: {report['reason']}")
        return 1
    print(f"OK: {', '.join(report['image_page'])} rendered the published picture(s); "
          f"{report['seconds']} s; summary {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

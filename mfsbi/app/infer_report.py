"""The nightly inference report: a JSON file per night in the store, a Prefect markdown artifact, the plots.

A night's report (``artifacts/inference/reports/<YYYY-MM-DD>.json``, UTC) holds every observation
inferred that night, over all passes of the night (a second pass adds its new ones), and the files
that failed in the night's latest pass. The Prefect artifact of a night has one key
(``infer-<store>-<night>``): a later pass the same night adds a version of it, not a second report.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import re
from collections.abc import Sequence

import numpy as np

__all__ = ["night_markdown", "posterior_png", "publish_night", "row_cells", "write_night"]

REPORTS = "inference/reports"


def posterior_png(samples: np.ndarray, names: Sequence[str], title: str) -> bytes:
    """One histogram per parameter of the posterior samples, with their mean; PNG bytes."""
    import matplotlib  # deferred: matplotlib costs 0.2 s at every CLI start (app.infer loads this module)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    for j, axis in enumerate(axes.flat):
        if j >= len(names):
            axis.axis("off")
            continue
        axis.hist(samples[:, j], bins=40, color="tab:blue", alpha=0.8)
        axis.axvline(samples[:, j].mean(), color="black", lw=1)
        axis.set_title(names[j], fontsize=9)
        axis.tick_params(labelsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=90)
    plt.close(figure)
    return out.getvalue()


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def row_cells(row: dict) -> tuple[str, str, str, str]:
    """(observation, run, posterior mean ± sd per parameter, ppc verdict or the error) of a report row."""
    if row["status"] == "failed":
        return row["file"], "-", "-", row["error"]
    estimates = ", ".join(f"{name} {_number(m)} ± {_number(s)}"
                          for name, m, s in zip(row["parameters"], row["mean"], row["sd"]))
    ppc = row.get("ppc")
    verdict = "not run (--ppc-sims 0)" if ppc is None else f"{ppc['status']} ({ppc['num_draws']} draws)"
    return f"{row['file']} ({row['observation']})", row["run"], estimates, verdict


def write_night(handle, report: dict) -> dict:  # noqa: ANN001 -- a writable SimulationStore
    """Merges a pass into its night's report in the store (whole file, atomically); returns the night's report."""
    path = f"{REPORTS}/{report['night']}.json"
    try:
        night = json.loads(handle.read_artifact(path))
    except (FileNotFoundError, ValueError):
        night = {"night": report["night"], "store": report["store"], "observations": [], "failed": [], "passes": 0}
    kept = {(r["observation"], r["run"]): r for r in night["observations"]}
    for row in report["observations"]:
        if row["status"] == "new":
            kept[(row["observation"], row["run"])] = row
    night["observations"] = sorted(kept.values(), key=lambda r: (r["file"], r["run"]))
    night["failed"] = [r for r in report["observations"] if r["status"] == "failed"]  # the latest pass's
    night["passes"] = night.get("passes", 0) + 1
    night["run"] = report["run"]
    night["path"] = f"artifacts/{path}"
    handle.write_artifact(path, json.dumps(night, indent=2).encode())
    return night


def night_markdown(night: dict) -> str:
    """The night's table as markdown: a row per observation inferred that night, then the failures."""
    lines = [f"**mfsbi infer, night {night['night']}**: {len(night['observations'])} observations inferred, "
             f"{len(night['failed'])} failed in the latest pass; store `{night['store']}`", "",
             "| observation | run | posterior mean ± sd | ppc |", "|---|---|---|---|"]
    for row in night["observations"] + night["failed"]:
        cells = [c.replace("|", "\\|") for c in row_cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"report: `{night['path']}`; per observation: `artifacts/inference/<observation>/<run>/` "
                  "(samples.npy, posterior.png, result.json)"]
    return "\n".join(lines)


def _key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")[:100]


def publish_night(night: dict, handle, new_rows: Sequence[dict]) -> None:  # noqa: ANN001 -- a SimulationStore
    """The night's markdown report (one key per night and store) and each new observation's posterior plot."""
    # deferred: Prefect (1.2 s) must be imported after the CLI quiets it; the CLI loads this module at start
    from prefect.artifacts import create_image_artifact, create_markdown_artifact

    store_tag = hashlib.sha256(str(night["store"]).encode()).hexdigest()[:8]
    create_markdown_artifact(key=_key("infer", store_tag, night["night"]), markdown=night_markdown(night),
                             description=f"mfsbi infer: the night {night['night']} on {night['store']}")
    for row in new_rows:
        png = handle.read_artifact(row["plot"].removeprefix("artifacts/"))
        create_image_artifact(image_url="data:image/png;base64," + base64.b64encode(png).decode(),
                              key=_key("infer", store_tag, row["observation"], "posterior"),
                              description=f"{row['file']}: posterior of {row['run']} ({night['store']})")

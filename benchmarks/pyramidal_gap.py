"""The LF/HF gap and the costs of the pyramidal tasks' low fidelities (issue 19, item 1).

    nice -n 5 python benchmarks/pyramidal_gap.py --num 200 --out docs/pyramidal-gap.json

Draws ``--num`` θ from the prior (``--prior-seed``) and simulates them as one batch
(``--batch-seed``: the same noise stream per row at every fidelity) with the HF (8 segments per
section, dt 0.025 ms) and with each LF variant: today's ``pyramidal`` LF (nseg 1), the reduced
cells of ``pyramidal-reduced`` (``cylinder``, ``stems``, ``rall``) at 0.1 ms and the default one
at 0.025 ms (to separate the reduction from the step), and a single compartment with the whole
membrane (a point neuron, for comparison only). Statistics are the rich nine, which contain the
paper's four. Per LF and statistic: mean, median and signed mean of LF − HF, the mean |LF − HF| in
units of the HF statistic's SD over the prior, Pearson's r; spike counts: the fraction equal and the
silent / 1 / ≥ 2 confusion; failures. Costs: ``time.process_time`` per simulation of each simulator
with the paper's statistics, all in this one process, HF first; then the cost of alternating.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("NEURON_MODULE_OPTIONS", "-nogui")

from mfsbi.simulators.neuron_cell import GeometryBuilder, SectionGeometry, read_morphology  # noqa: E402
from mfsbi.simulators.pyramidal import RICH_STATISTIC_NAMES, PyramidalSimulator, pyramidal  # noqa: E402
from mfsbi.simulators.reduced_cell import ReducedPyramidalSimulator, section_area  # noqa: E402


QUIET_REST_SD = 5.0  # mV: noise alone gives 0.2-0.6 mV; a spike in the resting window gives > 10


def _point(path: str) -> tuple[SectionGeometry, ...]:
    # One isopotential compartment with the membrane area of the whole cell (soma + dendrites).
    area = sum(section_area(section.points) for section in read_morphology(path))
    diam = float(np.sqrt(area / np.pi))
    return (SectionGeometry("soma", np.array([[0.0, 0.0, 0.0, diam], [diam, 0.0, 0.0, diam]]), None, 0.0, 0.0),)


@dataclass(frozen=True)
class PointSimulator(ReducedPyramidalSimulator):
    """A point neuron with the cell's whole membrane: the crudest LF, for comparison only."""

    nseg: int = 1

    def _geometry(self) -> GeometryBuilder:
        return _point


def variants() -> dict[str, PyramidalSimulator]:
    """The HF first, then every LF variant, with the paper's statistics."""
    return {
        "hf (nseg 8, dt 0.025)": PyramidalSimulator(nseg=8),
        "pyramidal LF (nseg 1, dt 0.025)": PyramidalSimulator(nseg=1),
        "cylinder, dt 0.1 (pyramidal-reduced LF)": ReducedPyramidalSimulator(reduction="cylinder"),
        "cylinder, dt 0.025": ReducedPyramidalSimulator(reduction="cylinder", dt=0.025),
        "stems, dt 0.1": ReducedPyramidalSimulator(reduction="stems"),
        "rall, dt 0.1": ReducedPyramidalSimulator(reduction="rall"),
        "point neuron, dt 0.1": PointSimulator(),
    }


def gap(lf: np.ndarray, hf: np.ndarray) -> dict:
    """Per-statistic discrepancy of LF from HF over rows where both succeeded."""
    ok = np.all(np.isfinite(lf), axis=1) & np.all(np.isfinite(hf), axis=1)
    lf, hf = lf[ok], hf[ok]
    diff = lf - hf
    out: dict = {"rows_compared": int(ok.sum()), "statistics": {}}
    for j, name in enumerate(RICH_STATISTIC_NAMES):
        sd = float(hf[:, j].std())
        both_vary = sd > 0 and lf[:, j].std() > 0
        out["statistics"][name] = {
            "mean_abs_diff": float(np.abs(diff[:, j]).mean()),
            "median_abs_diff": float(np.median(np.abs(diff[:, j]))),
            "mean_diff": float(diff[:, j].mean()),
            "hf_sd": sd,
            "mean_abs_diff_in_hf_sd": float(np.abs(diff[:, j]).mean() / sd) if sd > 0 else None,
            "correlation": float(np.corrcoef(lf[:, j], hf[:, j])[0, 1]) if both_vary else None,
        }
    # Rows whose resting window holds a spike (noise-triggered at excitable θ): there the resting
    # statistics hinge on spike timing. The gap of the quiet rows alone, beside.
    rest_sd = RICH_STATISTIC_NAMES.index("rest_std")
    quiet = (hf[:, rest_sd] < QUIET_REST_SD) & (lf[:, rest_sd] < QUIET_REST_SD)
    out["rest_window_quiet"] = {
        "fraction_quiet_both": float(quiet.mean()),
        "fraction_spiking_hf": float(np.mean(hf[:, rest_sd] >= QUIET_REST_SD)),
        **{f"{name}_mean_abs_diff_quiet": float(np.abs(diff[quiet, RICH_STATISTIC_NAMES.index(name)]).mean())
           for name in ("rest_mean", "rest_std", "stimulus_mean")},
    }
    classes = lambda counts: np.minimum(counts, 2).astype(int)  # noqa: E731 - silent / 1 / >= 2
    confusion = np.zeros((3, 3), dtype=int)
    for a, b in zip(classes(hf[:, 0]), classes(lf[:, 0])):
        confusion[a, b] += 1
    out["spike_count"] = {
        "fraction_equal": float(np.mean(diff[:, 0] == 0)),
        "fraction_within_1": float(np.mean(np.abs(diff[:, 0]) <= 1)),
        "confusion_hf_rows_lf_columns_silent_1_2plus": confusion.tolist(),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--prior-seed", type=int, default=123)
    parser.add_argument("--batch-seed", type=int, default=5)
    parser.add_argument("--switches", type=int, default=10, help="alternating LF/HF single-row calls")
    parser.add_argument("--out", type=Path, default=Path("docs/pyramidal-gap.json"))
    args = parser.parse_args()

    theta = pyramidal().sample_prior(args.num, seed=args.prior_seed)
    result: dict = {
        "command": f"python benchmarks/pyramidal_gap.py --num {args.num} --prior-seed {args.prior_seed} "
        f"--batch-seed {args.batch_seed}",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "load_average_at_start": list(os.getloadavg())},
        "variants": {},
    }
    rich: dict[str, np.ndarray] = {}
    for name, simulator in variants().items():
        started = time.process_time()
        x, reasons = simulator(theta, args.batch_seed)
        cost = (time.process_time() - started) / len(theta)
        x_rich, reasons_rich = dataclasses.replace(simulator, statistics="rich")(theta, args.batch_seed)
        # The rich statistics contain the paper's four, computed from the same trace.
        np.testing.assert_array_equal(x_rich[:, [0, 6, 7, 8]], x)
        rich[name] = x_rich
        result["variants"][name] = {
            "simulator": repr(simulator),
            "cpu_seconds_per_simulation": cost,
            "failures": sum(reason is not None for reason in reasons),
            "failure_reasons": sorted({r for r in reasons if r is not None}),
        }
        print(f"{name}: {cost:.4f} CPU s per simulation, {result['variants'][name]['failures']} failed", flush=True)
    hf_name = next(iter(rich))
    hf_cost = result["variants"][hf_name]["cpu_seconds_per_simulation"]
    for name, x in rich.items():
        entry = result["variants"][name]
        entry["cost_ratio_hf_over_this"] = hf_cost / entry["cpu_seconds_per_simulation"]
        entry["gap_to_hf"] = gap(x, rich[hf_name])
    spikes = rich[hf_name][:, 0]
    result["hf_spike_classes"] = {"silent": float(np.mean(spikes == 0)), "one": float(np.mean(spikes == 1)),
                                  "two_or_more": float(np.mean(spikes >= 2))}

    # Alternating fidelities in one process rebuilds the one NEURON cell on every switch.
    lf, hf = ReducedPyramidalSimulator(), PyramidalSimulator(nseg=8)
    row = theta[:1]
    started = time.process_time()
    for _ in range(args.switches):
        lf(row, args.batch_seed)
        hf(row, args.batch_seed)
    alternating = (time.process_time() - started) / args.switches
    started = time.process_time()
    for _ in range(args.switches):
        lf(row, args.batch_seed)
    for _ in range(args.switches):
        hf(row, args.batch_seed)
    grouped = (time.process_time() - started) / args.switches
    result["switch_seconds_per_lf_hf_pair"] = {"alternating": alternating, "grouped": grouped,
                                               "rebuild_cost_per_switch": (alternating - grouped) / 2}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

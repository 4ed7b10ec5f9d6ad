"""How far the pyramidal task's hand-written rich statistics are from eFEL's (the field's feature library).

Simulates HF somatic traces at prior draws, computes ``rich_statistics`` and eFEL's nearest
features on the same trace (threshold 0 mV, as ours), and writes per-statistic agreement to
docs/efel-agreement.json. The definitions differ on purpose in places (ours: onsets, i.e. the first
sample at or above 0 mV; eFEL: peaks), so the report gives differences, not a pass/fail.

    PYTHONPATH=. python benchmarks/efel_agreement.py --draws 40
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mfsbi.simulators import get_task
from mfsbi.simulators.pyramidal import (
    RICH_STATISTIC_NAMES,
    SPIKE_THRESHOLD,
    STIMULUS_DURATION,
    STIMULUS_START,
    PyramidalSimulator,
    rich_statistics,
    spike_onsets,
)

__all__ = ["efel_features", "main"]

OUT = Path(__file__).resolve().parents[1] / "docs" / "efel-agreement.json"
FEATURES = ["Spikecount", "time_to_first_spike", "all_ISI_values", "peak_voltage", "spike_half_width",
            "AP_duration_half_width"]


def efel_features(t: np.ndarray, v: np.ndarray) -> dict[str, float | None]:
    """eFEL's counterparts of the rich statistics on one trace (None where eFEL gives none)."""
    import efel  # optional: the `recording` extra; only this comparison needs it

    efel.set_setting("Threshold", SPIKE_THRESHOLD)
    trace = {"T": t, "V": v, "stim_start": [STIMULUS_START], "stim_end": [STIMULUS_START + STIMULUS_DURATION]}
    values = efel.get_feature_values([trace], FEATURES, raise_warnings=False)[0]

    def mean(name: str) -> float | None:
        array = values.get(name)
        return float(np.mean(array)) if array is not None and len(array) else None

    isi = values.get("all_ISI_values")
    return {
        "spike_count": float(values["Spikecount"][0]) if values.get("Spikecount") is not None else None,
        "first_spike_latency": mean("time_to_first_spike"),
        "mean_isi": mean("all_ISI_values"),
        "adaptation_index": float(isi[-1] / isi[0]) if isi is not None and len(isi) >= 2 else None,
        "ap_peak": mean("peak_voltage"),
        "ap_half_width": mean("spike_half_width"),
        "ap_half_width_from_ap_begin": mean("AP_duration_half_width"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    task = get_task("pyramidal")
    simulator = PyramidalSimulator()  # the HF model of the task
    theta = task.sample_prior(args.draws, seed=args.seed)
    ours, theirs, early = [], [], 0
    for row, parameters in enumerate(theta):
        v = simulator.voltage(parameters, args.seed, row)
        t = simulator.dt * np.arange(v.size)
        ours.append(dict(zip(RICH_STATISTIC_NAMES, rich_statistics(v).tolist())))
        theirs.append(efel_features(t, v))
        early += bool(np.any(spike_onsets(v) * simulator.dt < STIMULUS_START))

    report: dict[str, object] = {
        "command": f"PYTHONPATH=. python benchmarks/efel_agreement.py --draws {args.draws} --seed {args.seed}",
        "draws": args.draws, "threshold_mV": SPIKE_THRESHOLD,
        # eFEL's time_to_first_spike counts these (negative latency); ours starts at the stimulus.
        "traces_with_a_spike_before_the_stimulus": early, "statistics": {},
    }
    # (our statistic, the key of efel_features, eFEL's feature it comes from)
    pairs = [("spike_count", "spike_count", "Spikecount"), ("first_spike_latency", "first_spike_latency",
             "time_to_first_spike"), ("mean_isi", "mean_isi", "mean of all_ISI_values"),
             ("adaptation_index", "adaptation_index", "last / first of all_ISI_values"),
             ("ap_peak", "ap_peak", "mean of peak_voltage"), ("ap_half_width", "ap_half_width", "mean of spike_half_width"),
             ("ap_half_width", "ap_half_width_from_ap_begin", "mean of AP_duration_half_width")]
    for our_name, efel_name, feature in pairs:
        # Silent or single-spike traces: ours has a placeholder where eFEL has nothing; those are left out.
        both = [(o[our_name], e[efel_name]) for o, e in zip(ours, theirs)
                if e[efel_name] is not None and (our_name == "spike_count" or o["spike_count"] >= 3)]
        if not both:
            continue
        a, b = np.array(both).T
        report["statistics"][f"{our_name} vs eFEL {feature}"] = {
            "traces": len(both),
            "equal": int(np.sum(a == b)),
            "median_abs_difference": float(np.median(np.abs(a - b))),
            "max_abs_difference": float(np.max(np.abs(a - b))),
            "median_ours": float(np.median(a)), "median_efel": float(np.median(b)),
            "correlation": float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 0 and np.std(b) > 0 else None,
        }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

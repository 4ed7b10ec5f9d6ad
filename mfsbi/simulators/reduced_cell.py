"""A reduced model of the pyramidal cell, the soma plus equivalent cylinders, and the task
``pyramidal-reduced`` whose LF it is (PAPER.md's neuron task; an LF with a real fidelity gap).

The dendritic tree of a reconstruction is replaced by cylinders derived from it in code, not tuned;
the soma (the root section) is kept as it is:

- ``"cylinder"`` (the default): one cylinder for the whole tree (a ball-and-stick), with the tree's
  total membrane area and its passive input conductance seen from the soma;
- ``"stems"``: one such cylinder per primary neurite (each child of the soma);
- ``"rall"``: Rall's equivalent cylinder: diameter from the 3/2 power rule at the soma,
  ``d = (sum d_i^(3/2))^(2/3)``, electrotonic length the mean over the tips of their electrotonic
  distance from the soma. Exact only for trees that obey the 3/2 rule with equal tip distances;
  ``pyramid.nrn``'s daughters are as thick as their parents, and the cylinder conducts 22 % more.

Area and conductance preservation, the passive membrane being ``hh``'s leak (R_m = 1 / gl_hh):
a sealed cylinder of diameter d and length l has area A = π d l and input conductance
G = g_m A tanh(L) / L, with L = l / λ and λ = sqrt(R_m d / (4 R_a)). So the tree's ratio
G / (g_m A) fixes L (tanh(L)/L is decreasing), and A = π L sqrt(R_m / (4 R_a)) d^(3/2) then fixes d.
The tree's G comes from the cable equation, from the tips inwards, each pair of 3D points a short
cylinder (a cone's axial resistance, 4 R_a l / (π d1 d2), is matched by d = sqrt(d1 d2)).

The reduced simulator runs at a coarser step (0.1 ms) with ``hh`` in every section and the same θ,
stimulus and noise stream as the HF: its noise current is the HF's (same batch seed and row) averaged
over each coarse step, so both fidelities inject the same charge in every 0.1 ms. The gap and the
costs are measured in docs/tasks-pyramidal.md (benchmarks/pyramidal_gap.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mfsbi.simulators.base import Task
from mfsbi.simulators.neuron_cell import (
    AXIAL_RESISTIVITY,
    Discretization,
    GeometryBuilder,
    SectionGeometry,
    read_morphology,
)
from mfsbi.simulators.pyramidal import (
    DT,
    HF_NSEG,
    NOISE_STD,
    STIMULUS_AMPLITUDE,
    TSTOP,
    PyramidalSimulator,
    Statistics,
    pyramidal,
)

__all__ = [
    "HH_LEAK",
    "LF_DT",
    "REDUCTIONS",
    "RA",
    "ReducedPyramidalSimulator",
    "cylinder_input_conductance",
    "equivalent_cylinder",
    "input_conductance",
    "pyramidal_reduced",
    "reduce_geometry",
    "reduced_morphology",
    "section_area",
    "subtree_area",
]

# The passive membrane of the derivation: hh's leak conductance (NEURON's default gl_hh), S/cm²,
# and the cell's axial resistivity, Ω cm.
HH_LEAK = 0.0003
RA = AXIAL_RESISTIVITY
REDUCTIONS = ("cylinder", "stems", "rall")
LF_DT = 0.1  # ms: a common production step for HH models (4x the HF's 0.025 ms)
_UM = 1e-4  # cm per µm


def _pieces(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lengths and end diameters (µm) of the pieces between consecutive 3D points."""
    lengths = np.linalg.norm(np.diff(points[:, :3], axis=0), axis=1)
    return lengths, points[:-1, 3], points[1:, 3]


def section_area(points: np.ndarray) -> float:
    """Membrane area of a section given by 3D points: lateral areas of its frusta, µm² (as NEURON).

    Arguments:
        points: ``(x, y, z, diam)`` in µm, shape ``(m, 4)``.

    Returns:
        The area, µm².
    """
    lengths, d1, d2 = _pieces(points)
    r1, r2 = d1 / 2, d2 / 2
    return float(np.sum(np.pi * (r1 + r2) * np.sqrt((r1 - r2) ** 2 + lengths**2)))


def _children(geometry: tuple[SectionGeometry, ...]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for i, section in enumerate(geometry):
        if section.parent is not None:
            children.setdefault(section.parent, []).append(i)
    return children


def subtree_area(geometry: tuple[SectionGeometry, ...], index: int) -> float:
    """Membrane area of a section and everything distal to it, µm²."""
    children = _children(geometry)
    stack, total = [index], 0.0
    while stack:
        i = stack.pop()
        total += section_area(geometry[i].points)
        stack.extend(children.get(i, []))
    return total


def _lambda_cm(diam_um: float | np.ndarray, rm: float, ra: float) -> float | np.ndarray:
    """The DC length constant of a cylinder, cm."""
    return np.sqrt(rm * diam_um * _UM / (4 * ra))


def cylinder_input_conductance(
    length_um: float, diam_um: float, load: float = 0.0, rm: float = 1 / HH_LEAK, ra: float = RA
) -> float:
    """DC input conductance of a passive cylinder with a conductance ``load`` at its far end, S.

    Arguments:
        length_um, diam_um: the cylinder, µm.
        load: the conductance at the far end, S (0: a sealed end).
        rm: specific membrane resistance, Ω cm²; ra: axial resistivity, Ω cm.

    Returns:
        ``G_inf (B + tanh L) / (1 + B tanh L)`` with ``B = load / G_inf`` (Rall's cable solution).
    """
    lam = float(_lambda_cm(diam_um, rm, ra))
    g_inf = math.pi * (diam_um * _UM) ** 2 / (4 * ra * lam)
    t, b = math.tanh(length_um * _UM / lam), load / g_inf
    return g_inf * (b + t) / (1 + b * t)


def input_conductance(
    geometry: tuple[SectionGeometry, ...], index: int, rm: float = 1 / HH_LEAK, ra: float = RA
) -> float:
    """Passive DC input conductance of the subtree rooted at a section, seen from its proximal end, S.

    Arguments:
        geometry: the morphology (:func:`mfsbi.simulators.neuron_cell.read_morphology`).
        index: the subtree's root section; children are taken to attach at its distal end.
        rm, ra: passive membrane resistance (Ω cm²) and axial resistivity (Ω cm).

    Returns:
        The conductance, S.
    """
    children = _children(geometry)

    def conductance(i: int) -> float:
        load = sum(conductance(child) for child in children.get(i, []))
        lengths, d1, d2 = _pieces(geometry[i].points)
        # From the distal end inwards; zero-length pieces (repeated points) carry nothing.
        for length, a, b in zip(lengths[::-1], d1[::-1], d2[::-1]):
            if length > 0:
                load = cylinder_input_conductance(float(length), math.sqrt(a * b), load, rm, ra)
        return load

    return conductance(index)


def equivalent_cylinder(
    area_um2: float, conductance: float, rm: float = 1 / HH_LEAK, ra: float = RA
) -> tuple[float, float]:
    """The sealed cylinder with a given membrane area and passive DC input conductance.

    Arguments:
        area_um2: membrane area, µm².
        conductance: input conductance, S; at most the area's membrane conductance.
        rm, ra: passive membrane resistance (Ω cm²) and axial resistivity (Ω cm).

    Returns:
        ``(length, diameter)`` in µm.
    """
    ratio = conductance / (area_um2 * _UM**2 / rm)
    if not 0 < ratio < 1:
        raise ValueError(f"conductance / membrane conductance must be in (0, 1), got {ratio:.6g}")
    # tanh(L)/L decreases from 1 (L = 0) to 0: bisect on L.
    low, high = 0.0, 1.0
    while math.tanh(high) / high > ratio:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        if mid > 0 and math.tanh(mid) / mid > ratio:
            low = mid
        else:
            high = mid
    electrotonic = (low + high) / 2
    # A = π d l = π d L λ(d), λ(d) = sqrt(rm d / (4 ra)): solve for d in cm, then back to µm.
    diam_cm = (area_um2 * _UM**2 / (math.pi * electrotonic * math.sqrt(rm / (4 * ra)))) ** (2 / 3)
    length_cm = electrotonic * math.sqrt(rm * diam_cm / (4 * ra))
    return length_cm / _UM, diam_cm / _UM


def _rall_cylinder(
    geometry: tuple[SectionGeometry, ...], stems: list[int], rm: float, ra: float
) -> tuple[float, float]:
    """Rall's equivalent cylinder of the stems: 3/2-rule diameter, mean electrotonic tip distance."""
    diam = sum(float(geometry[i].points[0, 3]) ** 1.5 for i in stems) ** (2 / 3)
    children = _children(geometry)
    tips: list[float] = []
    stack = [(i, 0.0) for i in stems]
    while stack:
        i, distance = stack.pop()
        lengths, d1, d2 = _pieces(geometry[i].points)
        distance += float(np.sum(lengths * _UM / _lambda_cm(np.sqrt(d1 * d2), rm, ra)))
        if i in children:
            stack.extend((child, distance) for child in children[i])
        else:
            tips.append(distance)
    return float(np.mean(tips)) * float(_lambda_cm(diam, rm, ra)) / _UM, diam


def _cylinder(name: str, length: float, diam: float, stem: SectionGeometry) -> SectionGeometry:
    # A straight cylinder along x: only its length and diameter matter electrically.
    points = np.array([[0.0, 0.0, 0.0, diam], [length, 0.0, 0.0, diam]])
    return SectionGeometry(name, points, 0, stem.parent_x, stem.orientation)


def reduce_geometry(
    geometry: tuple[SectionGeometry, ...], reduction: str = "cylinder", rm: float = 1 / HH_LEAK, ra: float = RA
) -> tuple[SectionGeometry, ...]:
    """The soma (the root section, kept as it is) plus equivalent cylinders for its subtrees.

    Arguments:
        geometry: the full morphology, root first (:func:`read_morphology`).
        reduction: ``"cylinder"``, ``"stems"`` or ``"rall"`` (module docstring).
        rm, ra: the passive membrane of the derivation (Ω cm², Ω cm).

    Returns:
        The reduced morphology: the root, then one cylinder per stem (``"stems"``) or one in all,
        attached where the (first) stem attaches.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    stems = _children(geometry).get(0, [])
    if not stems:
        raise ValueError("the morphology has no sections beyond its root: nothing to reduce")
    if reduction == "stems":
        cylinders = [
            _cylinder(
                f"{geometry[i].name}_equivalent",
                *equivalent_cylinder(subtree_area(geometry, i), input_conductance(geometry, i, rm, ra), rm, ra),
                geometry[i],
            )
            for i in stems
        ]
    elif reduction == "cylinder":
        area = sum(subtree_area(geometry, i) for i in stems)
        conductance = sum(input_conductance(geometry, i, rm, ra) for i in stems)
        length, diam = equivalent_cylinder(area, conductance, rm, ra)
        cylinders = [_cylinder("dendrite_equivalent", length, diam, geometry[stems[0]])]
    else:
        cylinders = [_cylinder("dendrite_rall", *_rall_cylinder(geometry, stems, rm, ra), geometry[stems[0]])]
    return (geometry[0], *cylinders)


@lru_cache(maxsize=8)
def _reduced(path: str, reduction: str) -> tuple[SectionGeometry, ...]:
    return reduce_geometry(read_morphology(path), reduction)


def reduced_morphology(reduction: str) -> GeometryBuilder:
    """The geometry builder (for :func:`mfsbi.simulators.neuron_cell.get_cell`) of a reduction.

    Arguments:
        reduction: ``"cylinder"``, ``"stems"`` or ``"rall"``.

    Returns:
        A module-level function ``path -> geometry``: the same object on every call, so that
        ``get_cell`` keeps the cell while the reduction does not change.
    """
    if reduction not in _BUILDERS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return _BUILDERS[reduction]


def _stems(path: str) -> tuple[SectionGeometry, ...]:
    return _reduced(path, "stems")


def _one_cylinder(path: str) -> tuple[SectionGeometry, ...]:
    return _reduced(path, "cylinder")


def _rall(path: str) -> tuple[SectionGeometry, ...]:
    return _reduced(path, "rall")


_BUILDERS: dict[str, Callable[[str], tuple[SectionGeometry, ...]]] = {
    "stems": _stems,
    "cylinder": _one_cylinder,
    "rall": _rall,
}


@dataclass(frozen=True)
class ReducedPyramidalSimulator(PyramidalSimulator):
    """The reduced cell (soma + equivalent cylinders) at a coarser step; otherwise the HF's setup.

    Arguments:
        reduction: ``"cylinder"`` (default: soma + one cylinder), ``"stems"`` or ``"rall"``.
        noise_dt: the step of the shared noise stream (the HF's dt); ``dt`` must be a multiple of it.
        nseg: segments per section of the reduced cell (default ``"d_lambda"``).
        dt: the time step, ms (default 0.1).
        Other fields: as :class:`~mfsbi.simulators.pyramidal.PyramidalSimulator`.
    """

    nseg: Discretization = "d_lambda"
    dt: float = LF_DT
    reduction: str = "cylinder"
    noise_dt: float = DT

    def __post_init__(self) -> None:
        super().__post_init__()
        reduced_morphology(self.reduction)  # raises on an unknown reduction
        if self.noise_dt <= 0 or abs(self.dt / self.noise_dt - round(self.dt / self.noise_dt)) > 1e-9:
            raise ValueError(f"dt ({self.dt}) must be a whole multiple of noise_dt ({self.noise_dt})")

    def _geometry(self) -> GeometryBuilder:
        return reduced_morphology(self.reduction)

    def _noise(self, seed: int, row: int) -> np.ndarray:
        # The HF's stream (same SeedSequence, same first values), averaged over each coarse step:
        # the same current in the sense that both fidelities inject the same charge per step.
        k = round(self.dt / self.noise_dt)
        n = int(round(self.tstop / self.dt)) + 2
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(row,)))
        return (self.noise_std * rng.standard_normal(k * n)).reshape(n, k).mean(axis=1)


_DESCRIPTIONS = {
    "cylinder": "one equivalent cylinder",
    "stems": "an equivalent cylinder per neurite",
    "rall": "Rall's equivalent cylinder",
}

# CPU seconds per simulation (time.process_time, 200 prior draws, one process, one thread;
# benchmarks/pyramidal_gap.py, docs/pyramidal-gap.json). HF: the pyramidal task's measurement of the
# same simulator; LF: that divided by the HF/LF ratio measured in one process (34.5-40.3 in three
# runs, 37.7 the middle one; the machine was loaded, which inflated both absolute numbers). MF: the
# d_lambda rule of the same cell, measured for the pyramidal task (docs/tasks-pyramidal.md).
COST_SECONDS = {"lf": 0.0042, "mf": 0.051, "hf": 0.158}


def _version(reduction: str, lf_dt: float, statistics: Statistics) -> str:
    # Another LF or other statistics are another simulator: a store must not mix them.
    parts = ["1"]
    if (reduction, lf_dt) != ("cylinder", LF_DT):
        parts.append(f"{reduction}-dt{lf_dt:g}")
    if statistics != "paper":
        parts.append(statistics)
    return "-".join(parts)


def pyramidal_reduced(
    reduction: str = "cylinder",
    lf_dt: float = LF_DT,
    statistics: Statistics = "paper",
    morphology: str | None = None,
    amplitude: float = STIMULUS_AMPLITUDE,
    noise_std: float = NOISE_STD,
    tstop: float = TSTOP,
) -> Task:
    """The pyramidal task with a reduced LF: HF as ``pyramidal`` (8 segments per section, 0.025 ms),
    LF the soma plus equivalent cylinders at ``lf_dt``, the same θ, prior, stimulus and noise.

    Arguments:
        reduction: the LF's dendrites: ``"cylinder"``, ``"stems"`` or ``"rall"`` (module docstring).
        lf_dt: the LF's time step, ms (a multiple of 0.025).
        statistics: ``"paper"`` (4) or ``"rich"`` (9).
        morphology, amplitude, noise_std, tstop: as :func:`~mfsbi.simulators.pyramidal.pyramidal`.

    Returns:
        The task ``pyramidal-reduced``.
    """
    base = pyramidal(morphology, HF_NSEG, amplitude, noise_std, tstop, statistics)
    config = dict(
        morphology=morphology, amplitude=amplitude, noise_std=noise_std, tstop=tstop, statistics=statistics
    )
    low = ReducedPyramidalSimulator(reduction=reduction, dt=lf_dt, **config)  # type: ignore[arg-type]
    return dataclasses.replace(
        base,
        name="pyramidal-reduced",
        low_fidelity=low,
        version=_version(reduction, lf_dt, statistics),
        description=(
            f"HH pyramidal cell (NEURON), (gNa, gK); LF: soma + {_DESCRIPTIONS[reduction]}, dt {lf_dt:g} ms"
        ),
        cost_seconds=dict(COST_SECONDS),
    )

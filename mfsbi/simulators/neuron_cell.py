"""A Hodgkin–Huxley multicompartment cell on a reconstructed morphology, in NEURON.

NEURON has one global model per process: every section that exists is integrated by every run, and
``dt``, ``celsius`` and the integrator are process-wide. So this module keeps **one** active cell per
process (:func:`get_cell`), rebuilt only when the morphology or its geometry builder (the full
reconstruction, or a reduced model of it) changes, and changes its discretisation
(``nseg``) in place when a simulator of the other fidelity runs in the same process. Two cells alive
at once would both be integrated (doubling the cost). Runs are serialised by a lock because two
threads in one process would simulate the same model.

Morphologies are read once per process and path into plain geometry (:class:`SectionGeometry`), the
hoc sections that the reader created are deleted, and the cell is rebuilt from Python-owned
sections. That keeps reader-specific hoc names (``soma``, ``dend[...]``) from clashing between
formats and lets a cell be dropped cleanly.

NEURON is imported lazily: importing this module (e.g. to unpickle a simulator) costs nothing.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "AXIAL_RESISTIVITY",
    "DEMO_PYRAMID",
    "Cell",
    "Discretization",
    "GeometryBuilder",
    "SectionGeometry",
    "demo_pyramid_path",
    "get_cell",
    "read_morphology",
    "simulation_lock",
]

DEMO_PYRAMID = "share/nrn/demo/pyramid.nrn"

# "d_lambda" rule defaults (Hines & Carnevale): segments no longer than 0.1 of the AC length
# constant at 100 Hz.
D_LAMBDA = 0.1
D_LAMBDA_FREQUENCY = 100.0

AXIAL_RESISTIVITY = 35.4  # Ω cm: NEURON's default Ra, set explicitly on every section

# The relaxation to rest before every run (see Cell._steady_state): 100 steps of 2 ms.
RELAX_DT = 2.0
RELAX_STEPS = 100

Discretization = int | str  # an nseg per section, or "d_lambda"

# NEURON's global model: runs from several threads would simulate each other's cells.
simulation_lock = threading.RLock()


def _quiet() -> None:
    # Only silences the "no DISPLAY" warning; a user's explicit setting wins. Must run before the
    # first `import neuron` of the process.
    os.environ.setdefault("NEURON_MODULE_OPTIONS", "-nogui")


def _neuron() -> Any:
    """``neuron.h`` with the standard run system loaded (imported on first use)."""
    _quiet()
    from neuron import h  # deferred: NEURON reads NEURON_MODULE_OPTIONS at its first import, so after _quiet()

    h.load_file("stdrun.hoc")
    return h


def demo_pyramid_path() -> Path:
    """The reconstructed pyramidal cell shipped in NEURON's wheel (``share/nrn/demo/pyramid.nrn``).

    Returns:
        The path of ``pyramid.nrn``.

    Raises:
        FileNotFoundError: when the installed NEURON does not ship it.
    """
    _quiet()
    import neuron  # deferred: after _quiet(), as in _neuron

    package = Path(neuron.__file__).resolve().parent
    candidates = [package / ".data" / DEMO_PYRAMID, package / DEMO_PYRAMID]
    neuronhome = os.environ.get("NEURONHOME")
    if neuronhome:
        candidates.append(Path(neuronhome) / DEMO_PYRAMID.removeprefix("share/nrn/"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    # Other layouts (a source build, a future wheel): search the package once.
    for candidate in package.rglob("pyramid.nrn"):
        return candidate
    raise FileNotFoundError(
        f"NEURON's demo morphology {DEMO_PYRAMID} was not found under {package}; "
        "pass an SWC/ASC/hoc file as morphology="
    )


@dataclass(frozen=True)
class SectionGeometry:
    """One unbranched section of a morphology.

    Arguments:
        name: the name the reader gave it (``"soma"``, ``"dendrite_1[3]"``, ``"dend[0]"``).
        points: 3D points ``(x, y, z, diam)`` in µm, shape ``(m, 4)``.
        parent: the index of the parent section in the morphology, ``None`` for the root.
        parent_x: where on the parent it attaches (0..1).
        orientation: which end of this section attaches (0 or 1).
    """

    name: str
    points: np.ndarray
    parent: int | None
    parent_x: float
    orientation: float


def _read_into_hoc(h: Any, path: Path) -> None:
    """Executes a morphology reader that creates top-level hoc sections."""
    suffix = path.suffix.lower()
    if suffix in (".nrn", ".hoc"):
        # pyramid.nrn only defines and runs geometry(): it creates the sections and reads their
        # points with fscan() from the data that follows the code in the same file, so it must be
        # xopen'ed from its own path (no GUI, no run: nothing to filter out). xopen, not
        # load_file, so that reading it again after another morphology re-creates the sections.
        h.xopen(str(path))
        return
    h.load_file("import3d.hoc")
    if suffix == ".swc":
        reader = h.Import3d_SWC_read()
    elif suffix == ".asc":
        reader = h.Import3d_Neurolucida3()
    else:
        raise ValueError(f"unsupported morphology format {path.suffix!r}: use .swc, .asc, .nrn or .hoc")
    reader.input(str(path))
    h.Import3d_GUI(reader, 0).instantiate(None)


@lru_cache(maxsize=8)
def read_morphology(path: str) -> tuple[SectionGeometry, ...]:
    """Reads a morphology file into plain geometry (cached per process and path).

    Arguments:
        path: an ``.swc`` or ``.asc`` file (read by Import3d) or NEURON's ``.nrn``/``.hoc``
            geometry file.

    Returns:
        The sections, parents before children, the root first.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"morphology file {file} does not exist")
    h = _neuron()
    with simulation_lock:
        before = {sec.hoc_internal_name() for sec in h.allsec()}
        _read_into_hoc(h, file)
        created = [sec for sec in h.allsec() if sec.hoc_internal_name() not in before]
        if not created:
            raise ValueError(f"morphology file {file} created no sections")
        index = {sec.hoc_internal_name(): i for i, sec in enumerate(created)}
        raw = []
        for sec in created:
            points = np.array(
                [[sec.x3d(i), sec.y3d(i), sec.z3d(i), sec.diam3d(i)] for i in range(sec.n3d())],
                dtype=np.float64,
            ).reshape(-1, 4)
            if len(points) < 2:
                # A section given by L and diam only: a straight cylinder along x.
                points = np.array([[0.0, 0.0, 0.0, sec.diam], [sec.L, 0.0, 0.0, sec.diam]])
            ref = h.SectionRef(sec=sec)
            parent, parent_x = None, 0.0
            if ref.has_parent():
                parent = index[ref.parent.hoc_internal_name()]
                parent_x = float(sec.parentseg().x)
            raw.append((sec.name(), points, parent, parent_x, float(h.section_orientation(sec=sec))))
        # The geometry is copied: the reader's hoc sections go, so that they are not simulated.
        for sec in created:
            h.delete_section(sec=sec)
    # Parents first, so that building connects to sections that already exist.
    order: list[int] = []
    placed: set[int] = set()
    while len(order) < len(raw):
        progressed = False
        for i, (_, _, parent, _, _) in enumerate(raw):
            if i not in placed and (parent is None or parent in placed):
                order.append(i)
                placed.add(i)
                progressed = True
        if not progressed:
            raise ValueError(f"morphology file {file} has a cycle in its section tree")
    new_index = {old: new for new, old in enumerate(order)}
    return tuple(
        SectionGeometry(
            name=raw[i][0],
            points=raw[i][1],
            parent=None if raw[i][2] is None else new_index[raw[i][2]],
            parent_x=raw[i][3],
            orientation=raw[i][4],
        )
        for i in order
    )


def _d_lambda_nseg(sec: Any, frequency: float, d_lambda: float) -> int:
    """NEURON's d_lambda rule (fixnseg.hoc): an odd nseg with segments shorter than
    ``d_lambda`` times the AC length constant at ``frequency``."""
    n3d = int(sec.n3d())
    if n3d < 2:
        lam = 1e5 * math.sqrt(sec.diam / (4 * math.pi * frequency * sec.Ra * sec.cm))
    else:
        electrotonic = 0.0
        for i in range(1, n3d):
            electrotonic += (sec.arc3d(i) - sec.arc3d(i - 1)) / math.sqrt(sec.diam3d(i - 1) + sec.diam3d(i))
        electrotonic *= math.sqrt(2) * 1e-5 * math.sqrt(4 * math.pi * frequency * sec.Ra * sec.cm)
        lam = sec.L / electrotonic
    return int((sec.L / (d_lambda * lam) + 0.9) / 2) * 2 + 1


# Turns a morphology path into the sections to build: read_morphology itself, or a reduction of it.
GeometryBuilder = Callable[[str], tuple[SectionGeometry, ...]]


class Cell:
    """A Hodgkin–Huxley cell (``hh`` in every section) with a step and a noise current at the soma.

    Arguments:
        morphology: the path of the morphology file.
        geometry: builds the sections from the path (default: the full reconstruction).
    """

    def __init__(self, morphology: str, geometry: GeometryBuilder = read_morphology) -> None:
        h = _neuron()
        self.morphology = morphology
        self.geometry = geometry
        self.sections: list[Any] = []
        tag = Path(morphology).stem
        for g in (built := geometry(morphology)):
            sec = h.Section(name=f"{tag}.{g.name}")
            for x, y, z, diam in g.points:
                sec.pt3dadd(float(x), float(y), float(z), float(diam))
            if g.parent is not None:
                sec.connect(self.sections[g.parent](g.parent_x), g.orientation)
            # NEURON's defaults, set explicitly so the model does not depend on them.
            sec.Ra = AXIAL_RESISTIVITY
            sec.cm = 1.0
            sec.insert("hh")
            self.sections.append(sec)
        somatic = [sec for g, sec in zip(built, self.sections) if "soma" in g.name.lower()]
        # The soma is where the current goes in and the voltage is read; the root when unnamed.
        self.soma = somatic[0] if somatic else self.sections[0]
        self.stimulus = h.IClamp(self.soma(0.5))
        # A second clamp carries the noise: its amplitude is played from a vector each step.
        self.noise = h.IClamp(self.soma(0.5))
        self.noise.delay = 0.0
        self.noise.dur = 1e9
        self.noise_vector = h.Vector()
        self.voltage = h.Vector().record(self.soma(0.5)._ref_v)
        self.discretization: Discretization | None = None
        self.discretize(1)

    @property
    def num_segments(self) -> int:
        """The total number of segments (compartments)."""
        return sum(int(sec.nseg) for sec in self.sections)

    def discretize(self, nseg: Discretization) -> None:
        """Sets the segments per section: an int for all, or ``"d_lambda"`` per section.

        Arguments:
            nseg: a positive int, or ``"d_lambda"`` (0.1 λ at 100 Hz).
        """
        if nseg == self.discretization:
            return
        for sec in self.sections:
            if nseg == "d_lambda":
                sec.nseg = _d_lambda_nseg(sec, D_LAMBDA_FREQUENCY, D_LAMBDA)
            elif isinstance(nseg, int) and not isinstance(nseg, bool) and nseg >= 1:
                sec.nseg = nseg
            else:
                raise ValueError(f"nseg must be a positive int or 'd_lambda', got {nseg!r}")
        self.discretization = nseg

    def run(
        self,
        gna: float,
        gk: float,
        amplitude: float,
        start: float,
        duration: float,
        noise: np.ndarray,
        tstop: float,
        dt: float,
        v_init: float,
    ) -> np.ndarray:
        """Simulates once from the resting state; every parameter is set again, so nothing is
        carried over from an earlier run.

        Arguments:
            gna, gk: ``gnabar_hh`` and ``gkbar_hh`` in every segment, S/cm².
            amplitude, start, duration: the somatic step current, nA and ms.
            noise: the noise current in nA, one value per time step from t = 0.
            tstop, dt: ms.
            v_init: the initial guess of the resting potential, mV.

        Returns:
            The somatic voltage at t = 0, dt, ..., tstop, mV.
        """
        h = _neuron()
        with simulation_lock:
            h.cvode_active(0)
            h.dt = dt
            h.steps_per_ms = 1.0 / dt
            h.celsius = 6.3  # hh's rates are defined at 6.3 °C; the setting is process-wide.
            for sec in self.sections:
                for seg in sec:
                    seg.hh.gnabar = gna
                    seg.hh.gkbar = gk
            self.stimulus.delay = start
            self.stimulus.dur = duration
            self.stimulus.amp = amplitude
            self.noise.amp = 0.0
            self.noise_vector.play_remove()
            self.noise_vector.from_python(np.asarray(noise, dtype=np.float64))
            self.noise_vector.play(self.noise._ref_amp, dt)
            self._steady_state(h, v_init, dt)
            h.continuerun(tstop)
            return self.voltage.as_numpy().copy()

    @staticmethod
    def _steady_state(h: Any, v_init: float, dt: float) -> None:
        """Starts at the resting state of the current parameters, not at ``v_init``.

        The resting potential depends on gNa and gK (from about -75 to +20 mV over the prior), so
        a fixed ``v_init`` would put a transient, or a spurious spike, at the start of every run.
        The cell first relaxes for 200 ms in backward-Euler steps of 2 ms at negative time, where
        both clamps are off; then t is reset to 0. NEURON's usual idiom of a few 1e9 ms steps was
        tried and oscillated (period 2) around the rest for high gK or low gK; 2 ms steps reached
        the rest of a 500 ms fine-step run to 1e-3 mV on a grid over the prior, at ~100 steps.
        """
        h.finitialize(v_init)
        h.dt = RELAX_DT
        h.t = -RELAX_STEPS * RELAX_DT
        for _ in range(RELAX_STEPS):
            h.fadvance()
        h.dt = dt
        h.t = 0.0
        h.fcurrent()
        h.frecord_init()

    def close(self) -> None:
        """Deletes the cell's sections so that later runs do not integrate them."""
        self.noise_vector.play_remove()
        self.stimulus = self.noise = self.voltage = None
        h = _neuron()
        for sec in self.sections:
            h.delete_section(sec=sec)
        self.sections = []
        self.soma = None


_ACTIVE: Cell | None = None


def get_cell(morphology: str, nseg: Discretization, geometry: GeometryBuilder = read_morphology) -> Cell:
    """The process's cell for a morphology, built on first use, discretised as asked.

    Arguments:
        morphology: the path of the morphology file.
        nseg: segments per section, or ``"d_lambda"``.
        geometry: builds the sections from the path: the full reconstruction, or a reduced model
            (a module-level function, so that the same builder compares equal on every call).

    Returns:
        The active cell (the previous one is deleted if it had another morphology or builder:
        never two cells alive, an LF and an HF simulator alternating in one process rebuild).
    """
    global _ACTIVE
    with simulation_lock:
        if _ACTIVE is None or _ACTIVE.morphology != morphology or _ACTIVE.geometry != geometry:
            if _ACTIVE is not None:
                _ACTIVE.close()
                _ACTIVE = None
            _ACTIVE = Cell(morphology, geometry)
        _ACTIVE.discretize(nseg)
        return _ACTIVE


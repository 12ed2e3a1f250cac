"""Geometry optimisation on MBE gradients: geomeTRIC takes the steps, mbdask computes each gradient.

Each geometry geomeTRIC asks for is one mbdask expansion (driver ``gradient``) on one Dask
cluster that stays up for the whole optimisation: starting a LocalCluster costs seconds,
more than an xtb step, so it is started once (or the caller's client is used), never per
step. geomeTRIC sees the expansion as a custom engine (``geometric.engine.Engine``), its
documented route for energies and gradients computed elsewhere: coordinates in Bohr, energy
in Hartree, gradient in Hartree/Bohr.

geomeTRIC's ``run_optimizer`` reconfigures the root logger (``logging.config.fileConfig``),
writes a log, a ``*.tmp`` folder and an ``*_optim.xyz`` next to its input, and prints to the
terminal: right for its command line, wrong inside a library call. So this module builds
the same optimiser ``run_optimizer`` builds for a custom engine (the same molecule, TRIC
coordinates and parameters; tests/test_optimize.py checks that both take the same steps)
without those side effects: geomeTRIC's scratch folder is a temporary directory and its
log is kept in :attr:`OptimizationResult.log`.

geomeTRIC is imported inside the functions: ``import mbdask`` stays fast, and mbdask works
without it (``pip install 'mbdask[optimize]'`` adds it).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
from qcelemental import constants

from mbdask.calculation.execute import pinned_threads
from mbdask.errors import BadInputError
from mbdask.inputs.load import InputLike, describe_validation_error, load_input
from mbdask.inputs.xyz import XYZ_OPTIONS, input_from
from mbdask.planning.plan import make_plan
from mbdask.planning.screening import Screening
from mbdask.results.outputs import check_writable, write_atomic
from mbdask.workflows.expansion import connect_for, result_of, start
from mbdask.workflows.options import ClusterOptions, RunOptions, split_keywords

PathLike = Union[str, "os.PathLike[str]"]
#: geomeTRIC's convergence sets in 1.1 (named in error messages; geomeTRIC itself decides what is valid).
CONVERGENCE_SETS = ("GAU", "GAU_LOOSE", "GAU_TIGHT", "GAU_VERYTIGHT", "NWCHEM_LOOSE", "TURBOMOLE", "INTERFRAG_TIGHT")
#: geomeTRIC options that :func:`optimize` sets from its own arguments.
OWN_GEOMETRIC_OPTIONS = {
    "maxiter": "max_steps",
    "convergence_set": "convergence",
    "xyzout": "trajectory",
    "qdata": None,
}
#: ManyBodyResults kept per optimisation (the latest expansions): enough for geomeTRIC's own cache of
#: evaluated geometries, which it clears every 5 steps, so the final geometry's result is always among them.
KEPT_RESULTS = 8
#: geomeTRIC's loggers: its modules log to ``geometric.nifty`` (propagating to ``geometric``), its
#: Molecule class to ``MoleculeLogger``, which carries its own stdout handler.
GEOMETRIC_LOGGERS = ("geometric", "MoleculeLogger")
#: Terminal colour codes, which geomeTRIC puts in its log lines.
ANSI_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class OptimizationResult:
    """What an optimisation gives: the final structure, the path to it, and the last MBE result.

    One entry of ``energies``, ``gradient_rms``, ``gradient_max`` and ``trajectory`` per
    geometry geomeTRIC evaluated, the start first (as in geomeTRIC's ``_optim.xyz``): so
    ``len(energies) == steps + 1``.
    """

    #: the final geometry: the input molecule (fragments, charges, multiplicities) at the last
    #: geometry, with ``fix_com``/``fix_orientation`` set (its frame is the input's)
    molecule: Any
    #: MBE total energy per geometry, Hartree
    energies: list[float]
    #: RMS and largest per-atom gradient norm per geometry, Hartree/Bohr (as geomeTRIC prints them)
    gradient_rms: list[float]
    gradient_max: list[float]
    #: each geometry, Bohr, an (natom, 3) array
    trajectory: list[np.ndarray]
    #: geomeTRIC's convergence criteria were met (False: it stopped at ``max_steps``)
    converged: bool
    #: optimisation steps geomeTRIC took (its iteration count)
    steps: int
    #: the last geometry's ``ManyBodyResult`` (energy, gradient, n-body table, mbdask's extras)
    final_result: Any
    #: MBE expansions run (geomeTRIC reuses a result when it returns to a geometry it has seen)
    evaluations: int = 0
    #: geomeTRIC's log of the run (what its command line would print)
    log: str = field(default="", repr=False)

    @property
    def energy(self) -> float:
        """The final MBE energy, Hartree."""
        return self.energies[-1]

    def to_xyz(self, path: PathLike) -> None:
        """Write the final geometry as an XYZ file (Angstrom), its energy in the comment line."""
        write_atomic(
            path,
            _xyz_frame(
                self.molecule.symbols,
                self.trajectory[-1],
                f"mbdask optimize: final geometry, step {self.steps}, "
                f"energy {self.energies[-1]:.10f} Eh, converged {self.converged}",
            ),
        )

    def trajectory_xyz(self, path: PathLike) -> None:
        """Write every geometry as one multi-frame XYZ file (Angstrom), each frame's energy in its comment line."""
        write_atomic(path, trajectory_text(self.molecule.symbols, self.trajectory, self.energies))


def optimize(
    inp: InputLike,
    client: Any = None,
    *,
    max_steps: int = 100,
    convergence: str | None = None,
    freeze_screening: bool = False,
    trajectory: PathLike | None = None,
    geometric_options: Mapping[str, Any] | None = None,
    options: RunOptions | None = None,
    **keywords: Any,
) -> OptimizationResult:
    """Minimise the MBE energy of ``inp`` with geomeTRIC, one mbdask expansion per geometry.

    * ``inp``: what :func:`mbdask.start` accepts (ManyBodyInput, dict, JSON/YAML path, or an XYZ
      file with the model options ``method=``, ``max_nbody=`` ...); its driver is replaced by
      ``gradient`` (the optimisation needs MBE gradients; ``driver=`` other than ``"gradient"`` is
      refused), its molecule is the start geometry.
    * ``client``: as for :func:`mbdask.start`; a LocalCluster mbdask starts is started once
      for all steps and closed at the end.
    * ``max_steps``: geomeTRIC's ``maxiter``. Reaching it is not an error: the result says
      ``converged=False``.
    * ``convergence``: a geomeTRIC convergence set (``GAU``, the default, ``GAU_TIGHT``,
      ``GAU_LOOSE``, ``NWCHEM_LOOSE``, ``TURBOMOLE``, ...).
    * ``freeze_screening``: with ``screening=...``, keep the clusters that screening kept at
      the start geometry for every step. Otherwise each step screens its own geometry, and
      a cluster crossing a distance cutoff makes the energy jump between steps, which
      geomeTRIC reads as a bad step.
    * ``trajectory``: a path; the multi-frame XYZ (:meth:`OptimizationResult.trajectory_xyz`)
      is rewritten there after every geometry, to watch a long optimisation or keep its path.
    * ``geometric_options``: further geomeTRIC parameters (``OptParams``: ``trust``, ``tmax``,
      ``coordsys``...), for the rare case that needs them.
    * ``options``: a :class:`~mbdask.RunOptions` for every step (``cores_per_fragment``,
      ``retries``, ``store``, ``screening``...); ``keep_going`` is refused.
    * ``keywords``: :func:`mbdask.start`'s: its run options (changing those of ``options``),
      where the cluster comes from (``n_workers``...; used once, to connect) and the XYZ model options.

    A failed fragment raises :class:`~mbdask.errors.FragmentFailedError`, as
    :func:`mbdask.compute` does. Bad options raise :class:`~mbdask.errors.BadInputError`
    before any cluster starts.
    """
    geometric = _import_geometric()
    run, cluster, xyz_options = split_keywords("optimize", keywords, options, extra=XYZ_OPTIONS)
    if xyz_options.get("driver") not in (None, "gradient"):
        raise BadInputError(
            f"driver {xyz_options['driver']!r}: an optimisation runs MBE gradients (leave driver out, or give "
            "'gradient')"
        )
    _refuse_keep_going(run)
    screening = run.screening
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
        raise BadInputError(f"max_steps must be a whole number of at least 1, got {max_steps!r}")
    if freeze_screening and screening is None:
        raise BadInputError("freeze_screening needs a screening option, e.g. screening={'distance_cutoffs': {2: 9.0}}")
    if trajectory is not None:
        check_writable(trajectory)
    with captured_geometric_log():
        _geometric_params(
            geometric, max_steps, convergence, geometric_options
        )  # refused now, not after the cluster started
    mbe_input = gradient_input(input_from(inp, xyz_options, "optimize"))
    first = _first_plan(mbe_input, screening, run.check_installed)
    conn = _connect(client, first, cluster)
    try:
        expansions = Expansions(mbe_input, conn.client, run, freeze_screening, first)
        # This process's BLAS/OpenMP on one thread while geomeTRIC runs here and the expansions on the
        # workers: geomeTRIC's matrices are small, but OpenBLAS's threads spin after each call and
        # take the cores local workers need for the next step ((H2O)6 3-body GFN2-xTB on 2 cores
        # took about 1.5x as long per step with them, benchmarks/bench_optimize.py).
        with pinned_threads(1):
            geometric_run = minimise(
                mbe_input.molecule,
                expansions,
                max_steps=max_steps,
                convergence=convergence,
                geometric_options=geometric_options,
                trajectory=trajectory,
            )
    finally:
        conn.close()
    return _result(geometric_run, expansions)


@dataclass
class Frame:
    """One geometry geomeTRIC evaluated (Bohr), with its MBE energy and gradient."""

    coords: np.ndarray
    energy: float
    gradient: np.ndarray


@dataclass
class GeometricRun:
    """What geomeTRIC did: each geometry it evaluated, whether it converged, its steps and its log."""

    frames: list[Frame]
    converged: bool
    steps: int
    log: str


def minimise(
    molecule: Any,
    evaluate: Callable[[np.ndarray], tuple[float, np.ndarray]],
    *,
    max_steps: int = 100,
    convergence: str | None = None,
    geometric_options: Mapping[str, Any] | None = None,
    trajectory: PathLike | None = None,
) -> GeometricRun:
    """geomeTRIC's minimiser on ``evaluate(coords_bohr) -> (energy, gradient)``, started at ``molecule``'s geometry.

    The optimiser :func:`optimize` runs, for any energy function: the benchmark runs it on
    sequential QCManyBody to compare with mbdask step for step. Set up as geomeTRIC's
    ``run_optimizer`` sets up a custom engine (TRIC coordinates by default), without its
    files and terminal output: its scratch folder is a temporary directory, its log is
    returned.
    """
    geometric = _import_geometric()
    with captured_geometric_log() as log:
        params, coordsys = _geometric_params(geometric, max_steps, convergence, geometric_options)
        frames, converged, steps = _run_geometric(geometric, molecule, evaluate, params, coordsys, trajectory)
    return GeometricRun(frames, converged, steps, ANSI_COLOURS.sub("", log.getvalue()))


def _import_geometric() -> Any:
    """geomeTRIC's optimiser modules, or the BadInputError that says how to install them."""
    try:
        import geometric.engine  # noqa: F401
        import geometric.errors  # noqa: F401
        import geometric.internal  # noqa: F401
        import geometric.molecule  # noqa: F401
        import geometric.optimize  # noqa: F401
    except ImportError:
        raise BadInputError("geometry optimisation needs geomeTRIC: pip install 'mbdask[optimize]'") from None
    import geometric

    return geometric


def _refuse_keep_going(run: RunOptions) -> None:
    """Refuse ``keep_going``: a gradient through a lower order than asked for would optimise another energy surface."""
    if run.keep_going:
        raise BadInputError(
            "keep_going cannot be used in an optimisation: a partial result's gradient is that of a lower n-body order"
        )


def _geometric_params(
    geometric: Any, max_steps: int, convergence: str | None, extra: Mapping[str, Any] | None
) -> tuple[Any, str]:
    """geomeTRIC's ``OptParams`` and the coordinate system's name; a bad convergence set or option: BadInputError."""
    extra = dict(extra or {})
    for name, ours in OWN_GEOMETRIC_OPTIONS.items():
        if name in extra:
            instead = f"; use optimize(..., {ours}=...)" if ours else ""
            raise BadInputError(f"geometric_options cannot set {name!r}{instead}")
    coordsys = str(extra.pop("coordsys", "tric")).lower()
    if coordsys not in _coordinate_systems(geometric):
        raise BadInputError(
            f"geometric_options coordsys must be one of {', '.join(_coordinate_systems(geometric))}, not {coordsys!r}"
        )
    name = "GAU" if convergence is None else convergence
    try:
        params = geometric.optimize.OptParams(maxiter=max_steps, convergence_set=name, **extra)
    except KeyError:
        raise BadInputError(
            f"convergence must be one of geomeTRIC's convergence sets ({', '.join(CONVERGENCE_SETS)}), not {name!r}"
        ) from None
    except (OSError, AttributeError, TypeError, ValueError, RuntimeError, geometric.errors.Error) as exc:
        raise BadInputError(f"geometric_options: {exc}") from None
    params.xyzout = None  # the trajectory is ours to write (optimize(trajectory=...)), not geomeTRIC's
    params.qdata = None
    return params, coordsys


def _coordinate_systems(geometric: Any) -> dict[str, tuple]:
    """``run_optimizer``'s table: coordinate system -> (class, connect fragments, add Cartesians)."""
    internal = geometric.internal
    return {
        "cart": (internal.CartesianCoordinates, False, False),
        "prim": (internal.PrimitiveInternalCoordinates, True, False),
        "dlc": (internal.DelocalizedInternalCoordinates, True, False),
        "hdlc": (internal.DelocalizedInternalCoordinates, False, True),
        "tric-p": (internal.PrimitiveInternalCoordinates, False, False),
        "tric": (internal.DelocalizedInternalCoordinates, False, False),
    }


def gradient_input(inp: InputLike) -> Any:
    """``inp`` as a ``ManyBodyInput`` for the MBE gradient: driver ``gradient`` (MBE and atomic), frame fixed.

    The molecule gets ``fix_com``/``fix_orientation`` so that nothing downstream moves it:
    the gradient must be in the frame of the coordinates geomeTRIC sent (QCSchema's
    optimisation procedures do the same). Interaction-only gradients (``return_total_data``
    false) are refused: they are not the gradient of an energy of the whole system.
    """
    loaded = load_input(inp)
    spec = loaded.specification
    if spec.keywords.return_total_data is False:
        raise BadInputError(
            "an optimisation needs total MBE gradients: remove return_total_data: false from the keywords"
        )
    data = spec.model_dump()
    data["driver"] = "gradient"
    for atomic in data["specification"].values():
        atomic["driver"] = "gradient"
    try:
        new_spec = type(spec)(**data)
    except (ValueError, TypeError) as exc:
        raise BadInputError(describe_validation_error(exc)) from None
    molecule = loaded.molecule.model_copy(update={"fix_com": True, "fix_orientation": True})
    return loaded.model_copy(update={"specification": new_spec, "molecule": molecule})


def molecule_at(molecule: Any, coords_bohr: np.ndarray) -> Any:
    """``molecule`` (a QCElemental Molecule) with its geometry replaced; everything else (fragments...) kept."""
    geometry = np.array(coords_bohr, dtype=float).reshape(-1, 3)
    if geometry.shape != molecule.geometry.shape:
        raise ValueError(f"geometry of shape {geometry.shape} for a molecule of {len(molecule.symbols)} atoms")
    return molecule.model_copy(update={"geometry": geometry})


def _first_plan(mbe_input: Any, screening: Any, check_installed: bool) -> Any:
    """The start geometry's plan: validates the input, screening and programs before any cluster starts."""
    return make_plan(mbe_input, check_installed=check_installed, screening=screening)


def _connect(client: Any, first_plan: Any, cluster: ClusterOptions) -> Any:
    """One connection for every step (what :func:`mbdask.start` would make for the first step)."""
    return connect_for(first_plan, client, **cluster.keywords())


class Expansions:
    """The MBE energy and gradient at a geometry: one mbdask expansion on the shared client.

    Also what the run needs afterwards: the latest ``ManyBodyResult`` objects (by geometry)
    and how many expansions ran. With ``freeze`` the first expansion's kept clusters become
    an explicit cluster list (:class:`mbdask.planning.screening.Screening` ``clusters``) for all
    later ones; a kept set is closed under subsets, so screening with that list keeps
    exactly it at any geometry.
    """

    def __init__(self, mbe_input: Any, client: Any, options: RunOptions, freeze: bool, first_plan: Any = None):
        self.mbe_input = mbe_input
        self.client = client
        self.options = options
        self.screening = options.screening
        self.freeze = freeze
        self.check_installed = options.check_installed
        self._first_plan = first_plan
        self.count = 0
        self.results: OrderedDict[bytes, Any] = OrderedDict()

    def __call__(self, coords_bohr: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy (Hartree) and gradient ((natom, 3), Hartree/Bohr) at ``coords_bohr``."""
        coords = np.asarray(coords_bohr, dtype=float).reshape(-1, 3)
        step = self._plan_or_input(coords)
        sub = start(
            step,
            self.client,
            options=self.options.replace(screening=self.screening, check_installed=self.check_installed),
        )
        try:
            result = result_of(sub)
        finally:
            sub.connection.close()  # ours is the caller's client: closes nothing, as compute() does
        self.check_installed = False  # the workers and programs were checked at the first step
        if self.freeze and self.count == 0 and sub.plan.screened is not None:
            self.screening = frozen_screening(sub.plan.screened)
        self.count += 1
        self._keep(coords, result)
        return float(result.properties.return_energy), mbe_gradient(result)

    def _plan_or_input(self, coords: np.ndarray) -> Any:
        """The plan made before the cluster started if it is this geometry's (not planned twice), else the input."""
        plan, self._first_plan = self._first_plan, None
        if plan is not None and np.array_equal(plan.input.molecule.geometry, coords):
            return plan
        return self.mbe_input.model_copy(update={"molecule": molecule_at(self.mbe_input.molecule, coords)})

    def _keep(self, coords: np.ndarray, result: Any) -> None:
        self.results[coords.tobytes()] = result
        self.results.move_to_end(coords.tobytes())
        while len(self.results) > KEPT_RESULTS:
            self.results.popitem(last=False)


def frozen_screening(screened: Any) -> Any:
    """The clusters a screened plan kept (every order above 1), as screening by explicit list."""
    return Screening(clusters=frozenset(c for order, kept in screened.kept.items() if order > 1 for c in kept))


def mbe_gradient(result: Any) -> np.ndarray:
    """The MBE gradient of a ``ManyBodyResult``, (natom, 3) in Hartree/Bohr."""
    gradient = result.properties.return_gradient
    if gradient is None:
        gradient = result.return_result
    return np.asarray(gradient, dtype=float).reshape(-1, 3)


def geometric_molecule(molecule: Any) -> Any:
    """A geomeTRIC Molecule for a QCElemental one, built as geomeTRIC's ``QCEngineAPI`` builds it.

    Elements and geometry (Angstrom); bonds from the molecule's connectivity where it has
    one, otherwise from distances (``build_bonds``). TRIC makes one rigid-body set of
    coordinates per bonded unit, so a water cluster's waters move as molecules.
    """
    from geometric.molecule import Molecule
    from geometric.nifty import bohr2ang

    M = Molecule()
    M.elem = list(molecule.symbols)
    M.xyzs = [np.asarray(molecule.geometry, dtype=float).reshape(-1, 3) * bohr2ang]
    if molecule.connectivity:
        M.Data["bonds"] = sorted((int(a), int(b)) for a, b, *_ in molecule.connectivity)
        M.built_bonds = True
    else:
        M.build_bonds()
    return M


def engine_class() -> type:
    """A geomeTRIC custom engine (subclass of ``geometric.engine.Engine``) around an energy-and-gradient function.

    Made on demand so that geomeTRIC is imported only when an optimisation runs.
    """
    from geometric.engine import Engine

    class FunctionEngine(Engine):
        """geomeTRIC's custom engine for ``evaluate(coords_bohr) -> (energy, gradient)``.

        It records each geometry it is asked for.
        """

        def __init__(
            self,
            molecule: Any,
            evaluate: Callable[[np.ndarray], tuple[float, np.ndarray]],
            on_frame: Callable[[list[Frame]], None] | None = None,
        ):
            super().__init__(molecule)
            self.evaluate = evaluate
            self.on_frame = on_frame
            self.frames: list[Frame] = []

        def calc_new(self, coords: np.ndarray, dirname: str) -> dict:
            energy, gradient = self.evaluate(coords)
            return {"energy": energy, "gradient": np.asarray(gradient, dtype=float).ravel()}

        def calc(self, coords: np.ndarray, dirname: str, **kwargs: Any) -> dict:
            # geomeTRIC's own cache may answer; every call is one point of the trajectory either way
            result = super().calc(coords, dirname, **kwargs)
            self.frames.append(
                Frame(
                    coords.reshape(-1, 3).copy(),
                    float(result["energy"]),
                    np.array(result["gradient"], dtype=float).reshape(-1, 3),
                )
            )
            if self.on_frame is not None:
                self.on_frame(self.frames)
            return result

    return FunctionEngine


def _run_geometric(
    geometric: Any,
    molecule: Any,
    evaluate: Callable[[np.ndarray], tuple[float, np.ndarray]],
    params: Any,
    coordsys: str,
    trajectory: PathLike | None,
) -> tuple[list[Frame], bool, int]:
    """geomeTRIC's optimiser on ``evaluate``, as ``run_optimizer`` sets it up for a custom engine.

    Returns the frames, whether it converged, and its step count. Its scratch folder is a
    temporary directory (a custom engine writes nothing there, but geomeTRIC makes it).
    """
    M = geometric_molecule(molecule)
    on_frame = None
    if trajectory is not None:
        symbols = list(molecule.symbols)

        def on_frame(frames: list[Frame]) -> None:
            write_atomic(trajectory, trajectory_text(symbols, [f.coords for f in frames], [f.energy for f in frames]))

    engine = engine_class()(M, evaluate, on_frame)
    coord_class, connect, addcart = _coordinate_systems(geometric)[coordsys]
    IC = coord_class(
        M, build=True, connect=connect, addcart=addcart, constraints=None, cvals=None, conmethod=0, rigid=False
    )
    coords = np.asarray(molecule.geometry, dtype=float).ravel().copy()
    with tempfile.TemporaryDirectory(prefix="mbdask-geometric-") as scratch:
        optimizer = geometric.optimize.Optimizer(coords, M, IC, engine, os.path.join(scratch, "run.tmp"), params)
        try:
            optimizer.optimizeGeometry()
            converged = True
        except geometric.errors.GeomOptNotConvergedError:
            converged = False
    return engine.frames, converged, int(optimizer.Iteration)


def _result(run: GeometricRun, expansions: Expansions) -> OptimizationResult:
    last = run.frames[-1]
    final = expansions.results.get(last.coords.tobytes())
    if final is None:  # cannot happen while KEPT_RESULTS covers geomeTRIC's cache; the latest result then
        final = next(reversed(expansions.results.values()))
    norms = [np.linalg.norm(f.gradient, axis=1) for f in run.frames]
    return OptimizationResult(
        molecule=molecule_at(expansions.mbe_input.molecule, last.coords),
        energies=[f.energy for f in run.frames],
        gradient_rms=[float(np.sqrt(np.mean(n**2))) for n in norms],
        gradient_max=[float(n.max()) for n in norms],
        trajectory=[f.coords for f in run.frames],
        converged=run.converged,
        steps=run.steps,
        final_result=final,
        evaluations=expansions.count,
        log=run.log,
    )


@contextlib.contextmanager
def captured_geometric_log() -> Iterator[io.StringIO]:
    """geomeTRIC's log messages go into the yielded buffer only, not to the terminal or the root logger.

    geomeTRIC logs every step at INFO (and its Molecule class prints through its own stdout
    handler); a library call should be quiet. The loggers are restored afterwards.
    """
    from geometric.nifty import RawStreamHandler

    buffer = io.StringIO()
    handler = RawStreamHandler(buffer)
    saved = []
    for name in GEOMETRIC_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate, logger.level))
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        for logger, handlers, propagate, level in saved:
            logger.handlers = handlers
            logger.propagate = propagate
            logger.setLevel(level)


def _xyz_frame(symbols: list[str], coords_bohr: np.ndarray, comment: str) -> str:
    angstrom = np.asarray(coords_bohr, dtype=float).reshape(-1, 3) * constants.bohr2angstroms
    lines = [str(len(symbols)), comment.replace("\n", " ")]
    lines += [f"{s:<2s} {x:18.10f} {y:18.10f} {z:18.10f}" for s, (x, y, z) in zip(symbols, angstrom)]
    return "\n".join(lines) + "\n"


def trajectory_text(symbols: list[str], trajectory: list[np.ndarray], energies: list[float]) -> str:
    """A multi-frame XYZ (Angstrom): one frame per geometry, ``step N energy E Eh`` in its comment line."""
    return "".join(
        _xyz_frame(symbols, coords, f"mbdask optimize: step {i} energy {e:.10f} Eh")
        for i, (coords, e) in enumerate(zip(trajectory, energies))
    )

"""An ASE calculator whose energy and forces are a many-body expansion run on a Dask cluster.

ASE's optimisers, molecular dynamics and vibrational analysis ask a calculator for the energy
and forces of one geometry after another. :class:`ManyBodyCalculator` answers each new geometry
with one mbdask expansion (driver ``gradient``), run the way :func:`mbdask.optimize` runs its
steps (:class:`mbdask.workflows.optimize.Expansions`): on a cluster connected once, at the
first calculation, because starting a LocalCluster costs seconds, more than a GFN2-xTB step.

What stays fixed while the atoms move, and why:

* **Fragments** are found once, from the connectivity of the first geometry (or given), and
  kept: along a trajectory a hydrogen bond that stretches past the bonding cutoff must not
  change what a fragment is (the energy would jump), as :func:`mbdask.read_structures` keeps
  the first frame's fragments for a trajectory. Atoms of another count or order no longer fit
  them: that is a :class:`~mbdask.errors.BadInputError`, not a silent new fragmentation.
* **The frame**: the molecule is fixed in place (``fix_com``/``fix_orientation``), so that the
  gradient is in ASE's coordinates, not in QCElemental's reoriented frame.
* **Screened clusters**: with ``screening=``, the clusters kept at the first geometry are kept
  for all (``freeze_screening``, default on): a cluster crossing a distance cutoff between two
  MD steps would make the energy jump and break energy conservation.

Repeated geometries cost nothing: ASE's own results cache answers a second question about the
same atoms; this calculator also keeps the energy and forces of its latest geometries (ASE's
``Vibrations`` and optimisers return to geometries they have seen), and a checkpoint store
(``store=``) answers the fragments of any geometry computed before, also after a restart.

ASE works in eV and Angstrom, mbdask (QCSchema) in Hartree and Bohr; the conversion uses
``ase.units`` both ways, so forces are exactly minus the derivative of the energy ASE sees.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

try:
    from ase import units
    from ase.calculators.calculator import Calculator, all_changes
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("mbdask's ASE calculator needs ASE: pip install 'mbdask[ase]'") from exc

from mbdask.calculation.store import FragmentStore
from mbdask.deploy.cluster import ClientLike, Connection
from mbdask.errors import BadInputError, plural
from mbdask.inputs.load import describe_validation_error, load_input
from mbdask.inputs.xyz import ModelOptions, find_fragments, formula, guess_fragment_charges
from mbdask.planning.plan import make_plan
from mbdask.workflows.expansion import connect_for, result_of, start
from mbdask.workflows.optimize import Expansions, gradient_input, molecule_at
from mbdask.workflows.options import RunOptions, split_keywords

#: Geometries whose energy and forces the calculator keeps (beyond ASE's cache of the current one):
#: ``Vibrations`` and line searches come back to the geometry they started from.
CACHED_GEOMETRIES = 64


class ManyBodyCalculator(Calculator):
    """ASE calculator: the MBE energy and forces of the atoms, one mbdask expansion per geometry.

    The model chemistry and expansion, as for an XYZ file (:func:`mbdask.xyz_input`):
    ``method`` (default ``gfn2-xtb`` for xtb), ``program`` (default ``xtb``), ``basis``,
    ``bsse`` (default ``nocp``), ``max_nbody`` (default 2) and ``program_keywords`` (the QC
    program's keywords, e.g. ``{"accuracy": 0.01}`` for xtb); or ``specification``, a whole
    QCManyBody ``ManyBodySpecification`` (dict) for a multilevel expansion, its driver replaced
    by ``gradient``.

    * ``fragments``: 0-based atom indices per fragment, in the order of the ``Atoms``;
      default: found from the first geometry's connectivity and kept.
      ``fragment_charges``: one per fragment; default 0, or the charge of a common ion
      recognised by formula (H3O+, OH-, ...), as for XYZ files.
    * ``client``: a ``distributed.Client``, a scheduler address, or None (the default client,
      else a LocalCluster sized to this machine, started at the first calculation and
      closed by :meth:`close` or the ``with`` block).
    * ``options``: a :class:`~mbdask.RunOptions` (``store``, ``screening``, ``retries``,
      ``cores_per_fragment``...) or the same names as keywords, and the LocalCluster's
      ``n_workers`` ... as keywords. ``keep_going`` is refused (a lower order's forces are
      those of another energy surface).
    * ``freeze_screening``: with ``screening``, keep the first geometry's clusters.

    Energies in eV, forces in eV/Angstrom. Periodic ``Atoms`` are refused.
    """

    implemented_properties = ["energy", "free_energy", "forces"]
    name = "mbdask"

    def __init__(
        self,
        method: str | None = None,
        *,
        program: str | None = None,
        basis: str | None = None,
        bsse: str | Sequence[str] | None = None,
        max_nbody: int | None = None,
        program_keywords: Mapping[str, Any] | None = None,
        specification: Mapping[str, Any] | None = None,
        fragments: Sequence[Sequence[int]] | None = None,
        fragment_charges: Sequence[float] | None = None,
        client: ClientLike = None,
        options: RunOptions | None = None,
        freeze_screening: bool = True,
        cached_geometries: int = CACHED_GEOMETRIES,
        **keywords: Any,
    ):
        super().__init__()
        run, self._cluster, _ = split_keywords("ManyBodyCalculator", keywords, options)
        if run.keep_going:
            raise BadInputError(
                "keep_going cannot be used by the ASE calculator: a partial result's forces are those of a lower "
                "n-body order"
            )
        model = {"method": method, "program": program, "basis": basis, "bsse": bsse, "max_nbody": max_nbody}
        self._specification = _specification(model, program_keywords, specification)
        store = run.store
        if store is not None and not isinstance(store, FragmentStore):
            store = FragmentStore.open(store)  # opened once, not per geometry
        self._run = run.replace(store=store, progress=False)
        self._client = client
        self._given_fragments = None if fragments is None else [[int(a) for a in frag] for frag in fragments]
        self._fragment_charges = None if fragment_charges is None else [float(q) for q in fragment_charges]
        self._freeze = bool(freeze_screening)
        if not isinstance(cached_geometries, int) or cached_geometries < 0:
            raise BadInputError(f"cached_geometries must be a whole number, 0 or more, got {cached_geometries!r}")
        self._cache_size = cached_geometries
        self._seen: OrderedDict[bytes, tuple[float, np.ndarray]] = OrderedDict()
        self._numbers: np.ndarray | None = None
        self._order: np.ndarray | None = None  # mbdask's atom i is the Atoms' atom _order[i]
        self._fragments: list[list[int]] | None = None
        self._connection: Connection | None = None
        self._closer: weakref.finalize | None = None
        self._expansions: Expansions | None = None
        self._mbe_input: Any = None
        self._first_plan: Any = None

    # --- ASE's interface ---

    def calculate(
        self,
        atoms: Any = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        """Energy and forces of ``atoms`` into ``self.results`` (ASE calls this when the atoms changed)."""
        super().calculate(atoms, properties, system_changes)
        expansions = self._ready(self.atoms)
        positions = np.array(self.atoms.positions, dtype=float)
        key = positions.tobytes()
        known = self._seen.get(key)
        if known is None:
            assert self._order is not None
            energy, gradient = expansions(positions[self._order] / units.Bohr)
            forces = np.empty_like(positions)
            forces[self._order] = -gradient * (units.Hartree / units.Bohr)
            known = (energy * units.Hartree, forces)
            if self._cache_size:
                self._seen[key] = known
                while len(self._seen) > self._cache_size:
                    self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(key)
        self.results = {"energy": known[0], "free_energy": known[0], "forces": known[1].copy()}

    # --- beyond ASE's interface ---

    def hessian(self, atoms: Any = None) -> np.ndarray:
        """The MBE Hessian of ``atoms`` (default: the last atoms calculated): (3N, 3N), eV/Angstrom^2, ASE atom order.

        One expansion with driver ``hessian`` of the same model, fragments and clusters as the
        forces (the program must have Hessians: PySCF's HF and DFT do, xtb does not). Its
        frequencies are ``ase.vibrations.VibrationsData.from_2d(atoms, calc.hessian(atoms))``.
        """
        atoms = self.atoms if atoms is None else atoms
        if atoms is None:
            raise BadInputError("hessian() needs atoms: none were calculated yet")
        mbe_input = self._prepared(atoms)
        assert self._order is not None
        positions = np.array(atoms.positions, dtype=float)
        step = mbe_input.model_copy(
            update={"molecule": molecule_at(mbe_input.molecule, positions[self._order] / units.Bohr)}
        )
        screening = self._run.screening if self._expansions is None else self._expansions.screening
        plan = make_plan(with_driver(step, "hessian"), check_installed=self._run.check_installed, screening=screening)
        sub = start(plan, self._connected(plan).client, options=self._run)
        try:
            result = result_of(sub)
        finally:
            sub.connection.close()  # the calculator's client: closes nothing
        n = 3 * len(positions)
        mbe = np.asarray(result.properties.return_hessian, dtype=float).reshape(n, n)
        index = (3 * self._order[:, None] + np.arange(3)).ravel()
        hessian = np.empty_like(mbe)
        hessian[np.ix_(index, index)] = mbe
        return hessian * (units.Hartree / units.Bohr**2)

    @property
    def fragments(self) -> list[list[int]] | None:
        """The fragments (0-based atom indices of the ``Atoms``), once the first geometry fixed them."""
        return None if self._fragments is None else [list(f) for f in self._fragments]

    @property
    def expansions(self) -> int:
        """How many MBE expansions ran (a geometry seen before runs none)."""
        return 0 if self._expansions is None else self._expansions.count

    @property
    def last_result(self) -> Any:
        """The latest expansion's ``ManyBodyResult`` (n-body table, timings in ``extras["mbdask"]``), or None."""
        if self._expansions is None or not self._expansions.results:
            return None
        return next(reversed(self._expansions.results.values()))

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` the expansions run on (None before the first calculation)."""
        return None if self._connection is None else self._connection.client

    def close(self) -> None:
        """Close what the calculator started (its LocalCluster or client); a given client stays open."""
        if self._closer is not None:
            self._closer()

    def __enter__(self) -> ManyBodyCalculator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- set-up at the first geometry ---

    def _ready(self, atoms: Any) -> Expansions:
        """The expansions of this calculator: the input made at the first atoms, the cluster connected once."""
        mbe_input = self._prepared(atoms)
        if self._expansions is None:
            first, self._first_plan = self._first_plan, None
            if first is None:  # a Hessian came first and used the plan
                first = make_plan(mbe_input, check_installed=False, screening=self._run.screening)
            client = self._connected(first).client
            freeze = self._freeze and self._run.screening is not None
            self._expansions = Expansions(mbe_input, client, self._run, freeze, first)
        return self._expansions

    def _prepared(self, atoms: Any) -> Any:
        """The gradient input, made at the first atoms (fragments found, plan checked, no cluster yet); later
        atoms must fit its fragments."""
        if self._mbe_input is None:
            self._prepare(atoms)
        else:
            self._check_fits(atoms)
        return self._mbe_input

    def _prepare(self, atoms: Any) -> None:
        """Fragments, the gradient input and its first plan: all checked before any cluster starts."""
        _refuse_periodic(atoms)
        symbols = list(atoms.get_chemical_symbols())
        positions = np.array(atoms.positions, dtype=float)
        fragments = self._given_fragments
        if fragments is None:
            fragments = find_fragments(symbols, positions)
        elif sorted(a for f in fragments for a in f) != list(range(len(symbols))):
            raise BadInputError(f"fragments must list every atom 0..{len(symbols) - 1} exactly once")
        order = np.array([a for f in fragments for a in f], dtype=int)
        mbe_input = gradient_input(
            {"specification": self._specification, "molecule": self._molecule(symbols, fragments, positions[order])}
        )
        self._first_plan = make_plan(
            mbe_input, check_installed=self._run.check_installed, screening=self._run.screening
        )
        self._mbe_input = mbe_input
        self._numbers = np.array(atoms.numbers)
        self._order = order
        self._fragments = [list(f) for f in fragments]

    def _connected(self, plan: Any) -> Connection:
        """The connection, made once (a LocalCluster started for ``plan``'s programs, or the client given)."""
        if self._connection is None:
            connection = connect_for(plan, self._client, **self._cluster.keywords())
            self._connection = connection
            self._closer = weakref.finalize(self, Connection.close, connection)
        return self._connection

    def _molecule(self, symbols: list[str], fragments: list[list[int]], ordered_angstrom: np.ndarray) -> dict:
        """The QCSchema molecule (Bohr, fragments contiguous), fixed in ASE's frame."""
        charges = self._fragment_charges
        if charges is None:
            charges = guess_fragment_charges(symbols, fragments)
        elif len(charges) != len(fragments):
            found = ", ".join(formula([symbols[a] for a in f]) for f in fragments[:4])
            raise BadInputError(
                f"{plural(len(charges), 'fragment charge')} given for {plural(len(fragments), 'fragment')} "
                f"({found}{', ...' if len(fragments) > 4 else ''})"
            )
        sizes = np.cumsum([0] + [len(f) for f in fragments])
        molecule: dict[str, Any] = {
            "symbols": [symbols[a] for f in fragments for a in f],
            "geometry": (ordered_angstrom / units.Bohr).ravel().tolist(),
            "fragments": [list(range(int(a), int(b))) for a, b in zip(sizes, sizes[1:])],
            "molecular_charge": float(sum(charges)),
            "fix_com": True,
            "fix_orientation": True,
            "name": "ase",
        }
        if any(charges):
            molecule["fragment_charges"] = list(charges)
        return molecule

    def _check_fits(self, atoms: Any) -> None:
        """Refuse atoms the kept fragments no longer fit (another count or order of elements), and periodic ones."""
        _refuse_periodic(atoms)
        assert self._numbers is not None
        numbers = np.asarray(atoms.numbers)
        if numbers.shape != self._numbers.shape or not np.array_equal(numbers, self._numbers):
            raise BadInputError(
                f"the atoms changed ({len(self._numbers)} atoms at the first calculation, {len(numbers)} now, or "
                "another order): the fragments kept from the first geometry no longer fit them; use a new "
                "ManyBodyCalculator for other atoms"
            )


def _refuse_periodic(atoms: Any) -> None:
    if np.any(atoms.pbc):
        raise BadInputError("periodic Atoms: a many-body expansion here is of a finite cluster; set atoms.pbc = False")


def _specification(
    model: dict[str, Any], program_keywords: Mapping[str, Any] | None, specification: Mapping[str, Any] | None
) -> dict:
    """The ManyBodySpecification dict the calculator runs (its driver replaced by ``gradient`` later)."""
    given = sorted(name for name, value in model.items() if value is not None)
    if specification is not None:
        if given or program_keywords is not None:
            names = ", ".join([*given, *(["program_keywords"] if program_keywords is not None else [])])
            raise BadInputError(f"give either specification or the model options ({names}), not both")
        return dict(specification)
    options = ModelOptions(**{name: value for name, value in model.items() if value is not None})
    spec = options.input_for({})["specification"]
    if program_keywords:
        (atomic,) = spec["specification"].values()
        atomic["keywords"] = dict(program_keywords)
    return spec


def with_driver(inp: Any, driver: str) -> Any:
    """``inp`` (a ManyBodyInput) with the MBE driver and every atomic driver set to ``driver``."""
    loaded = load_input(inp)
    data = loaded.specification.model_dump()
    data["driver"] = driver
    for atomic in data["specification"].values():
        atomic["driver"] = driver
    try:
        spec = type(loaded.specification)(**data)
    except (ValueError, TypeError) as exc:
        raise BadInputError(describe_validation_error(exc)) from None
    return loaded.model_copy(update={"specification": spec})

"""Fragment molecules, identical to the ones QCManyBody's ``iterate_molecules`` builds.

QCManyBody calls ``Molecule.get_fragment`` for every calculation, which re-derives the
parent's masses each time (about 2 ms per fragment). ``FragmentFactory`` reads the parent
once and then builds each fragment from plain arrays with the same constructor arguments
``get_fragment(real, ghost, orient=False, group_fragments=False)`` uses, followed by the
same ``fix_com``/``fix_orientation``/``fix_symmetry`` update. Tests compare the two field
by field.

Even so, QCElemental's validating constructor (``from_schema`` -> ``from_arrays`` ->
``to_schema``, about 0.35 ms) cost as much per fragment as a tenth of an xtb calculation,
and it derives the same fields again and again: a water dimer is a water dimer. What it
derives depends on everything it is given *except* the geometry, which it only checks
for atoms closer than 0.1 bohr and rounds. So the factory runs the
validating constructor once per distinct composition (symbols, masses, real/ghost,
fragment layout, charges, multiplicities: a "template") and builds every other fragment
of that composition as a copy of the template with its own rounded geometry and name
(about 15 us instead of 0.4 ms). Parents whose fragments are not contiguous blocks of
atoms, or whose atoms fail the distance check (possible only for a parent marked
``validated``), take the validating constructor for every fragment. What the factory
relies on of QCElemental's constructor (its rounding and its distance check) lives in
:mod:`mbdask.upstream`, with the tests that hold it to QCElemental.
"""

from __future__ import annotations

import copy
import enum
import functools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from qcelemental.models.v2 import Molecule

from mbdask.upstream import constructor_rounding, passes_constructor_distance_check

#: Validated templates kept per factory (distinct compositions; a water cluster has a handful).
TEMPLATE_CACHE_SIZE = 512


_IMMUTABLE = (str, int, float, bool, type(None), enum.Enum)


def deepcopy_plain(value: Any) -> Any:
    """``copy.deepcopy`` for plain data (a specification, a molecule's fields), about 3x faster.

    Dicts, lists and numeric or string arrays are copied, strings, numbers, None and
    enums shared (``copy.deepcopy`` shares them too); anything else goes to
    ``copy.deepcopy``. Unlike ``copy.deepcopy``, an object found twice is copied twice
    (plain data from ``model_dump`` has no such sharing).
    """
    kind = type(value)
    if kind is dict:
        return {k: deepcopy_plain(v) for k, v in value.items()}
    if kind is list:
        return [deepcopy_plain(v) for v in value]
    if kind is np.ndarray and value.dtype.kind in "biufcUS":
        return value.copy()
    if isinstance(value, _IMMUTABLE):
        return value
    return copy.deepcopy(value)


def _mutable_fields(molecule: Molecule) -> tuple[str, ...] | None:
    """The fields of ``molecule`` that hold arrays, lists or dicts, but the geometry (replaced anyway); None where
    one of them, the geometry or the name is not among its set fields (a copy could not keep that set)."""
    fields = tuple(
        name
        for name in type(molecule).model_fields
        if name != "geometry" and isinstance(getattr(molecule, name), (np.ndarray, list, dict))
    )
    return fields if molecule.model_fields_set.issuperset((*fields, "geometry", "name")) else None


def constructor_geometry(rows: np.ndarray, rounded: bool = False) -> np.ndarray:
    """The geometry QCElemental's validating ``Molecule(orient=False, ...)`` makes of ``rows`` (bohr, (nat, 3)).

    ``from_arrays`` checks the geometry for atoms closer than 0.1 bohr (the caller has
    checked the parent's atoms, of which these are a subset: see ``_Layout``), ``to_schema``
    keeps bohr as it is, and ``__init__`` rounds it (:func:`mbdask.upstream.constructor_rounding`).
    ``rounded``: every element of ``rows`` is known to be what that rounding makes of it
    (rows of a parent that was rounded so), so rounding again changes nothing.
    """
    return rows if rounded else constructor_rounding(rows)


def from_template(template: Molecule, geometry: np.ndarray, name: str, mutable: tuple[str, ...]) -> Molecule:
    """``template`` with ``geometry`` (from :func:`constructor_geometry`) and ``name``, not validated again.

    The copy owns its arrays, lists and dicts (as a constructed molecule does). ``mutable``:
    the template's fields holding arrays, lists or dicts (:func:`_mutable_fields`), each of
    them, the geometry and the name among its set fields, so that pydantic's ``model_copy``
    (which adds what it updates to the set fields) keeps the template's set fields.
    """
    update = {field: deepcopy_plain(getattr(template, field)) for field in mutable}
    update["geometry"] = geometry
    update["name"] = name
    return template.model_copy(update=update)


@dataclass(frozen=True)
class _Layout:
    """The parent's fragments as the templates need them (see :meth:`FragmentFactory.molecule`)."""

    #: each fragment's atoms (parent indices)
    atoms: list[list[int]]
    #: each fragment's kind: equal kinds have equal symbols, masses, charge and multiplicity
    kinds: list[int]
    #: fragments are blocks of consecutive atoms, in order (QCElemental's validation makes them so)
    contiguous: bool
    #: the parent's atoms pass ``from_arrays``'s check for atoms closer than 0.1 bohr
    geometry_checked: bool
    #: the constructor's rounding leaves every coordinate of the parent as it is
    geometry_rounded: bool

    @classmethod
    def of(cls, parent: Molecule) -> _Layout:
        atoms = [np.asarray(f, dtype=int).tolist() for f in parent.fragments]
        symbols, masses = list(parent.symbols), np.asarray(parent.masses, dtype=float).tolist()
        kind_ids: dict[tuple, int] = {}
        kinds = []
        for ifr, frag in enumerate(atoms):
            charge, multiplicity = parent.fragment_charges[ifr], parent.fragment_multiplicities[ifr]
            kind = (tuple(symbols[i] for i in frag), tuple(masses[i] for i in frag), charge, multiplicity)
            kinds.append(kind_ids.setdefault(kind, len(kind_ids)))
        contiguous = [i for frag in atoms for i in frag] == list(range(len(symbols)))
        geometry = np.asarray(parent.geometry, dtype=float)
        geometry_checked = passes_constructor_distance_check(geometry)
        geometry_rounded = constructor_rounding(geometry).tobytes() == geometry.tobytes()
        return cls(atoms, kinds, contiguous, geometry_checked, geometry_rounded)


def _real_and_ghosts(real: tuple[int, ...], basis: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """0-based real and ghost fragments; QCManyBody's iterate_molecules forms the ghost list from a set difference:
    keep its order."""
    return [x - 1 for x in real], [x - 1 for x in list(set(basis) - set(real))]


class FragmentFactory:
    """Builds fragment molecules of one parent molecule; cheap to pickle, arrays made lazily."""

    def __init__(self, parent: Molecule):
        self.parent = parent
        self._arrays: tuple | None = None
        self._layout: _Layout | None = None
        #: per composition (:meth:`_template_key`): the validated molecule and its fields holding arrays, lists or dicts
        self._templates: dict[tuple, tuple[Molecule, tuple[str, ...] | None]] = {}
        #: per number of decimals: each atom's rounded coordinates as text, each fragment's atoms, each atom's fragment
        self._identity_parts: dict[int, tuple[list[list[str]], list[list[int]], list[int]]] = {}
        #: per number of decimals: each fragment's pieces of :meth:`identity_json` (None: fragments not contiguous)
        self._identity_json_parts: dict[int, list[tuple[str, str, str, str, str, str]] | None] = {}

    def __getstate__(self) -> dict:
        return {"parent": self.parent}

    def __setstate__(self, state: dict) -> None:
        FragmentFactory.__init__(self, state["parent"])

    def _parent_arrays(self):
        if self._arrays is None:
            p = self.parent
            at2fr = np.empty(len(p.symbols), dtype=int)
            for ifr, frag in enumerate(p.fragments):
                at2fr[np.asarray(frag, dtype=int)] = ifr
            self._arrays = (
                np.asarray(p.geometry, dtype=float),
                list(p.symbols),
                np.asarray(p.masses, dtype=float),
                at2fr,
                [np.asarray(f, dtype=int) for f in p.fragments],
                list(p.fragment_charges),
                list(p.fragment_multiplicities),
            )
        return self._arrays

    def layout(self) -> _Layout:
        if self._layout is None:
            self._layout = _Layout.of(self.parent)
        return self._layout

    def identity(self, real: tuple[int, ...], basis: tuple[int, ...], decimals: int) -> dict:
        """What determines the fragment molecule, as plain data (the checkpoint store's key).

        The same content ``molecule`` builds from, with the geometry rounded to ``decimals``
        (bohr), without the name or the fragments' indices in the parent.
        """
        _, symbols, _, _, _, fcharges, fmults = self._parent_arrays()
        coordinates, fragment_atoms, atom_fragment = self._identity_arrays(decimals)
        real_set = {x - 1 for x in real}
        atoms = sorted(a for f in {x - 1 for x in basis} | real_set for a in fragment_atoms[f])
        return {
            "symbols": [symbols[i] for i in atoms],
            "geometry": [text for i in atoms for text in coordinates[i]],
            "real": [atom_fragment[i] in real_set for i in atoms],
            "fragment_charges": [fcharges[i] for i in sorted(real_set)],
            "fragment_multiplicities": [fmults[i] for i in sorted(real_set)],
            "fix_symmetry": self.parent.fix_symmetry,
        }

    def identity_json(self, real: tuple[int, ...], basis: tuple[int, ...], decimals: int) -> str:
        """``json.dumps(identity(real, basis, decimals), sort_keys=True, separators=(",", ":"))``, joined from
        each fragment's text made once: the store key of every calculation of a run needs it (9 of a key's
        16 us were the JSON encoder's). Fragments are contiguous in the parent (QCManyBody requires it),
        so a fragment's atoms follow one another in the key as in the parent."""
        if decimals not in self._identity_json_parts:
            self._identity_json_parts[decimals] = self._identity_json_pieces(decimals)
        pieces = self._identity_json_parts[decimals]
        if pieces is None:  # not contiguous: the general path
            return json.dumps(self.identity(real, basis, decimals), sort_keys=True, separators=(",", ":"), default=str)
        real_set = {x - 1 for x in real}
        used = sorted({x - 1 for x in basis} | real_set)
        reals = sorted(real_set)
        return "".join(
            (
                '{"fix_symmetry":',
                self._fix_symmetry_json,
                ',"fragment_charges":[',
                ",".join(pieces[f][0] for f in reals),
                '],"fragment_multiplicities":[',
                ",".join(pieces[f][1] for f in reals),
                '],"geometry":[',
                ",".join(pieces[f][2] for f in used),
                '],"real":[',
                ",".join(pieces[f][3] if f in real_set else pieces[f][4] for f in used),
                '],"symbols":[',
                ",".join(pieces[f][5] for f in used),
                "]}",
            )
        )

    @functools.cached_property
    def _fix_symmetry_json(self) -> str:
        return json.dumps(self.parent.fix_symmetry, default=str)

    def _identity_json_pieces(self, decimals: int) -> list[tuple[str, str, str, str, str, str]] | None:
        """Per fragment: its charge, multiplicity, coordinates, real flags, ghost flags and symbols as JSON text."""
        _, symbols, _, _, _, fcharges, fmults = self._parent_arrays()
        coordinates, fragment_atoms, _ = self._identity_arrays(decimals)
        order = [a for atoms in fragment_atoms for a in atoms]
        if order != list(range(len(symbols))) or any(atoms != sorted(atoms) for atoms in fragment_atoms):
            return None
        return [
            (
                json.dumps(fcharges[f]),
                json.dumps(fmults[f]),
                ",".join(json.dumps(text) for a in atoms for text in coordinates[a]),
                ",".join(["true"] * len(atoms)),
                ",".join(["false"] * len(atoms)),
                ",".join(json.dumps(symbols[a]) for a in atoms),
            )
            for f, atoms in enumerate(fragment_atoms)
        ]

    def _identity_arrays(self, decimals: int) -> tuple[list[list[str]], list[list[int]], list[int]]:
        """What :meth:`identity` picks from, made once per parent (a (H2O)64 4-body run asks 679,120 times)."""
        parts = self._identity_parts.get(decimals)
        if parts is None:
            geometry, _, _, at2fr, fragments, _, _ = self._parent_arrays()
            texts = [f"{v:.{decimals}f}" for v in (np.round(geometry, decimals) + 0.0).ravel().tolist()]
            coordinates = [texts[3 * i : 3 * i + 3] for i in range(len(texts) // 3)]
            parts = self._identity_parts[decimals] = (coordinates, [f.tolist() for f in fragments], at2fr.tolist())
        return parts

    def _name(self, real0: list[int], ghost0: list[int]) -> str:
        return (self.parent.name if self.parent.name is not None else "") + " (" + str(real0) + "," + str(ghost0) + ")"

    def constructor_arguments(self, real: tuple[int, ...], basis: tuple[int, ...]) -> dict[str, Any]:
        """The keyword arguments ``get_fragment(real0, ghost0, orient=False, group_fragments=False)`` gives
        ``Molecule``."""
        geometry, symbols, masses, at2fr, fragments, fcharges, fmults = self._parent_arrays()
        real0, ghost0 = _real_and_ghosts(real, basis)
        real_set, ghost_set = set(real0), set(ghost0)
        atoms = [i for i in range(len(symbols)) if at2fr[i] in real_set or at2fr[i] in ghost_set]
        new_index = {old: new for new, old in enumerate(atoms)}
        frag_list, frag_charges, frag_mults = [], [], []
        for ifr, frag in enumerate(fragments):
            if ifr in real_set:
                frag_list.append([new_index[i] for i in frag.tolist()])
                frag_charges.append(fcharges[ifr])
                frag_mults.append(fmults[ifr])
            elif ifr in ghost_set:
                frag_list.append([new_index[i] for i in frag.tolist()])
                frag_charges.append(0)
                frag_mults.append(1)
        return {
            "orient": False,
            "name": self._name(real0, ghost0),
            "fragments": frag_list,
            "fragment_charges": frag_charges,
            "fragment_multiplicities": frag_mults,
            "symbols": [symbols[i] for i in atoms],
            "geometry": np.vstack([geometry[i] for i in atoms]),
            "real": [bool(at2fr[i] in real_set) for i in atoms],
            "masses": [masses[i] for i in atoms],
        }

    def validated_molecule(self, real: tuple[int, ...], basis: tuple[int, ...]) -> Molecule:
        """The fragment molecule from QCElemental's validating constructor, as ``get_fragment`` builds it."""
        mol = Molecule(**self.constructor_arguments(real, basis))
        updates: dict[str, Any] = {"fix_com": True, "fix_orientation": True}
        if self.parent.fix_symmetry == "c1":
            updates["fix_symmetry"] = "c1"
        return mol.model_copy(update=updates)

    def molecule(self, real: tuple[int, ...], basis: tuple[int, ...]) -> Molecule:
        """The molecule of ``real`` fragments with ghosts of ``basis`` (1-based, as in labels).

        Field for field the molecule :meth:`validated_molecule` returns. Where the
        parent's fragments are contiguous blocks of atoms and its geometry passes the
        constructor's check (as a parent validated by QCElemental does), the validating
        constructor runs once per composition: the kinds of the fragments used, in
        order, each real or ghost. These determine every constructor argument but the
        geometry and the name, so two fragments of one composition differ in nothing
        else (see the module's docstring).
        """
        layout = self.layout()
        if not (layout.contiguous and layout.geometry_checked):
            return self.validated_molecule(real, basis)
        real0, ghost0 = _real_and_ghosts(real, basis)
        real_set = set(real0)
        used = sorted(real_set.union(ghost0))
        key = tuple((layout.kinds[ifr], ifr in real_set) for ifr in used)
        found = self._templates.get(key)
        if found is None:
            found = self._add_template(key, real, basis)
        if found[1] is None:  # a template whose copies would differ in their set fields
            return self.validated_molecule(real, basis)
        atoms = [i for ifr in used for i in layout.atoms[ifr]]
        geometry = constructor_geometry(self._parent_arrays()[0][atoms], layout.geometry_rounded)
        return from_template(found[0], geometry, self._name(real0, ghost0), found[1])

    def _add_template(
        self, key: tuple, real: tuple[int, ...], basis: tuple[int, ...]
    ) -> tuple[Molecule, tuple[str, ...] | None]:
        template = self.validated_molecule(real, basis)
        if len(self._templates) >= TEMPLATE_CACHE_SIZE:
            self._templates.pop(next(iter(self._templates)))
        found = self._templates[key] = (template, _mutable_fields(template))
        return found

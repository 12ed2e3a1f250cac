"""XYZ files to QCSchema molecules, fragments found from connectivity.

Published cluster geometries do not always list each molecule's atoms together (some
list all oxygens first), so fragments are found by bonding (covalent radii) and the
atoms reordered fragment by fragment, as QCManyBody needs contiguous fragments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import qcelemental

from .errors import InputError

#: Two atoms are bonded when closer than this factor times the sum of covalent radii.
BOND_TOLERANCE = 1.2


def read_xyz(path: Union[str, os.PathLike]) -> tuple[list[str], np.ndarray, float, int]:
    """Symbols, geometry in Angstrom, charge and multiplicity (line 2: ``charge mult``, if given)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read XYZ file ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        natoms = int(lines[0].split()[0])
    except (IndexError, ValueError):
        raise InputError(f"{path}: not an XYZ file (line 1 must be the atom count)") from None
    charge, mult = 0.0, None
    tokens = lines[1].split() if len(lines) > 1 else []
    try:
        if len(tokens) >= 2:
            charge, mult = float(tokens[0]), int(tokens[1])
    except ValueError:
        charge, mult = 0.0, None
    symbols, coords = [], []
    for number, line in enumerate(lines[2 : 2 + natoms], start=3):
        parts = line.split()
        try:
            symbols.append(parts[0].capitalize())
            coords.append([float(x) for x in parts[1:4]])
        except (IndexError, ValueError):
            raise InputError(f"{path}:{number}: expected 'Element x y z'") from None
    if len(symbols) != natoms:
        raise InputError(f"{path}: says {natoms} atoms but lists {len(symbols)}")
    return symbols, np.array(coords, dtype=float), charge, mult


def find_fragments(symbols: list[str], geometry_angstrom: np.ndarray) -> list[list[int]]:
    """Connected components of the bond graph, each sorted, ordered by first atom."""
    try:
        radii = np.array([qcelemental.covalentradii.get(s, units="angstrom") for s in symbols])
    except Exception as exc:
        raise InputError(f"unknown element in XYZ: {exc}") from None
    dist = np.linalg.norm(geometry_angstrom[:, None, :] - geometry_angstrom[None, :, :], axis=-1)
    bonded = dist < BOND_TOLERANCE * (radii[:, None] + radii[None, :])
    parent = list(range(len(symbols)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(bonded, 1))):
        parent[root(int(i))] = root(int(j))
    groups: dict[int, list[int]] = {}
    for i in range(len(symbols)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


#: Charges of common ions recognised by formula when fragment charges are not given.
ION_CHARGES = {"H3O": 1.0, "HO": -1.0, "H4N": 1.0, "Na": 1.0, "K": 1.0, "Li": 1.0, "Cl": -1.0, "F": -1.0, "Br": -1.0}


def formula(symbols: list[str]) -> str:
    """Hill-like formula without counts of 1 (``H3O``, ``HO``)."""
    counts: dict[str, int] = {}
    for sym in symbols:
        counts[sym] = counts.get(sym, 0) + 1
    return "".join(f"{s}{counts[s] if counts[s] > 1 else ''}" for s in sorted(counts))


def guess_fragment_charges(symbols: list[str], fragments: list[list[int]]) -> list[float]:
    """0 for each fragment, except common ions (``ION_CHARGES``) recognised by formula."""
    return [ION_CHARGES.get(formula([symbols[i] for i in frag]), 0.0) for frag in fragments]


def parse_fragments(text: str) -> list[list[int]]:
    """``"0-2;3-5;6,7,8"`` (0-based atom indices in the file's order) to lists of atoms.

    Whether they cover every atom once is checked by :func:`molecule_from_xyz`.
    """
    fragments = []
    try:
        for group in text.split(";"):
            atoms: list[int] = []
            for part in group.split(","):
                if "-" in part:
                    lo, hi = part.split("-")
                    atoms += range(int(lo), int(hi) + 1)
                elif part.strip():
                    atoms.append(int(part))
            fragments.append(atoms)
    except ValueError:
        raise InputError(f"--fragments {text!r}: expected groups like '0-2;3-5;6,7,8'") from None
    return fragments


def molecule_from_xyz(
    path: Union[str, os.PathLike],
    fragment_charges: list[float] | None = None,
    fragments: list[list[int]] | None = None,
    guess_ions: bool = False,
) -> dict:
    """A QCSchema molecule dict (Bohr) with contiguous fragments found by connectivity (or given).

    ``guess_ions``: fragment charges of common ions (H3O+, OH-, ...) from their formula,
    when ``fragment_charges`` is not given; the total charge is then their sum.
    """
    symbols, geom, charge, mult = read_xyz(path)
    frags = fragments if fragments is not None else find_fragments(symbols, geom)
    if fragments is not None and sorted(a for f in fragments for a in f) != list(range(len(symbols))):
        raise InputError(f"fragments must list every atom 0..{len(symbols) - 1} exactly once")
    if fragment_charges is None and guess_ions:
        guessed = guess_fragment_charges(symbols, frags)
        if any(guessed):
            fragment_charges = guessed
    if fragment_charges is not None:
        if len(fragment_charges) != len(frags):
            raise InputError(f"{len(fragment_charges)} fragment charges given for {len(frags)} fragments")
        charge = float(sum(fragment_charges))
    order = [i for frag in frags for i in frag]
    bohr = geom[order] / qcelemental.constants.bohr2angstroms
    fragments, start = [], 0
    for frag in frags:
        fragments.append(list(range(start, start + len(frag))))
        start += len(frag)
    mol = {
        "symbols": [symbols[i] for i in order],
        "geometry": bohr.ravel().tolist(),
        "fragments": fragments,
        "molecular_charge": charge,
        "name": Path(path).stem,
    }
    if mult is not None:
        mol["molecular_multiplicity"] = mult
    if fragment_charges is not None:
        mol["fragment_charges"] = list(fragment_charges)
    return mol

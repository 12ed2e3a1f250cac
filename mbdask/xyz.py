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
        natoms = int(lines[0].split()[0])
    except (OSError, IndexError, ValueError):
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


def molecule_from_xyz(path: Union[str, os.PathLike], fragment_charges: list[float] | None = None) -> dict:
    """A QCSchema molecule dict (Bohr) with contiguous fragments found by connectivity."""
    symbols, geom, charge, mult = read_xyz(path)
    frags = find_fragments(symbols, geom)
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

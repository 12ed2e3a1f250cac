"""Basis functions per atom, from PySCF's basis library: the size the cost model and the PySCF harness's checks count.

PySCF is imported on first use, so that planning an xtb expansion never imports it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence


@functools.cache
def basis_functions(symbol: str, basis: str) -> int | None:
    """Basis functions of one atom of ``symbol`` in ``basis`` (PySCF's library), or None if unknown."""
    try:
        from pyscf import gto
        from pyscf.data.elements import charge

        with warnings.catch_warnings():  # PySCF suggests installing basis-set-exchange for unknown names
            warnings.simplefilter("ignore")
            mol = gto.M(atom=f"{symbol} 0 0 0", basis=basis, spin=charge(symbol) % 2, verbose=0)
        return int(mol.nao)
    except Exception:  # no PySCF, unknown basis or element: fall back to counting atoms
        return None


def fragment_basis_functions(
    symbols: Sequence[str], fragments: Sequence[Sequence[int]], basis: str
) -> list[int] | None:
    """Basis functions of each fragment (atoms by index into ``symbols``) in ``basis``, or None where PySCF's
    library lacks the basis for one of the elements."""
    found = {s: basis_functions(s.capitalize(), basis) for s in set(symbols)}
    per_atom = {s: n for s, n in found.items() if n is not None}
    if len(per_atom) < len(found):
        return None
    return [sum(per_atom[symbols[a]] for a in atoms) for atoms in fragments]

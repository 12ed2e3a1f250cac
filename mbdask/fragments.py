"""Fragment molecules, identical to the ones QCManyBody's ``iterate_molecules`` builds.

QCManyBody calls ``Molecule.get_fragment`` for every calculation, which re-derives the
parent's masses each time (about 2 ms per fragment). ``FragmentFactory`` reads the parent
once and then builds each fragment from plain arrays with the same constructor arguments
``get_fragment(real, ghost, orient=False, group_fragments=False)`` uses, followed by the
same ``fix_com``/``fix_orientation``/``fix_symmetry`` update. Tests compare the two field
by field.
"""

from __future__ import annotations

import numpy as np
from qcelemental.models.v2 import Molecule


class FragmentFactory:
    """Builds fragment molecules of one parent molecule; cheap to pickle, arrays made lazily."""

    def __init__(self, parent: Molecule):
        self.parent = parent
        self._arrays = None

    def __getstate__(self):
        return {"parent": self.parent, "_arrays": None}

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

    def identity(self, real: tuple[int, ...], basis: tuple[int, ...], decimals: int) -> dict:
        """What determines the fragment molecule, as plain data (the checkpoint store's key).

        The same content ``molecule`` builds from, with the geometry rounded to ``decimals``
        (bohr), without the name or the fragments' indices in the parent.
        """
        geometry, symbols, _, at2fr, _, fcharges, fmults = self._parent_arrays()
        real_set = {x - 1 for x in real}
        used = {x - 1 for x in basis} | real_set
        atoms = [i for i in range(len(symbols)) if at2fr[i] in used]
        return {
            "symbols": [symbols[i] for i in atoms],
            "geometry": [f"{v:.{decimals}f}" for v in (np.round(geometry[atoms], decimals) + 0.0).ravel().tolist()],
            "real": [bool(at2fr[i] in real_set) for i in atoms],
            "fragment_charges": [fcharges[i] for i in sorted(real_set)],
            "fragment_multiplicities": [fmults[i] for i in sorted(real_set)],
            "fix_symmetry": self.parent.fix_symmetry,
        }

    def molecule(self, real: tuple[int, ...], basis: tuple[int, ...]) -> Molecule:
        """The molecule of ``real`` fragments with ghosts of ``basis`` (1-based, as in labels)."""
        geometry, symbols, masses, at2fr, fragments, fcharges, fmults = self._parent_arrays()
        real0 = [x - 1 for x in real]
        # QCManyBody's iterate_molecules forms the ghost list from a set difference; keep its order.
        ghost0 = [x - 1 for x in list(set(basis) - set(real))]
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
        name = (self.parent.name if self.parent.name is not None else "") + " (" + str(real0) + "," + str(ghost0) + ")"
        mol = Molecule(
            orient=False,
            name=name,
            fragments=frag_list,
            fragment_charges=frag_charges,
            fragment_multiplicities=frag_mults,
            symbols=[symbols[i] for i in atoms],
            geometry=np.vstack([geometry[i] for i in atoms]),
            real=[bool(at2fr[i] in real_set) for i in atoms],
            masses=[masses[i] for i in atoms],
        )
        updates = {"fix_com": True, "fix_orientation": True}
        if self.parent.fix_symmetry == "c1":
            updates["fix_symmetry"] = "c1"
        return mol.model_copy(update=updates)

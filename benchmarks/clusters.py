"""Benchmark inputs: water clusters from benchmarks/data, and larger ones tiled from them.

(H2O)32 and (H2O)64 are copies of the (H2O)16 4444-a minimum placed 12 Angstrom apart: not
minima, but the fragment counts (and so the bookkeeping cost) of real clusters of that size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import qcelemental

from mbdask.inputs.xyz import molecule_from_xyz

DATA = Path(__file__).resolve().parent / "data"


def water_cluster(nwaters: int) -> dict:
    """A QCSchema molecule dict of ``nwaters`` waters (16, 32, 64 tile water16-4444a)."""
    files = {
        3: "water3-uud.xyz",
        6: "water6-prism.xyz",
        8: "water8-s4.xyz",
        10: "water10-pp1.xyz",
        16: "water16-4444a.xyz",
        20: "water20-dodecahedron.xyz",
    }
    if nwaters in files:
        return molecule_from_xyz(DATA / files[nwaters])
    if nwaters % 16:
        raise ValueError("tiled clusters come in multiples of 16 waters")
    base = molecule_from_xyz(DATA / "water16-4444a.xyz")
    geom = np.array(base["geometry"]).reshape(-1, 3)
    shift = 12.0 / qcelemental.constants.bohr2angstroms
    symbols, coords, fragments = [], [], []
    for copy in range(nwaters // 16):
        offset = np.array([copy % 2, (copy // 2) % 2, copy // 4]) * shift
        start = len(symbols)
        symbols += base["symbols"]
        coords.append(geom + offset)
        fragments += [[start + i for i in frag] for frag in base["fragments"]]
    return {
        "symbols": symbols,
        "geometry": np.vstack(coords).ravel().tolist(),
        "fragments": fragments,
        "molecular_charge": 0.0,
        "name": f"water{nwaters}-tiled",
    }


def xtb_input(nwaters: int, max_nbody: int, bsse=("nocp",), driver="energy") -> dict:
    return {
        "specification": {
            "driver": driver,
            "keywords": {"bsse_type": list(bsse), "levels": {max_nbody: "gfn2"}},
            "specification": {"gfn2": {"program": "xtb", "model": {"method": "gfn2-xtb"}}},
        },
        "molecule": water_cluster(nwaters),
    }

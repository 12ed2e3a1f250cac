"""Liquid-water droplets of 64 to 4,096 waters for screened expansions at scale (issue #26).

``benchmarks/data/water4096-liquid-sphere.xyz`` lists its waters in order of their distance
from the droplet's centre (data/README.md), so its first N waters are an N-water droplet of
the same liquid: the scaling benchmarks cut every size from it, so that the sizes differ
only in how many waters there are.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
SPHERE = DATA / "water4096-liquid-sphere.xyz"


def droplet_xyz(nwaters: int, folder: Path) -> Path:
    """Write the ``nwaters``-water droplet as ``folder/water{N}-droplet.xyz`` (kept if already there) and return its
    path."""
    lines = SPHERE.read_text().splitlines()
    total = int(lines[0]) // 3
    if not 1 <= nwaters <= total:
        raise ValueError(f"droplets have 1 to {total} waters, not {nwaters}")
    path = Path(folder) / f"water{nwaters}-droplet.xyz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atoms = lines[2 : 2 + 3 * nwaters]
        path.write_text("\n".join([str(len(atoms)), lines[1], *atoms]) + "\n")
    return path

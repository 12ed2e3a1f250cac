"""Inputs and clusters that several test modules build (not a test module: nothing here is collected).

* :func:`sleep_input`: a 3-body expansion of a water cluster through the ``sleep`` test double;
* :func:`replay_input`: QCManyBody's water trimer through the ``replay`` test double, which
  returns QCManyBody's stored component data;
* :func:`trajectory`: a multi-frame XYZ file of the water trimer, slightly displaced;
* :func:`in_process_client`: a scheduler and workers in this process, sized as a test needs.

The doubles (tests/doubles.py) are NOT chemistry: their numbers only check the scheduler,
the graph and the assembly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parent / "data"

#: The driver of a QCManyBody component-data model chemistry, by its first letter ("e_scf": energy).
DRIVERS = {"e": "energy", "g": "gradient", "h": "hessian"}


def sleep_input(nfrag_xyz: str = "water6-prism.xyz", seconds=None, bsse=("nocp",), driver="energy") -> dict:
    """A 3-body expansion of tests/data/``nfrag_xyz`` (one fragment per water) through the ``sleep`` double.

    ``seconds``: how long each n-body order sleeps (``{"3": 0.1}``); the model chemistry is ``"sleepy"``.
    """
    from mbdask.inputs.xyz import molecule_from_xyz

    return {
        "specification": {
            "driver": driver,
            "keywords": {"bsse_type": list(bsse), "levels": {3: "sleepy"}},
            "specification": {
                "sleepy": {"program": "sleep", "model": {"method": "sleep"}, "keywords": {"seconds": seconds or {}}},
            },
        },
        "molecule": molecule_from_xyz(DATA / nfrag_xyz),
    }


def replay_input(levels: dict, data: str, bsse=("cp", "nocp", "vmfc"), **keywords) -> dict:
    """QCManyBody's water trimer with ``levels`` (n-body order -> component-data model chemistry, e.g. ``"e_scf"``)
    through the ``replay`` double, which returns the stored component data ``data`` (needs zstandard to run)."""
    from qcmanybody.tests.common import mol_h2o_3

    driver = DRIVERS[next(iter(levels.values()))[0]]
    specs = {
        mc: {"program": "replay", "model": {"method": mc, "basis": "sto-3g"}, "keywords": {"component_data": data}}
        for mc in set(levels.values())
    }
    # QCManyBody's core takes every order, ManyBodyInput the highest order of each model chemistry
    highest: dict = {}
    for nbody, mc in levels.items():
        highest[mc] = nbody if nbody == "supersystem" else max(nbody, highest.get(mc, 0))
    return {
        "specification": {
            "driver": driver,
            "keywords": {
                "bsse_type": list(bsse),
                "levels": {nb: mc for mc, nb in highest.items()},
                "return_total_data": True,
                **keywords,
            },
            "specification": specs,
        },
        "molecule": mol_h2o_3.model_dump(),
    }


def trajectory(path: Path, frames: int = 3, shift: float = 0.03, seed: int = 7) -> Path:
    """A multi-frame XYZ file: the water trimer with small random displacements per frame (frame 1 as is)."""
    water3 = (DATA / "water3-uud.xyz").read_text().splitlines()
    natoms = int(water3[0])
    atoms = [line.split() for line in water3[2 : 2 + natoms]]
    rng = np.random.default_rng(seed)
    lines = []
    for frame in range(frames):
        lines += [str(natoms), f"frame {frame + 1}"]
        for symbol, *xyz in atoms:
            moved = np.array(xyz[:3], dtype=float) + (rng.normal(0.0, shift, 3) if frame else 0.0)
            lines.append(f"{symbol} {moved[0]:.6f} {moved[1]:.6f} {moved[2]:.6f}")
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def in_process_client(
    n_workers: int = 1, threads_per_worker: int = 1, cores: int | None = 1, **cluster_options: Any
) -> Iterator[Any]:
    """A real Dask scheduler and workers in this process, and a client of them, for the life of the block.

    In-process workers see the test doubles registered here (registered first). ``cores``: the
    ``cores`` resource each worker declares (None: none); ``cluster_options``: further LocalCluster
    options (``dashboard_address="127.0.0.1:0"`` to serve the dashboard).
    """
    from distributed import Client, LocalCluster
    from doubles import register_doubles

    register_doubles()
    options: dict[str, Any] = dict(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
    )
    if cores is not None:
        options["resources"] = {"cores": cores}
    options.update(cluster_options)
    with LocalCluster(**options) as cluster, Client(cluster, set_as_default=False) as client:
        yield client


def internal_frequencies(atoms: Any, hessian: np.ndarray) -> np.ndarray:
    """The 3N-6 frequencies (cm^-1, imaginary ones negative) of a Hessian (eV/A^2) with translations and rotations
    projected out in mass-weighted coordinates: a floppy dimer's lowest modes are tens of cm^-1, where rigid-body
    motion that finite differences leave in would mix with them. ``atoms``: ASE ``Atoms`` (tests/test_ase.py and
    benchmarks/bench_ase.py)."""
    from ase.vibrations import VibrationsData

    root = np.sqrt(np.repeat(atoms.get_masses(), 3))
    centred = atoms.positions - atoms.get_center_of_mass()
    rigid = [np.tile(np.eye(3)[k], len(atoms)) for k in range(3)]
    rigid += [np.cross(np.eye(3)[k], centred).ravel() for k in range(3)]
    basis, _ = np.linalg.qr(np.array([v * root for v in rigid]).T)
    project = np.eye(3 * len(atoms)) - basis @ basis.T
    weighted = project @ (hessian / np.outer(root, root)) @ project
    frequencies = VibrationsData.from_2d(atoms, weighted * np.outer(root, root)).get_frequencies()
    signed = np.where(np.abs(frequencies.imag) > 0, -np.abs(frequencies), frequencies.real)
    return np.sort(signed[np.argsort(np.abs(signed))[6:]])

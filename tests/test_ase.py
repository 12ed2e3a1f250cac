"""The ASE calculator (mbdask.ManyBodyCalculator): MBE energies and forces for ASE's optimisers, MD and vibrations.

Real ASE, real Dask clusters, real xtb (GFN2-xTB, nocp) and PySCF (HF, cp). The references
are mbdask's own routes to the same numbers: ``mbdask.compute`` of the same input (driver
gradient, and hessian), and ``mbdask.optimize`` (geomeTRIC) for the minimum BFGS finds.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

ase = pytest.importorskip("ase", reason="ASE is not installed (pip install 'mbdask[ase]')")

from ase import Atoms, units  # noqa: E402
from ase.io import read  # noqa: E402
from conftest import DATA, needs_xtb  # noqa: E402
from helpers import internal_frequencies  # noqa: E402

import mbdask  # noqa: E402
import mbdask.deploy.cluster  # noqa: E402
from mbdask.errors import BadInputError  # noqa: E402
from mbdask.interfaces.ase import ManyBodyCalculator  # noqa: E402

XTB = {"accuracy": 0.01}


def shuffled_trimer() -> tuple[Atoms, np.ndarray]:
    """(H2O)3 (tests/data/water3-uud.xyz) with the oxygens first, as some published clusters list them; and the
    file's atom index of each atom."""
    atoms = read(DATA / "water3-uud.xyz")
    order = np.array([0, 3, 6, 1, 2, 4, 5, 7, 8])
    return atoms[order], order


def reference_input(atoms: Atoms, fragments: list[list[int]], driver: str, spec: dict) -> dict:
    """The ManyBodyInput of ``atoms`` (fragments contiguous, geometry converted with ASE's Bohr), fixed in its frame."""
    order = [a for f in fragments for a in f]
    sizes = np.cumsum([0] + [len(f) for f in fragments])
    return {
        "specification": {**spec, "driver": driver},
        "molecule": {
            "symbols": [atoms.get_chemical_symbols()[a] for a in order],
            "geometry": (atoms.positions[order] / units.Bohr).ravel().tolist(),
            "fragments": [list(range(a, b)) for a, b in zip(sizes, sizes[1:])],
            "fix_com": True,
            "fix_orientation": True,
        },
    }


def xtb_spec(max_nbody: int = 2) -> dict:
    return {
        "keywords": {"bsse_type": ["nocp"], "levels": {max_nbody: "gfn2-xtb"}},
        "specification": {"gfn2-xtb": {"program": "xtb", "model": {"method": "gfn2-xtb"}, "keywords": XTB}},
    }


def test_import_mbdask_does_not_import_ase():
    code = "import sys, mbdask; assert 'ManyBodyCalculator' in mbdask.__all__; print('ase' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
    assert mbdask.ManyBodyCalculator is ManyBodyCalculator


@needs_xtb
def test_energy_and_forces_are_mbdask_computes_gradient_in_ase_units(process_client):
    """Oxygens first in the Atoms: fragments found by connectivity, forces back in the Atoms' order, eV and eV/A."""
    atoms, _ = shuffled_trimer()
    calc = ManyBodyCalculator(max_nbody=2, program_keywords=XTB, client=process_client)
    atoms.calc = calc
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    assert calc.fragments == [[0, 3, 4], [1, 5, 6], [2, 7, 8]]
    result = mbdask.compute(reference_input(atoms, calc.fragments, "gradient", xtb_spec()), process_client)
    gradient = np.asarray(result.properties.return_gradient).reshape(-1, 3)
    expected = np.empty_like(gradient)
    expected[[a for f in calc.fragments for a in f]] = -gradient * units.Hartree / units.Bohr
    assert energy == pytest.approx(result.properties.return_energy * units.Hartree, abs=1e-8)
    np.testing.assert_allclose(forces, expected, rtol=0, atol=1e-8)
    assert abs(forces.sum(axis=0)).max() < 1e-4  # no net force: the frame was not moved
    calc.close()
    assert process_client.status == "running"  # a client given is the caller's: close() leaves it open


@needs_xtb
def test_asking_twice_or_coming_back_runs_nothing_and_the_store_serves_a_restart(process_client, tmp_path):
    atoms, _ = shuffled_trimer()
    store = tmp_path / "fragments.sqlite"
    calc = ManyBodyCalculator(max_nbody=2, program_keywords=XTB, client=process_client, store=store)
    atoms.calc = calc
    first = atoms.get_potential_energy()
    forces = atoms.get_forces()
    assert atoms.get_potential_energy() == first and calc.expansions == 1  # ASE's cache
    start = atoms.positions.copy()
    atoms.positions[0] += [0.02, 0.0, 0.0]
    moved = atoms.get_potential_energy()
    assert moved != first and calc.expansions == 2
    atoms.positions = start
    assert atoms.get_potential_energy() == first and calc.expansions == 2  # the calculator's geometries
    np.testing.assert_array_equal(atoms.get_forces(), forces)

    restarted = ManyBodyCalculator(max_nbody=2, program_keywords=XTB, client=process_client, store=store)
    atoms.calc = restarted
    assert atoms.get_potential_energy() == pytest.approx(first, abs=1e-10)
    timing = restarted.last_result.extras["mbdask"]["timing"]
    assert timing["from_store"] == 6 and timing["fragments"] == []  # 3 monomers, 3 dimers: none computed again


@needs_xtb
def test_fragments_kept_while_atoms_move_and_a_cluster_started_once(cluster_starts):
    """A hydrogen pulled 1.5 A off its oxygen still belongs to its water; one LocalCluster for every geometry,
    closed by the with block."""
    atoms, _ = shuffled_trimer()
    with ManyBodyCalculator(max_nbody=2, program_keywords=XTB, n_workers=2) as calc:
        atoms.calc = calc
        atoms.get_potential_energy()
        kept = calc.fragments
        oxygen, hydrogen = kept[0][0], kept[0][1]
        bond = atoms.positions[hydrogen] - atoms.positions[oxygen]
        atoms.positions[hydrogen] += 1.5 * bond / np.linalg.norm(bond)
        atoms.get_forces()
        assert calc.fragments == kept
        assert [list(f) for f in calc.last_result.input_data.molecule.fragments] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
        assert calc.expansions == 2 and len(cluster_starts) == 1
        atoms.positions[0] += 0.01
        atoms.get_potential_energy()
        assert len(cluster_starts) == 1
        with pytest.raises(BadInputError, match="fragments kept from the first geometry no longer fit"):
            calc.get_potential_energy(atoms[:6])
        with pytest.raises(BadInputError, match="no longer fit"):
            calc.get_potential_energy(atoms[[3, 0, 1, 2, 4, 5, 6, 7, 8]])  # a hydrogen first: another order
    assert cluster_starts[0].status.name == "closed"


def test_bad_options_refused_before_any_cluster(cluster_starts):
    atoms, _ = shuffled_trimer()
    with pytest.raises(BadInputError, match="keep_going"):
        ManyBodyCalculator(keep_going=True)
    with pytest.raises(BadInputError, match="either specification or the model options"):
        ManyBodyCalculator("gfn2-xtb", specification=xtb_spec())
    with pytest.raises(TypeError, match="no_such_option"):
        ManyBodyCalculator(no_such_option=1)
    with pytest.raises(BadInputError, match="xtb takes no basis"):
        ManyBodyCalculator(basis="sto-3g")
    periodic = atoms.copy()
    periodic.pbc = True
    periodic.cell = [20, 20, 20]
    with pytest.raises(BadInputError, match="periodic"):
        ManyBodyCalculator(n_workers=2).get_potential_energy(periodic)
    with pytest.raises(BadInputError, match="every atom"):
        ManyBodyCalculator(fragments=[[0, 3, 4]], n_workers=2).get_potential_energy(atoms)
    with pytest.raises(BadInputError, match="2 fragment charges given for 3 fragments"):
        ManyBodyCalculator(fragment_charges=[0, 0], n_workers=2).get_potential_energy(atoms)
    with pytest.raises(BadInputError, match="hessian"):  # xtb has no Hessians: the plan refuses it
        ManyBodyCalculator(n_workers=2).hessian(atoms)
    assert cluster_starts == []


@needs_xtb
def test_bfgs_reaches_the_minimum_of_mbdask_optimize(process_client):
    """(H2O)3 2-body GFN2-xTB: ASE's BFGS on the calculator's forces and geomeTRIC on mbdask's gradients meet."""
    pytest.importorskip("geometric", reason="geomeTRIC is not installed (pip install 'mbdask[optimize]')")
    from ase.optimize import BFGS

    atoms = read(DATA / "water3-uud.xyz")
    with ManyBodyCalculator(max_nbody=2, program_keywords=XTB, client=process_client) as calc:
        atoms.calc = calc
        start = atoms.get_potential_energy()
        assert BFGS(atoms, logfile=None).run(fmax=0.005, steps=200)
        found = atoms.get_potential_energy()
    inp = reference_input(read(DATA / "water3-uud.xyz"), [[0, 1, 2], [3, 4, 5], [6, 7, 8]], "gradient", xtb_spec())
    optimized = mbdask.optimize(inp, process_client, convergence="GAU_TIGHT")
    assert optimized.converged
    assert found < start - 0.01
    assert found == pytest.approx(optimized.energy * units.Hartree, abs=2e-4)  # eV: both at the same minimum


@needs_xtb
def test_nve_md_conserves_total_energy(process_client):
    """Velocity Verlet, 0.5 fs, 40 steps of (H2O)3 at 100 K on 2-body GFN2-xTB: total energy kept to 1 meV/atom."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    atoms = read(DATA / "water3-uud.xyz")
    MaxwellBoltzmannDistribution(atoms, temperature_K=100, rng=np.random.default_rng(7))
    with ManyBodyCalculator(max_nbody=2, program_keywords={"accuracy": 0.001}, client=process_client) as calc:
        atoms.calc = calc
        totals = [atoms.get_total_energy()]
        dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs, logfile=None)
        dyn.attach(lambda: totals.append(atoms.get_total_energy()), interval=1)
        dyn.run(40)
        assert calc.expansions == 41  # one per step and the start: ASE asks twice, the cache answers
    drift = np.abs(np.array(totals) - totals[0]).max() / len(atoms)
    assert drift < 1e-3, f"total energy drifted {drift * 1e3:.3f} meV/atom"


def water_dimer() -> Atoms:
    """A water dimer near its HF/STO-3G minimum (rounded to 0.1 A), the oxygens first."""
    positions = [[-1.9, 0.2, 0.0], [1.2, -0.1, 0.0], [-1.2, 0.9, 0.0], [-1.3, -0.6, 0.0], [1.9, -0.2, -0.8]]
    return Atoms("OOHHHH", positions=[*positions, [1.9, -0.2, 0.8]])


def hf_calculator(client, bsse: str = "cp", **keywords) -> ManyBodyCalculator:
    keywords = {"conv_tol": 1e-11, **keywords}
    return ManyBodyCalculator(
        "hf", program="pyscf", basis="sto-3g", bsse=bsse, program_keywords=keywords, client=client
    )


def test_hessian_is_mbdask_computes_hessian_in_ase_units_and_order(process_client):
    """(H2O)2 2-body nocp HF/STO-3G (PySCF), oxygens first: the MBE Hessian (driver hessian), back in the Atoms'
    order, in eV/A^2."""
    pytest.importorskip("pyscf", reason="PySCF is not installed (pip install 'mbdask[pyscf]')")
    atoms = water_dimer()
    with hf_calculator(process_client, "nocp") as calc:
        hessian = calc.hessian(atoms)
        assert calc.fragments == [[0, 2, 3], [1, 4, 5]] and calc.expansions == 0 and calc.last_result is None
        spec = {
            "keywords": {"bsse_type": ["nocp"], "levels": {2: "hf"}},
            "specification": {
                "hf": {
                    "program": "pyscf",
                    "model": {"method": "hf", "basis": "sto-3g"},
                    "keywords": {"conv_tol": 1e-11},
                }
            },
        }
        result = mbdask.compute(reference_input(atoms, calc.fragments, "hessian", spec), process_client)
    expected = np.asarray(result.properties.return_hessian).reshape(18, 18) * units.Hartree / units.Bohr**2
    index = np.ravel([[3 * a, 3 * a + 1, 3 * a + 2] for a in (0, 2, 3, 1, 4, 5)])
    np.testing.assert_allclose(hessian[np.ix_(index, index)], expected, rtol=0, atol=1e-8)


@pytest.mark.slow
def test_vibrations_match_the_mbe_hessian(process_client, tmp_path):
    """(H2O)2 2-body cp HF/STO-3G (PySCF), relaxed by BFGS: ASE's finite-difference Vibrations on the calculator's
    forces and the frequencies of the expansion's analytic Hessian (driver hessian) agree (under a minute here).

    Displacements of 0.002 A: over ASE's default 0.01 A the cp forces are not linear enough, and the two lowest
    intermolecular modes come out 15-30 cm^-1 below the Hessian's (benchmarks/bench_ase.py, docs/benchmarks.md)."""
    pytest.importorskip("pyscf", reason="PySCF is not installed (pip install 'mbdask[pyscf]')")
    from ase.optimize import BFGS
    from ase.vibrations import Vibrations

    atoms = water_dimer()
    with hf_calculator(process_client, conv_tol=1e-12, conv_tol_grad=1e-9) as calc:
        atoms.calc = calc
        assert BFGS(atoms, logfile=None).run(fmax=1e-3, steps=100)
        hessian = calc.hessian(atoms)
        np.testing.assert_allclose(hessian, hessian.T, atol=1e-4)  # eV/A^2: the CPHF equations converged to ~1e-6
        before = calc.expansions
        vib = Vibrations(atoms, name=str(tmp_path / "vib"), delta=0.002)
        vib.run()
        assert calc.expansions == before + 6 * 3 * 2  # two displacements per coordinate; the minimum is cached
        finite = internal_frequencies(atoms, vib.get_vibrations().get_hessian_2d())
    analytic = internal_frequencies(atoms, hessian)
    print("finite differences", np.round(finite, 2), "analytic", np.round(analytic, 2), sep="\n")
    np.testing.assert_allclose(finite, analytic, atol=3.0)
    assert analytic[-1] > 3000  # an O-H stretch: the modes are a water dimer's

"""mbdask's PySCF harness: equal to direct PySCF calls, ghost atoms, failures, and MBE parity."""

from __future__ import annotations

import numpy as np
import pytest
import qcengine
from qcelemental.models.v2 import AtomicInput, Molecule

pyscf = pytest.importorskip("pyscf", reason="PySCF is not installed (pip install 'mbdask[pyscf]')")
from conftest import DATA  # noqa: E402
from pyscf import cc, dft, gto, mp, scf  # noqa: E402
from reference import sequential_computer  # noqa: E402

import mbdask  # noqa: E402

mbdask.register_programs()  # plain qcengine.compute(..., 'pyscf') below

DIMER = Molecule.from_data(
    """
0 1
O  -1.551007  -0.114520   0.000000
H  -1.934259   0.762503   0.000000
H  -0.599677   0.040712   0.000000
--
0 1
O   1.350625   0.111469   0.000000
H   1.680398  -0.373741  -0.758561
H   1.680398  -0.373741   0.758561
"""
)


def _compute(molecule, method, driver="energy", basis="6-31g", **keywords):
    inp = AtomicInput(
        molecule=molecule,
        specification={"driver": driver, "model": {"method": method, "basis": basis}, "keywords": keywords},
    )
    return qcengine.compute(inp, "pyscf", task_config={"ncores": 1, "memory": 1.0})


def _direct_mole(molecule, basis="6-31g", ghost_fragment=None):
    geom = np.asarray(molecule.geometry).reshape(-1, 3)
    atoms = []
    for i, (sym, xyz) in enumerate(zip(molecule.symbols, geom)):
        ghost = ghost_fragment is not None and i in molecule.fragments[ghost_fragment]
        atoms.append(("ghost-" + sym if ghost else sym, tuple(xyz)))
    charge = int(round(molecule.molecular_charge))
    return gto.M(
        atom=atoms, basis=basis, unit="Bohr", charge=charge, spin=int(molecule.molecular_multiplicity) - 1, verbose=0
    )


def test_registering_twice_is_harmless():
    mbdask.register_programs()
    mbdask.register_programs()
    assert "pyscf" in qcengine.list_available_programs()


@pytest.mark.parametrize("method", ["hf", "b3lyp", "pbe0", "mp2", "ccsd", "ccsd(t)"])
def test_energy_equals_direct_pyscf(method):
    res = _compute(DIMER, method)
    assert res.success, res.error
    mol = _direct_mole(DIMER)
    mf = (scf.RHF(mol) if method in ("hf", "mp2", "ccsd", "ccsd(t)") else dft.RKS(mol, xc=method)).run()
    expected = mf.e_tot
    if method == "mp2":
        expected = mp.MP2(mf).run().e_tot
    elif method.startswith("ccsd"):
        mycc = cc.CCSD(mf).run()
        expected = mycc.e_tot + (mycc.ccsd_t() if method == "ccsd(t)" else 0.0)
    assert abs(res.return_result - expected) < 1e-10
    assert res.properties.scf_total_energy == pytest.approx(mf.e_tot, abs=1e-10)
    assert res.properties.calcinfo_nbasis == mol.nao
    assert res.provenance.creator == "PySCF" and res.provenance.version == pyscf.__version__


@pytest.mark.parametrize("method", ["hf", "b3lyp", "mp2"])
def test_gradient_equals_direct_pyscf(method):
    res = _compute(DIMER, method, driver="gradient")
    assert res.success, res.error
    mol = _direct_mole(DIMER)
    mf = (scf.RHF(mol) if method in ("hf", "mp2") else dft.RKS(mol, xc=method)).run()
    solver = mp.MP2(mf).run() if method == "mp2" else mf
    np.testing.assert_allclose(res.return_result, solver.nuc_grad_method().kernel(), atol=1e-10, rtol=0)


def test_hessian_equals_direct_pyscf():
    mono = DIMER.get_fragment(0)
    res = _compute(mono, "hf", driver="hessian")
    assert res.success, res.error
    mf = scf.RHF(_direct_mole(mono)).run()
    hess = mf.Hessian().kernel().transpose(0, 2, 1, 3).reshape(9, 9)
    np.testing.assert_allclose(res.return_result, hess, atol=1e-10, rtol=0)


def test_ghost_atoms_carry_basis_functions_only():
    ghosted = DIMER.get_fragment([0], [1])
    res = _compute(ghosted, "hf")
    mf = scf.RHF(_direct_mole(DIMER, ghost_fragment=1)).run()
    assert abs(res.return_result - mf.e_tot) < 1e-10
    assert res.properties.calcinfo_nbasis == 26  # both waters' 6-31G functions
    assert res.properties.calcinfo_nalpha == 5  # one water's electrons


def test_open_shell_is_unrestricted_by_default_and_restricted_on_request():
    oh = Molecule.from_data("0 2\nO 0 0 0\nH 0 0 0.97")
    res = _compute(oh, "hf")
    assert abs(res.return_result - scf.UHF(_direct_mole(oh)).run().e_tot) < 1e-10
    rohf = _compute(oh, "hf", reference="rohf")
    assert abs(rohf.return_result - scf.ROHF(_direct_mole(oh)).run().e_tot) < 1e-10


def test_unconverged_scf_is_a_failure_not_a_number():
    res = _compute(DIMER, "hf", max_cycle=2)
    assert not res.success
    assert res.error.error_type == "convergence_error"
    assert "did not converge" in res.error.error_message


@pytest.mark.parametrize(
    "method, driver, keywords, message",
    [
        ("ccsd", "gradient", {}, "gradient is not supported for ccsd"),
        ("mp2", "hessian", {}, "hessian is not supported for mp2"),
        ("nonsense", "energy", {}, "neither hf"),
        ("hf", "energy", {"bogus": 1}, "unknown keywords"),
    ],
)
def test_unsupported_requests_name_what_is_unsupported(method, driver, keywords, message):
    res = _compute(DIMER, method, driver=driver, **keywords)
    assert not res.success and res.error.error_type == "input_error"
    assert message in res.error.error_message


def test_density_fitting_and_threads_keywords():
    res = _compute(DIMER, "mp2", density_fit=True)
    mol = _direct_mole(DIMER)
    mf = scf.RHF(mol).density_fit().run()
    assert abs(res.return_result - mp.MP2(mf).density_fit().run().e_tot) < 1e-10
    from pyscf import lib

    before = lib.num_threads()
    _compute(DIMER, "hf")
    assert lib.num_threads() == before  # ncores applied for the call only


def test_gpu_request_falls_back_to_cpu_with_warning():
    pytest.importorskip("pyscf")
    try:
        import cupy  # noqa: F401

        pytest.skip("a GPU stack is installed here")
    except ImportError:
        pass
    from mbdask.programs.pyscf import _to_gpu

    mf = scf.RHF(_direct_mole(DIMER))
    with pytest.warns(RuntimeWarning, match="running on the CPU"):
        assert _to_gpu(mf) is mf


def _pyscf_input(molecule: dict, bsse, driver="energy", method="hf", basis="6-31g", max_nbody=2, **keywords) -> dict:
    return {
        "specification": {
            "driver": driver,
            "keywords": {"bsse_type": list(bsse), "levels": {max_nbody: "hf"}, "return_total_data": True},
            "specification": {
                "hf": {"program": "pyscf", "model": {"method": method, "basis": basis}, "keywords": keywords}
            },
        },
        "molecule": molecule,
    }


def test_cp_dimer_interaction_energy_equals_hand_computed_ghost_calculation(inprocess_client):
    inp = _pyscf_input(DIMER.model_dump(), ["cp"])
    inp["specification"]["keywords"]["return_total_data"] = False
    result = mbdask.compute(inp, inprocess_client)
    e_ab = scf.RHF(_direct_mole(DIMER)).run().e_tot
    e_a = scf.RHF(_direct_mole(DIMER, ghost_fragment=1)).run().e_tot
    e_b = scf.RHF(_direct_mole(DIMER, ghost_fragment=0)).run().e_tot
    assert abs(result.return_result - (e_ab - e_a - e_b)) < 1e-10
    assert abs(result.properties.cp_corrected_interaction_energy - (e_ab - e_a - e_b)) < 1e-10


@pytest.mark.parametrize("driver", ["energy", "gradient"])
def test_trimer_cp_vmfc_parity_with_sequential_qcmanybody(process_client, driver):
    from mbdask.inputs.xyz import molecule_from_xyz

    inp = _pyscf_input(
        molecule_from_xyz(DATA / "water3-uud.xyz"), ["cp", "vmfc", "nocp"], driver=driver, basis="sto-3g", max_nbody=3
    )
    ours = mbdask.compute(inp, process_client)
    ref = sequential_computer(inp)
    np.testing.assert_allclose(np.asarray(ours.return_result), np.asarray(ref.return_result), atol=1e-10, rtol=0)
    for key, value in ref.properties.model_dump().items():
        if isinstance(value, float):
            assert abs(ours.properties.model_dump()[key] - value) < 1e-10, key
        elif isinstance(value, np.ndarray):
            np.testing.assert_allclose(ours.properties.model_dump()[key], value, atol=1e-10, rtol=0, err_msg=key)


@pytest.mark.slow
def test_mbe_gradient_matches_finite_difference_of_mbe_energy(process_client):
    """Central differences of the 2-body cp MBE energy, atom by atom (slow: 2 x 27 expansions)."""
    from mbdask.inputs.xyz import molecule_from_xyz

    mol = molecule_from_xyz(DATA / "water3-uud.xyz")
    grad = mbdask.compute(
        _pyscf_input(mol, ["cp"], driver="gradient", basis="sto-3g", conv_tol=1e-12), process_client
    ).return_result
    step = 1e-3
    geometry = np.array(mol["geometry"], dtype=float)
    fd = np.zeros_like(geometry)
    for i in range(len(geometry)):
        energies = []
        for sign in (1, -1):
            displaced = geometry.copy()
            displaced[i] += sign * step
            moved = {**mol, "geometry": displaced.tolist()}
            energies.append(
                mbdask.compute(
                    _pyscf_input(moved, ["cp"], basis="sto-3g", conv_tol=1e-12), process_client
                ).return_result
            )
        fd[i] = (energies[0] - energies[1]) / (2 * step)
    np.testing.assert_allclose(np.asarray(grad).ravel(), fd, atol=1e-6, rtol=0)


try:
    import pyscf.dispersion  # noqa: F401

    HAS_DISPERSION = True
except ImportError:
    HAS_DISPERSION = False
needs_dispersion = pytest.mark.skipif(
    not HAS_DISPERSION, reason="pyscf-dispersion is not installed (pip install 'mbdask[pyscf]')"
)


def _with_dispersion(mol, method: str):
    """PySCF's own object for ``method`` (``b3lyp-d3bj``, ``hf-d3bj``): its ``mf.disp`` path, ghosts and all."""
    if method.startswith("hf-"):
        mf = scf.RHF(mol)
        mf.disp = method.partition("-")[2]
        return mf
    return dft.RKS(mol, xc=method)


@needs_dispersion
@pytest.mark.parametrize("method", ["b3lyp-d3bj", "hf-d3bj", "pbe0-d3zero", "b3lyp-d3bjatm", "pbe0-d4"])
def test_dispersion_methods_equal_pyscf_called_directly(method):
    """Without ghost atoms the harness's number is PySCF's own for the same name, dispersion included."""
    res = _compute(DIMER, method, basis="sto-3g")
    assert res.success, res.error
    mf = _with_dispersion(_direct_mole(DIMER, basis="sto-3g"), method).run()
    assert abs(res.return_result - mf.e_tot) < 1e-10
    assert res.properties.scf_dispersion_correction_energy == pytest.approx(mf.scf_summary["dispersion"], abs=1e-12)
    assert res.properties.scf_dispersion_correction_energy < 0


@needs_dispersion
@pytest.mark.parametrize("method", ["b3lyp-d3bj", "hf-d3bj"])
def test_dispersion_gradient_equals_pyscf_called_directly(method):
    res = _compute(DIMER, method, driver="gradient", basis="sto-3g")
    assert res.success, res.error
    mf = _with_dispersion(_direct_mole(DIMER, basis="sto-3g"), method).run()
    np.testing.assert_allclose(res.return_result, mf.nuc_grad_method().kernel(), atol=1e-9, rtol=0)


@needs_dispersion
def test_dispersion_is_that_of_the_real_atoms_only():
    """A monomer in the dimer's basis (cp) gets the monomer's own D3, and no dispersion force on the ghosts."""
    from pyscf.dispersion import dftd3

    ghosted = DIMER.get_fragment([0], [1])
    for driver in ("energy", "gradient"):
        with_d = _compute(ghosted, "b3lyp-d3bj", driver=driver, basis="sto-3g")
        without = _compute(ghosted, "b3lyp", driver=driver, basis="sto-3g")
        assert with_d.success and without.success
        alone = dftd3.DFTD3Dispersion(_direct_mole(DIMER.get_fragment(0), basis="sto-3g"), xc="b3lyp", version="d3bj")
        found = alone.get_dispersion(grad=True)
        if driver == "energy":
            assert abs((with_d.return_result - without.return_result) - found["energy"]) < 1e-12
        else:
            difference = np.asarray(with_d.return_result) - np.asarray(without.return_result)
            np.testing.assert_allclose(difference[:3], found["gradient"], atol=1e-10, rtol=0)
            assert not difference[3:].any()  # the ghost atoms


@needs_dispersion
@pytest.mark.parametrize(
    "method, driver, message",
    [
        ("mp2-d3bj", "energy", "empirical dispersion goes with HF or a functional"),
        ("b3lyp-d3bj", "hessian", "hessian is not supported with an empirical dispersion"),
        ("wb97x-d", "energy", "not supported yet"),
    ],
)
def test_dispersion_requests_that_cannot_run_are_refused(method, driver, message):
    res = _compute(DIMER, method, driver=driver, basis="sto-3g")
    assert not res.success and res.error.error_type == "input_error"
    assert message in res.error.error_message


@needs_dispersion
def test_dispersion_cp_dimer_parity_with_sequential_qcmanybody(process_client):
    """B3LYP-D3(BJ) cp and nocp through mbdask and through QCManyBody one fragment at a time."""
    inp = _pyscf_input(DIMER.model_dump(), ["cp", "nocp"], method="b3lyp-d3bj", basis="sto-3g")
    ours = mbdask.compute(inp, process_client)
    ref = sequential_computer(inp)
    assert abs(ours.return_result - ref.return_result) < 1e-10
    for key in ("cp_corrected_interaction_energy", "nocp_corrected_interaction_energy"):
        assert abs(getattr(ours.properties, key) - getattr(ref.properties, key)) < 1e-10, key


def test_pyscf_max_memory_is_what_the_fragment_was_given():
    """``task_config.memory`` (memory_per_fragment, or the worker's share) becomes PySCF's ``max_memory`` in MB."""
    from mbdask.programs.pyscf import _mean_field

    mol = _direct_mole(DIMER.get_fragment(0), basis="sto-3g")
    assert _mean_field("hf", mol, {}, 1.5 * 1024).max_memory == 1536
    assert _mean_field("b3lyp", mol, {"density_fit": True}, 512.0).max_memory == 512


def _trimer_input(method: str, basis: str) -> dict:
    from mbdask.inputs.xyz import molecule_from_xyz

    inp = _pyscf_input(molecule_from_xyz(DATA / "water3-uud.xyz"), ["nocp"], method=method, basis=basis, max_nbody=3)
    return inp


def test_memory_estimate_grows_as_the_method_needs():
    from mbdask.programs.pyscf import memory_needed_gib

    scf_needs = memory_needed_gib("hf", 174, 15)
    ccsd_needs = memory_needed_gib("ccsd(t)", 174, 15)
    assert scf_needs < memory_needed_gib("mp2", 174, 15) < ccsd_needs
    assert ccsd_needs == pytest.approx(6 * 15**2 * 159**2 * 8 / 2**30, rel=0.02)  # the doubles amplitudes


def test_a_calculation_needing_more_memory_than_a_fragment_gets_is_refused_naming_it():
    from mbdask.deploy.workers import check_fragment_memory

    plan = mbdask.plan(_trimer_input("ccsd(t)", "cc-pvtz"))  # the trimer: 174 functions, about 0.26 GiB
    check_fragment_memory(plan, 1.0)
    with pytest.raises(mbdask.BadInputError) as refused:
        check_fragment_memory(plan, 0.1)
    message = str(refused.value)
    assert "\n" not in message
    assert "fragments [1, 2, 3] (174 basis functions) needs about 0.26 GiB" in message
    assert "gets 0.10 GiB" in message and "memory_per_fragment" in message
    check_fragment_memory(mbdask.plan(_trimer_input("hf", "cc-pvtz")), 0.1)  # SCF needs little


def test_the_memory_refusal_comes_before_anything_runs(inprocess_client):
    """Through ``start``: refused after the workers are known, before a graph is sent."""

    def task_keys(dask_scheduler) -> set:
        return set(dask_scheduler.tasks)

    before = inprocess_client.run_on_scheduler(task_keys)
    with pytest.raises(mbdask.BadInputError, match="needs about 0.26 GiB"):
        mbdask.start(_trimer_input("ccsd(t)", "cc-pvtz"), inprocess_client, memory_per_fragment=0.1)
    assert not inprocess_client.run_on_scheduler(task_keys) - before  # no task of this run reached the scheduler


def test_multilevel_mp2_through_2body_hf_through_3body_parity_with_sequential_qcmanybody(process_client):
    """Two model chemistries, the way QCManyBody users save time: MP2 for monomers and dimers, HF for the trimer."""
    from mbdask.inputs.xyz import molecule_from_xyz

    inp = {
        "specification": {
            "driver": "energy",
            "keywords": {"bsse_type": ["nocp", "cp"], "levels": {2: "mp2", 3: "hf"}, "return_total_data": True},
            "specification": {
                "mp2": {"program": "pyscf", "model": {"method": "mp2", "basis": "sto-3g"}},
                "hf": {"program": "pyscf", "model": {"method": "hf", "basis": "sto-3g"}},
            },
        },
        "molecule": molecule_from_xyz(DATA / "water3-uud.xyz"),
    }
    ours = mbdask.compute(inp, process_client)
    ref = sequential_computer(inp)
    assert abs(ours.return_result - ref.return_result) < 1e-10
    for key, value in ref.properties.model_dump().items():
        if isinstance(value, float):
            assert abs(ours.properties.model_dump()[key] - value) < 1e-10, key
    models = {row["model"] for row in ours.extras["mbdask"]["increments"]["nocp"]}
    assert models == {"mp2", "hf"}

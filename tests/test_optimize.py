"""Geometry optimisation on MBE gradients (mbdask.optimize): geomeTRIC driven by mbdask expansions.

The reference is geomeTRIC's own custom-engine route (``run_optimizer(customengine=...)``)
on the same MBE gradients computed sequentially with QCManyBody: the same minimum, in the
same number of steps. Real engines (xtb, PySCF) and real Dask clusters throughout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import numpy as np
import pytest
from qcelemental import constants

geometric = pytest.importorskip("geometric", reason="geomeTRIC is not installed (pip install 'mbdask[optimize]')")

from conftest import needs_xtb, xtb_input  # noqa: E402
from reference import sequential_analyze  # noqa: E402

import mbdask  # noqa: E402
import mbdask.deploy.cluster  # noqa: E402
from mbdask.errors import BadInputError  # noqa: E402
from mbdask.inputs.xyz import read_xyz_frames  # noqa: E402
from mbdask.workflows.optimize import OptimizationResult, frozen_screening, optimize  # noqa: E402

BOHR = constants.bohr2angstroms


def trimer_input(**keywords) -> dict:
    """(H2O)3 (tests/data/water3-uud.xyz), 2-body nocp GFN2-xTB."""
    inp = xtb_input("water3-uud.xyz", driver="energy", max_nbody=2)
    inp["specification"]["keywords"].update(keywords)
    return inp


def dimer_hf_input() -> dict:
    """A water dimer near its HF/STO-3G minimum (rounded to 0.1 A: a few steps), 2-body cp HF/STO-3G with PySCF."""
    angstrom = np.array(
        [
            [-1.9, 0.2, 0.0],
            [-1.2, 0.9, 0.0],
            [-1.3, -0.6, 0.0],
            [1.2, -0.1, 0.0],
            [1.9, -0.2, -0.8],
            [1.9, -0.2, 0.8],
        ]
    )
    return {
        "specification": {
            "driver": "energy",
            "keywords": {"bsse_type": ["cp"], "levels": {2: "hf"}},
            "specification": {
                "hf": {
                    "program": "pyscf",
                    "model": {"method": "hf", "basis": "sto-3g"},
                    "keywords": {"conv_tol": 1e-11},
                }
            },
        },
        "molecule": {
            "symbols": ["O", "H", "H"] * 2,
            "geometry": (angstrom / BOHR).ravel().tolist(),
            "fragments": [[0, 1, 2], [3, 4, 5]],
        },
    }


def water6(scale: float = 1.0) -> dict:
    """(H2O)6 prism, 3-body GFN2-xTB gradient, every coordinate times ``scale``."""
    inp = xtb_input("water6-prism.xyz", driver="gradient", max_nbody=3)
    inp["molecule"] = {**inp["molecule"], "geometry": (np.asarray(inp["molecule"]["geometry"]) * scale).tolist()}
    return inp


# --- the reference: geomeTRIC's run_optimizer with a custom engine over sequential QCManyBody ---


def sequential_xtb(step) -> tuple[float, np.ndarray]:
    """QCManyBody's ManyBodyCore over one-by-one QCEngine calls (its ManyBodyComputer cannot collect xtb gradients)."""
    out = sequential_analyze(step)
    return float(out["ret_energy"]), np.asarray(out["ret_gradient"], dtype=float)


def sequential_computer(step) -> tuple[float, np.ndarray]:
    """QCManyBody's ManyBodyComputer, one fragment after another."""
    from qcmanybody.v2 import ManyBodyComputer

    result = ManyBodyComputer.from_manybodyinput(step)
    return float(result.properties.return_energy), np.asarray(result.properties.return_gradient, dtype=float)


def reference_engine(inp: dict, mbe):
    """A geomeTRIC custom engine computing the MBE with ``mbe(ManyBodyInput)`` at each geometry (molecule as
    QCEngineAPI builds it)."""
    from geometric.engine import Engine
    from geometric.molecule import Molecule
    from geometric.nifty import bohr2ang

    inp = {**inp, "specification": {**inp["specification"], "driver": "gradient"}}
    model = mbdask.load_input(inp)
    model = model.model_copy(
        update={"molecule": model.molecule.model_copy(update={"fix_com": True, "fix_orientation": True})}
    )

    class SequentialMBE(Engine):
        def calc_new(self, coords, dirname):
            molecule = model.molecule.model_copy(update={"geometry": coords.reshape(-1, 3).copy()})
            energy, gradient = mbe(model.model_copy(update={"molecule": molecule}))
            return {"energy": energy, "gradient": gradient.ravel()}

    M = Molecule()
    M.elem = list(model.molecule.symbols)
    M.xyzs = [np.asarray(model.molecule.geometry).reshape(-1, 3) * bohr2ang]
    M.build_bonds()
    return SequentialMBE(M)


@contextlib.contextmanager
def restored_logging():
    """run_optimizer reconfigures the root logger (logging.config.fileConfig): put it back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def geometric_reference(inp: dict, mbe, tmp_path, **kwargs):
    """geomeTRIC's run_optimizer(customengine=...) in ``tmp_path``: (final Bohr coordinates, energies, steps).

    On one thread (QCEngine's cores, BLAS and OpenMP pools), as the workers run: the
    programs' and numpy's idle threads otherwise fight over a busy machine's cores."""
    from unittest import mock

    from geometric.config import config_dir
    from geometric.nifty import ang2bohr
    from geometric.optimize import run_optimizer

    from mbdask.calculation.execute import pinned_threads

    engine = reference_engine(inp, mbe)
    with restored_logging(), pinned_threads(1), mock.patch.dict(os.environ, {"QCENGINE_NCORES": "1"}):
        progress = run_optimizer(
            customengine=engine,
            input=str(tmp_path / "reference"),
            logIni=os.path.join(config_dir, "logJson.ini"),
            **kwargs,
        )
    return progress.xyzs[-1] * ang2bohr, list(progress.qm_energies), len(progress.xyzs) - 1


# --- tests ---


@needs_xtb
def test_cluster_started_once_and_max_steps(cluster_starts, tmp_path, monkeypatch, capsys):
    """A LocalCluster for the whole optimisation, started once and closed; stopping at max_steps is not an error."""
    monkeypatch.chdir(tmp_path)  # geomeTRIC must leave nothing here
    watched = tmp_path / "watched.xyz"
    result = optimize(trimer_input(), None, max_steps=2, trajectory=watched, n_workers=2)
    assert isinstance(result, OptimizationResult)
    assert len(cluster_starts) == 1  # three expansions, one cluster
    assert cluster_starts[0].status.name == "closed"  # we started it: we closed it
    assert not result.converged and result.steps == 2 and result.evaluations == 3
    assert len(result.energies) == len(result.trajectory) == len(result.gradient_rms) == 3
    assert result.energies[-1] < result.energies[0]
    assert result.final_result.properties.return_energy == result.energies[-1]
    np.testing.assert_array_equal(result.molecule.geometry, result.trajectory[-1])
    assert [list(f) for f in result.molecule.fragments] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert "Maximum iterations reached" in result.log
    assert [p.name for p in tmp_path.iterdir()] == ["watched.xyz"]
    out = capsys.readouterr().out
    assert "Step" not in out and "geomeTRIC" not in out  # a library call: geomeTRIC's log stays in result.log

    result.trajectory_xyz(tmp_path / "trajectory.xyz")
    frames = read_xyz_frames(tmp_path / "trajectory.xyz")
    assert len(frames) == 3 and frames[0].symbols == ["O", "H", "H"] * 3
    for frame, coords in zip(frames, result.trajectory):
        np.testing.assert_allclose(frame.geometry, coords * BOHR, atol=1e-6)
    comments = (tmp_path / "trajectory.xyz").read_text().splitlines()[1 :: 2 + 9]
    assert [float(c.split("energy")[1].split()[0]) for c in comments] == pytest.approx(result.energies, abs=1e-9)
    assert watched.read_text() == (tmp_path / "trajectory.xyz").read_text()
    result.to_xyz(tmp_path / "final.xyz")
    (final,) = read_xyz_frames(tmp_path / "final.xyz")
    np.testing.assert_allclose(final.geometry, result.trajectory[-1] * BOHR, atol=1e-6)


def test_bad_options_refused_before_any_cluster(cluster_starts):
    with pytest.raises(BadInputError, match="convergence must be one of geomeTRIC's convergence sets.*'NOPE'"):
        optimize(trimer_input(), None, convergence="NOPE", n_workers=2)
    with pytest.raises(BadInputError, match="freeze_screening needs a screening option"):
        optimize(trimer_input(), None, freeze_screening=True, n_workers=2)
    with pytest.raises(BadInputError, match="max_steps"):
        optimize(trimer_input(), None, max_steps=0, n_workers=2)
    with pytest.raises(BadInputError, match="keep_going"):
        optimize(trimer_input(), None, keep_going=True, n_workers=2)
    with pytest.raises(BadInputError, match="total MBE gradients"):
        optimize(trimer_input(return_total_data=False), None, n_workers=2)
    with pytest.raises(BadInputError, match="use optimize"):
        optimize(trimer_input(), None, geometric_options={"maxiter": 3}, n_workers=2)
    with pytest.raises(TypeError, match="no_such_option"):
        optimize(trimer_input(), None, no_such_option=1, n_workers=2)
    assert cluster_starts == []


def test_xyz_file_with_model_options_and_a_driver_other_than_gradient_refused(cluster_starts):
    """optimize takes an XYZ file as compute does; an energy or Hessian driver is refused, not run as gradients
    (issue #25)."""
    from conftest import EXAMPLES

    for driver in ("energy", "hessian"):
        with pytest.raises(BadInputError, match=f"driver '{driver}': an optimisation runs MBE gradients"):
            optimize(EXAMPLES / "water3-uud.xyz", None, driver=driver, max_nbody=3, n_workers=2)
    with pytest.raises(BadInputError, match="max_nbody applies to XYZ input only"):
        optimize(trimer_input(), None, max_nbody=2, n_workers=2)
    assert cluster_starts == []


def test_failed_fragment_raises_as_compute_does(inprocess_client):
    """A fragment that fails (the sleep double, told to fail on dimers) ends the optimisation with
    FragmentFailedError."""
    from helpers import sleep_input

    inp = sleep_input("water3-uud.xyz")
    inp["specification"]["specification"]["sleepy"]["keywords"]["fail"] = ["2"]
    handlers = {name: logging.getLogger(name).handlers[:] for name in ("geometric", "MoleculeLogger")}
    with pytest.raises(mbdask.FragmentFailedError, match="told to fail on 2-body fragments"):
        optimize(inp, inprocess_client, check_installed=False)
    assert {name: logging.getLogger(name).handlers for name in handlers} == handlers  # geomeTRIC's logging as it was


def test_missing_geometric_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "geometric.optimize", None)  # what an uninstalled package looks like to import
    with pytest.raises(BadInputError, match=r"needs geomeTRIC: pip install 'mbdask\[optimize\]'"):
        optimize(trimer_input(), None, n_workers=2)


@needs_xtb
def test_xtb_trimer_same_minimum_as_geometric_on_sequential_qcmanybody(process_client, tmp_path):
    """(H2O)3 2-body GFN2-xTB: mbdask on Dask and geomeTRIC's own route on sequential QCManyBody agree."""
    inp = trimer_input()
    result = optimize(inp, process_client, convergence="GAU_TIGHT")
    coords, energies, steps = geometric_reference(inp, sequential_xtb, tmp_path, convergence_set="GAU_TIGHT")
    assert result.converged
    assert result.steps == steps and len(result.energies) == len(energies)
    assert result.energies[-1] == pytest.approx(energies[-1], abs=1e-6)
    np.testing.assert_allclose(result.energies, energies, atol=1e-8)
    rmsd = np.sqrt(np.mean(np.sum((result.trajectory[-1] - coords.reshape(-1, 3)) ** 2, axis=1))) * BOHR
    assert rmsd < 1e-3
    assert result.energies[-1] < result.energies[0] - 1e-3  # it did move: the start is not the GFN2 minimum
    assert result.gradient_max[-1] < 1.5e-5  # GAU_TIGHT's gmax


def test_pyscf_dimer_cp_same_energy_as_sequential_qcmanybody(process_client, tmp_path):
    """(H2O)2 2-body cp HF/STO-3G (PySCF): the same final energy as geomeTRIC on QCManyBody's ManyBodyComputer."""
    pytest.importorskip("pyscf", reason="PySCF is not installed (pip install 'mbdask[pyscf]')")
    inp = dimer_hf_input()
    result = optimize(inp, process_client)
    _, energies, steps = geometric_reference(inp, sequential_computer, tmp_path)
    assert result.converged
    assert result.energies[-1] == pytest.approx(energies[-1], abs=1e-6)
    assert result.steps == steps
    assert result.final_result.extras["mbdask"]["levels"]["cp"]


@needs_xtb
def test_frozen_screening_keeps_the_first_geometry_clusters(process_client):
    """Dimer (1, 2) is the only one within 1.905 A at the start; frozen, no other dimer joins as the waters move."""
    screening = {"distance_cutoffs": {2: 1.905}}
    result = optimize(trimer_input(), process_client, max_steps=3, screening=screening, freeze_screening=True)
    dimers = [
        row["fragments"] for row in result.final_result.extras["mbdask"]["increments"]["nocp"] if row["nbody"] == 2
    ]
    assert [list(d) for d in dimers] == [[1, 2]]
    assert len(result.energies) == 4


def test_frozen_screening_is_the_first_kept_set_at_any_geometry():
    """The frozen set (an explicit cluster list) keeps exactly what distance screening kept, wherever the atoms go."""
    plan = mbdask.plan(water6(), check_installed=False, screening={"distance_cutoffs": {2: 2.5, 3: 2.2}})
    frozen = frozen_screening(plan.screened)
    moved = water6(scale=2.0)  # every distance doubled: the cutoffs alone would keep nothing
    assert (
        mbdask.plan(moved, check_installed=False, screening={"distance_cutoffs": {2: 2.5, 3: 2.2}}).screened.kept[2]
        == set()
    )
    again = mbdask.plan(moved, check_installed=False, screening=frozen)
    assert again.screened.kept == plan.screened.kept
    assert len(plan.screened.kept[3]) > 0


# --- command line -------------------------------------------------------------------------------


@needs_xtb
def test_cli_optimize_writes_the_final_geometry_and_the_trajectory(tmp_path, capsys):
    from conftest import DATA

    from mbdask.cli import main

    final, path, result = tmp_path / "final.xyz", tmp_path / "traj.xyz", tmp_path / "last.json"
    code = main(
        [
            "optimize",
            str(DATA / "water3-uud.xyz"),
            "--max-nbody",
            "2",
            "--max-steps",
            "3",
            "--workers",
            "2",
            "-o",
            str(final),
            "--trajectory",
            str(path),
            "--result",
            str(result),
        ]
    )
    out = capsys.readouterr().out
    assert code == 1 and "NOT converged after 3 steps" in out  # stopped at --max-steps: exit 1, files still written
    assert (
        "MBE energy / Eh" in out
        and len([line for line in out.splitlines() if line[:5].strip() in {"0", "1", "2", "3"}]) == 4
    )
    frames = read_xyz_frames(path)
    assert len(frames) == 4 and len(read_xyz_frames(final)) == 1  # the start and three steps
    assert np.allclose(read_xyz_frames(final)[0].geometry, frames[-1].geometry, atol=1e-6)
    saved = mbdask.load_result(result)
    assert saved.input_data.specification.driver.value == "gradient"


def test_cli_optimize_bad_convergence_set_is_bad_input(tmp_path, capsys):
    from conftest import DATA

    from mbdask.cli import main

    assert main(["optimize", str(DATA / "water3-uud.xyz"), "--convergence", "NOPE", "-o", str(tmp_path / "x.xyz")]) == 2
    assert "NOPE" in capsys.readouterr().err and not (tmp_path / "x.xyz").exists()

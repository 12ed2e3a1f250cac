"""Input reading, and the charge/multiplicity fill that avoids QCElemental's exponential search."""

from __future__ import annotations

import json

import numpy as np
import pytest
import qcelemental
from conftest import DATA, needs_xtb, write_json, xtb_input
from qcelemental.molparse.chgmult import validate_and_fill_chgmult

import mbdask
from mbdask.inputs.load import QCEL_SEARCH_MAX_FRAGMENTS, fill_charges_and_multiplicities
from mbdask.inputs.xyz import molecule_from_xyz


def _qcel_reference(mol: dict) -> dict:
    zeff = np.array([qcelemental.periodictable.to_Z(s) for s in mol["symbols"]], dtype=float)
    seps = np.cumsum([len(f) for f in mol["fragments"]])[:-1]
    nfr = len(mol["fragments"])
    return validate_and_fill_chgmult(
        zeff,
        seps,
        mol.get("molecular_charge"),
        mol.get("fragment_charges") or [None] * nfr,
        mol.get("molecular_multiplicity"),
        mol.get("fragment_multiplicities") or [None] * nfr,
    )


@pytest.mark.parametrize(
    "xyz, extra",
    [
        ("water3-uud.xyz", {}),
        ("water6-prism.xyz", {}),
        ("water8-s4.xyz", {"molecular_multiplicity": 1}),
        ("water6-prism.xyz", {"molecular_charge": 0.0}),
        ("hydronium-water6.xyz", {"fragment_charges": [0, 1, 0, 0, 0, 0, 0]}),
        ("hydroxide-water6.xyz", {"fragment_charges": [0, 0, 0, 0, -1, 0, 0], "molecular_charge": -1}),
    ],
)
def test_fill_matches_qcelemental_search(xyz, extra):
    mol = molecule_from_xyz(DATA / xyz)
    mol.pop("molecular_multiplicity", None)
    mol.update(extra)
    if "fragment_charges" in extra:  # find the ion's position from the fragment sizes
        sizes = [len(f) for f in mol["fragments"]]
        odd = next(i for i, n in enumerate(sizes) if n != 3)
        charge = sum(c for c in extra["fragment_charges"] if c)
        mol["fragment_charges"] = [charge if i == odd else 0 for i in range(len(sizes))]
        mol["molecular_charge"] = charge
    filled = fill_charges_and_multiplicities(mol)
    ref = _qcel_reference(mol)
    assert filled["fragment_charges"] == ref["fragment_charges"]
    assert filled["fragment_multiplicities"] == ref["fragment_multiplicities"]


def test_large_cluster_plans_without_exponential_search():
    # 20 waters: QCElemental's own search would take 4**20 candidates
    plan = mbdask.plan(xtb_input("water20-dodecahedron.xyz", max_nbody=2))
    assert plan.counts == {"gfn2": {1: 20, 2: 190}}


def test_ambiguous_charges_on_many_fragments_are_refused():
    mol = molecule_from_xyz(DATA / "water16-4444a.xyz")
    mol["molecular_charge"] = 1.0
    assert len(mol["fragments"]) > QCEL_SEARCH_MAX_FRAGMENTS
    with pytest.raises(mbdask.BadInputError, match="give both explicitly"):
        fill_charges_and_multiplicities(mol)


def test_small_ion_cluster_left_to_qcelemental():
    inp = xtb_input("hydronium-water6.xyz", max_nbody=2)
    plan = mbdask.plan(inp)
    assert sum(plan.core.molecule.fragment_charges) == 1.0


def test_yaml_and_json_files_give_the_same_input(tmp_path):
    import yaml

    inp = xtb_input("water3-uud.xyz")
    js = write_json(tmp_path / "in.json", inp)
    ym = tmp_path / "in.yaml"
    ym.write_text(yaml.safe_dump(json.loads(json.dumps(inp))))
    assert mbdask.load_input(js) == mbdask.load_input(ym)


def test_atomic_specification_may_omit_the_driver():
    inp = xtb_input("water3-uud.xyz", driver="gradient")
    model = mbdask.load_input(inp)
    assert model.specification.specification["gfn2"].driver.value == "gradient"


def test_unknown_bsse_type_lists_each_valid_treatment_once():
    """Pydantic lists BsseEnum's aliases too ('nocp', 'cp', 'vmfc', 'cp', 'nocp' or 'nocp')."""
    inp = xtb_input("water3-uud.xyz")
    inp["specification"]["keywords"]["bsse_type"] = ["cpp"]
    with pytest.raises(mbdask.BadInputError) as info:
        mbdask.load_input(inp)
    assert str(info.value) == "specification.keywords.bsse_type.0: Input should be 'nocp', 'cp' or 'vmfc', got 'cpp'"


def _water3(tmp_path, line2: str, atoms=None):
    lines = (DATA / "water3-uud.xyz").read_text().splitlines()
    atoms = lines[2:] if atoms is None else atoms
    path = tmp_path / "w3.xyz"
    path.write_text("\n".join([str(len(atoms)), line2, *atoms]) + "\n")
    return path, lines[2:]


def test_xyz_reads_atomic_numbers_and_any_case_and_ignores_extra_columns(tmp_path):
    path, atoms = _water3(tmp_path, "0 1")
    reference = molecule_from_xyz(path)
    changed = [
        a.replace("O", "8", 1) if a.split()[0] == "O" else f"h {' '.join(a.split()[1:])} 0.25 extra" for a in atoms
    ]
    path, _ = _water3(tmp_path, "0 1", changed)
    assert molecule_from_xyz(path) == reference


def test_xyz_line_2_without_charge_leaves_recognised_ions_in_charge(tmp_path):
    from mbdask.inputs.xyz import read_xyz

    path, atoms = _water3(tmp_path, "a comment", None)
    path, _ = _water3(tmp_path, "a comment", atoms[:-1])  # the last water loses an H: OH-
    assert read_xyz(path)[2:] == (None, None)
    mol = molecule_from_xyz(path, guess_ions=True)
    assert mol["molecular_charge"] == -1.0 and mol["fragment_charges"] == [0.0, 0.0, -1.0]
    path, _ = _water3(tmp_path, "0 1", atoms[:-1])
    with pytest.raises(
        mbdask.BadInputError,
        match=r"w3\.xyz:2: line 2 says charge 0 but the fragments found carry -1 \(fragment 3 HO -1\)",
    ):
        molecule_from_xyz(path, guess_ions=True)


def test_xtb_methods_are_those_xtb_python_accepts():
    """mbdask's table (checked at plan time) against the installed xtb-python's, which QCEngine's harness uses."""
    xtb_utils = pytest.importorskip("xtb.utils")
    from mbdask.programs import XTB_METHODS

    assert set(XTB_METHODS) == set(xtb_utils._methods)
    assert xtb_utils.get_method("gfn3-xtb") is None


def test_library_takes_an_xyz_file_with_the_command_lines_model_options(capsys):
    """``mbdask.plan("water3-uud.xyz")`` said "expected a ManyBodyInput object at the top level, found str" (issue #25);
    it now makes the input the command line makes, through the same code, with its options as keywords."""
    from mbdask.cli import main
    from mbdask.inputs.xyz import ModelOptions

    path = DATA / "water3-uud.xyz"
    planned = mbdask.plan(path, max_nbody=3, bsse=["nocp"])
    assert len(planned.jobs) == 7 and planned.input.specification.keywords.levels == {3: "gfn2-xtb"}
    assert mbdask.xyz_input(path, max_nbody=3) == ModelOptions(max_nbody=3).input_for(
        molecule_from_xyz(path, guess_ions=True)
    )
    assert len(mbdask.plan(str(path)).jobs) == 6  # the defaults: xtb GFN2-xTB nocp, 2-body
    assert main(["plan", str(path), "--max-nbody", "3"]) == 0
    assert "model 'gfn2-xtb' (xtb gfn2-xtb): 7 calculations" in capsys.readouterr().out
    ions = DATA / "hydronium-water6.xyz"
    assert mbdask.plan(ions).input.molecule.molecular_charge == 1.0  # H3O+ recognised, as on the command line
    guessed = list(mbdask.xyz_input(ions)["molecule"]["fragment_charges"])
    with pytest.raises(mbdask.BadInputError, match="line 2 says charge 1 but the fragment charges given sum to 0"):
        mbdask.plan(ions, fragment_charges=[0.0] * len(guessed))
    grouped = mbdask.xyz_input(path, fragments="0-2;3-8")  # the command line's form, or lists of atoms
    assert grouped == mbdask.xyz_input(path, fragments=[[0, 1, 2], [3, 4, 5, 6, 7, 8]])
    assert grouped["molecule"]["fragments"] == [[0, 1, 2], [3, 4, 5, 6, 7, 8]]


def test_xyz_model_options_beside_a_manybodyinput_are_refused_by_the_library():
    """A ManyBodyInput holds its own model chemistry: the options would be ignored, so they are refused, naming them."""
    with pytest.raises(
        mbdask.BadInputError, match=r"^max_nbody, bsse apply to XYZ input only, and .*water6-gfn2.json holds its own"
    ):
        mbdask.plan(DATA.parent.parent / "examples" / "water6-gfn2.json", max_nbody=2, bsse="cp")
    with pytest.raises(
        mbdask.BadInputError, match=r"^method applies to XYZ input only, and the dict given holds its own"
    ):
        mbdask.start(xtb_input("water3-uud.xyz"), method="gfn1-xtb")  # refused before any cluster starts
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_body'"):
        mbdask.plan(DATA / "water3-uud.xyz", max_body=3)
    with pytest.raises(mbdask.BadInputError, match="unknown BSSE treatment 'cpp'"):
        mbdask.plan(DATA / "water3-uud.xyz", bsse="nocp,cpp")


def test_xyz_file_of_several_frames_points_at_read_structures(tmp_path):
    text = (DATA / "water3-uud.xyz").read_text()
    trajectory = tmp_path / "traj.xyz"
    trajectory.write_text(text.rstrip("\n") + "\n" + text)
    with pytest.raises(
        mbdask.BadInputError, match=r"2 frames\).*mbdask\.compute_many\(mbdask\.read_structures\(\[FILE\]\)\)"
    ):
        mbdask.plan(trajectory)


def test_load_input_of_an_xyz_file_says_how_to_give_one():
    with pytest.raises(
        mbdask.BadInputError,
        match=r"water3-uud\.xyz: an XYZ file holds no model chemistry: "
        r".*method=\.\.\., max_nbody=\.\.\..*mbdask\.xyz_input",
    ):
        mbdask.load_input(DATA / "water3-uud.xyz")


@needs_xtb
def test_compute_and_submit_run_an_xyz_file_as_the_input_it_makes(process_client):
    path = DATA / "water3-uud.xyz"
    result = mbdask.compute(path, process_client, method="gfn2-xtb", max_nbody=2)
    same = mbdask.submit(mbdask.xyz_input(path, max_nbody=2), process_client).result()
    assert result.extras["mbdask"]["nfragment_calculations"] == 6
    assert result.properties.return_energy == same.properties.return_energy

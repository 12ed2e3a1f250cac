"""The command line end to end, and bad inputs: exit 2, one line, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import EXAMPLES, needs_xtb, write_json, xtb_input
from mbdask.cli import main


def _bad(tmp_path, name: str, change) -> object:
    inp = xtb_input("water3-uud.xyz")
    change(inp)
    return write_json(tmp_path / f"{name}.json", inp)


BAD_INPUTS = {
    "malformed_json": lambda tmp: (tmp / "bad.json").write_text('{"specification": ') and tmp / "bad.json",
    "malformed_yaml": lambda tmp: (tmp / "bad.yaml").write_text("a: [1, 2\nb: }") and tmp / "bad.yaml",
    "missing_file": lambda tmp: tmp / "nope.json",
    "not_an_object": lambda tmp: write_json(tmp / "list.json", [1, 2, 3]),
    "unknown_program": lambda tmp: _bad(tmp, "up", lambda d: d["specification"]["specification"]["gfn2"].update(program="qchemix")),
    "program_not_installed": lambda tmp: _bad(tmp, "pni", lambda d: d["specification"]["specification"]["gfn2"].update(program="nwchem")),
    "cp_with_xtb": lambda tmp: _bad(tmp, "cp", lambda d: d["specification"]["keywords"].update(bsse_type=["cp"])),
    "vmfc_with_xtb": lambda tmp: _bad(tmp, "vmfc", lambda d: d["specification"]["keywords"].update(bsse_type=["vmfc"])),
    "noncontiguous_levels": lambda tmp: _bad(tmp, "ncl", lambda d: d["specification"]["keywords"].update(levels={1: "gfn2", 2: "gfn1", 3: "gfn2"}) or d["specification"]["specification"].update(gfn1={"program": "xtb", "model": {"method": "gfn1-xtb"}})),
    "max_nbody_too_large": lambda tmp: _bad(tmp, "mnb", lambda d: d["specification"]["keywords"].update(levels={5: "gfn2"})),
    "no_fragments": lambda tmp: _bad(tmp, "nof", lambda d: d["molecule"].pop("fragments")),
    "missing_specification": lambda tmp: _bad(tmp, "nos", lambda d: d["specification"].pop("specification")),
    "unknown_bsse": lambda tmp: _bad(tmp, "ub", lambda d: d["specification"]["keywords"].update(bsse_type=["xyz"])),
    "bad_driver": lambda tmp: _bad(tmp, "bd", lambda d: d["specification"].update(driver="properties")),
    "bad_element": lambda tmp: _bad(tmp, "be", lambda d: d["molecule"]["symbols"].__setitem__(0, "Xx")),
    "undefined_model_in_levels": lambda tmp: _bad(tmp, "um", lambda d: d["specification"]["keywords"].update(levels={3: "mp2"})),
    "one_fragment_only": lambda tmp: _bad(tmp, "one", lambda d: d["molecule"].update(fragments=[list(range(9))])),
    "overlapping_atoms": lambda tmp: _bad(tmp, "ov", lambda d: d["molecule"]["geometry"].__setitem__(slice(3, 6), d["molecule"]["geometry"][0:3])),
    "absurd_charge": lambda tmp: _bad(tmp, "chg", lambda d: d["molecule"].update(fragment_charges=[50, 0, 0], molecular_charge=50)),
    "absurd_multiplicity": lambda tmp: _bad(tmp, "mult", lambda d: d["molecule"].update(fragment_multiplicities=[2, 1, 1])),
    "hessian_with_xtb": lambda tmp: _bad(tmp, "hx", lambda d: d["specification"].update(driver="hessian")),
    "unknown_basis": lambda tmp: _bad(tmp, "ub", lambda d: d["specification"]["specification"]["gfn2"].update(program="pyscf", model={"method": "hf", "basis": "cc-pvbogus"}, keywords={})),
    "unknown_pyscf_keyword": lambda tmp: _bad(tmp, "uk", lambda d: d["specification"]["specification"]["gfn2"].update(program="pyscf", model={"method": "hf", "basis": "sto-3g"}, keywords={"scf_typo": 1})),
    "ccsd_gradient_with_pyscf": lambda tmp: _bad(tmp, "ccg", lambda d: d["specification"].update(driver="gradient") or d["specification"]["specification"]["gfn2"].update(program="pyscf", model={"method": "ccsd", "basis": "sto-3g"}, keywords={})),
    "input_is_a_directory": lambda tmp: (tmp / "adir").mkdir() or tmp / "adir",
    "embedding_charges": lambda tmp: _bad(tmp, "ec", lambda d: d["specification"]["keywords"].update(embedding_charges={1: [0, 0, 0], 2: [0, 0, 0], 3: [0, 0, 0]}, return_total_data=True)),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, case):
    path = BAD_INPUTS[case](tmp_path)
    out = tmp_path / "result.json"
    code = main(["run", str(path), "-o", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("mbdask: error:"), err
    assert "Traceback" not in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".result")] == []


@pytest.mark.parametrize(
    "args",
    [
        ["--workers", "0"], ["--cores-per-fragment", "0"], ["--cores-per-fragment", "many"], ["--retries", "-1"],
        ["-o", "/nonexistent/dir/r.json"], ["--bogus"], ["--memory-per-fragment", "0"], ["--memory-per-fragment", "-2"],
        ["--store", "/nonexistent/dir/store.sqlite"], ["--store", "{tmp}/notes.txt"], ["--tls-ca-file", "ca.pem"],
        ["--report", "/nonexistent/dir/report.html"], ["--report", "{tmp}"],
    ],
)
def test_bad_options_exit_2(tmp_path, capsys, args):
    (tmp_path / "notes.txt").write_text("not a database " * 100)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = None
    try:
        code = main(["run", str(EXAMPLES / "water6-gfn2.json"), "--no-progress", *args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err


def test_plan_prints_counts_per_model_and_order(capsys):
    assert main(["plan", str(EXAMPLES / "water6-gfn2.json")]) == 0
    out = capsys.readouterr().out
    assert "model 'gfn2' (xtb gfn2-xtb): 41 calculations" in out
    assert "3-body:       20" in out and "graph:" in out


@needs_xtb
def test_run_bundled_example_end_to_end(tmp_path):
    out, report = tmp_path / "result.json", tmp_path / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "mbdask", "run", str(EXAMPLES / "water6-gfn2.json"), "-o", str(out), "--workers", "2", "--report", str(report)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "N-Body: Non-Counterpoise Corrected (NoCP) energies" in proc.stdout
    assert "mbdask: 41 fragment calculations on 2 workers" in proc.stdout
    # the summary table: one row per order, with its calculations
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("gfn2 ")]
    assert [(r[1], r[2]) for r in rows] == [("1", "6"), ("2", "15"), ("3", "20")]
    assert "pair interactions" in report.read_text()
    assert "\x1b[" not in proc.stderr  # no progress drawing when stderr is not a terminal
    data = json.loads(out.read_text())
    assert data["schema_name"] == "qcschema_many_body_result"
    assert abs(data["properties"]["nocp_corrected_interaction_energy_through_3_body"] - data["return_result"]) < 1e-12
    assert len(data["extras"]["mbdask"]["increments"]["nocp"]) == 41


def test_help_documents_the_commands():
    proc = subprocess.run([sys.executable, "-m", "mbdask", "run", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for option in ("--scheduler", "--workers", "--threads-per-worker", "--memory-limit", "--no-progress", "-o"):
        assert option in proc.stdout


def test_xyz_input_finds_fragments_and_ion_charges():
    from conftest import DATA
    from mbdask.xyz import formula, molecule_from_xyz

    mol = molecule_from_xyz(DATA / "hydronium-water6.xyz", guess_ions=True)
    formulas = [formula([mol["symbols"][a] for a in frag]) for frag in mol["fragments"]]
    assert sorted(formulas) == ["H2O"] * 6 + ["H3O"]
    assert mol["fragment_charges"][formulas.index("H3O")] == 1.0 and mol["molecular_charge"] == 1.0
    mol = molecule_from_xyz(DATA / "hydroxide-water6.xyz", guess_ions=True)
    assert mol["molecular_charge"] == -1.0


@needs_xtb
def test_run_xyz_file_with_model_options(tmp_path, capsys):
    from conftest import DATA

    out = tmp_path / "r.json"
    code = main(["run", str(DATA / "water3-uud.xyz"), "--method", "gfn2-xtb", "--max-nbody", "2", "--workers", "1", "-o", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "3 fragments in" in captured.err and "H2O" in captured.err
    assert json.loads(out.read_text())["extras"]["mbdask"]["nfragment_calculations"] == 6


@pytest.mark.parametrize("args", [["--fragments", "0-2;3-5"], ["--fragment-charges", "1,x"], ["--program", "pyscf"]])
def test_bad_xyz_options_exit_2(args, capsys):
    from conftest import DATA

    code = main(["run", str(DATA / "water3-uud.xyz"), "--no-progress", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("mbdask: error:"), err


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".json", ".yaml")))
def test_every_bundled_example_plans(example, capsys):
    assert main(["plan", str(EXAMPLES / example)]) == 0
    assert "calculations" in capsys.readouterr().out

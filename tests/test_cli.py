"""The command line end to end, and bad inputs: exit 2, one line, nothing written."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import DATA, EXAMPLES, needs_xtb, write_json, xtb_input

from mbdask.calculation.store import FragmentStore
from mbdask.cli import main


def _exit_code(argv: list[str]) -> int:
    """``main``'s exit code, argparse's own errors (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors
        return exc.code


def _bad(tmp_path, name: str, change) -> object:
    inp = xtb_input("water3-uud.xyz")
    change(inp)
    return write_json(tmp_path / f"{name}.json", inp)


BAD_INPUTS = {
    "malformed_json": lambda tmp: (tmp / "bad.json").write_text('{"specification": ') and tmp / "bad.json",
    "malformed_yaml": lambda tmp: (tmp / "bad.yaml").write_text("a: [1, 2\nb: }") and tmp / "bad.yaml",
    "missing_file": lambda tmp: tmp / "nope.json",
    "not_an_object": lambda tmp: write_json(tmp / "list.json", [1, 2, 3]),
    "unknown_program": lambda tmp: _bad(
        tmp, "up", lambda d: d["specification"]["specification"]["gfn2"].update(program="qchemix")
    ),
    "program_not_installed": lambda tmp: _bad(
        tmp, "pni", lambda d: d["specification"]["specification"]["gfn2"].update(program="nwchem")
    ),
    "cp_with_xtb": lambda tmp: _bad(tmp, "cp", lambda d: d["specification"]["keywords"].update(bsse_type=["cp"])),
    "vmfc_with_xtb": lambda tmp: _bad(tmp, "vmfc", lambda d: d["specification"]["keywords"].update(bsse_type=["vmfc"])),
    "noncontiguous_levels": lambda tmp: _bad(
        tmp,
        "ncl",
        lambda d: (
            d["specification"]["keywords"].update(levels={1: "gfn2", 2: "gfn1", 3: "gfn2"})
            or d["specification"]["specification"].update(gfn1={"program": "xtb", "model": {"method": "gfn1-xtb"}})
        ),
    ),
    "max_nbody_too_large": lambda tmp: _bad(
        tmp, "mnb", lambda d: d["specification"]["keywords"].update(levels={5: "gfn2"})
    ),
    "no_fragments": lambda tmp: _bad(tmp, "nof", lambda d: d["molecule"].pop("fragments")),
    "missing_specification": lambda tmp: _bad(tmp, "nos", lambda d: d["specification"].pop("specification")),
    "unknown_bsse": lambda tmp: _bad(tmp, "ub", lambda d: d["specification"]["keywords"].update(bsse_type=["xyz"])),
    "bad_driver": lambda tmp: _bad(tmp, "bd", lambda d: d["specification"].update(driver="properties")),
    "bad_element": lambda tmp: _bad(tmp, "be", lambda d: d["molecule"]["symbols"].__setitem__(0, "Xx")),
    "undefined_model_in_levels": lambda tmp: _bad(
        tmp, "um", lambda d: d["specification"]["keywords"].update(levels={3: "mp2"})
    ),
    "one_fragment_only": lambda tmp: _bad(tmp, "one", lambda d: d["molecule"].update(fragments=[list(range(9))])),
    "overlapping_atoms": lambda tmp: _bad(
        tmp, "ov", lambda d: d["molecule"]["geometry"].__setitem__(slice(3, 6), d["molecule"]["geometry"][0:3])
    ),
    "absurd_charge": lambda tmp: _bad(
        tmp, "chg", lambda d: d["molecule"].update(fragment_charges=[50, 0, 0], molecular_charge=50)
    ),
    "absurd_multiplicity": lambda tmp: _bad(
        tmp, "mult", lambda d: d["molecule"].update(fragment_multiplicities=[2, 1, 1])
    ),
    "hessian_with_xtb": lambda tmp: _bad(tmp, "hx", lambda d: d["specification"].update(driver="hessian")),
    "unknown_basis": lambda tmp: _bad(
        tmp,
        "ub",
        lambda d: d["specification"]["specification"]["gfn2"].update(
            program="pyscf", model={"method": "hf", "basis": "cc-pvbogus"}, keywords={}
        ),
    ),
    "unknown_pyscf_keyword": lambda tmp: _bad(
        tmp,
        "uk",
        lambda d: d["specification"]["specification"]["gfn2"].update(
            program="pyscf", model={"method": "hf", "basis": "sto-3g"}, keywords={"scf_typo": 1}
        ),
    ),
    "ccsd_gradient_with_pyscf": lambda tmp: _bad(
        tmp,
        "ccg",
        lambda d: (
            d["specification"].update(driver="gradient")
            or d["specification"]["specification"]["gfn2"].update(
                program="pyscf", model={"method": "ccsd", "basis": "sto-3g"}, keywords={}
            )
        ),
    ),
    "input_is_a_directory": lambda tmp: (tmp / "adir").mkdir() or tmp / "adir",
    "xtb_method_typo": lambda tmp: _bad(
        tmp, "mt", lambda d: d["specification"]["specification"]["gfn2"].update(model={"method": "gfn3-xtb"})
    ),
    "basis_with_xtb": lambda tmp: _bad(
        tmp,
        "bx",
        lambda d: d["specification"]["specification"]["gfn2"].update(model={"method": "gfn2-xtb", "basis": "6-31g"}),
    ),
    "embedding_charges": lambda tmp: _bad(
        tmp,
        "ec",
        lambda d: d["specification"]["keywords"].update(
            embedding_charges={1: [0, 0, 0], 2: [0, 0, 0], 3: [0, 0, 0]}, return_total_data=True
        ),
    ),
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
        ["--workers", "0"],
        ["--cores-per-fragment", "0"],
        ["--cores-per-fragment", "many"],
        ["--retries", "-1"],
        ["-o", "/nonexistent/dir/r.json"],
        ["--bogus"],
        ["--memory-per-fragment", "0"],
        ["--memory-per-fragment", "-2"],
        ["--store", "/nonexistent/dir/store.sqlite"],
        ["--store", "{tmp}/notes.txt"],
        ["--tls-ca-file", "ca.pem"],
        ["--report", "/nonexistent/dir/report.html"],
        ["--report", "{tmp}"],
        ["--memory-limit", "lots"],
        ["--memory-limit", "0"],
        ["--memory-limit=-1GB"],
        ["--workers", "x"],
        ["--workers", "-1"],
        ["--threads-per-worker", "0"],
        ["--threads-per-worker", "two"],
        ["--retries", "x"],
        ["--memory-per-fragment", "x"],
        ["--order", "random"],
        ["--scheduler", "nonsense"],
        ["--scheduler", "foo://host:8786"],
        ["--scheduler", "host:port"],
        ["--distance-cutoffs", "2:abc"],
        ["--distance-cutoffs", "abc"],
        ["--energy-thresholds", "x"],
        ["--energy-thresholds", "2:x"],
    ],
)
def test_bad_options_exit_2(tmp_path, capsys, args):
    (tmp_path / "notes.txt").write_text("not a database " * 100)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = _exit_code(["run", str(EXAMPLES / "water6-gfn2.json"), "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("mbdask: error:"), err
    assert "internal error" not in err and "Traceback" not in err


def test_plan_prints_counts_per_model_and_order(capsys):
    assert main(["plan", str(EXAMPLES / "water6-gfn2.json")]) == 0
    out = capsys.readouterr().out
    assert "model 'gfn2' (xtb gfn2-xtb): 41 calculations" in out
    assert "3-body:       20" in out and "graph:" in out


@needs_xtb
def test_run_bundled_example_end_to_end(tmp_path):
    out, report, profile = tmp_path / "result.json", tmp_path / "report.html", tmp_path / "profile.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mbdask",
            "run",
            str(EXAMPLES / "water6-gfn2.json"),
            "-o",
            str(out),
            "--workers",
            "2",
            "--report",
            str(report),
            "--profile",
            str(profile),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    # --profile: every phase from process start to the outputs, adding up to the wall time
    spent = json.loads(profile.read_text())
    assert [row["phase"] for row in spent["phases"]][0] == "Python start and imports" and len(spent["phases"]) == 11
    assert "assembly on a worker" in [row["phase"] for row in spent["phases"]]
    assert sum(row["seconds"] for row in spent["phases"]) == pytest.approx(spent["wall_seconds"], rel=1e-9)
    assert spent["fragments"] == 41 and 0 < spent["efficiency"] <= 1.0
    assert spent["fragment_span"]["mbdask_own_ms_per_fragment"] > 0  # recorded by the workers
    assert "mbdask profile:" in proc.stderr and "fragments (first start to last stop)" in proc.stderr
    assert "N-Body: Non-Counterpoise Corrected (NoCP) energies" in proc.stdout
    assert re.search(r"mbdask: 41 fragment calculations on [12] workers?; wall time", proc.stdout), (
        proc.stdout
    )  # workers that ran fragments
    assert "mbdask: nocp interaction energy through 3-body" in proc.stdout
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

    from mbdask.inputs.xyz import formula, molecule_from_xyz

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
    code = main(
        [
            "run",
            str(DATA / "water3-uud.xyz"),
            "--method",
            "gfn2-xtb",
            "--max-nbody",
            "2",
            "--workers",
            "1",
            "-o",
            str(out),
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "3 fragments in" in captured.err and "H2O" in captured.err
    assert json.loads(out.read_text())["extras"]["mbdask"]["nfragment_calculations"] == 6


@pytest.mark.parametrize(
    "args",
    [
        ["--fragments", "0-2;3-5"],
        ["--fragment-charges", "1,x"],
        ["--program", "pyscf"],
        ["--fragments", "0-x"],
        ["--fragment-charges", "1,,0"],
        ["--max-nbody", "x"],
        ["--max-nbody", "0"],
        ["--bsse", "cpp"],
        ["--driver", "properties"],
        ["--method", "gfn3-xtb"],
        ["--basis", "6-31g"],
    ],
)
@pytest.mark.parametrize("command", ["run", "plan"])
def test_bad_xyz_options_exit_2(command, args, tmp_path, capsys):
    from conftest import DATA

    out = tmp_path / "r.json"
    code = _exit_code(
        [command, str(DATA / "water3-uud.xyz"), *args, *(["--no-progress", "-o", str(out)] if command == "run" else [])]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("mbdask: error:"), err
    assert not out.exists()


def test_element_without_a_covalent_radius_is_refused_not_guessed(tmp_path, capsys):
    """Fragments come from covalent radii; QCElemental has none for berkelium and would guess one."""
    xyz = tmp_path / "bk.xyz"
    xyz.write_text("2\n0 1\nBk 0 0 0\nBk 0 0 3.0\n")
    out = tmp_path / "r.json"
    assert _exit_code(["run", str(xyz), "--no-progress", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1] == "mbdask: error: no covalent radius for Bk in QCElemental: give the fragments (--fragments)"
        and len(err) == 1
    )
    assert not out.exists()


def test_xtb_method_typo_is_refused_at_plan_time_listing_the_methods(capsys):
    from conftest import DATA

    assert main(["plan", str(DATA / "water3-uud.xyz"), "--method", "gfn3-xtb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "mbdask: error: model 'gfn3-xtb': xtb has no method 'gfn3-xtb' "
        "(xtb methods: gfn2-xtb, gfn1-xtb, ipea-xtb, gfn0-xtb, gfn-ff; case does not matter)"
    ), err


def test_basis_with_xtb_is_refused_not_put_in_the_label(capsys):
    from conftest import DATA

    assert main(["plan", str(DATA / "water3-uud.xyz"), "--basis", "6-31g"]) == 2
    captured = capsys.readouterr()
    assert "gfn2-xtb/6-31g" not in captured.out + captured.err
    assert captured.err.strip().splitlines()[-1].startswith("mbdask: error: --basis 6-31g: xtb takes no basis set")


def test_ghost_atoms_refusal_names_the_command_lines_flag(capsys):
    """xtb has no ghost atoms: cp is refused, and the message names --bsse (a user of the command line never
    wrote bsse_type)."""
    from conftest import DATA

    assert main(["plan", str(DATA / "water3-uud.xyz"), "--bsse", "cp"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        last.startswith("mbdask: error: model ")
        and "ignores ghost atoms" in last
        and "(--bsse nocp on the command line)" in last
    )


def test_unknown_bsse_lists_each_treatment_once(tmp_path, capsys):
    from conftest import DATA

    json_input = _bad(tmp_path, "ub", lambda d: d["specification"]["keywords"].update(bsse_type=["cpp"]))
    assert main(["plan", str(json_input)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("bsse_type.0: Input should be 'nocp', 'cp' or 'vmfc', got 'cpp'"), err
    assert _exit_code(["plan", str(DATA / "water3-uud.xyz"), "--bsse", "nocp,cpp"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "mbdask: error: argument --bsse: unknown BSSE treatment 'cpp': expected a comma-separated list of nocp, cp, "
        "vmfc"
    ), err


def test_bsse_option_takes_qcmanybodys_aliases_in_any_case(capsys):
    from conftest import DATA

    assert main(["plan", str(DATA / "water3-uud.xyz"), "--bsse", " NOCP,mbe"]) == 0
    assert "bsse nocp;" in capsys.readouterr().out


def _water6_lines() -> list[str]:
    return (EXAMPLES / "water6-prism.xyz").read_text().splitlines()


def _without_last_atom(lines: list[str]) -> list[str]:
    return ["17", *lines[1:-1]]


#: XYZ files that disagree with themselves: (change to water6-prism.xyz's lines, what the one line says after the path)
BAD_XYZ = {
    "count_below_atom_lines": (lambda lines: ["17", *lines[1:]], ":20: line 1 says 17 atoms but 18 atom lines follow"),
    "count_above_atom_lines": (
        lambda lines: ["19", *lines[1:]],
        ":1: line 1 says 19 atoms but only 18 atom lines follow",
    ),
    "hydrogen_deleted": (
        _without_last_atom,
        ":2: line 2 says charge 0 but the fragments found carry -1 (fragment 6 HO -1); give --fragment-charges or fix "
        "line 2",
    ),
    "atom_without_element": (
        lambda lines: [*lines[:3], "  1.0 2.0 3.0", *lines[4:]],
        ":4: expected 'Element x y z', got '1.0 2.0 3.0'",
    ),
    "two_coordinates": (
        lambda lines: [*lines[:3], "H 1.0 2.0", *lines[4:]],
        ":4: expected 'Element x y z', got 'H 1.0 2.0'",
    ),
    "number_for_element": (
        lambda lines: [*lines[:3], "1.0 1.0 2.0 3.0", *lines[4:]],
        ":4: '1.0' is not an element symbol",
    ),
    "unknown_element": (
        lambda lines: [*lines[:3], lines[3].replace("H", "Xx", 1), *lines[4:]],
        ":4: 'Xx' is not an element symbol",
    ),
    "coordinate_not_a_number": (
        lambda lines: [*lines[:3], "H 1.0 2.0 3,0", *lines[4:]],
        ":4: expected 'Element x y z' with numbers",
    ),
    "coordinate_nan": (
        lambda lines: [*lines[:3], "H 1.0 2.0 nan", *lines[4:]],
        ":4: coordinates must be finite numbers",
    ),
    "blank_line_among_atoms": (lambda lines: [*lines[:5], "", *lines[5:]], ":6: blank line among the atom lines"),
    "multiplicity_parity": (
        lambda lines: [lines[0], "0 2", *lines[2:]],
        ":2: line 2 says multiplicity 2 but 60 electrons (charge 0) need an odd",
    ),
    "no_count_line": (
        lambda lines: ["water hexamer", *lines[1:]],
        ":1: not an XYZ file (line 1 must be the atom count)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_XYZ))
@pytest.mark.parametrize("command", ["run", "plan"])
def test_inconsistent_xyz_is_refused_with_file_and_line(tmp_path, capsys, command, case):
    change, says = BAD_XYZ[case]
    path = tmp_path / f"{case}.xyz"
    path.write_text("\n".join(change(_water6_lines())) + "\n")
    out = tmp_path / "r.json"
    code = main([command, str(path), *(["--no-progress", "-o", str(out)] if command == "run" else [])])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"mbdask: error: {path}{says}"), err
    assert not out.exists()


def test_fragment_charges_that_disagree_with_line_2_are_refused(tmp_path, capsys):
    path = tmp_path / "w6.xyz"
    path.write_text("\n".join(_water6_lines()) + "\n")
    assert main(["plan", str(path), "--fragment-charges", "1,0,0,0,0,0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"mbdask: error: {path}:2: line 2 says charge 0 but the fragment charges given sum to 1 "
        "(fragment 1 H2O +1); fix line 2 or the fragment charges"
    ), err


def test_ion_charges_need_no_line_2_and_trailing_blank_lines_are_fine(tmp_path, capsys):
    lines = _without_last_atom(_water6_lines())
    path = tmp_path / "hydroxide.xyz"
    path.write_text("\n".join([lines[0], "hydroxide in five waters", *lines[2:], "", "  "]) + "\n")
    assert main(["plan", str(path), "--max-nbody", "2"]) == 0
    assert "HO       charge -1" in capsys.readouterr().err
    path.write_text("\n".join([lines[0], "-1 1", *lines[2:]]) + "\n")
    assert main(["plan", str(path), "--max-nbody", "2"]) == 0


def test_readme_outputs_are_ignored_by_git():
    """The README's first command writes result.json into the repository root."""
    import shutil

    from conftest import ROOT

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert "-o result.json" in (ROOT / "README.md").read_text()
    for name in ("result.json", "report.html"):
        proc = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT, capture_output=True)
        assert proc.returncode == 0, f"{name} is not ignored"


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".json", ".yaml")))
def test_every_bundled_example_plans(example, capsys):
    assert main(["plan", str(EXAMPLES / example)]) == 0
    assert "calculations" in capsys.readouterr().out


#: Each model option, at a value the XYZ defaults give too (given is given, whatever its value).
MODEL_OPTIONS = {
    "--program": "xtb",
    "--method": "gfn2-xtb",
    "--basis": "6-31g",
    "--bsse": "nocp",
    "--max-nbody": "2",
    "--driver": "energy",
    "--fragment-charges": "0,0,0,0,0,0",
    "--fragments": "0-2;3-5;6-8;9-11;12-14;15-17",
}


@pytest.mark.parametrize("option", sorted(MODEL_OPTIONS))
@pytest.mark.parametrize("command", ["run", "plan", "optimize"])
def test_model_options_beside_a_manybodyinput_file_are_refused_not_ignored(command, option, tmp_path, capsys):
    """A JSON/YAML input holds its own model chemistry and expansion: running it while ignoring
    --max-nbody and friends ran another expansion than the one asked for, with exit 0 (issue #25)."""
    out = tmp_path / "r.json"
    value = "gradient" if command == "optimize" and option == "--driver" else MODEL_OPTIONS[option]
    extra = {"run": ["--no-progress", "-o", str(out)], "optimize": ["-o", str(out.with_suffix(".xyz"))], "plan": []}[
        command
    ]
    code = _exit_code([command, str(EXAMPLES / "water6-gfn2.json"), option, value, *extra])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and len(err) == 1, captured.err
    assert err[0] == (
        f"mbdask: error: {option} applies to XYZ input only, and {EXAMPLES / 'water6-gfn2.json'} holds its own model "
        "chemistry and expansion: leave it out, or change the input"
    )
    assert captured.out == "" and list(tmp_path.iterdir()) == []


def test_refusal_names_every_model_option_given(capsys):
    """The issue's command line: three options, one line naming them all."""
    code = main(
        ["plan", str(EXAMPLES / "water6-gfn2.json"), "--max-nbody", "2", "--method", "gfn1-xtb", "--bsse", "cp"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("mbdask: error: --method, --bsse, --max-nbody apply to XYZ input only"), err


def test_model_options_with_xyz_and_manybodyinput_files_together_are_refused(tmp_path, capsys):
    """In a list of inputs they would apply to the XYZ files and silently not to the others."""
    out = tmp_path / "results"
    code = main(
        [
            "run",
            str(EXAMPLES / "water6-gfn2.json"),
            str(EXAMPLES / "water3-uud.xyz"),
            "--max-nbody",
            "2",
            "--output-dir",
            str(out),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == (
        f"mbdask: error: --max-nbody applies to XYZ input only, and {EXAMPLES / 'water6-gfn2.json'} holds its own "
        "model chemistry and expansion: run the XYZ files and the ManyBodyInput files separately"
    ), err
    assert not out.exists()


@pytest.mark.parametrize("driver", ["energy", "hessian"])
def test_optimize_refuses_a_driver_other_than_gradient(driver, tmp_path, capsys):
    """An optimisation runs MBE gradients whatever --driver says: saying energy or hessian is refused, not ignored."""
    out = tmp_path / "final.xyz"
    code = _exit_code(["optimize", str(EXAMPLES / "water3-uud.xyz"), "--driver", driver, "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code == 2
        and len(err) == 1
        and err[0].startswith(f"mbdask: error: argument --driver: invalid choice: '{driver}'")
    ), err
    assert not out.exists()


def test_one_fragment_is_said_in_the_singular(tmp_path, capsys):
    water = tmp_path / "water.xyz"
    water.write_text("3\n0 1\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n")
    _exit_code(["plan", str(water)])  # one fragment is no expansion: refused by the plan
    assert f"mbdask: 1 fragment in {water}:" in capsys.readouterr().err


def test_xyz_option_defaults_are_the_model_options_defaults(capsys):
    """Left out, the model options are xtb, GFN2-xTB, nocp, 2-body, energy (now applied by ModelOptions, not
    argparse)."""
    assert main(["plan", str(EXAMPLES / "water3-uud.xyz")]) == 0
    out = capsys.readouterr().out
    assert "driver energy; bsse nocp; max n-body 2" in out and "model 'gfn2-xtb' (xtb gfn2-xtb): 6 calculations" in out


@pytest.mark.parametrize("command", ["run", "optimize"])
def test_interrupt_says_what_the_store_holds_and_that_the_same_command_resumes(command, tmp_path, capsys, monkeypatch):
    """Ctrl-C printed only "mbdask: interrupted" (issue #25)."""
    import importlib

    from mbdask import api

    optimize = importlib.import_module(
        "mbdask.workflows.optimize"
    )  # the module (mbdask.workflows.optimize is the function)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "connect_for", interrupted)  # Ctrl-C while the cluster starts
    monkeypatch.setattr(optimize, "connect_for", interrupted)
    store = tmp_path / "store.sqlite"
    FragmentStore.open(store).put_many(
        [("a" * 64, "one", {"return_result": 1.0}), ("b" * 64, "two", {"return_result": 2.0})]
    )
    extra = ["--no-progress"] if command == "run" else []
    assert main([command, str(EXAMPLES / "water6-gfn2.json"), "--store", str(store), *extra]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"mbdask: interrupted; 2 calculations are in the store {store}: run the same command (the same store) to "
        "resume from them"
    ]
    assert main([command, str(EXAMPLES / "water6-gfn2.json"), *extra]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "mbdask: interrupted; nothing was saved (no store): with --store PATH (store= in Python) finished "
        "calculations are kept for the next run"
    ]


@pytest.mark.parametrize(
    "args, code",
    [
        (["plan", str(DATA / "water3-uud.xyz")], 0),
        (["plan", str(DATA / "water3-uud.xyz"), "--method", "gfn3-xtb"], 2),
    ],
    ids=["ok", "refused"],
)
def test_command_ends_with_os_exit_keeping_its_exit_code_and_every_line(args, code, capsys):
    """``python -m mbdask`` leaves with ``os._exit`` (no interpreter teardown): the shell still gets
    main's exit code, and the piped (block-buffered) output is all there, as main prints it in-process."""
    assert main(args) == code
    printed = capsys.readouterr()
    proc = subprocess.run([sys.executable, "-m", "mbdask", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert proc.stdout == printed.out and proc.stderr == printed.err


# --- plan of several structures (issue #29) ------------------------------------------------------


def test_plan_of_a_trajectory_prints_a_plan_per_structure_then_the_total(tmp_path, capsys):
    from helpers import trajectory

    path = trajectory(tmp_path / "traj.xyz", frames=3)
    assert main(["plan", str(path), "--max-nbody", "3"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == ["mbdask: 3 structures: traj-1, traj-2, traj-3"]
    assert [line for line in out.splitlines() if line.startswith("traj-")] == [
        f"traj-{i}: 3 fragments, 9 atoms; driver energy; bsse nocp; max n-body 3" for i in (1, 2, 3)
    ]
    assert out.count("model 'gfn2-xtb' (xtb gfn2-xtb): 7 calculations") == 3
    assert out.count("  unbatched graph: 20 nodes, 47 edges (7 fragment, 7 increment, 3 level nodes)") == 3
    assert out.splitlines()[-2:] == [
        "total: 3 structures, 21 calculations (1-body 9, 2-body 9, 3-body 3)",
        "  unbatched graphs: 60 nodes, 141 edges",
    ]
    # one structure: the plan as before, no total
    assert main(["plan", str(DATA / "water3-uud.xyz"), "--max-nbody", "3"]) == 0
    single = capsys.readouterr().out
    assert single.startswith("3 fragments, 9 atoms") and "total:" not in single


def test_plan_of_several_inputs_counts_what_they_share_and_names_each_one_that_cannot_be_planned(tmp_path, capsys):
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / f"{name}.json").write_text((EXAMPLES / "water6-gfn2.json").read_text())
    write_json(folder / "c-bad.json", [1, 2, 3])
    assert main(["plan", str(folder)]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("a: 6 fragments, 18 atoms") and "\nb: 6 fragments, 18 atoms" in out and "c-bad" not in out
    assert out.splitlines()[-2] == (
        "total: 2 structures, 82 calculations (1-body 12, 2-body 30, 3-body 40); 41 shared between structures, "
        "computed once: 41 to run"
    )
    lines = err.splitlines()
    assert lines[0] == "mbdask: 3 structures: a, b, c-bad"
    assert len(lines) == 3 and lines[1].startswith("mbdask: c-bad: error: ")
    assert lines[2] == "mbdask: 1 structure of 3 could not be planned: c-bad"
    assert "Traceback" not in err


def test_plan_of_several_structures_refuses_model_options_with_a_json_input(tmp_path, capsys):
    from helpers import trajectory

    path = trajectory(tmp_path / "traj.xyz", frames=2)
    assert main(["plan", str(path), str(EXAMPLES / "water6-gfn2.json"), "--max-nbody", "3"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("mbdask: error:") and "--max-nbody" in err

"""Many structures in one run (issue #19): trajectories, one cluster for all, failures kept apart, one store.

Real Dask schedulers and workers throughout. The chemistry is GFN2-xTB; the failure and
ordering tests use the ``sleep`` test double (tests/doubles.py), which computes nothing.
"""

from __future__ import annotations

import csv
import json

import pytest
from browser import BOKEH_READY, LEGENDS_OVER_DATA, chromium, evaluate_page
from conftest import needs_xtb, write_json
from helpers import trajectory

import mbdask
from mbdask.cli import main
from mbdask.errors import BadInputError
from mbdask.inputs.xyz import molecules_from_xyz, read_xyz, read_xyz_frames


def sleep_structure(seconds: float = 0.0, fail=()) -> dict:
    """A 3-body expansion of the water trimer through the sleep double (NOT chemistry)."""
    from helpers import sleep_input

    inp = sleep_input("water3-uud.xyz")
    inp["specification"]["specification"]["sleepy"]["keywords"].update({"fail": list(fail)})
    return inp


# --- trajectories -----------------------------------------------------------------------------


def test_trajectory_frames_become_structures_with_the_first_frames_fragments(tmp_path):
    path = trajectory(tmp_path / "traj.xyz", frames=3)
    frames = read_xyz_frames(path)
    assert [f.line for f in frames] == [1, 12, 23]
    molecules = molecules_from_xyz(path)
    assert [m["name"] for m in molecules] == ["traj-1", "traj-2", "traj-3"]
    assert all(m["fragments"] == molecules[0]["fragments"] for m in molecules)
    assert molecules[0]["geometry"] != molecules[1]["geometry"]
    with pytest.raises(BadInputError, match=r"traj.xyz:12: a second structure starts here \(3 frames\)"):
        read_xyz(path)


def test_a_frame_that_disagrees_with_itself_or_the_first_is_refused_with_its_line(tmp_path):
    lines = trajectory(tmp_path / "traj.xyz", frames=2).read_text().splitlines()
    short = tmp_path / "short.xyz"
    short.write_text("\n".join(lines[:21]) + "\n")  # frame 2 lacks its last atom
    with pytest.raises(BadInputError, match=r"short.xyz:12: line 12 says 9 atoms but only 8 atom lines follow"):
        read_xyz_frames(short)
    other = tmp_path / "other.xyz"
    other.write_text("\n".join(lines[:13] + ["He 0 0 0"] + lines[14:]) + "\n")
    with pytest.raises(BadInputError, match=r"other.xyz:12: this frame's atoms differ from the first frame's"):
        molecules_from_xyz(other)
    spaced = tmp_path / "spaced.xyz"
    spaced.write_text("\n".join(lines[:11] + ["", ""] + lines[11:]) + "\n")  # blank lines between frames
    assert [f.line for f in read_xyz_frames(spaced)] == [1, 14]
    stray = tmp_path / "stray.xyz"
    stray.write_text("\n".join(lines[:11] + ["O 0 0 0"] + lines[11:]) + "\n")
    with pytest.raises(BadInputError, match=r"stray.xyz:12: line 1 says 9 atoms but 10 atom lines follow"):
        read_xyz_frames(stray)


def test_frames_are_numbered_as_wide_as_the_last_frame(tmp_path):
    """docs/structures.md's example asked for ``traj-01`` of a five-frame file, which is ``traj-1``."""
    assert list(mbdask.read_structures([trajectory(tmp_path / "traj.xyz", frames=5)])) == [
        f"traj-{i}" for i in range(1, 6)
    ]
    assert list(mbdask.read_structures([trajectory(tmp_path / "long.xyz", frames=10)]))[::9] == ["long-01", "long-10"]


def test_read_structures_names_files_frames_and_directories_in_order(tmp_path):
    trajectory(tmp_path / "b-traj.xyz", frames=2)
    write_json(tmp_path / "a.json", {"not": "read yet"})
    (tmp_path / "notes.txt").write_text("ignored")
    found = mbdask.read_structures([tmp_path, tmp_path / "a.json"])
    assert list(found) == ["a", "b-traj-1", "b-traj-2", "a-2"]
    assert found["a"] == str(tmp_path / "a.json")
    assert found["b-traj-1"]["specification"]["specification"]["gfn2-xtb"]["program"] == "xtb"
    with pytest.raises(BadInputError, match="no such file or directory"):
        mbdask.read_structures([tmp_path / "missing.json"])


# --- one run, one cluster ---------------------------------------------------------------------


@needs_xtb
def test_compute_many_gives_each_structure_what_a_single_run_gives(tmp_path, process_client):
    model = mbdask.inputs.xyz.ModelOptions(max_nbody=3)
    structures = {
        m["name"]: model.input_for(m) for m in molecules_from_xyz(trajectory(tmp_path / "traj.xyz", frames=3))
    }
    results = mbdask.compute_many(structures, process_client)
    assert not results.errors and list(results) == ["traj-1", "traj-2", "traj-3"]
    for name, inp in structures.items():
        single = mbdask.compute(inp, process_client)
        assert abs(results[name].properties.return_energy - single.properties.return_energy) < 1e-10
        assert (
            abs(results[name].properties.nocp_corrected_total_energy - single.properties.nocp_corrected_total_energy)
            < 1e-10
        )
    rows = list(csv.DictReader(results.to_csv().splitlines()))
    assert [r["structure"] for r in rows] == list(structures) and all(r["status"] == "ok" for r in rows)
    assert float(rows[1]["total_energy_Eh"]) == pytest.approx(
        results["traj-2"].properties.nocp_corrected_total_energy, abs=1e-12
    )


def test_a_structure_that_fails_does_not_stop_the_others(inprocess_client):
    structures = {
        "good": sleep_structure(),
        "fails": sleep_structure(fail=["2"]),
        "bad input": {"specification": {"driver": "energy"}, "molecule": {"symbols": ["He"], "geometry": [0, 0, 0]}},
        "also good": sleep_structure(),
    }
    results = mbdask.compute_many(structures, inprocess_client)
    assert list(results) == ["good", "also good"]
    assert set(results.errors) == {"fails", "bad input"}
    assert "told to fail on 2-body fragments" in results.errors["fails"]
    assert [row["status"] for row in results.rows()] == ["ok", "failed", "failed", "ok"]


def test_every_energy_column_of_the_table_names_its_unit(inprocess_client):
    """``return_energy`` (an interaction energy here) beside ``total_energy`` read as the same kind of number."""
    results = mbdask.compute_many({"one": sleep_structure(), "two": sleep_structure()}, inprocess_client)
    columns = next(csv.reader(results.to_csv().splitlines()))
    energies = [c for c in columns if "energy" in c]
    assert {
        "return_energy_Eh",
        "total_energy_Eh",
        "interaction_energy_kcal_mol",
        "nocp_corrected_interaction_energy_through_2_body_Eh",
    } <= set(energies)
    assert all(c.endswith(("_Eh", "_kcal_mol")) for c in energies), energies
    assert "energy [Eh]" in results.summary().splitlines()[0]


def test_wall_time_is_one_number_from_the_call_on_the_page_and_in_the_results(inprocess_client, monkeypatch, tmp_path):
    """The page said 0.5 s where the command line said 0.77 s: the page's clock started after planning
    and the cluster's start. It starts when start_many is called, and the page shows the results' number."""
    import time

    import mbdask.workflows.structures

    planned_at = []
    make_plan = mbdask.workflows.structures.make_plan
    monkeypatch.setattr(
        mbdask.workflows.structures,
        "make_plan",
        lambda *a, **k: planned_at.append(time.monotonic()) or make_plan(*a, **k),
    )
    many = mbdask.start_many({"one": sleep_structure()}, inprocess_client)
    try:
        assert many.started <= planned_at[0]
        results = many.results()
    finally:
        many.connection.close()
    page = mbdask.report(results, tmp_path / "structures.html")  # the structures page, through the one report function
    assert page == tmp_path / "structures.html"
    assert f"wall time {results.wall_seconds:.2f} s" in page.read_text()


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_structures_page_legend_covers_no_line_in_chromium(inprocess_client, tmp_path):
    results = mbdask.compute_many({f"frame {i}": sleep_structure() for i in range(1, 4)}, inprocess_client)
    page = mbdask.report(results, tmp_path / "structures.html")
    legends, errors = evaluate_page(page, LEGENDS_OVER_DATA, BOKEH_READY)
    assert errors == [] and legends["legends"] == 1 and legends["over_data"] == [], legends


def test_structures_run_in_the_order_given(inprocess_client):
    structures = {}
    for i in range(3):  # three geometries (scaled), so that no structure borrows another's calculations
        structures[f"s{i}"] = inp = sleep_structure()
        inp["molecule"]["geometry"] = [x * (1 + 0.01 * i) for x in inp["molecule"]["geometry"]]
    many = mbdask.start_many(structures, inprocess_client)
    try:
        priorities = []
        for sub in many.submissions.values():
            layer = sub.graph.graph.layers["fragments"]
            values = [layer.annotations["priority"](key) for key in sub.graph.units]
            priorities.append((min(values), max(values)))
        assert priorities[0][0] > priorities[1][1] and priorities[1][0] > priorities[2][1]
        assert not many.results().errors
    finally:
        many.connection.close()


def test_the_same_calculation_in_two_structures_runs_once(inprocess_client):
    inp = sleep_structure()
    results = mbdask.compute_many({"first": inp, "again": inp}, inprocess_client)
    first, again = (results[name].extras["mbdask"]["timing"] for name in ("first", "again"))
    assert first["from_store"] == 0 and len(first["fragments"]) == 7  # 3 monomers, 3 dimers, the trimer
    assert again["from_store"] == 7 and len(again["fragments"]) == 0  # taken from "first", none computed
    assert results.shared == 7
    assert results["again"].properties.return_energy == results["first"].properties.return_energy


@needs_xtb
def test_one_store_serves_every_structure_and_the_next_run(tmp_path, process_client):
    model = mbdask.inputs.xyz.ModelOptions(max_nbody=2)
    structures = {
        m["name"]: model.input_for(m) for m in molecules_from_xyz(trajectory(tmp_path / "traj.xyz", frames=2))
    }
    store = tmp_path / "run.sqlite"
    first = mbdask.compute_many(structures, process_client, store=store)
    assert mbdask.FragmentStore.open(store).count() == 2 * 6  # 3 monomers and 3 dimers per frame
    again = mbdask.compute_many(structures, process_client, store=store)
    for name in structures:
        timing = again[name].extras["mbdask"]["timing"]
        assert timing["from_store"] == 6 and not timing["fragments"]
        assert again[name].properties.return_energy == first[name].properties.return_energy


# --- command line -------------------------------------------------------------------------------


@needs_xtb
def test_cli_runs_a_trajectory_and_writes_each_result_the_table_and_the_report(tmp_path, capsys):
    traj = trajectory(tmp_path / "traj.xyz", frames=3)
    out, report = tmp_path / "out", tmp_path / "report.html"
    code = main(
        [
            "run",
            str(traj),
            "--max-nbody",
            "2",
            "--workers",
            "2",
            "--no-progress",
            "--output-dir",
            str(out),
            "--report",
            str(report),
        ]
    )
    assert code == 0
    printed = capsys.readouterr()
    assert "3 of 3 structures finished" in printed.out and "traj-1, traj-2, traj-3" in printed.err
    rows = list(csv.DictReader((out / "structures.csv").open()))
    assert [r["structure"] for r in rows] == ["traj-1", "traj-2", "traj-3"]
    for row in rows:
        saved = json.loads((out / f"{row['structure']}.json").read_text())
        assert saved["properties"]["return_energy"] == pytest.approx(float(row["return_energy_Eh"]), abs=1e-12)
    assert "energies across structures" in report.read_text()


def test_cli_several_structures_one_failing_exits_1_with_a_summary(tmp_path, capsys, inprocess_client):
    good, bad = (
        write_json(tmp_path / "good.json", sleep_structure()),
        write_json(tmp_path / "bad.json", sleep_structure(fail=["3"])),
    )
    address = inprocess_client.scheduler.address
    code = main(
        ["run", str(good), str(bad), "--scheduler", address, "--no-progress", "--output-dir", str(tmp_path / "out")]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "1 structure failed: bad:" in err and "told to fail on 3-body" in err
    assert (tmp_path / "out" / "good.json").exists() and not (tmp_path / "out" / "bad.json").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-o", "x.json"], "several structures: write their results with --output-dir"),
        (["--profile", "p.json"], "--profile is for one structure"),
    ],
)
def test_cli_several_structures_refuses_single_structure_options(tmp_path, capsys, extra, message):
    traj = trajectory(tmp_path / "traj.xyz", frames=2)
    assert main(["run", str(traj), *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_a_missing_structure_file_is_bad_input(tmp_path, capsys):
    traj = trajectory(tmp_path / "traj.xyz", frames=2)
    assert main(["run", str(traj), str(tmp_path / "missing.xyz")]) == 2
    assert "missing.xyz: no such file or directory" in capsys.readouterr().err

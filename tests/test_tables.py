"""Large results: rows kept as columns (mbdask.Rows), written beside the JSON as CSV, read back.

The threshold (``mbdask.result.inline-limit``) is lowered to a few calculations, so that a
(H2O)6 GFN2-xTB run through a real LocalCluster takes the path a 679k-calculation run takes.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys

import dask
import numpy as np
import pytest
from conftest import EXAMPLES, needs_xtb, xtb_input

import mbdask
from mbdask.tables import Coded, Ragged, Rows
from mbdask.upstream import parse_label


def test_rows_read_like_the_list_of_dicts_they_hold_and_survive_csv(tmp_path):
    rows = Rows(
        [
            ({"fragments": np.array([[1, 2], [3, 4]]), "energy": np.array([0.1, 1 / 3])}, {"nbody": 2, "model": "m"}),
            ({"fragments": np.array([[1, 2, 3]]), "energy": np.array([-2e-17])}, {"nbody": 3, "model": "m"}),
        ],
        ["nbody", "model", "fragments", "energy"],
    )
    plain = [
        {"nbody": 2, "model": "m", "fragments": [1, 2], "energy": 0.1},
        {"nbody": 2, "model": "m", "fragments": [3, 4], "energy": 1 / 3},
        {"nbody": 3, "model": "m", "fragments": [1, 2, 3], "energy": -2e-17},
    ]
    assert len(rows) == 3 and list(rows) == plain and rows == plain
    assert rows[-1] == plain[-1] and rows[1:] == plain[1:] and rows.column("nbody") == [2, 2, 3]
    with pytest.raises(IndexError):
        rows[3]
    path = tmp_path / "t.csv.gz"
    rows.write_csv(path)
    assert gzip.open(path, "rt").read().splitlines()[:2] == ["nbody,model,fragments,energy", "2,m,1 2,0.1"]
    assert Rows.read_csv(path) == plain  # floats at full precision


def _csv_writer_text(rows: Rows) -> str:
    """What csv.writer writes for ``rows`` (index lists as "1 2 3", None empty): the reference for write_csv's
    fast path."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(rows.names)
    for row in rows:
        writer.writerow(
            [
                "" if row[n] is None else " ".join(map(str, row[n])) if n in ("fragments", "real", "basis") else row[n]
                for n in rows.names
            ]
        )
    return buffer.getvalue()


@pytest.mark.parametrize("model", ["gfn2", "hf, odd"])  # a comma: csv.writer quotes it, and so must the file
def test_csv_of_columns_is_what_csv_writer_writes(tmp_path, model):
    rows = Rows(
        [
            (
                {
                    "real": Ragged.from_lists([[1], [2, 3], [], [10, 2, 64]]),
                    "model": Coded.from_list([model, "x", model, None]),
                    "seconds": np.array([0.1, 1 / 3, 2.0, -1e-300]),
                    "ncores": np.array([1, 2, 1, 4]),
                    "predicted": [0.5, None, 1e20, None],
                },
                {"nbody": 2},
            ),
            (
                {
                    "real": np.array([[1, 2], [3, 4]]),
                    "model": ["a", "b"],
                    "seconds": np.array([5.0, 6.0]),
                    "ncores": np.array([1, 1]),
                    "predicted": np.array([1.0, 2.0]),
                },
                {"nbody": 3},
            ),
        ],
        ["nbody", "model", "real", "seconds", "ncores", "predicted"],
    )
    path = tmp_path / "t.csv"
    rows.write_csv(path)
    assert path.read_bytes().decode() == _csv_writer_text(rows)
    assert Rows.read_csv(path) == list(rows)


def test_labels_in_qcmanybodys_order_without_building_molecules():
    """The order the result node feeds ``analyze`` in (QCManyBody sums in that order) and each label's parts."""
    from qcmanybody.v2 import ManyBodyComputer

    from mbdask.inputs.load import load_input
    from mbdask.results.assemble import qcmanybody_order

    inp = load_input(xtb_input("water6-prism.xyz", bsse=("nocp", "cp", "vmfc"), levels={1: "gfn1", 3: "gfn2"}))
    core = ManyBodyComputer.from_manybodyinput(
        inp, build_tasks=False
    ).qcmb_core  # xtb's missing ghosts do not matter here
    labels, parts = qcmanybody_order(core)
    assert labels == list(dict.fromkeys(label for _, label, _ in core.iterate_molecules()))
    assert [parse_label(label) for label in labels] == [
        (model, list(real), list(basis)) for model, real, basis in parts
    ]


@needs_xtb
def test_large_result_keeps_tables_and_saves_them_beside_the_json(process_client, tmp_path):
    inp = xtb_input(EXAMPLES / "water6-prism.xyz")
    inline = mbdask.compute(inp, process_client)
    with dask.config.set({"mbdask.result.inline-limit": 5}):
        large = mbdask.compute(inp, process_client)

    # the same numbers, by QCManyBody's analysis; only where the rows live differs
    assert large.properties.return_energy == inline.properties.return_energy
    assert large.extras["mbdask"]["levels"] == inline.extras["mbdask"]["levels"]
    extras = large.extras["mbdask"]
    assert isinstance(extras["increments"]["nocp"], Rows) and isinstance(extras["timing"]["fragments"], Rows)
    assert extras["increments"]["nocp"] == inline.extras["mbdask"]["increments"]["nocp"]
    assert large.cluster_properties == {}
    energies = {tuple(r["real"]): r["energy"] for r in extras["cluster_energies"]}
    assert energies == {
        tuple(parse_label(label)[1]): props.return_energy for label, props in inline.cluster_properties.items()
    }
    assert [f["real"] for f in extras["timing"]["fragments"]] == [
        f["real"] for f in large.extras["mbdask"]["timing"]["fragments"]
    ]

    written = mbdask.save_result(large, tmp_path / "result.json")
    assert [p.name for p in written] == [
        "result.increments.nocp.csv.gz",
        "result.timing.fragments.csv.gz",
        "result.cluster_energies.csv.gz",
        "result.json",
    ]
    saved = json.loads((tmp_path / "result.json").read_text())["extras"]["mbdask"]
    assert saved["increments"]["nocp"] == {
        "table": "result.increments.nocp.csv.gz",
        "rows": 41,
        "columns": ["nbody", "model", "fragments", "energy"],
    }
    back = mbdask.load_result(tmp_path / "result.json")
    assert back.extras["mbdask"]["increments"]["nocp"] == extras["increments"]["nocp"]
    assert back.extras["mbdask"]["timing"]["fragments"] == extras["timing"]["fragments"]
    assert back.extras["mbdask"]["cluster_energies"] == extras["cluster_energies"]
    assert "<html" in mbdask.report(back).lower()
    # pydantic still writes a large result whole (rows inline), as a small one is written
    assert (
        json.loads(large.model_dump_json())["extras"]["mbdask"]["increments"]["nocp"]
        == inline.extras["mbdask"]["increments"]["nocp"]
    )


@needs_xtb
def test_cli_writes_the_tables_of_a_large_result_and_logs_progress_off_a_terminal(tmp_path):
    env = {**os.environ, "DASK_MBDASK__RESULT__INLINE_LIMIT": "5", "DASK_MBDASK__PROGRESS__LOG_INTERVAL": "0"}
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "mbdask", "run", str(EXAMPLES / "water6-gfn2.json"), "--workers", "1", "-o", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "tables beside it: r.increments.nocp.csv.gz" in proc.stdout
    # stderr is a pipe here, as in a batch job's log: plain progress lines, the last one complete
    lines = [line for line in proc.stderr.splitlines() if "fragment calculations," in line]
    assert lines and lines[-1].startswith("mbdask: 41/41 fragment calculations, ") and "\x1b" not in proc.stderr
    result = mbdask.load_result(out)
    assert len(result.extras["mbdask"]["increments"]["nocp"]) == result.extras["mbdask"]["nfragment_calculations"] == 41


def test_nuclear_repulsion_of_a_large_molecule_is_qcelementals_number(tmp_path):
    """QCManyBody's get_results asks for the nuclear repulsion energy, which QCElemental sums in a Python loop
    over atom pairs (11 s at 3,072 atoms): above 512 atoms the result's molecule answers with numpy."""
    from conftest import DATA

    from mbdask.inputs.xyz import ModelOptions, molecule_from_xyz
    from mbdask.results.assemble import LargeMolecule, for_results, nuclear_repulsion_energy

    def water_input(path):
        return mbdask.load_input(ModelOptions(max_nbody=2).input_for(molecule_from_xyz(path)))

    small = water_input(DATA / "water6-prism.xyz")
    ghosted = small.molecule.model_copy(update={"real": np.array([i % 4 != 0 for i in range(18)])})
    for molecule in (small.molecule, ghosted):
        assert nuclear_repulsion_energy(molecule) == pytest.approx(molecule.nuclear_repulsion_energy(), rel=1e-13)
    assert for_results(small) is small  # small: QCElemental's own loop, bit for bit
    lines = (DATA / "water4096-liquid-sphere.xyz").read_text().splitlines()
    (tmp_path / "water200.xyz").write_text("\n".join(["600", lines[1], *lines[2:602]]) + "\n")
    large = water_input(tmp_path / "water200.xyz")
    made = for_results(large)
    assert (
        type(made.molecule) is LargeMolecule
        and made.molecule == large.molecule
        and type(large.molecule) is not LargeMolecule
    )
    assert made.molecule.nuclear_repulsion_energy() == pytest.approx(
        large.molecule.nuclear_repulsion_energy(), rel=1e-13
    )
    assert made.molecule.nuclear_repulsion_energy(ifr=0) == large.molecule.nuclear_repulsion_energy(ifr=0)

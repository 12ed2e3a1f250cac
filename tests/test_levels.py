"""``extras["mbdask"]["levels"]`` means the same for nocp, cp and vmfc, and the report reads it right.

Every BSSE treatment gets a 1-body row; ``interaction`` is the interaction energy through n,
``through`` the total energy through n or ``None`` where none exists (cp without monomers in
their own basis). Checked against QCManyBody's own properties on replayed component data
(test double program), for each treatment alone and all together, with and without
``return_total_data``.
"""

from __future__ import annotations

import re

import pytest

pytest.importorskip(
    "zstandard", reason="zstandard (QCManyBody's stored component data) is not installed (pip install 'mbdask[test]')"
)

from helpers import replay_input  # noqa: E402

import mbdask  # noqa: E402
from mbdask.diagnostics.report import HARTREE_TO_KCAL, _nbody_table, energy_phrase, normalized_levels, report_html  # noqa: E402

TREATMENTS = [("nocp",), ("cp",), ("vmfc",), ("cp", "nocp", "vmfc")]


def _check_levels(result) -> None:
    props = result.properties.model_dump()
    levels = result.extras["mbdask"]["levels"]
    assert set(levels) >= {
        b.value for b in result.input_data.specification.keywords.bsse_type
    }  # vmfc brings cp and nocp
    for bsse, rows in levels.items():
        assert list(rows)[0] == "1" and rows["1"]["interaction"] == 0.0, (bsse, rows)
        for nbody, row in rows.items():
            interaction = props[f"{bsse}_corrected_interaction_energy_through_{nbody}_body"]
            total = props.get(f"{bsse}_corrected_total_energy_through_{nbody}_body")
            assert row["interaction"] == pytest.approx(interaction, abs=1e-10), (bsse, nbody)
            if total is None:
                assert row["through"] is None, (bsse, nbody)
            else:
                assert row["through"] == pytest.approx(total, abs=1e-10), (bsse, nbody)
            if nbody != "1":
                assert row["contribution"] == pytest.approx(
                    interaction - props[f"{bsse}_corrected_interaction_energy_through_{int(nbody) - 1}_body"], abs=1e-10
                )


@pytest.mark.parametrize("total_data", [True, False], ids=["total", "interaction"])
@pytest.mark.parametrize("bsse", TREATMENTS, ids=["+".join(b) for b in TREATMENTS])
def test_levels_have_one_meaning_for_every_bsse_treatment(inprocess_client, bsse, total_data):
    inp = replay_input(
        {1: "e_scf", 2: "e_scf", 3: "e_scf"}, "h2o_trimer_single_energy_1", bsse=bsse, return_total_data=total_data
    )
    result = mbdask.compute(inp, inprocess_client)
    _check_levels(result)
    report_html(result)  # the whole report builds
    table = _nbody_table(result.extras["mbdask"]["levels"])
    assert "nan" not in table
    for b in bsse:  # a 1-body row per treatment, with the interaction energy (0) in it
        assert re.search(rf"<tr><td>{b}</td><td>1</td>.*?<td>0.0000</td>", table), b
    # the convergence plot has a line per treatment, starting at 0 kcal/mol at 1-body
    fig = mbdask.figures(result)["convergence"]
    lines = [r for r in fig.renderers if r.glyph.__class__.__name__ == "Line"]
    assert len(lines) == len(result.extras["mbdask"]["levels"])
    for line in lines:
        assert line.data_source.data["x"][0] == 1 and line.data_source.data["y"][0] == 0.0
    first = bsse[0]
    assert f"{first} interaction energy through 3-body" in energy_phrase(result)


def test_cp_alone_without_total_data_has_no_total_and_says_so(inprocess_client):
    inp = replay_input(
        {1: "e_scf", 2: "e_scf", 3: "e_scf"}, "h2o_trimer_single_energy_1", bsse=("cp",), return_total_data=False
    )
    result = mbdask.compute(inp, inprocess_client)
    rows = result.extras["mbdask"]["levels"]["cp"]
    assert [rows[n]["through"] for n in ("1", "2", "3")] == [None, None, None]
    assert rows["3"]["interaction"] == pytest.approx(result.properties.return_energy, abs=1e-12)
    assert "n/a: no total energy" in report_html(result)
    phrase = energy_phrase(result)
    assert "total energy" not in phrase
    assert f"{result.properties.return_energy * HARTREE_TO_KCAL:.4f} kcal/mol" in phrase


def test_results_saved_before_levels_had_interaction_still_report():
    """mbdask 0.1.0's cp levels: no 1-body row, interaction energies under ``through``."""
    old = {
        "cp": {
            "2": {"model": "m", "contribution": -0.01, "through": -0.01, "nclusters": 3},
            "3": {"model": "m", "contribution": -0.001, "through": -0.011, "nclusters": 1},
        },
        "nocp": {
            "1": {"model": "m", "contribution": -228.0, "through": -228.0, "nclusters": 3},
            "2": {"model": "m", "contribution": -0.02, "through": -228.02, "nclusters": 3},
        },
    }
    levels = normalized_levels(old)
    assert (
        levels["cp"]["1"]["interaction"] == 0.0
        and levels["cp"]["3"]["interaction"] == -0.011
        and levels["cp"]["3"]["through"] is None
    )
    assert levels["nocp"]["2"]["interaction"] == pytest.approx(-0.02)

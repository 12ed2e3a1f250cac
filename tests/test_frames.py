"""A result's tables as pandas DataFrames in one call (issue #29, "Tables").

The frames must be the rows they come from, whichever form those are in: a small result's
lists of dicts, a large result's :class:`mbdask.Rows`, or the CSV tables a saved result reads
back. The results are real GFN2-xTB expansions on a real Dask cluster (the water trimer
through 3-body, seven calculations).
"""

from __future__ import annotations

import csv
import sys

import dask
import numpy as np
import pytest
from conftest import needs_xtb, xtb_input

import mbdask
from mbdask.errors import BadInputError
from mbdask.inputs.xyz import ModelOptions
from mbdask.results.assemble import INCREMENT_COLUMNS, TIMING_COLUMNS
from mbdask.tables import Ragged, Rows
from mbdask.workflows.structures import ManyResults

pd = pytest.importorskip("pandas", reason="pandas is not installed (pip install 'mbdask[test]')")


def as_tuples(row: dict) -> dict:
    """A dict row as the frame holds it: index lists as tuples."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in row.items()}


def records(frame) -> list[dict]:
    """The frame's rows as dicts of Python values, NaN as None."""
    return [
        {key: None if isinstance(value, float) and value != value else value for key, value in row.items()}
        for row in frame.astype(object).to_dict("records")
    ]


@pytest.fixture(scope="module")
def results(process_client):
    """The water trimer's result twice: rows as lists of dicts (small), and as Rows (as a large result keeps them)."""
    inp = xtb_input("water3-uud.xyz", max_nbody=3)
    small = mbdask.compute(inp, process_client)
    with dask.config.set({"mbdask.result.inline-limit": 0}):
        large = mbdask.compute(inp, process_client)
    assert isinstance(small.extras["mbdask"]["increments"]["nocp"], list)
    assert isinstance(large.extras["mbdask"]["increments"]["nocp"], Rows)
    return small, large


def test_rows_to_pandas_is_the_rows_column_by_column():
    rows = Rows(
        [
            ({"fragments": np.array([[1, 2], [1, 3]]), "energy": np.array([-0.5, -0.25])}, {"nbody": 2, "model": "a"}),
            ({"fragments": Ragged.from_lists([[1, 2, 3]]), "energy": [0.125]}, {"nbody": 3, "model": "b"}),
            ({"fragments": [[2]], "energy": [None], "model": ["c"]}, {"nbody": 1}),
        ],
        ("nbody", "model", "fragments", "energy"),
    )
    frame = rows.to_pandas()
    assert list(frame.columns) == rows.names
    assert frame.index.equals(pd.RangeIndex(len(rows)))
    assert records(frame) == [as_tuples(row) for row in rows]
    assert frame["nbody"].dtype == np.int64 and frame["energy"].dtype == np.float64
    assert np.isnan(frame["energy"].iloc[3])
    assert frame["fragments"].iloc[2] == (1, 2, 3) and frame.groupby("fragments").size().max() == 1
    many = Rows.from_dicts(
        [{"model": "m", "worker": "w", "seconds": 1.0, "predicted": None}] * 8,
        ["model", "worker", "seconds", "predicted"],
    )
    frame = many.to_pandas()
    assert frame["model"].tolist() == ["m"] * 8  # texts kept as codes come back as texts
    assert (
        frame["predicted"].dtype == np.float64 and frame["predicted"].isna().all()
    )  # as read_csv reads an empty column
    assert list(Rows([], ["a", "b"]).to_pandas().columns) == ["a", "b"]


@needs_xtb
def test_increments_frame_is_every_clusters_increment(results):
    small, large = results
    for result in (small, large):
        frame = mbdask.increments_frame(result)
        assert list(frame.columns) == ["bsse", *INCREMENT_COLUMNS]
        assert frame.index.equals(pd.RangeIndex(7))
        expected = [{"bsse": "nocp", **as_tuples(row)} for row in result.extras["mbdask"]["increments"]["nocp"]]
        assert records(frame) == [{name: row[name] for name in frame.columns} for row in expected]
        assert frame["nbody"].dtype == np.int64 and frame["energy"].dtype == np.float64
        assert frame["fragments"].tolist()[-1] == (1, 2, 3)
        sums = frame.groupby(["bsse", "nbody"])["energy"].sum()
        levels = result.extras["mbdask"]["levels"]["nocp"]
        for nbody in (1, 2, 3):
            assert sums["nocp", nbody] == pytest.approx(levels[str(nbody)]["contribution"], abs=1e-12)
    pd.testing.assert_frame_equal(mbdask.increments_frame(small), mbdask.increments_frame(large), atol=1e-10)


@needs_xtb
def test_levels_frame_is_the_energy_per_order(results):
    small, _ = results
    frame = mbdask.levels_frame(small)
    levels = small.extras["mbdask"]["levels"]["nocp"]
    assert frame["nbody"].tolist() == [1, 2, 3] and frame["nbody"].dtype == np.int64
    assert records(frame) == [{"bsse": "nocp", "nbody": int(n), **row} for n, row in levels.items()]
    assert frame["through"].iloc[-1] == pytest.approx(small.properties.nocp_corrected_total_energy, abs=1e-10)
    assert frame["nclusters"].dtype == np.int64


@needs_xtb
def test_timings_frame_is_every_calculations_timing(results):
    for result in results:
        rows = result.extras["mbdask"]["timing"]["fragments"]
        frame = mbdask.timings_frame(result)
        assert list(frame.columns) == list(TIMING_COLUMNS) and len(frame) == 7
        assert records(frame) == [as_tuples(row) for row in rows]
        for name in ("seconds", "start", "predicted", "own_seconds", "calibrated"):
            assert frame[name].dtype == np.float64, name
        assert frame["ncores"].dtype == np.int64
        assert sorted(frame.groupby(frame["real"].map(len)).size().tolist()) == [1, 3, 3]


@needs_xtb
def test_a_saved_large_result_and_a_result_dict_give_the_same_frames(results, tmp_path):
    _, large = results
    written = mbdask.save_result(large, tmp_path / "result.json")
    assert len(written) > 1  # the tables went to CSV files beside the JSON
    loaded = mbdask.load_result(tmp_path / "result.json")
    for make in (mbdask.increments_frame, mbdask.levels_frame, mbdask.timings_frame):
        pd.testing.assert_frame_equal(make(loaded), make(large))
        pd.testing.assert_frame_equal(make(large.model_dump()), make(large))
    from qcmanybody.models.v2 import ManyBodyResult

    unread = ManyBodyResult.model_validate_json((tmp_path / "result.json").read_text())
    with pytest.raises(BadInputError, match=r"increments\['nocp'\] is in the file result.increments.nocp.csv.gz"):
        mbdask.increments_frame(unread)
    with pytest.raises(BadInputError, match="not an mbdask result"):
        mbdask.timings_frame({"extras": {}})


@needs_xtb
def test_many_results_to_pandas_is_a_row_per_structure_by_name(tmp_path, process_client):
    from helpers import trajectory

    structures = mbdask.read_structures([trajectory(tmp_path / "traj.xyz", frames=2)], ModelOptions(max_nbody=3))
    many = mbdask.compute_many(structures, process_client)
    frame = many.to_pandas()
    assert frame.index.name == "structure" and frame.index.tolist() == ["traj-1", "traj-2"]
    assert ["structure", *frame.columns] == next(csv.reader(many.to_csv().splitlines()))
    assert records(frame.reset_index()) == many.rows()
    assert frame["total_energy_Eh"].dtype == np.float64 and frame["calculations"].dtype == np.int64
    assert frame.loc["traj-2", "total_energy_Eh"] == many["traj-2"].properties.nocp_corrected_total_energy
    failed = ManyResults({"traj-1": many["traj-1"]}, {"bad": "no such thing"}, ["traj-1", "bad"])
    frame = failed.to_pandas()
    assert frame.loc["bad", "status"] == "failed" and np.isnan(frame.loc["bad", "total_energy_Eh"])
    assert str(frame["calculations"].dtype) == "Int64" and frame["calculations"].isna().tolist() == [False, True]


def test_without_pandas_the_error_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    rows = Rows.from_columns(energy=[1.0])
    with pytest.raises(ImportError, match=r'^Rows.to_pandas needs pandas: pip install "mbdask\[pandas\]"$'):
        rows.to_pandas()
    with pytest.raises(ImportError, match=r"^ManyResults.to_pandas needs pandas"):
        ManyResults({}, {"a": "failed"}, ["a"]).to_pandas()
    with pytest.raises(ImportError, match=r"^increments_frame needs pandas"):
        mbdask.increments_frame({"extras": {"mbdask": {"increments": {}}}})

"""The summary table, the HTML report (rendered in headless Chromium) and live progress."""

from __future__ import annotations

import copy
import io
import re
import types

import pytest
from browser import BOKEH_PLOTS, BOKEH_READY, LEGENDS_OVER_DATA, WRAPPED_CELLS, chromium, evaluate_page
from conftest import EXAMPLES, needs_xtb, xtb_input
from qcmanybody.models.v2 import ManyBodyResult

import mbdask
from mbdask.diagnostics.progress import Progress, show
from mbdask.diagnostics.report import fragment_name, summary_table, times_phrase, utilization

pytestmark = needs_xtb


@pytest.fixture(scope="module")
def water6_result(process_client) -> ManyBodyResult:
    """GFN2-xTB (H2O)6 through 3-body (xtb has no ghost atoms: nocp)."""
    return mbdask.compute(xtb_input(EXAMPLES / "water6-prism.xyz"), process_client)


def test_summary_table_has_one_row_per_order_with_counts(water6_result):
    table = summary_table(water6_result)
    rows = {int(line.split()[1]): line for line in table.splitlines()[1:]}
    counts = {nbody: int(line.split()[2]) for nbody, line in rows.items()}
    fragments = water6_result.extras["mbdask"]["timing"]["fragments"]
    assert counts == {n: sum(len(f["real"]) == n for f in fragments) for n in (1, 2, 3)} == {1: 6, 2: 15, 3: 20}
    assert sum(counts.values()) == water6_result.extras["mbdask"]["nfragment_calculations"]
    # top three by time, named like QCManyBody's clusters
    assert len(re.findall(r"\(\d+(,\d+)*\)(@\([\d,]+\))? (\d+\.\d\d s|\d+\.\d ms)", rows[3])) == 3


def test_fragment_names():
    assert fragment_name([1, 2], [1, 2]) == "(1,2)"
    assert fragment_name([1], [1, 2, 3]) == "(1)@(1,2,3)"


def test_utilization_counts_core_seconds_over_the_span():
    frags = [
        {"start": 10.0, "seconds": 2.0, "ncores": 1},
        {"start": 10.0, "seconds": 1.0, "ncores": 1},
        {"start": 11.0, "seconds": 1.0, "ncores": 2},
    ]
    times, busy, mean = utilization(frags, cluster_cores=4)
    assert max(busy) == 3  # one 1-core fragment and the 2-core one overlap in [11, 12)
    assert mean == pytest.approx((2 + 1 + 2) / (4 * 2.0))


def test_report_is_self_contained_html(water6_result, tmp_path):
    path = tmp_path / "report.html"
    mbdask.report(water6_result, path)
    text = path.read_text()
    assert not re.search(r"<script[^>]+src=", text), "the report must open without a network"
    assert "n-body energies" in text and "slowest fragments" in text


def test_report_written_to_a_file_returns_its_path_not_the_html(water6_result, tmp_path):
    """A notebook cell ending with ``mbdask.report(result, "r.html")`` showed megabytes of HTML."""
    path = tmp_path / "report.html"
    assert mbdask.report(water6_result, str(path)) == path
    assert mbdask.report(water6_result).startswith("<!DOCTYPE html>")  # no path: the HTML itself


def short_calculations_result() -> types.SimpleNamespace:
    """A result's timing part only: batched xtb dimers take milliseconds each."""
    fragments = [
        {"real": [2, 8], "basis": [2, 8], "model": "gfn2", "seconds": 0.0031, "start": 10.0},
        {"real": [1, 2], "basis": [1, 2], "model": "gfn2", "seconds": 0.0004, "start": 10.0031},
        {"real": [1], "basis": [1], "model": "gfn2", "seconds": 0.25, "start": 9.5},
    ]
    return types.SimpleNamespace(extras={"mbdask": {"timing": {"fragments": fragments, "from_store": 0}}})


def test_summary_table_gives_milliseconds_where_seconds_would_read_zero():
    table = summary_table(short_calculations_result())
    assert "(2,8) 3.1 ms, (1,2) 0.4 ms" in table and "(1) 0.25 s" in table
    assert "0.00 s" not in table


def test_summary_table_and_report_name_times_as_the_command_line_does(water6_result):
    """One name per quantity: "wall time" is the run's (as the command line measured it); the
    fragments' first start to last stop is their "span", in the table and in the report."""
    header = summary_table(water6_result).splitlines()[0]
    assert "span [s]" in header and "wall" not in header
    timing = water6_result.extras["mbdask"]["timing"]
    phrase = times_phrase(water6_result, wall_seconds=0.77)
    assert phrase == (
        f"wall time 0.77 s, sum of task times {timing['sum_task_seconds']:.2f} s, "
        f"fragment span {timing['span_seconds']:.2f} s"
    )
    assert "wall time" not in times_phrase(water6_result)  # a report made later from the file knows no wall time
    assert phrase in mbdask.report(water6_result, wall_seconds=0.77)


def test_every_legend_hides_its_data_on_a_click(water6_result):
    from bokeh.models import Legend

    figs = mbdask.figures(water6_result)
    legends = {name: [item for item in fig.select(type=Legend)] for name, fig in figs.items()}
    assert {name for name, found in legends.items() if found} == {"convergence", "timeline", "utilization", "predicted"}
    assert all(legend.click_policy == "hide" for found in legends.values() for legend in found)


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_report_renders_every_plot_in_chromium(water6_result, tmp_path):
    path = tmp_path / "report.html"
    mbdask.report(water6_result, path)
    value, errors = evaluate_page(path, BOKEH_PLOTS, BOKEH_READY)
    assert errors == []
    assert value["plots"] == 5 and value["finished"] == 5
    assert {"n-body convergence", "predicted versus measured seconds per fragment"} <= set(value["titles"])
    assert any(t.startswith("pair interactions (nocp") for t in value["titles"])
    assert all(w > 100 and h > 100 for w, h in value["sizes"])


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_no_legend_covers_a_plot_and_no_table_cell_wraps_in_chromium(water6_result, tmp_path):
    """Legends beside the plots, never over data (an HF trimer's slow fragments landed under a
    top-left legend); table cells on one line ("hf/6-31g" broke in two), with a long model name."""
    extras = copy.deepcopy(water6_result.extras)
    for fragment in extras["mbdask"]["timing"]["fragments"]:
        fragment["model"] = "b3lyp-d3bj/aug-cc-pvtz"
    long_names = water6_result.model_copy(update={"extras": extras})
    path = mbdask.report(long_names, tmp_path / "report.html")
    legends, errors = evaluate_page(path, LEGENDS_OVER_DATA, BOKEH_READY)
    assert errors == []
    assert legends["legends"] == 4 and legends["over_data"] == [], legends
    cells, errors = evaluate_page(path, WRAPPED_CELLS, BOKEH_READY)
    assert errors == [] and cells["cells"] > 20
    assert cells["wrapped"] == []


#: JavaScript: the convergence plot's lines (x, y) and the n-body table's text, as the page shows them.
CONVERGENCE_AND_TABLE = """(() => {
  if (!window.Bokeh || !Bokeh.index) return null;
  const views = [...Bokeh.index.all_views()];
  const plot = views.find((v) => v.model.title && v.model.title.text === 'n-body convergence');
  const lines = plot
    ? plot.model.renderers
        .filter((r) => r.glyph.type === 'Line')
        .map((r) => ({x: [...r.data_source.data.x], y: [...r.data_source.data.y]}))
    : [];
  const shown = (v) =>
    [...(v.el.shadowRoot || v.el).children].filter((c) => c.tagName !== 'STYLE').map((c) => c.innerText).join(' ');
  return {lines: lines, text: views.filter((v) => v.model.type === 'Div').map(shown).join(' ')};
})()"""


@pytest.fixture(scope="module")
def cp_result(process_client) -> ManyBodyResult:
    """PySCF HF/STO-3G water trimer, cp alone, 2-body: no monomers in their own basis (interaction energies only)."""
    pytest.importorskip("pyscf")
    from mbdask.inputs.xyz import molecule_from_xyz

    inp = {
        "specification": {
            "driver": "energy",
            "keywords": {"bsse_type": ["cp"], "levels": {2: "hf"}},
            "specification": {"hf": {"program": "pyscf", "model": {"method": "hf", "basis": "sto-3g"}}},
        },
        "molecule": molecule_from_xyz(EXAMPLES / "water3-uud.xyz"),
    }
    return mbdask.compute(inp, process_client)


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_cp_report_shows_a_1_body_row_and_the_interaction_energy_in_chromium(cp_result, tmp_path):
    path = tmp_path / "report.html"
    mbdask.report(cp_result, path)
    value, errors = evaluate_page(path, BOKEH_PLOTS, BOKEH_READY)
    assert errors == [] and value["plots"] == value["finished"] >= 4
    shown, errors = evaluate_page(path, CONVERGENCE_AND_TABLE, BOKEH_READY)
    assert errors == []
    (line,) = shown["lines"]
    interaction = cp_result.properties.cp_corrected_interaction_energy_through_2_body * 627.5094740631
    assert line["x"] == [1, 2] and line["y"][0] == 0.0 and line["y"][1] == pytest.approx(interaction, abs=1e-6)
    text = shown["text"]
    assert "nan" not in text and "cp interaction energy through 2-body" in text
    assert f"{interaction:.4f}" in text and "n/a" in text  # no total: monomers were not computed in their own basis
    assert re.search(r"cp\s+1\s+hf\s+0\s+n/a\s+0\.0000", text), (
        text
    )  # the 1-body row: 0 clusters, no total, interaction 0


def test_report_of_a_result_without_mbdask_extras_is_refused(water6_result):
    bare = water6_result.model_copy(update={"extras": {}})
    with pytest.raises(ValueError, match="no mbdask extras"):
        mbdask.report(bare)


def test_progress_counts_every_fragment_per_order(process_client):
    sub = mbdask.start(xtb_input(EXAMPLES / "water6-prism.xyz"), process_client, progress=True)
    out = io.StringIO()
    show(sub.progress, out, interval=0.05, live=True)  # bars as on a terminal
    result = sub.result()
    progress = sub.progress
    assert progress.done == progress.total == result.extras["mbdask"]["nfragment_calculations"]
    assert {(c.model, c.nbody): (c.done, c.total) for c in progress.levels.values()} == {
        ("gfn2", 1): (6, 6),
        ("gfn2", 2): (15, 15),
        ("gfn2", 3): (20, 20),
    }
    drawn = out.getvalue()
    assert "gfn2  3-body" in drawn and "41/41 fragment calculations" in drawn
    assert not progress._pending  # finished futures are let go


def test_progress_estimates_time_left_from_predicted_work(monkeypatch):
    import types

    import mbdask.diagnostics.progress
    from mbdask.planning.batching import Unit
    from mbdask.planning.plan import FragmentJob

    class Done:
        def __init__(self, done: bool) -> None:
            self.status = "finished" if done else "pending"

        def done(self) -> bool:
            return self.status == "finished"

    fast, slow = Done(True), Done(False)
    units = {fast: Unit((FragmentJob("m", (1,), (1,)),), 1.0), slow: Unit((FragmentJob("m", (1, 2), (1, 2)),), 3.0)}
    # a stopped clock, 10 s after the start: the estimate is arithmetic, not a race with the real one
    monkeypatch.setattr(mbdask.diagnostics.progress, "time", types.SimpleNamespace(monotonic=lambda: 10.0))
    progress = Progress(units, started=0.0)
    progress.poll()
    assert progress.done == 1 and progress.total == 2
    assert progress.elapsed == 10.0
    # 1 s of predicted work done in 10 s: the 3 s left take 30 s
    assert progress.remaining_seconds() == pytest.approx(30.0)
    assert "about" in progress.lines()[-1]


def test_timeline_and_utilization_legends_name_the_orders_and_cover_no_data(water6_result):
    from bokeh.models import Legend

    figs = mbdask.figures(water6_result)
    for name in ("timeline", "utilization"):
        legends = [item for item in figs[name].right if isinstance(item, Legend)]
        assert len(legends) == 1 and not [item for item in figs[name].center if isinstance(item, Legend)], name
    labels = [item.label["value"] for item in legends_of(figs["timeline"])]
    assert labels == ["1-body", "2-body", "3-body"]
    assert [item.label["value"] for item in legends_of(figs["utilization"])] == ["busy cores", "2 cores in the cluster"]


def legends_of(fig) -> list:
    from bokeh.models import Legend

    return [entry for item in fig.right if isinstance(item, Legend) for entry in item.items]


def test_time_left_follows_the_recent_rate_not_the_runs_average(monkeypatch):
    """The cost model's error differs between n-body orders: after a slow first order, the
    estimate uses the last two minutes' rate (here twice the run's average), not the average."""
    import types

    import mbdask.diagnostics.progress
    from mbdask.planning.batching import Unit
    from mbdask.planning.plan import FragmentJob

    class Done:
        status = "finished"

        def done(self) -> bool:
            return True

    clock = {"now": 0.0}
    monkeypatch.setattr(mbdask.diagnostics.progress, "time", types.SimpleNamespace(monotonic=lambda: clock["now"]))
    units = {Done(): Unit((FragmentJob("m", (1,), (1,)),), 1000.0)}
    progress = Progress(units, started=0.0)
    progress._pending.clear()  # counted below by hand: predicted work done over time
    for second in range(1, 301):
        clock["now"] = float(second)
        progress.predicted_done = second * 1.0 if second <= 150 else 150.0 + (second - 150) * 2.0
        progress.poll()
    # 450 of 1000 predicted seconds done; 2 per second over the last 120 s (1.5 on average)
    assert progress.remaining_seconds() == pytest.approx(550.0 / 2.0)


def test_many_fragments_plot_increments_against_cluster_size_not_a_pair_map(water6_result):
    """Beyond mbdask.report.pair-map-fragments the report draws each order's increments against the cluster's
    size (a fixed-size random sample per order) instead of a fragment x fragment map, whose HTML grows with n**2."""
    import dask

    from mbdask.diagnostics.report import figures

    assert "pairs" in figures(water6_result) and "sizes" not in figures(water6_result)
    with dask.config.set({"mbdask.report.pair-map-fragments": 5, "mbdask.report.plotted-fragments": 20}):
        figs = figures(water6_result)
    assert "pairs" not in figs
    sizes = figs["sizes"]
    drawn = {item.label["value"]: len(item.renderers[0].data_source.data["size"]) for item in sizes.legend[0].items}
    assert drawn == {"2-body": 10, "3-body": 10}  # 15 dimers and 20 trimers: 10 of each, the title says so
    assert "a random sample: 2-body: 10 of 15; 3-body: 10 of 20" in sizes.title.text
    source = sizes.legend[0].items[0].renderers[0].data_source.data
    assert min(source["size"]) > 1.5 and max(source["size"]) < 10  # Angstrom: closest atoms of water pairs


def test_utilization_curve_is_averaged_over_time_bins_with_the_same_core_seconds():
    import numpy as np

    from mbdask.diagnostics.report import time_averaged

    rng = np.random.default_rng(3)
    times = np.sort(rng.uniform(0, 100, 5001))
    busy = rng.integers(0, 3, 5001).astype(float)
    edges, mean = time_averaged(times, busy, 50)
    assert len(edges) == 51 and edges[0] == times[0] and edges[-1] == times[-1]
    exact = float((busy[:-1] * np.diff(times)).sum())
    assert float((mean[:-1] * np.diff(edges)).sum()) == pytest.approx(exact, rel=1e-12)
    assert 0 <= mean.min() and mean.max() <= 2

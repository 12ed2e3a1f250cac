"""The summary table, the HTML report (rendered in headless Chromium) and live progress."""

from __future__ import annotations

import io
import re

import pytest
from qcmanybody.models.v2 import ManyBodyResult

import mbdask
from browser import BOKEH_PLOTS, BOKEH_READY, chromium, evaluate_page
from conftest import EXAMPLES, needs_xtb, xtb_input
from mbdask.progress import Progress, show
from mbdask.report import fragment_name, summary_table, utilization

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
    assert len(re.findall(r"\(\d+(,\d+)*\)(@\([\d,]+\))? \d+\.\d\d s", rows[3])) == 3


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
    text = mbdask.report(water6_result, path)
    assert path.read_text() == text
    assert not re.search(r"<script[^>]+src=", text), "the report must open without a network"
    assert "n-body energies" in text and "slowest fragments" in text


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


def test_report_of_a_result_without_mbdask_extras_is_refused(water6_result):
    bare = water6_result.model_copy(update={"extras": {}})
    with pytest.raises(ValueError, match="no mbdask extras"):
        mbdask.report(bare)


def test_progress_counts_every_fragment_per_order(process_client):
    sub = mbdask.start(xtb_input(EXAMPLES / "water6-prism.xyz"), process_client, progress=True)
    out = io.StringIO()
    show(sub.progress, out, interval=0.05)
    result = sub.result.result()
    progress = sub.progress
    assert progress.done == progress.total == result.extras["mbdask"]["nfragment_calculations"]
    assert {(c.model, c.nbody): (c.done, c.total) for c in progress.levels.values()} == {
        ("gfn2", 1): (6, 6), ("gfn2", 2): (15, 15), ("gfn2", 3): (20, 20)
    }
    drawn = out.getvalue()
    assert "gfn2  3-body" in drawn and "41/41 fragment calculations" in drawn
    assert not progress._pending  # finished futures are let go


def test_progress_estimates_time_left_from_predicted_work():
    from mbdask.batching import Unit
    from mbdask.plan import FragmentJob

    class Done:
        def __init__(self, done: bool) -> None:
            self.status = "finished" if done else "pending"

        def done(self) -> bool:
            return self.status == "finished"

    fast, slow = Done(True), Done(False)
    units = {fast: Unit((FragmentJob("m", (1,), (1,)),), 1.0), slow: Unit((FragmentJob("m", (1, 2), (1, 2)),), 3.0)}
    progress = Progress(units, started=0.0)
    progress.poll()
    assert progress.done == 1 and progress.total == 2
    left = progress.remaining_seconds()
    assert left == pytest.approx(3.0 * progress.elapsed / 1.0, rel=1e-3)
    assert "about" in progress.lines()[-1]

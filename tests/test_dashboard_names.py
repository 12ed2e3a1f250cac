"""The dashboard's progress rows can be told apart (issue #25, item 7).

Dask groups tasks by ``dask.utils.key_split`` of their keys (the scheduler's task prefixes)
and the status page's progress panel shows each group's name cut by
``distributed.diagnostics.progress_stream.progress_quads``: names longer than 15 characters
become their first 12 and "...". During a 4-body GFN2-xTB run that left four rows reading
"frag gfn2_xt..." (the n-body order came last, and was cut). The tests below run the names
through Dask's own functions, so a change in how Dask cuts them fails here too.
"""

from __future__ import annotations

import pytest
from browser import chromium, evaluate_page
from conftest import EXAMPLES, ROOT
from dask.utils import key_split
from distributed.diagnostics.progress_stream import progress_quads
from doubles import register_doubles
from helpers import in_process_client

import mbdask
from mbdask import config
from mbdask.graph.build import FragmentResources, build_graph, group_name, unit_key
from mbdask.inputs.xyz import molecule_from_xyz
from mbdask.planning.batching import Unit
from mbdask.planning.plan import FragmentJob

#: Model chemistry labels as users write them: long, alike at the start.
MODELS = {"mp2": "mp2/aug-cc-pvtz", "b3lyp": "b3lyp-d3bj/aug-cc-pvtz", "hf": "hf/aug-cc-pvtz", "xtb": "gfn2-xtb"}


def multilevel_input(levels: dict) -> dict:
    """The water trimer through 3-body (or the supersystem) with one model chemistry per order, three BSSE treatments.

    The ``sleep`` test double stands in for the programs: only the graph is built here.
    """
    spec = {"program": "sleep", "model": {"method": "sleep"}, "keywords": {}}
    return {
        "specification": {
            "driver": "energy",
            "keywords": {"bsse_type": ["nocp", "cp", "vmfc"], "levels": levels, "return_total_data": True},
            "specification": {label: spec for label in set(levels.values())},
        },
        "molecule": molecule_from_xyz(EXAMPLES / "water3-uud.xyz"),
    }


def shown_names(names: set[str]) -> list[str]:
    """The labels the progress panel draws for these group names (Dask's own cut)."""
    counts = {name: 1 for name in names}
    states = ("memory", "erred", "released", "processing", "queued")
    return progress_quads({"all": counts, **{state: {} for state in states}}, nrows=len(names), ncols=1)["show-name"]


@pytest.mark.parametrize(
    "levels",
    [
        {1: MODELS["mp2"], 2: MODELS["b3lyp"], 3: MODELS["hf"]},
        {1: MODELS["mp2"], 2: MODELS["b3lyp"], "supersystem": MODELS["hf"]},
        {3: MODELS["xtb"]},
    ],
    ids=["multilevel-3-body", "multilevel-supersystem", "gfn2-xtb-3-body"],
)
def test_every_group_of_a_multilevel_graph_has_its_own_label_on_the_progress_panel(levels):
    plan = mbdask.plan(multilevel_input(levels), check_installed=False)
    graph = build_graph(plan, "t", resources=FragmentResources())
    keys = list(graph.graph.to_dict())
    # energy screening's cheap calculations are their own groups beside the expansion's
    cheap = [Unit((job,), 0.1) for job in plan.jobs[:: max(1, len(plan.jobs) // 5)]]
    keys += [unit_key(unit, i, "t", kind="cheap") for i, unit in enumerate(cheap)]
    groups = {key_split(key) for key in keys}
    assert {key[0] for key in keys if isinstance(key, tuple)} == groups  # key_split keeps the whole name
    shown = shown_names(groups)
    assert len(set(shown)) == len(groups), sorted(shown)
    # the n-body order comes first, so that it survives the cut
    for key, unit in graph.units.items():
        assert key_split(key).startswith(f"{unit.nbody}b "), key


def test_group_names_survive_dask_with_any_model_label():
    """Characters that key_split cuts at ('-', ',') or strips ("()'_") do not change the group name."""
    for model in ("ccsd(t)/cc-pvdz", "wb97x-d,def2-svp", "'quoted'", "b3lyp_"):
        key = unit_key(Unit((FragmentJob(model, (1, 2), (1, 2)),), 1.0), 0, "t")
        assert key_split(key) == key[0], key


#: JavaScript: the labels the status page's progress panel draws (its text glyph's column) and the group names
#: behind them.
PROGRESS_LABELS = """(() => {
  if (!window.Bokeh || !Bokeh.documents || !Bokeh.documents.length) return null;
  for (const doc of Bokeh.documents) {
    for (const model of doc.all_models) {
      if (model.type === 'ColumnDataSource' && model.data['show-name'] !== undefined) {
        return {shown: [...model.data['show-name']], names: [...model.data['name']]};
      }
    }
  }
  return null;
})()"""


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_status_page_progress_rows_read_differently_during_a_run(tmp_path):
    """A run held at its trimers (the sleep double's gate, not a timed sleep), its status page open in
    Chromium: each progress row's label, as the page draws it, is its own; the screenshot is kept
    beside the test's files. The model label is long, as users write them ("frag sleepy/..." thrice before)."""
    register_doubles()
    gate = tmp_path / "trimers may finish"
    spec = {"program": "sleep", "model": {"method": "sleep"}, "keywords": {"gate": {"3": str(gate)}}}
    inp = multilevel_input({3: "sleepy/aug-cc-pvtz"})
    inp["specification"]["keywords"]["bsse_type"] = ["nocp"]
    inp["specification"]["specification"] = {"sleepy/aug-cc-pvtz": spec}
    # the page is ready once the trimers' row is drawn: 1- and 2-body are done by then, the trimers held
    ready = (
        f"(() => {{ const v = {PROGRESS_LABELS}; "
        "return v !== null && v.names.some((n) => n.startsWith('3b frag')); })()"
    )
    with in_process_client(threads_per_worker=2, cores=None, dashboard_address="127.0.0.1:0") as client:
        sub = mbdask.start(inp, client, batch=False)
        try:
            labels, errors = evaluate_page(
                client.dashboard_link, PROGRESS_LABELS, ready, timeout=60, screenshot=tmp_path / "status.png"
            )
        finally:
            gate.touch()
        sub.result()
    assert errors == [] and labels is not None
    assert {"1b frag sleepy/aug_cc_pvtz", "2b frag sleepy/aug_cc_pvtz", "3b frag sleepy/aug_cc_pvtz"} <= set(
        labels["names"]
    )
    assert len(set(labels["shown"])) == len(labels["shown"]), labels["shown"]
    assert {"1b frag slee...", "2b frag slee...", "3b frag slee...", "3b incr nocp"} <= set(labels["shown"])
    assert (tmp_path / "status.png").stat().st_size > 10_000


def test_reports_doc_names_the_groups_and_when_the_dashboard_is_served_as_the_code_does():
    """docs/reports.md said the dashboard's address is always printed, with the old group names."""
    text = " ".join((ROOT / "docs" / "reports.md").read_text().split())
    for name in (
        group_name(2, "frag", "gfn2-xtb"),
        group_name(2, "cheap", "gfn2-xtb"),
        group_name(3, "incr", "nocp"),
        group_name(3, "level", "nocp"),
        group_name("supersystem", "incr", "cp"),
    ):
        assert f"`{name}`" in text, name
    seconds = config.packaged_default("mbdask.local-cluster.dashboard-min-seconds")
    assert f"predicted to take {seconds:g} s per core or more" in text

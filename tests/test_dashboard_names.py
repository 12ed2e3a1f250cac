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
from dask.utils import key_split
from distributed.diagnostics.progress_stream import progress_quads

import mbdask
from conftest import EXAMPLES
from mbdask.batching import Unit
from mbdask.graph import FragmentResources, build_graph, unit_key
from mbdask.plan import FragmentJob
from mbdask.xyz import molecule_from_xyz

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

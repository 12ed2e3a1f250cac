"""The compact plan (numpy increment blocks, labels made in bulk) agrees with the straightforward one.

Planning (H2O)64 at 4-body (679,120 calculations) must take seconds, so the plan keeps its
increments as blocks and the graph carries clusters instead of labels; these tests rebuild
everything the slow, obvious way on small cases and require identical answers.
"""

from __future__ import annotations

import importlib
import itertools
import math
import random
from itertools import groupby

import pytest
from helpers import replay_input
from qcmanybody.utils import labeler

import mbdask
from mbdask.graph.build import FragmentResources, build_graph, graph_size
from mbdask.planning.batching import BatchLimits, Unit, batch_target, make_units
from mbdask.planning.cost import CostModel
from mbdask.planning.manybody import supersystem_terms
from mbdask.planning.plan import FragmentJob, Increment

plan_module = importlib.import_module("mbdask.planning.plan")
BSSE = [("nocp",), ("cp",), ("vmfc",), ("cp", "nocp", "vmfc")]


def waters(n: int, nbody: int, bsse=("nocp",), fragments=None) -> dict:
    from conftest import DATA

    from mbdask.inputs.xyz import molecule_from_xyz

    molecule = molecule_from_xyz(DATA / {6: "water6-prism.xyz", 10: "water10-pp1.xyz"}[n])
    if fragments is not None:
        molecule["fragments"] = fragments
    return {
        "specification": {
            "driver": "energy",
            "keywords": {"bsse_type": list(bsse), "levels": {nbody: "hf"}},
            "specification": {"hf": {"program": "pyscf", "model": {"method": "hf", "basis": "sto-3g"}}},
        },
        "molecule": molecule,
    }


def _increments(core, jobs: list[FragmentJob], kept: dict[int, set] | None = None) -> list[Increment]:
    """The straightforward form of ``mbdask.planning.plan._increment_blocks``: one :class:`Increment` per
    cluster, built term by term, the reference the compact plan must agree with."""
    have = {(j.model, j.real, j.basis): j for j in jobs}
    nfr = core.nfragments
    full = tuple(range(1, nfr + 1))
    model_of = {nb: mc for mc, nbs in core.nbodies_per_mc_level.items() for nb in nbs if nb != "supersystem"}
    increments = []
    for bsse in (b.value for b in core.bsse_type):
        for nbody in range(1, core.max_nbody + 1):
            model = model_of[nbody]
            # sub-cluster positions and signs are the same for every cluster of this order
            shape = [
                (sub, (-1) ** (nbody - k))
                for k in range(1, nbody + 1)
                for sub in itertools.combinations(range(nbody), k)
            ]
            clusters = sorted(kept[nbody]) if kept is not None else itertools.combinations(range(1, nfr + 1), nbody)
            for cluster in clusters:
                try:
                    terms = []
                    for positions, sign in shape:
                        sub = tuple(cluster[p] for p in positions)
                        if bsse == "nocp" or (bsse == "cp" and nbody == 1):
                            basis = sub
                        elif bsse == "cp":
                            basis = full
                        else:
                            basis = cluster
                        terms.append((have[(model, sub, basis)], sign))
                except KeyError:  # some term not computed (e.g. supersystem_ie_only): no increment
                    continue
                increments.append(Increment(bsse, model, cluster, nbody, tuple(terms)))
    if core.has_supersystem:
        model = core.levels["supersystem"]
        merged = supersystem_terms(core)
        if all(key in have for key in merged):
            ss_terms = tuple((have[key], sign) for key, sign in merged.items() if sign)
            for bsse in (b.value for b in core.bsse_type):
                increments.append(Increment(bsse, model, full, "supersystem", ss_terms))
    return increments


def reference_jobs(core) -> list[FragmentJob]:
    """What the plan listed before it was compact: QCManyBody's compute map, sorted."""
    jobs = []
    for model, compute_dict in core.compute_map.items():
        found = set().union(*compute_dict["all"].values())
        for real, basis in sorted(found, key=lambda rb: (len(rb[0]), len(rb[1]), rb)):
            jobs.append(FragmentJob(model, tuple(real), tuple(basis)))
    return jobs


def assert_same_plan(plan, kept=None) -> None:
    jobs = reference_jobs(plan.core)
    increments = _increments(plan.core, jobs, kept)
    if kept is not None:
        increments = [inc for inc in increments if inc.bsse != "cp"]
        needed = {job for inc in increments for job, _ in inc.terms}
        jobs = [job for job in jobs if job in needed]
    assert plan.jobs == jobs
    assert [job.label for job in plan.jobs] == [labeler(job.model, job.real, job.basis) for job in jobs]
    assert plan.increments == increments
    for block in plan.blocks:  # the shape a block names is the shape of its terms
        if block.shape is not None:
            for cluster, row in zip(block.clusters.tolist(), block.terms.tolist()):
                assert [plan.jobs[i].real for i in row] == [
                    tuple(cluster[p] for p in positions) for positions in block.shape
                ]


@pytest.mark.parametrize("bsse", BSSE)
def test_compact_plan_is_the_straightforward_plan(bsse):
    assert_same_plan(mbdask.plan(waters(6, 4, bsse), check_installed=False))


@pytest.mark.parametrize("bsse", BSSE)
def test_every_lookup_path_gives_the_same_plan(bsse, monkeypatch):
    """Dense tables, sorted codes and plain dicts: the three ways JobIndex finds a term."""
    monkeypatch.setattr(plan_module, "DENSE_TABLE_ENTRIES", 0)
    monkeypatch.setattr(plan_module, "DENSE_TABLE_RATIO", 0)
    assert_same_plan(mbdask.plan(waters(6, 4, bsse), check_installed=False))
    monkeypatch.setattr(plan_module, "MAX_RANKED", 1)
    assert_same_plan(mbdask.plan(waters(6, 4, bsse), check_installed=False))


@pytest.mark.parametrize(
    "levels, data, bsse, keywords",
    [
        ({1: "e_scf", 2: "e_scf", 3: "e_scf"}, "h2o_trimer_single_energy_1", ("cp", "nocp", "vmfc"), {}),
        (
            {1: "e_mp2", 2: "e_b3lyp", "supersystem": "e_scf"},
            "h2o_trimer_multi_ss_energy_1",
            ("cp", "nocp", "vmfc"),
            {},
        ),
        ({1: "e_mp2", "supersystem": "e_scf"}, "h2o_trimer_multi_ss_energy_2", ("cp", "nocp", "vmfc"), {}),
        ({1: "e_scf", 2: "e_scf", 3: "e_scf"}, "h2o_trimer_single_energy_1", ("cp",), {"supersystem_ie_only": True}),
        ({1: "e_scf", 2: "e_scf", 3: "e_scf"}, "h2o_trimer_single_energy_1", ("nocp",), {"supersystem_ie_only": True}),
    ],
)
def test_compact_plan_of_several_levels_and_supersystems(levels, data, bsse, keywords):
    assert_same_plan(mbdask.plan(replay_input(levels, data, bsse=bsse, **keywords), check_installed=False))


@pytest.mark.parametrize("bsse", [("nocp",), ("vmfc",), ("nocp", "vmfc")])
def test_compact_screened_plan(bsse):
    plan = mbdask.plan(waters(10, 3, bsse), check_installed=False, screening={"distance_cutoffs": {2: 5.0, 3: 4.0}})
    assert 0 < len(plan.increments) < 2 * (10 + 45 + 120)
    assert_same_plan(plan, plan.screened.kept)


def test_seconds_all_is_seconds_per_job():
    # fragments of different sizes, and a calibration per kind
    inp = waters(
        6, 3, ("cp", "nocp", "vmfc"), fragments=[[0, 1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12, 13, 14], [15, 16, 17]]
    )
    plan = mbdask.plan(inp, check_installed=False)
    for calibrate in (False, True):
        cost = CostModel.for_plan(plan)
        if calibrate:
            cost.calibrate((job, 0.01 * (i % 7 + 1)) for i, job in enumerate(plan.jobs[::3]))
        assert cost.seconds_all(plan.jobs) == [cost.seconds(job) for job in plan.jobs]
    plan = mbdask.plan(waters(6, 3, ("nocp", "vmfc")), check_installed=False)  # all fragments alike
    cost = CostModel.for_plan(plan)
    assert cost.seconds_all(plan.jobs) == [cost.seconds(job) for job in plan.jobs]


def reference_units(jobs, cost, *, workers, batch=True, cores=1, auto_cores=False, max_cores=1) -> list[Unit]:
    """make_units as it was written before it was tuned (one dict lookup and batch_target per job)."""
    seconds = {job: cost.seconds(job) for job in jobs}
    share = math.fsum(seconds.values()) / max(1, workers * max(cores, 1))
    units = []
    for _, group in groupby(jobs, key=lambda j: (j.model, j.nbody)):
        group = list(group)
        total = unbatched = math.fsum(seconds[j] for j in group)
        single = batch_target(total, workers) if batch else 0.0
        pending, pending_seconds = [], 0.0
        for job in group:
            t = seconds[job]
            if not batch or t >= single:
                n = cores
                if auto_cores and t > share:
                    n = max(cores, min(max_cores, math.ceil(t / share)))
                units.append(Unit((job,), t / n, n, (t / n,)))
                unbatched -= t
                continue
            pending.append(job)
            pending_seconds += t
            if pending_seconds >= batch_target(total, workers, unbatched):
                units.append(Unit(tuple(pending), pending_seconds, cores, tuple(seconds[j] for j in pending)))
                unbatched -= pending_seconds
                pending, pending_seconds = [], 0.0
        if pending:
            units.append(Unit(tuple(pending), pending_seconds, cores, tuple(seconds[j] for j in pending)))
    return units


@pytest.mark.parametrize(
    "workers, batch, auto_cores",
    [(1, True, False), (2, True, False), (16, True, False), (2, False, False), (2, True, True)],
)
def test_make_units_is_the_straightforward_batching(workers, batch, auto_cores):
    plan = mbdask.plan(waters(10, 3, ("nocp", "vmfc")), check_installed=False)
    cost = CostModel.for_plan(plan)
    cost.models["hf"].overhead = (
        BatchLimits.from_config().min_seconds / 7
    )  # batches of several calculations, some single
    options = dict(workers=workers, batch=batch, cores=1, auto_cores=auto_cores, max_cores=4)
    assert make_units(plan.jobs, cost, **options) == reference_units(plan.jobs, cost, **options)


@pytest.mark.parametrize("bsse", BSSE)
@pytest.mark.parametrize("batched", [False, True])
def test_graph_increment_nodes_sum_exactly_their_increments_terms(bsse, batched):
    """The graph ships clusters, not labels: its increment and level tasks, run on made-up
    energies, give bit for bit the signed sums of the increments' explicit terms."""
    plan = mbdask.plan(waters(6, 4, bsse), check_installed=False)
    units = None
    if batched:
        cost = CostModel.for_plan(plan)
        cost.models["hf"].overhead = BatchLimits.from_config().min_seconds / 5
        units = make_units(plan.jobs, cost, workers=2)
        assert any(len(u.jobs) > 1 for u in units)
    graph = build_graph(plan, "t", resources=FragmentResources(), units=units, increment_tasks=3 if batched else None)
    rng = random.Random(7)
    outputs = {job.label: {"values": {"energy": rng.uniform(-80.0, -70.0)}} for job in plan.jobs}
    per_unit = {key: {j.label: outputs[j.label] for j in unit.jobs} for key, unit in graph.units.items()}
    layer = graph.graph.layers["increments"]
    energies = {}
    for key, incs in graph.increments.items():
        func, *args = layer[key]
        args = [per_unit.get(a, a) if isinstance(a, tuple) and a in per_unit else a for a in args]
        energies[key] = func(*args)
        expected = [
            float(sum(sign * outputs[job.label]["values"]["energy"] for job, sign in inc.terms)) for inc in incs
        ]
        assert energies[key] == expected
    assert sum(len(incs) for incs in graph.increments.values()) == len(plan.increments)
    levels = graph.graph.layers["levels"]
    for (bsse_, nbody), key in graph.levels.items():
        func, b, nb, model, clusters, previous, *members = levels[key]
        level = func(b, nb, model, clusters, None, *(energies[m] for m in members))
        incs = [inc for m in members for inc in graph.increments[m]]
        assert level["increments"] == [
            {"fragments": list(inc.cluster), "energy": e}
            for inc, e in zip(incs, (x for m in members for x in energies[m]))
        ]
        assert {inc.bsse for inc in incs} == {bsse_} and {inc.nbody for inc in incs} == {nbody}


def test_graph_of_units_with_copies_of_the_plans_jobs():
    """Units may hold equal jobs that are not the plan's own objects (a store, a caller's units)."""
    plan = mbdask.plan(waters(6, 3), check_installed=False)
    units = [Unit((FragmentJob(j.model, j.real, j.basis),), 0.1) for j in reversed(plan.jobs)]
    graph = build_graph(plan, "t", resources=FragmentResources(), units=units)
    for key, (inc,) in graph.increments.items():
        deps = graph.dependencies(key)
        assert {job for d in deps for job in graph.units[d].jobs} == {job for job, _ in inc.terms}


def test_increments_of_a_large_plan_are_made_only_when_asked_for():
    plan = mbdask.plan(waters(10, 4), check_installed=False)
    assert "increments" not in plan.__dict__
    assert graph_size(plan)["increments"] == sum(math.comb(10, k) for k in range(1, 5))
    assert "increments" not in plan.__dict__
    assert len(plan.increments) == graph_size(plan)["increments"]
    assert all(len(inc.terms) == 2 ** len(inc.cluster) - 1 for inc in itertools.islice(plan.increments, 0, None, 37))

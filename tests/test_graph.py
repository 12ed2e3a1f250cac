"""The graph's shape: increments depend on exactly their subsystems; levels stream early."""

from __future__ import annotations

import itertools

import pytest
from helpers import in_process_client, replay_input, sleep_input

import mbdask
from mbdask.graph.build import FragmentResources, build_graph, fragment_key, graph_size


@pytest.mark.parametrize("bsse", ["nocp", "cp", "vmfc"])
def test_increment_depends_on_exactly_its_subsystems(bsse):
    plan = mbdask.plan(
        replay_input({1: "e_scf", 2: "e_scf", 3: "e_scf"}, "h2o_trimer_single_energy_1", bsse=(bsse,)),
        check_installed=False,
    )
    graph = build_graph(plan, "t", resources=FragmentResources())
    full = (1, 2, 3)
    checked = 0
    for key, (inc,) in graph.increments.items():
        if inc.bsse != bsse:
            continue
        cluster = inc.cluster
        expected = set()
        for k in range(1, len(cluster) + 1):
            for sub in itertools.combinations(cluster, k):
                basis = {"nocp": sub, "cp": sub if len(cluster) == 1 else full, "vmfc": cluster}[bsse]
                expected.add(("e_scf", sub, basis))
        deps = graph.dependencies(key)
        assert {(j.model, j.real, j.basis) for d in deps for j in graph.units[d].jobs} == expected
        assert all(len(graph.units[d].jobs) == 1 for d in deps)
        checked += 1
    assert checked == 7


def test_keys_are_readable_and_group_by_model_and_order():
    from dask.utils import key_split

    plan = mbdask.plan(sleep_input(), check_installed=False)
    graph = build_graph(plan, "t", resources=FragmentResources())
    prefixes = {key_split(k) for k in graph.units}
    assert prefixes == {"1b frag sleepy", "2b frag sleepy", "3b frag sleepy"}
    job = plan.jobs[-1]
    assert fragment_key(job, "t")[2] == "(4,5,6)@(4,5,6)"


def test_fragment_nodes_carry_resource_and_priority_annotations():
    plan = mbdask.plan(sleep_input(), check_installed=False)
    graph = build_graph(
        plan, "t", resources=FragmentResources(cores=2, memory_gib=1.5, annotate_memory=True), retries=3
    )
    layer = graph.graph.layers["fragments"]
    assert layer.annotations["resources"] == {"cores": 2, "memory": 1.5 * 2**30}
    assert layer.annotations["retries"] == 3
    trimer = next(k for k, u in graph.units.items() if u.nbody == 3)
    monomer = next(k for k, u in graph.units.items() if u.nbody == 1)
    assert layer.annotations["priority"](trimer) < layer.annotations["priority"](monomer)  # levels first
    by_cost = build_graph(plan, "t", resources=FragmentResources(), order="cost").graph.layers["fragments"]
    assert by_cost.annotations["priority"](trimer) > by_cost.annotations["priority"](monomer)


@pytest.fixture
def one_core_two_threads():
    """One worker declaring 1 core with 2 threads: fragments reserve the core and run one at a
    time, and the other thread stays free for increments and levels."""
    with in_process_client(threads_per_worker=2) as client:
        yield client


def test_two_body_level_resolves_before_trimers_finish(one_core_two_threads, tmp_path):
    # trimers wait at a gate that opens only after the 2-body level has resolved: if that level
    # waited for any trimer, it would never resolve (the timeout is for that failure only)
    gate = tmp_path / "trimers may finish"
    inp = sleep_input()
    inp["specification"]["specification"]["sleepy"]["keywords"]["gate"] = {"3": str(gate)}
    sub = mbdask.start(inp, one_core_two_threads)
    try:
        level2 = sub.levels[("nocp", 2)].result(timeout=120)
        assert not sub.future.done()  # the expansion is still running: its trimers are held at the gate
    finally:
        gate.touch()
    result = sub.result(timeout=120)
    assert level2["nbody"] == 2 and len(level2["increments"]) == 15
    assert abs(level2["through"] - result.properties.nocp_corrected_total_energy_through_2_body) < 1e-10
    streamed = list(sub.as_completed_levels())
    assert {(lv["bsse"], lv["nbody"]) for lv in streamed} == {("nocp", 1), ("nocp", 2), ("nocp", 3)}


def test_submission_result_is_the_computed_result(inprocess_client):
    """``start(...).result()`` waits like ``Future.result`` and gives what ``compute`` gives."""
    from qcmanybody.models.v2 import ManyBodyResult

    computed = mbdask.compute(sleep_input(), inprocess_client)
    sub = mbdask.start(sleep_input(), inprocess_client)
    result = sub.result(timeout=120)
    assert isinstance(result, ManyBodyResult)
    assert result.properties == computed.properties
    assert result.return_result == computed.return_result
    assert sub.future.result() == result  # the Dask future of the same result


def test_fragment_failure_names_the_fragment(inprocess_client):
    inp = sleep_input(seconds={"1": "not a number"})
    with pytest.raises(mbdask.FragmentFailedError, match=r"sleep failed on model 'sleepy', fragments \[\d\]"):
        mbdask.compute(inp, inprocess_client)


def test_program_gets_the_cores_and_memory_the_task_reserved(inprocess_client):
    inp = sleep_input()
    inp["specification"]["protocols"] = {"cluster_results": "all"}
    result = mbdask.compute(inp, inprocess_client, memory_per_fragment=0.75)
    configs = {(r.extras["ncores"], r.extras["memory"]) for r in result.cluster_results.values()}
    assert configs == {(1, 0.75)}


def test_fragment_larger_than_any_worker_is_refused_before_submission(inprocess_client):
    with pytest.raises(mbdask.BadInputError, match="asks for 4 cores but no worker has more than 1"):
        mbdask.start(sleep_input(), inprocess_client, cores_per_fragment=4)


@pytest.mark.parametrize("bsse", [("nocp",), ("cp", "nocp", "vmfc")])
def test_plan_reports_the_size_of_the_graph_it_builds(bsse):
    plan = mbdask.plan(
        replay_input({1: "e_scf", 2: "e_scf", 3: "e_scf"}, "h2o_trimer_single_energy_1", bsse=bsse),
        check_installed=False,
    )
    deps = build_graph(plan, "t", resources=FragmentResources()).graph.get_all_dependencies()
    assert graph_size(plan)["nodes"] == len(deps)
    assert graph_size(plan)["edges"] == sum(len(d) for d in deps.values())


def test_cheap_fragments_are_batched_and_increments_follow_their_units():
    from mbdask.planning.batching import make_units
    from mbdask.planning.cost import CostModel

    plan = mbdask.plan(sleep_input("water10-pp1.xyz"), check_installed=False)
    units = make_units(plan.jobs, CostModel.for_plan(plan), workers=2)
    graph = build_graph(plan, "t", resources=FragmentResources(), units=units)
    assert len(graph.units) < len(plan.jobs) / 4  # 175 calculations of ~20 ms in a few dozen tasks
    assert sorted(j.label for u in graph.units.values() for j in u.jobs) == sorted(j.label for j in plan.jobs)
    for key, incs in graph.increments.items():
        needed = {job for inc in incs for job, _ in inc.terms}
        deps = graph.dependencies(key)
        assert needed <= {j for d in deps for j in graph.units[d].jobs}
        assert all(needed & set(graph.units[d].jobs) for d in deps)  # no unit it does not need


def test_batches_shrink_at_the_end_of_each_order():
    """Guided self-scheduling: an order's last batches are its smallest, so workers finish together."""
    from mbdask.planning.batching import BatchLimits, make_units
    from mbdask.planning.cost import CostModel

    plan = mbdask.plan(sleep_input("water10-pp1.xyz"), check_installed=False)
    units = [u for u in make_units(plan.jobs, CostModel.for_plan(plan), workers=2) if u.nbody == 3]
    sizes = [u.seconds for u in units]
    assert sizes[0] == max(sizes) and sizes[-2] < sizes[0] / 2
    assert sizes[-2] < 2 * BatchLimits.from_config().min_seconds  # the last full batch is about the smallest allowed
    assert sorted(j.label for u in units for j in u.jobs) == sorted(j.label for j in plan.jobs if j.nbody == 3)


def test_result_node_fetches_collect_nodes_not_every_unit():
    from mbdask import config
    from mbdask.planning.batching import make_units
    from mbdask.planning.cost import CostModel

    MIN_COLLECT_UNITS = config.get("mbdask.graph.min-collect-units")

    plan = mbdask.plan(sleep_input("water10-pp1.xyz"), check_installed=False)
    graph = build_graph(
        plan,
        "t",
        resources=FragmentResources(),
        units=make_units(plan.jobs, CostModel.for_plan(plan), workers=1, batch=False),
    )
    collects = [key for key in graph.dependencies(graph.result) if key[0] == "mbdask collect"]
    assert len(collects) == -(-len(plan.jobs) // MIN_COLLECT_UNITS)
    assert not set(graph.units) & graph.dependencies(graph.result)
    covered = [unit for key in collects for unit in graph.dependencies(key)]
    assert sorted(map(str, covered)) == sorted(map(str, graph.units))  # every unit in exactly one collect node


def test_batched_run_gives_the_same_result(inprocess_client):
    inp = sleep_input("water10-pp1.xyz")
    batched = mbdask.compute(inp, inprocess_client)
    single = mbdask.compute(inp, inprocess_client, batch=False)
    assert batched.properties.return_energy == single.properties.return_energy
    assert batched.extras["mbdask"]["levels"] == single.extras["mbdask"]["levels"]


def test_no_fragment_task_depends_on_one_workers_context(inprocess_client):
    """The context every fragment task takes is never data on one worker, which draws the short
    fragment tasks to it once Dask has learned their durations. Here (workers mbdask did not fork)
    the scheduler keeps it and each worker fetches it once, so that it survives every worker
    leaving (a batch system's jobs; test_scheduler_waits.py), which scattered data does not. It is
    withdrawn from the scheduler when the run ends. (On workers mbdask forked it is scattered to all
    of them: test_forked_workers.py.)"""
    from distributed import Variable

    from mbdask.calculation.execute import SharedContext

    sub = mbdask.start(sleep_input(), inprocess_client)
    assert sub.result().properties.return_energy is not None
    assert not any("context" in str(key) for key in dict(sub.graph.graph))
    assert isinstance(sub.graph.context_ref, SharedContext)
    with pytest.raises(TimeoutError):  # withdrawn
        Variable(sub.graph.context_ref.name, client=inprocess_client).get(timeout=0.2)


def test_auto_cores_run_gives_the_long_fragment_more_cores_and_the_same_energy():
    """``cores_per_fragment="auto"`` on a worker declaring 4 cores: the trimer, predicted to take longer than
    its share of the run, runs with 2 cores (as the program itself sees them), the rest with 1, and the
    energy is that of a run with 1 core each (the ``sleep`` double; the basis only prices the fragments)."""
    inp = sleep_input("water3-uud.xyz")
    inp["specification"]["protocols"] = {"cluster_results": "all"}
    inp["specification"]["specification"]["sleepy"]["model"] = {"method": "hf", "basis": "cc-pvdz"}
    with in_process_client(threads_per_worker=4, cores=4) as client:
        auto = mbdask.compute(inp, client, cores_per_fragment="auto")
        single = mbdask.compute(inp, client, cores_per_fragment=1)
    seen = {tuple(f["real"]): f["ncores"] for f in auto.extras["mbdask"]["timing"]["fragments"]}
    assert seen == {(1,): 1, (2,): 1, (3,): 1, (1, 2): 1, (1, 3): 1, (2, 3): 1, (1, 2, 3): 2}
    in_program = {label: r.extras["ncores"] for label, r in auto.cluster_results.items()}
    assert in_program['["sleepy", [1, 2, 3], [1, 2, 3]]'] == 2 and sorted(in_program.values()) == [1] * 6 + [2]
    assert auto.properties.return_energy == single.properties.return_energy


def test_levels_priority_runs_lower_orders_first_also_where_the_longest_unit_is_unknown():
    """Energy screening's pass prices its units without knowing the longest (it sends them as it decides them):
    with their seconds as priority, its 0.04 s monomers ran after every 3 s trimer, and the 1-body level came last."""
    from mbdask.graph.build import TAKING_PRIORITY, _priorities, levels_priority
    from mbdask.planning.batching import Unit
    from mbdask.planning.plan import FragmentJob

    monomer = Unit((FragmentJob("hf", (1,), (1,)),), 0.04)
    trimers = [Unit((FragmentJob("hf", (1, 2, n), (1, 2, n)),), s) for n, s in ((3, 3.0), (4, 30.0))]
    assert levels_priority(monomer, 3) > levels_priority(trimers[1], 3) > levels_priority(trimers[0], 3)
    assert levels_priority(trimers[1], 3) < 1.0 and levels_priority(trimers[1], 3, top=30.0) == 1.0
    # a unit that computes nothing (its outputs come from the store) runs first, whatever its order
    stored = Unit((FragmentJob("hf", (2, 3, 4), (2, 3, 4)),), 0.0)
    found = _priorities(
        {"m": monomer, "t": trimers[0], "s": stored}, "levels", known={stored.jobs[0].label: {"stored": True}}
    )
    assert found["s"] == TAKING_PRIORITY and found["m"] > found["t"]

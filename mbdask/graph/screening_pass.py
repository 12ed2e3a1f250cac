"""Energy screening's pass on the cluster: cheap calculations first, expensive ones as soon as they are kept.

The pass sends units as :class:`mbdask.planning.energy_screening.Decisions` releases them, through
the same path as every other unit (:func:`mbdask.graph.build.unit_graph`), and takes the cheap
energies in as their units finish, cheapest decisions first (cheap units run ahead of any
expensive one). Once every candidate is decided it returns the plan restricted to the
kept clusters and the futures of the expensive units already sent: the expansion's graph
takes its outputs from those futures (:attr:`mbdask.planning.batching.Unit.sources`), so the
expensive calculations never come back to this process and the graph goes out while they
still run.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from dask.highlevelgraph import HighLevelGraph
from distributed import Client, Future, as_completed

from mbdask.calculation.execute import ExpansionContext
from mbdask.calculation.store import FragmentStore, StoreWriter
from mbdask.graph.build import FragmentResources, levels_priority, unit_graph
from mbdask.planning.batching import Unit, make_units
from mbdask.planning.cost import CostModel
from mbdask.planning.energy_screening import CHEAP_LABEL, Cluster, Decisions, cheap_input
from mbdask.planning.plan import FragmentJob, Plan, make_plan
from mbdask.planning.screening import Screening
from mbdask.upstream import parse_label

#: Dask priority of cheap screening units: ahead of any expensive fragment, since decisions unlock work.
CHEAP_PRIORITY = 1e12


@dataclass
class ScreenedPlan:
    """What :func:`screen` leaves for the expansion's graph."""

    #: the plan restricted to the kept clusters, with the energy-screening report
    plan: Plan
    #: expensive outputs the store already had, by label (marked ``stored``)
    found: dict[str, dict]
    #: the expensive calculations sent: label -> the future of the unit computing it
    running: dict[str, Future]


def screen(
    plan: Plan,
    settings: Screening,
    client: Client,
    *,
    workers: int,
    resources: FragmentResources,
    store: FragmentStore | None = None,
    writer: StoreWriter | None = None,
    retries: int = 0,
) -> ScreenedPlan:
    """Screen ``plan``'s clusters with the cheap model and send the kept ones' calculations as they are decided.

    ``plan`` is the expansion screened by distance only (its increments are the possible
    clusters). ``workers`` (single-core slots) sizes the batches; ``resources`` is what each
    expensive unit gets. Returns once every candidate is decided, not when the expensive
    calculations finish.

    With a ``store``, cheap and expensive calculations found there are not sent, and
    ``writer`` (the caller's; the caller closes it) writes each new output into it as its
    unit finishes, in this process (workers never open the store).
    """
    started = time.perf_counter()
    cheap_plan = make_plan(cheap_input(plan, settings.cheap_model, 1), check_installed=False)
    cheap_ctx = ExpansionContext(cheap_plan.input, cheap_plan.specifications, False)
    keep_results = plan.input.specification.protocols.cluster_results.value == "all"
    ctx = ExpansionContext(plan.input, plan.specifications, keep_results)
    cheap_cost, cost = CostModel.for_plan(cheap_plan), CostModel.for_plan(plan)
    # per cluster, where its increments' terms are: (block, row) of the plan's blocks (read only for kept clusters)
    by_cluster: dict[Cluster, list[tuple[int, int]]] = {}
    for b, block in enumerate(plan.blocks):
        for row, cluster in enumerate(map(tuple, block.clusters.tolist())):
            by_cluster.setdefault(cluster, []).append((b, row))
    decisions = Decisions.for_plan(plan, settings)
    max_nbody = plan.core.max_nbody  # the expensive units' priorities: lower orders first, as the graph's
    token = uuid.uuid4().hex[:8]
    cheap_ctx_f, ctx_f = client.scatter([cheap_ctx, ctx], broadcast=True, hash=False)
    cheap_resources = FragmentResources(annotate_cores=False)  # a thread slot each, like any single-core fragment
    cheap_units = as_completed(loop=client.loop)
    cheap_jobs: dict[Future, tuple[FragmentJob, ...]] = {}
    running: dict[str, Future] = {}
    found: dict[str, dict] = {}
    sent = 0  # units sent so far: their number keeps batch keys distinct
    if store is not None and writer is None:
        raise ValueError("a store needs a writer")

    def send(cheap: list[Unit], costly: list[Unit]) -> tuple[list[Future], list[Future]]:
        """Both kinds of unit in one graph, one round trip to the scheduler."""
        nonlocal sent
        graphs, keys = [], []
        for units, context, res, kind, priority in (
            (cheap, cheap_ctx_f, cheap_resources, "cheap", lambda unit: CHEAP_PRIORITY),
            (costly, ctx_f, resources, "frag", lambda unit: levels_priority(unit, max_nbody)),
        ):
            graph, unit_keys = unit_graph(
                units, token, context, res, priority, retries=retries, kind=kind, first_index=sent
            )
            graphs.append(graph)
            keys += unit_keys
            sent += len(units)
        futures = client.get(HighLevelGraph.merge(*graphs), keys, sync=False) if keys else []
        return futures[: len(cheap)], futures[len(cheap) :]

    def flush() -> None:
        # energies the store had are taken in at once, and may open more work: until there is none
        while True:
            cheap, kept = decisions.take_work()
            if not cheap and not kept:
                return
            jobs = [FragmentJob(CHEAP_LABEL, c, c) for c in sorted(cheap, key=lambda c: (len(c), c))]
            stored = store.find(jobs, cheap_ctx.store_key) if store is not None else {}
            cheap_units_now = make_units([job for job in jobs if job.label not in stored], cheap_cost, workers=workers)
            new = [
                plan.jobs[i]
                for cluster in kept
                for b, row in by_cluster.get(cluster, ())
                for i in plan.blocks[b].terms[row].tolist()
            ]
            new = [job for job in new if job.label not in running and job.label not in found]
            new = sorted(dict.fromkeys(new), key=lambda j: (j.model, j.nbody, j.real, j.basis))
            found.update(store.find(new, ctx.store_key) if store is not None else {})
            units = make_units(
                [job for job in new if job.label not in found], cost, workers=workers, cores=resources.cores
            )
            cheap_futures, futures = send(cheap_units_now, units)
            if writer is not None:
                cheap_jobs.update(zip(cheap_futures, (unit.jobs for unit in cheap_units_now)))
            cheap_units.update(cheap_futures)
            for future, unit in zip(futures, units):
                running.update((job.label, future) for job in unit.jobs)
                if writer is not None:
                    writer.track(
                        Future(future.key, client), unit.jobs, ctx.store_key
                    )  # its own reference, released once written
            take_in(stored)

    cheap_seconds = 0.0  # the cheap calculations' own seconds (single-core), for the run's zero-overhead bound

    def take_in(outputs: dict[str, dict]) -> None:
        """Cheap energies, by label, into the decisions."""
        nonlocal cheap_seconds
        for label, output in outputs.items():
            decisions.cheap_energy(tuple(parse_label(label)[1]), output["values"]["energy"])
            if "stop" in output and not output.get("stored"):
                cheap_seconds += output["stop"] - output["start"]

    decisions.start()
    flush()
    for future in cheap_units:  # ends once no cheap unit is left, including those flush() adds meanwhile
        outputs = future.result()
        if writer is not None:
            writer.add(outputs, cheap_jobs.pop(future), cheap_ctx.store_key)
        take_in(outputs)
        future.release()
        flush()
    if decisions.waiting:  # cannot happen with a closed kept set; guard against a silent wrong answer
        raise RuntimeError(f"energy screening left {len(decisions.waiting)} clusters undecided")
    report = decisions.report(settings.cheap_model)
    report["screening_seconds"] = time.perf_counter() - started
    report["cheap_seconds"] = cheap_seconds
    expensive = {future.key: future for future in running.values()}.values()  # one per unit sent
    report["expensive_units_done_when_decided"] = f"{sum(f.status == 'finished' for f in expensive)}/{len(expensive)}"
    final = make_plan(plan.input, check_installed=False, screening=decisions.screening(settings, report))
    return ScreenedPlan(final, found, running)

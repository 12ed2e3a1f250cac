"""Energy screening: a cheap model decides which clusters the expensive model computes.

A k-cluster is a *candidate* once all of its (k-1)-sub-clusters are kept (and it passes
the distance cutoff of its order, if any). The cheap model's k-body increment of a
candidate decides: kept if its magnitude exceeds the order's threshold (kcal/mol).
Orders without a threshold keep every candidate. The kept set is closed under subsets,
so the expensive expansion over it is exact for what it keeps (:mod:`mbdask.screening`);
the dropped clusters' cheap increments are reported, and their sum added to the
screened energy gives the "fill-in" total.

Screening and computing overlap, with no barrier between orders: each decision is taken
as soon as the cheap energies it needs are in, and then at once

* the kept cluster's expensive calculations are submitted to the cluster, and
* every higher cluster whose sub-clusters are now all kept becomes a candidate, and its
  cheap calculation is submitted.

So a tetramer's cheap calculation depends only on the decisions about its four trimers
(not on a whole 3-body pass), and expensive trimers run while other trimers are still
being screened. The client drives this as Dask futures complete (cheap units first, by
priority); the expensive outputs then feed the usual graph, which assembles the result
from the kept clusters.
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from distributed import Client, Future, as_completed
from qcelemental import constants
from qcmanybody.utils import delabeler

from .batching import make_units
from .cost import CostModel
from .assemble import merge_units
from .execute import ExpansionContext, run_unit
from .graph import dashboard_name
from .plan import FragmentJob, Increment, Plan, make_plan
from .manybody import nocp_increment
from .screening import Screening, fragment_distances, subclusters_kept, within_cutoff
from .store import FragmentStore, StoreWriter

CHEAP_LABEL = "screening"
#: Dask priority of cheap screening units: ahead of any expensive fragment, since decisions unlock work.
CHEAP_PRIORITY = 1e12

Cluster = tuple[int, ...]


def _cheap_input(plan: Plan, cheap_model: dict, nbody: int) -> dict:
    """The cheap model's nocp energy expansion of the same molecule through ``nbody``."""
    return {
        "specification": {
            "driver": "energy",
            "keywords": {"bsse_type": ["nocp"], "levels": {nbody: CHEAP_LABEL}},
            "specification": {CHEAP_LABEL: dict(cheap_model)},
        },
        "molecule": plan.input.molecule,
    }


@dataclass
class _Decisions:
    """Bottom-up screening state: what is kept, what waits for cheap energies, what was dropped."""

    nfragments: int
    max_nbody: int
    thresholds: dict[int, float]
    cutoffs: dict[int, float]
    distances: Any
    kept: dict[int, set[Cluster]] = field(default_factory=dict)
    energies: dict[Cluster, float] = field(default_factory=dict)
    considered: set[Cluster] = field(default_factory=set)
    #: candidates whose own cheap energy is in but which wait for a sub-cluster's: missing -> waiting
    waiting: dict[Cluster, list[Cluster]] = field(default_factory=dict)
    orders: dict[int, dict] = field(default_factory=dict)
    #: work the last steps produced, for the driver to submit
    new_cheap: list[Cluster] = field(default_factory=list)
    new_kept: list[Cluster] = field(default_factory=list)

    @property
    def top(self) -> int:
        """Highest order whose decisions need cheap energies (0: none)."""
        return max(self.thresholds, default=0)

    def start(self) -> None:
        for i in range(1, self.nfragments + 1):
            self._keep((i,))

    def _keep(self, cluster: Cluster) -> None:
        self.kept.setdefault(len(cluster), set()).add(cluster)
        self.new_kept.append(cluster)
        if len(cluster) <= self.top and len(cluster) not in self.thresholds:
            self.new_cheap.append(cluster)  # no decision here, but higher orders need its cheap energy
        if len(cluster) < self.max_nbody:
            self._grow(cluster)

    def _grow(self, cluster: Cluster) -> None:
        """Candidates of the next order that ``cluster``, just kept, completes."""
        order = len(cluster) + 1
        below = self.kept[len(cluster)]
        for j in range(1, self.nfragments + 1):
            if j in cluster:
                continue
            grown = tuple(sorted(cluster + (j,)))
            if grown in self.considered or not subclusters_kept(grown, below):
                continue
            self.considered.add(grown)
            if not within_cutoff(grown, self.distances, self.cutoffs.get(order)):
                continue
            row = self.orders.setdefault(order, {"candidates": 0, "kept": 0, "dropped": []})
            row["candidates"] += 1
            if order in self.thresholds:
                self.new_cheap.append(grown)
            else:
                row["kept"] += 1
                self._keep(grown)

    def cheap_energy(self, cluster: Cluster, energy: float) -> None:
        """Take a cheap energy in; decide the clusters that were waiting only for it."""
        self.energies[cluster] = energy
        ready = self.waiting.pop(cluster, [])
        if len(cluster) in self.thresholds and cluster not in self.kept.get(len(cluster), ()):
            ready.append(cluster)
        for candidate in ready:
            self._decide(candidate)

    def _decide(self, cluster: Cluster) -> None:
        missing = next((sub for k in range(1, len(cluster)) for sub in itertools.combinations(cluster, k) if sub not in self.energies), None)
        if missing is not None:
            self.waiting.setdefault(missing, []).append(cluster)
            return
        increment = nocp_increment(cluster, self.energies)
        row = self.orders[len(cluster)]
        if abs(increment) * constants.hartree2kcalmol > self.thresholds[len(cluster)]:
            row["kept"] += 1
            self._keep(cluster)
        else:
            row["dropped"].append(increment)

    def take_work(self) -> tuple[list[Cluster], list[Cluster]]:
        cheap, kept = self.new_cheap, self.new_kept
        self.new_cheap, self.new_kept = [], []
        return cheap, kept

    def report(self, cheap_model: dict) -> dict:
        orders = {
            str(n): {"threshold_kcal": self.thresholds.get(n), "candidates": row["candidates"], "kept": row["kept"],
                     "dropped_cheap_sum": math.fsum(row["dropped"])}
            for n, row in sorted(self.orders.items())
            if n in self.thresholds
        }
        return {"cheap_model": cheap_model, "orders": orders, "fill_in": math.fsum(row["dropped_cheap_sum"] for row in orders.values())}


@dataclass
class ScreenedRun:
    """What :func:`screen_and_compute` leaves for the graph: the final plan and the expensive outputs."""

    plan: Plan
    outputs: dict[str, dict]


def screen_and_compute(
    plan: Plan,
    settings: Screening,
    client: Client,
    *,
    workers: int,
    cores: int = 1,
    memory_gib: Optional[float] = None,
    annotation: Optional[dict] = None,
    store: Optional[FragmentStore] = None,
    retries: int = 0,
) -> ScreenedRun:
    """Screen ``plan``'s clusters with the cheap model and compute the kept ones as they are decided.

    ``plan`` is the expansion screened by distance only (its increments are the possible
    clusters). Returns the plan restricted to the kept clusters, with the energy-screening
    report, and the outputs of its expensive calculations, by label, for the graph to
    assemble. ``workers`` (single-core slots) sizes the batches; ``cores``,
    ``memory_gib`` and ``annotation`` (Dask resources) are what each expensive unit gets.

    With a ``store``, cheap and expensive calculations found there are not submitted (found
    expensive outputs are returned marked ``stored``), and this process writes each new
    output into it as its unit finishes (workers never open the store).
    """
    started = time.perf_counter()
    cheap_plan = make_plan(_cheap_input(plan, settings.cheap_model, 1), check_installed=False)
    cheap_ctx = ExpansionContext(cheap_plan.input, cheap_plan.specifications, False)
    keep_results = plan.input.specification.protocols.cluster_results.value == "all"
    ctx = ExpansionContext(plan.input, plan.specifications, keep_results)
    cheap_cost, cost = CostModel.for_plan(cheap_plan), CostModel.for_plan(plan)
    by_cluster: dict[Cluster, list[Increment]] = {}
    for inc in plan.increments:
        by_cluster.setdefault(inc.cluster, []).append(inc)
    decisions = _Decisions(
        plan.nfragments, plan.core.max_nbody, dict(settings.energy_thresholds), dict(settings.distance_cutoffs),
        fragment_distances(plan.input.molecule),
    )
    token = uuid.uuid4().hex[:8]
    cheap_ctx_f, ctx_f = client.scatter([cheap_ctx, ctx], broadcast=True, hash=False)
    cheap_units = as_completed(loop=client.loop)
    expensive: list[Future] = []
    submitted: set[FragmentJob] = set()
    counter = itertools.count()

    cheap_jobs: dict[Future, tuple[FragmentJob, ...]] = {}
    #: expensive outputs the store already had, by label
    found: dict[str, dict] = {}
    writer = StoreWriter(store, client) if store is not None else None

    def submit(units: list, context: Future, kind: str, memory: Optional[float], priority: Optional[float], resources: Optional[dict]) -> list[Future]:
        out = []
        for unit in units:
            key = (f"{kind} {dashboard_name(unit.model)} {unit.nbody}-body", token, next(counter))  # grouped like graph.py's keys
            out.append(client.submit(
                run_unit, context, list(unit.jobs), unit.cores, memory, None, list(unit.predicted),
                key=key, priority=unit.seconds if priority is None else priority, resources=resources, retries=retries,
            ))
        return out

    def flush() -> None:
        # energies the store had are taken in at once, and may open more work: until there is none
        while True:
            cheap, kept = decisions.take_work()
            if not cheap and not kept:
                return
            jobs = [FragmentJob(CHEAP_LABEL, c, c) for c in sorted(cheap, key=lambda c: (len(c), c))]
            stored = store.find(jobs, cheap_ctx.store_key) if store is not None else {}
            units = make_units([job for job in jobs if job.label not in stored], cheap_cost, workers=workers)
            futures = submit(units, cheap_ctx_f, "cheap", None, CHEAP_PRIORITY, None)
            if writer is not None:
                cheap_jobs.update(zip(futures, (unit.jobs for unit in units)))
            cheap_units.update(futures)
            new = []
            for cluster in kept:
                for inc in by_cluster.get(cluster, ()):
                    for job, _ in inc.terms:
                        if job not in submitted:
                            submitted.add(job)
                            new.append(job)
            new.sort(key=lambda j: (j.model, j.nbody, j.real, j.basis))
            have = store.find(new, ctx.store_key) if store is not None else {}
            found.update(have)
            units = make_units([job for job in new if job.label not in have], cost, workers=workers, cores=cores)
            futures = submit(units, ctx_f, "frag", memory_gib, None, annotation)
            expensive.extend(futures)
            if writer is not None:
                for future, unit in zip(futures, units):
                    writer.track(Future(future.key, client), unit.jobs, ctx.store_key)  # its own reference, released once written
            for label, output in stored.items():
                decisions.cheap_energy(tuple(delabeler(label)[1]), output["values"]["energy"])

    try:
        decisions.start()
        flush()
        for future in cheap_units:  # ends once no cheap unit is left, including those flush() adds meanwhile
            outputs = future.result()
            if writer is not None:
                writer.add(outputs, cheap_jobs.pop(future), cheap_ctx.store_key)
            for label, output in outputs.items():
                decisions.cheap_energy(tuple(delabeler(label)[1]), output["values"]["energy"])
            future.release()
            flush()
        decided_at = time.perf_counter()
        if decisions.waiting:  # cannot happen with a closed kept set; guard against a silent wrong answer
            raise RuntimeError(f"energy screening left {len(decisions.waiting)} clusters undecided")
        done_before = sum(f.status == "finished" for f in expensive)
        outputs = {**found, **merge_units(*client.gather(expensive))}
    finally:
        if writer is not None:
            writer.close()  # everything finished is in the store, whatever happened
    report = decisions.report(settings.cheap_model)
    report["screening_seconds"] = decided_at - started
    report["expensive_units_done_when_decided"] = f"{done_before}/{len(expensive)}"
    final = Screening(
        distance_cutoffs=settings.distance_cutoffs,
        clusters=frozenset(c for n, kept in decisions.kept.items() if n > 1 for c in kept),
        cheap_model=settings.cheap_model,
        energy_report=report,
    )
    return ScreenedRun(make_plan(plan.input, check_installed=False, screening=final), outputs)


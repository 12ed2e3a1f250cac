"""Energy screening's decisions: a cheap model decides which clusters the expensive model computes.

A k-cluster is a *candidate* once all of its (k-1)-sub-clusters are kept (and it passes
the distance cutoff of its order, if any). The cheap model's k-body increment of a
candidate decides: kept if its magnitude exceeds the order's threshold (kcal/mol).
Orders without a threshold keep every candidate. The kept set is closed under subsets,
so the expensive expansion over it is exact for what it keeps (:mod:`mbdask.planning.screening`);
the dropped clusters' cheap increments are reported, and their sum added to the
screened energy gives the "fill-in" total.

There is no barrier between orders: each decision is taken as soon as the cheap energies
it needs are in, and then at once

* the kept cluster's expensive calculations can be sent, and
* every higher cluster whose sub-clusters are now all kept becomes a candidate, whose
  cheap calculation can be sent.

So a tetramer's cheap calculation depends only on the decisions about its four trimers
(not on a whole 3-body pass), and expensive trimers run while other trimers are still
being screened. This module only decides (:class:`Decisions`, no Dask); the pass that
sends the work as the decisions release it is :mod:`mbdask.graph.screening_pass`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from qcelemental import constants

from mbdask.planning.manybody import nocp_increment
from mbdask.planning.plan import Plan
from mbdask.planning.screening import (
    PairDistances,
    Screening,
    pair_distances,
    reach,
    screening_radius,
    subclusters_kept,
)

CHEAP_LABEL = "screening"
Cluster = tuple[int, ...]


def cheap_input(plan: Plan, cheap_model: dict, nbody: int) -> dict:
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
class Decisions:
    """Bottom-up screening state: what is kept, what waits for cheap energies, what was dropped."""

    nfragments: int
    max_nbody: int
    thresholds: dict[int, float]
    cutoffs: dict[int, float]
    distances: PairDistances
    kept: dict[int, set[Cluster]] = field(default_factory=dict)
    energies: dict[Cluster, float] = field(default_factory=dict)
    considered: set[Cluster] = field(default_factory=set)
    #: candidates whose own cheap energy is in but which wait for a sub-cluster's: missing -> waiting
    waiting: dict[Cluster, list[Cluster]] = field(default_factory=dict)
    orders: dict[int, dict] = field(default_factory=dict)
    #: work the last steps produced, for the driver to submit
    new_cheap: list[Cluster] = field(default_factory=list)
    new_kept: list[Cluster] = field(default_factory=list)

    #: per fragment, the fragments it forms a kept dimer with: a higher cluster's candidates come from these
    kept_partners: dict[int, set[int]] = field(default_factory=dict)

    @classmethod
    def for_plan(cls, plan: Plan, settings: Screening) -> Decisions:
        """The decisions that ``settings`` asks for over ``plan``'s clusters (the expansion screened by
        distance only)."""
        return cls(
            plan.nfragments,
            plan.core.max_nbody,
            dict(settings.energy_thresholds),
            dict(settings.distance_cutoffs),
            pair_distances(plan.input.molecule, screening_radius(settings)),
        )

    @cached_property
    def _within_reach(self) -> dict[int, list[frozenset[int]] | None]:
        """Per order, per fragment, the fragments within that order's reach (:func:`mbdask.planning.screening.reach`;
        None: no cutoff up to that order). A candidate's pairs are kept dimers, its triples kept trimers,
        so its pairs lie within every cutoff up to its order: the same test as its own order's cutoff."""
        out: dict[int, list[frozenset[int]] | None] = {}
        for order in range(2, self.max_nbody + 1):
            limit = reach(self.cutoffs, order)
            out[order] = None if limit is None else self.distances.partners(limit)
        return out

    def screening(self, settings: Screening, report: dict) -> Screening:
        """The screening that keeps what was decided: ``settings`` with the kept clusters and ``report``."""
        return Screening(
            distance_cutoffs=settings.distance_cutoffs,
            clusters=frozenset(c for n, kept in self.kept.items() if n > 1 for c in kept),
            cheap_model=settings.cheap_model,
            energy_report=report,
            target=settings.target,
        )

    @property
    def top(self) -> int:
        """Highest order whose decisions need cheap energies (0: none)."""
        return max(self.thresholds, default=0)

    def start(self) -> None:
        """Keep every monomer (their expensive calculations, and the cheap ones higher orders need)."""
        for i in range(1, self.nfragments + 1):
            self._keep((i,))

    def _keep(self, cluster: Cluster) -> None:
        self.kept.setdefault(len(cluster), set()).add(cluster)
        if len(cluster) == 2:
            a, b = cluster
            self.kept_partners.setdefault(a, set()).add(b)
            self.kept_partners.setdefault(b, set()).add(a)
        self.new_kept.append(cluster)
        if len(cluster) <= self.top and len(cluster) not in self.thresholds:
            self.new_cheap.append(cluster)  # no decision here, but higher orders need its cheap energy
        if len(cluster) < self.max_nbody:
            self._grow(cluster)

    def _grow(self, cluster: Cluster) -> None:
        """Candidates of the next order that ``cluster``, just kept, completes."""
        order = len(cluster) + 1
        below = self.kept[len(cluster)]
        within = self._within_reach[order]
        if within is not None and any(b not in within[a] for a, b in itertools.combinations(cluster, 2)):
            return  # its own pairs lie beyond the next order's cutoff: no candidate grows from it
        if order == 2:
            near: Iterable[int] = range(1, self.nfragments + 1) if within is None else within[cluster[0]]
        else:
            # every pair of a candidate is a kept dimer within reach: a neighbour search, not a loop over all fragments
            near = set.intersection(*(self.kept_partners.get(i, set()) for i in cluster))
            if within is not None:
                near = near.intersection(*(within[i] for i in cluster))
        for j in sorted(near):
            if j in cluster:
                continue
            grown = tuple(sorted(cluster + (j,)))
            if grown in self.considered or not subclusters_kept(grown, below):
                continue
            self.considered.add(grown)
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
        missing = next(
            (
                sub
                for k in range(1, len(cluster))
                for sub in itertools.combinations(cluster, k)
                if sub not in self.energies
            ),
            None,
        )
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
        """What the decisions so far released: clusters whose cheap energy is wanted, clusters kept."""
        cheap, kept = self.new_cheap, self.new_kept
        self.new_cheap, self.new_kept = [], []
        return cheap, kept

    def report(self, cheap_model: dict) -> dict:
        """Per screened order: threshold, candidates, kept, and the dropped clusters' cheap increments (the fill-in)."""
        orders = {
            str(n): {
                "threshold_kcal": self.thresholds.get(n),
                "candidates": row["candidates"],
                "kept": row["kept"],
                "dropped_cheap_sum": math.fsum(row["dropped"]),
            }
            for n, row in sorted(self.orders.items())
            if n in self.thresholds
        }
        return {
            "cheap_model": cheap_model,
            "orders": orders,
            "fill_in": math.fsum(row["dropped_cheap_sum"] for row in orders.values()),
        }

"""Energy screening: a cheap model decides which clusters the expensive model computes.

Bottom-up per order k: the candidates are the k-clusters whose (k-1)-sub-clusters were all
kept (and that pass the distance cutoff, if any); the cheap model's k-body increment of
each candidate is computed, and the candidate is kept if its magnitude exceeds the order's
threshold (kcal/mol). Orders without a threshold keep every candidate. The expensive
expansion then runs on the kept set (:mod:`mbdask.screening`), assembled from the kept
clusters; the dropped clusters' cheap increments are reported, and their sum added to the
screened energy gives the "fill-in" total.

The cheap calculations run as mbdask expansions on the same Dask cluster, one per order,
through a checkpoint store (the user's, or a temporary one), so each order computes only
its new candidates. Each order waits for the previous order's decisions; the expensive
expansion starts when the last order is decided.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from qcelemental import constants

from .plan import Plan, make_plan
from .screening import Screening, candidates, fragment_distances
from .store import FragmentStore

CHEAP_LABEL = "screening"


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


def screen_by_energy(plan: Plan, settings: Screening, client: Any, *, store: Optional[FragmentStore] = None, **options: Any) -> Plan:
    """The plan of ``plan``'s expansion restricted to the clusters the cheap model keeps.

    ``options`` go to each cheap expansion (``mbdask.compute``), e.g. ``retries``.
    """
    from .api import compute

    kcal = constants.hartree2kcalmol
    distances = fragment_distances(plan.input.molecule)
    max_nbody = plan.core.max_nbody
    kept: dict[int, set[tuple[int, ...]]] = {1: {(i,) for i in range(1, plan.nfragments + 1)}}
    orders: dict[str, dict] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mbdask-screening-") as scratch:
        cheap_store = store if store is not None else FragmentStore.open(Path(scratch) / "cheap.sqlite")
        for order in range(2, max_nbody + 1):
            found = candidates(kept[order - 1], order, distances, settings.distance_cutoffs.get(order))
            threshold = settings.energy_thresholds.get(order)
            if threshold is None or not found:
                kept[order] = set(found)
                continue
            listed = [list(c) for n in range(2, order) for c in kept[n]] + [list(c) for c in found]
            cheap = compute(_cheap_input(plan, settings.cheap_model, order), client, store=cheap_store, screening={"clusters": listed}, **options)
            increments = {tuple(r["fragments"]): r["energy"] for r in cheap.extras["mbdask"]["increments"]["nocp"] if r["nbody"] == order}
            kept[order] = {c for c in found if abs(increments[c]) * kcal > threshold}
            dropped = [increments[c] for c in found if c not in kept[order]]
            orders[str(order)] = {
                "threshold_kcal": threshold,
                "candidates": len(found),
                "kept": len(kept[order]),
                "dropped_cheap_sum": float(sum(dropped)),
            }
    report = {
        "cheap_model": settings.cheap_model,
        "orders": orders,
        "fill_in": float(sum(row["dropped_cheap_sum"] for row in orders.values())),
        "cheap_seconds": time.perf_counter() - started,
    }
    final = Screening(
        distance_cutoffs=settings.distance_cutoffs,
        clusters=frozenset(c for n in range(2, max_nbody + 1) for c in kept[n]),
        cheap_model=settings.cheap_model,
        energy_report=report,
    )
    return make_plan(plan.input, check_installed=False, screening=final)

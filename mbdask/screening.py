"""Screened expansions: which clusters run, and the energy assembled from the ones that did.

A screened expansion keeps a set of clusters per n-body order that is *closed under
subsets* (a trimer is a candidate only if its three dimers were kept), so every kept
cluster's increment is exactly the increment the full expansion would give it, and the
screened energy through order n is the sum of the kept increments up to n. Screened
clusters contribute zero.

Screening decides with distances, before anything runs: per order k with a cutoff r_k
(Angstrom), a k-cluster is kept if each pair of its fragments is within r_k (the distance
of two fragments is their closest atom-atom distance). Explicit cluster lists can be given
instead (or as well): then a cluster is kept only if it is listed.

QCManyBody's own level formulas assume complete levels, so a screened result is assembled
(in :mod:`mbdask.manybody`) from per-cluster coefficients (the signed count of each calculation over the kept
increments), for energies, gradients and Hessians alike, and then handed to QCManyBody's
``print_nbody_energy``/``collect_vars``/``get_results`` so that it has the same form.
Screening is refused for cp (QCManyBody's cp computes every subsystem in the basis of the
full cluster, which a screened set cannot give) and for supersystem levels (mbdask refuses
embedding charges altogether).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import numpy as np
from qcelemental import constants

from .errors import BadInputError

ScreeningLike = Union[None, Mapping[str, Any], "Screening"]
#: GFN2-xTB at tight accuracy: milliseconds per water cluster, increments good to ~0.01 kcal/mol
DEFAULT_CHEAP_MODEL = {"program": "xtb", "model": {"method": "gfn2-xtb"}, "keywords": {"accuracy": 0.01}}


@dataclass(frozen=True)
class Screening:
    """What to keep. ``distance_cutoffs``: order -> Angstrom; ``clusters``: explicit 1-based clusters to keep."""

    distance_cutoffs: dict[int, float] = field(default_factory=dict)
    clusters: Optional[frozenset[tuple[int, ...]]] = None
    #: order -> kcal/mol: keep a candidate whose cheap-model increment is larger in magnitude
    energy_thresholds: dict[int, float] = field(default_factory=dict)
    #: the cheap model for energy screening: a QCEngine program and atomic specification
    cheap_model: dict = field(default_factory=lambda: dict(DEFAULT_CHEAP_MODEL))
    #: what energy screening decided (set by :func:`mbdask.screening_pass.screen`)
    energy_report: Optional[dict] = None

    @classmethod
    def from_options(cls, options: ScreeningLike) -> Optional["Screening"]:
        """Validate the user's screening options (a dict as in the docs, or a Screening); None for none."""
        if options is None or isinstance(options, Screening):
            return options
        if not isinstance(options, Mapping):
            raise BadInputError(f"screening must be a dict such as {{'distance_cutoffs': {{2: 9.0, 3: 5.0}}}}, not {type(options).__name__}")
        known = {"distance_cutoffs", "clusters", "energy_thresholds", "cheap_model"}
        unknown = set(options) - known
        if unknown:
            raise BadInputError(f"unknown screening option(s) {sorted(unknown)}; known: {', '.join(sorted(known))}")
        cutoffs = _per_order(options.get("distance_cutoffs"), "distance_cutoffs", "Angstrom", positive=True)
        thresholds = _per_order(options.get("energy_thresholds"), "energy_thresholds", "kcal/mol", positive=False)
        cheap = options.get("cheap_model") or dict(DEFAULT_CHEAP_MODEL)
        if not isinstance(cheap, Mapping) or "program" not in cheap or "model" not in cheap:
            raise BadInputError("cheap_model: expected {'program': ..., 'model': {'method': ...}, 'keywords': {...}}")
        clusters = None
        if options.get("clusters") is not None:
            try:
                clusters = frozenset(tuple(sorted(int(i) for i in c)) for c in options["clusters"])
            except (TypeError, ValueError):
                raise BadInputError("screening clusters: expected lists of 1-based fragment numbers") from None
        if not cutoffs and clusters is None and not thresholds:
            return None
        return cls(cutoffs, clusters, thresholds, dict(cheap))


def _per_order(values: Any, name: str, unit: str, *, positive: bool) -> dict[int, float]:
    """``{order: number}`` from user input (keys may be strings), orders from 2."""
    out: dict[int, float] = {}
    for order, value in dict(values or {}).items():
        try:
            order_i, number = int(order), float(value)
        except (TypeError, ValueError):
            raise BadInputError(f"{name}: expected order -> {unit}, got {order!r}: {value!r}") from None
        if order_i < 2:
            raise BadInputError(f"{name}: orders start at 2 (monomers are always kept), got {order_i}")
        if not (number > 0 if positive else number >= 0):
            raise BadInputError(f"{name}: the {order_i}-body value must be {'positive' if positive else 'zero or more'}, got {value!r}")
        out[order_i] = number
    return out


def fragment_distances(molecule: Any) -> np.ndarray:
    """Closest atom-atom distance between each pair of fragments, in Angstrom (fragments 1-based at [i-1])."""
    geometry = np.asarray(molecule.geometry, dtype=float).reshape(-1, 3) * constants.bohr2angstroms
    fragments = [np.asarray(f, dtype=int) for f in molecule.fragments]
    n = len(fragments)
    out = np.zeros((n, n))
    for i, j in itertools.combinations(range(n), 2):
        diff = geometry[fragments[i]][:, None, :] - geometry[fragments[j]][None, :, :]
        out[i, j] = out[j, i] = float(np.sqrt((diff**2).sum(-1)).min())
    return out


@dataclass
class ScreenedSet:
    """Kept clusters per order and how many candidates (clusters whose sub-clusters were all kept) each order had."""

    kept: dict[int, set[tuple[int, ...]]]
    candidates: dict[int, int]
    total: dict[int, int]
    settings: Screening

    def summary(self) -> dict:
        """JSON-friendly counts for the plan, the result's extras and the report."""
        summary = {
            "distance_cutoffs": {str(k): v for k, v in sorted(self.settings.distance_cutoffs.items())},
            "explicit_clusters": self.settings.clusters is not None and self.settings.energy_report is None,
            "orders": {
                str(n): {"kept": len(self.kept[n]), "candidates": self.candidates[n], "all": self.total[n]} for n in sorted(self.kept)
            },
        }
        if self.settings.energy_report is not None:
            summary["energy"] = self.settings.energy_report
        return summary


def within_cutoff(cluster: tuple[int, ...], distances: np.ndarray, cutoff: Optional[float]) -> bool:
    """Every pair of the cluster's fragments within ``cutoff`` (no cutoff: True)."""
    return cutoff is None or all(distances[a - 1, b - 1] <= cutoff for a, b in itertools.combinations(cluster, 2))


def subclusters_kept(cluster: tuple[int, ...], previous: set[tuple[int, ...]]) -> bool:
    """Every sub-cluster of ``cluster`` one fragment smaller is in ``previous``."""
    return all(cluster[:p] + cluster[p + 1 :] in previous for p in range(len(cluster)))


def candidates(previous: set[tuple[int, ...]], order: int, distances: np.ndarray, cutoff: Optional[float]) -> list[tuple[int, ...]]:
    """Clusters of ``order`` all of whose sub-clusters are in ``previous`` and all of whose pairs lie within ``cutoff``."""
    nfr = distances.shape[0]
    found = []
    for base in sorted(previous):
        for j in range(base[-1] + 1, nfr + 1):
            cluster = base + (j,)
            if subclusters_kept(cluster, previous) and within_cutoff(cluster, distances, cutoff):
                found.append(cluster)
    return found


def kept_clusters(settings: Screening, distances: np.ndarray, max_nbody: int) -> ScreenedSet:
    """Clusters to compute, generated bottom-up so that the kept set is closed under subsets.

    ``candidates`` counts, per order, the clusters whose sub-clusters were all kept, before
    this order's distance cutoff and explicit list (energy screening reports its own).
    """
    nfr = distances.shape[0]
    kept: dict[int, set[tuple[int, ...]]] = {1: {(i,) for i in range(1, nfr + 1)}}
    counts = {1: nfr}
    for order in range(2, max_nbody + 1):
        found = candidates(kept[order - 1], order, distances, None)
        counts[order] = len(found)
        cutoff = settings.distance_cutoffs.get(order)
        kept[order] = {c for c in found if within_cutoff(c, distances, cutoff) and (settings.clusters is None or c in settings.clusters)}
    total = {n: math.comb(nfr, n) for n in kept}
    return ScreenedSet(kept, counts, total, settings)


def check_screenable(bsse_types: list[str], has_supersystem: bool) -> None:
    """Refuse the expansions a screened set cannot represent, with the reason."""
    if "cp" in bsse_types:
        raise BadInputError(
            "screening needs bsse_type nocp or vmfc: QCManyBody's cp computes every subsystem in the full-cluster basis, "
            "which a screened expansion does not"
        )
    if has_supersystem:
        raise BadInputError("screening cannot be combined with a supersystem level")

"""Screened expansions: which clusters run, and the energy assembled from the ones that did.

A screened expansion keeps a set of clusters per n-body order that is *closed under
subsets* (a trimer is a candidate only if its three dimers were kept), so every kept
cluster's increment is exactly the increment the full expansion would give it, and the
screened energy through order n is the sum of the kept increments up to n. Screened
clusters contribute zero.

Screening decides with distances, before anything runs: per order k with a cutoff r_k
(Angstrom), a k-cluster is kept if each pair of its fragments is within r_k (the distance
of two fragments is their closest atom-atom distance). Explicit cluster lists can be given
instead (or as well): then a cluster is kept only if it is listed. Neither walks all C(n, k)
clusters: pairs come from a neighbour search over the atoms, and the kept k-clusters are
grown from the kept (k-1)-clusters by their neighbours (:func:`kept_clusters`), so a plan of
thousands of fragments costs what it keeps.

QCManyBody's own level formulas assume complete levels, so a screened result is assembled
(in :mod:`mbdask.planning.manybody`) from per-cluster coefficients (the signed count of each calculation over the kept
increments), for energies, gradients and Hessians alike, and then handed to QCManyBody's
``print_nbody_energy``/``collect_vars``/``get_results`` so that it has the same form.
Screening is refused for cp (QCManyBody's cp computes every subsystem in the basis of the
full cluster, which a screened set cannot give) and for supersystem levels (mbdask refuses
embedding charges altogether).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Union

import numpy as np
from qcelemental import constants

from mbdask.errors import BadInputError

ScreeningLike = Union[None, Mapping[str, Any], "Screening"]
#: Distance cutoffs (Angstrom per order) measured to keep a GFN2-xTB nocp 3-body expansion of liquid
#: water within each target (kcal/mol per water) of the unscreened expansion, for that cutoff and
#: every larger one measured: ``benchmarks/bench_screening_accuracy.py`` on a 128-water droplet
#: (docs/screening.md). A starting point for other systems and methods, not a bound.
RECOMMENDED_CUTOFFS: dict[float, dict[int, float]] = {
    0.1: {2: 14.0, 3: 7.0},
    0.05: {2: 14.0, 3: 9.0},
    0.02: {2: 16.0, 3: 10.0},
}
#: The highest order the recommended cutoffs were measured for.
RECOMMENDED_MAX_NBODY = 3
#: GFN2-xTB at tight accuracy: milliseconds per water cluster, increments good to ~0.01 kcal/mol
DEFAULT_CHEAP_MODEL = {"program": "xtb", "model": {"method": "gfn2-xtb"}, "keywords": {"accuracy": 0.01}}


@dataclass(frozen=True)
class Screening:
    """What to keep. ``distance_cutoffs``: order -> Angstrom; ``clusters``: explicit 1-based clusters to keep."""

    distance_cutoffs: dict[int, float] = field(default_factory=dict)
    clusters: frozenset[tuple[int, ...]] | None = None
    #: order -> kcal/mol: keep a candidate whose cheap-model increment is larger in magnitude
    energy_thresholds: dict[int, float] = field(default_factory=dict)
    #: the cheap model for energy screening: a QCEngine program and atomic specification
    cheap_model: dict = field(default_factory=lambda: dict(DEFAULT_CHEAP_MODEL))
    #: what energy screening decided (set by :func:`mbdask.graph.screening_pass.screen`)
    energy_report: dict | None = None
    #: the error target the distance cutoffs were picked for:
    #: ``{"kcal_per_monomer": asked, "measured_for": table entry}``
    target: dict | None = None

    @classmethod
    def from_options(cls, options: ScreeningLike) -> Screening | None:
        """Validate the user's screening options (a dict as in the docs, or a Screening); None for none."""
        if options is None or isinstance(options, Screening):
            return options
        if not isinstance(options, Mapping):
            raise BadInputError(
                f"screening must be a dict such as {{'distance_cutoffs': {{2: 9.0, 3: 5.0}}}}, not "
                f"{type(options).__name__}"
            )
        known = {"distance_cutoffs", "clusters", "energy_thresholds", "cheap_model", "target"}
        unknown = set(options) - known
        if unknown:
            raise BadInputError(f"unknown screening option(s) {sorted(unknown)}; known: {', '.join(sorted(known))}")
        cutoffs = _per_order(options.get("distance_cutoffs"), "distance_cutoffs", "Angstrom", positive=True)
        target = None
        if options.get("target") is not None:
            if cutoffs:
                raise BadInputError(
                    "screening: give a target or distance_cutoffs, not both (the target picks the cutoffs)"
                )
            measured, cutoffs = cutoffs_for_target(options["target"])
            target = {"kcal_per_monomer": float(options["target"]), "measured_for": measured}
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
        return cls(cutoffs, clusters, thresholds, dict(cheap), target=target)


def cutoffs_for_target(target: Any) -> tuple[float, dict[int, float]]:
    """The distance cutoffs for an error ``target`` in kcal/mol per monomer: those measured for the loosest
    target within it (:data:`RECOMMENDED_CUTOFFS`), and that target."""
    try:
        wanted = float(target)
    except (TypeError, ValueError):
        raise BadInputError(f"screening target: expected kcal/mol per monomer, got {target!r}") from None
    met = [t for t in RECOMMENDED_CUTOFFS if t <= wanted]
    if not wanted > 0 or not met:
        tightest = min(RECOMMENDED_CUTOFFS)
        raise BadInputError(
            f"screening target {target}: cutoffs are measured for "
            f"{', '.join(f'{t:g}' for t in sorted(RECOMMENDED_CUTOFFS))} kcal/mol "
            f"per monomer; for less than {tightest:g} give distance cutoffs yourself (docs/screening.md)"
        )
    measured = max(met)
    return measured, dict(RECOMMENDED_CUTOFFS[measured])


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
            raise BadInputError(
                f"{name}: the {order_i}-body value must be {'positive' if positive else 'zero or more'}, got {value!r}"
            )
        out[order_i] = number
    return out


#: Pairs closer than a cutoff by less than this (Angstrom) are found by the tree search and decided
#: exactly afterwards: the tree's own rounding must not decide a pair at the cutoff.
SEARCH_MARGIN = 1e-6


@dataclass(frozen=True, eq=False)
class PairDistances:
    """Closest atom-atom distance (Angstrom) of each pair of fragments within ``radius`` of each other.

    Screening only ever asks whether a pair lies within a cutoff, so pairs further apart
    than the largest cutoff are not kept: at 4,096 waters that is a few hundred thousand
    pairs instead of 8 million. :func:`pair_distances` finds them with a k-d tree over the
    atoms (``scipy.spatial.cKDTree``). ``pairs`` are 1-based, ``i < j``, sorted.
    """

    nfragments: int
    radius: float
    pairs: np.ndarray
    distances: np.ndarray

    @cached_property
    def _by_pair(self) -> dict[tuple[int, int], float]:
        return dict(zip(map(tuple, self.pairs.tolist()), self.distances.tolist()))

    def distance(self, a: int, b: int) -> float:
        """The distance of fragments ``a`` and ``b`` (1-based); ``inf`` beyond :attr:`radius`."""
        return self._by_pair.get((a, b) if a < b else (b, a), math.inf)

    def partners(self, cutoff: float | None) -> list[frozenset[int]]:
        """Per fragment (index ``i`` for fragment ``i``, 1-based; index 0 empty), the fragments within
        ``cutoff`` (None: every other fragment)."""
        everyone = range(1, self.nfragments + 1)
        if cutoff is None:
            return [frozenset()] + [frozenset(everyone) - {i} for i in everyone]
        if cutoff > self.radius:
            raise ValueError(f"cutoff {cutoff} beyond the searched radius {self.radius}")
        within = self.pairs[self.distances <= cutoff]
        found: list[set[int]] = [set() for _ in range(self.nfragments + 1)]
        for a, b in within.tolist():
            found[a].add(b)
            found[b].add(a)
        return [frozenset(s) for s in found]

    def largest(self, clusters: np.ndarray) -> np.ndarray:
        """Per cluster (rows of 1-based fragments), its largest pair distance: what a distance cutoff compares
        (``inf`` where a pair lies beyond :attr:`radius`). Looked up with numpy, no loop per cluster."""
        codes = self.pairs[:, 0] * (self.nfragments + 1) + self.pairs[:, 1]  # sorted, as the pairs are
        out = np.zeros(len(clusters))
        for a, b in itertools.combinations(range(clusters.shape[1]), 2):
            wanted = np.minimum(clusters[:, a], clusters[:, b]) * (self.nfragments + 1) + np.maximum(
                clusters[:, a], clusters[:, b]
            )
            at = np.minimum(np.searchsorted(codes, wanted), max(len(codes) - 1, 0))
            found = (
                np.where(codes[at] == wanted, self.distances[at], np.inf)
                if len(codes)
                else np.full(len(wanted), np.inf)
            )
            out = np.maximum(out, found)
        return out

    def dense(self) -> np.ndarray:
        """The full matrix (``inf`` beyond :attr:`radius`; 0-based, zero diagonal): for small systems and tests."""
        out = np.full((self.nfragments, self.nfragments), np.inf)
        np.fill_diagonal(out, 0.0)
        a, b = self.pairs[:, 0] - 1, self.pairs[:, 1] - 1
        out[a, b] = out[b, a] = self.distances
        return out


def pair_distances(molecule: Any, radius: float | None) -> PairDistances:
    """The fragment pairs of ``molecule`` closer than ``radius`` Angstrom (None: none are needed), by a
    neighbour search.

    Each pair's distance is its closest atom pair, computed the same way whatever the
    search, so that a cluster at a cutoff is decided the same at every system size.
    """
    fragments = [np.asarray(f, dtype=np.int64) for f in molecule.fragments]
    n = len(fragments)
    if radius is None or n < 2:
        return PairDistances(n, 0.0, np.zeros((0, 2), dtype=np.int64), np.zeros(0))
    from scipy.spatial import cKDTree

    geometry = np.asarray(molecule.geometry, dtype=float).reshape(-1, 3) * constants.bohr2angstroms
    owner = np.empty(len(geometry), dtype=np.int64)
    for number, atoms in enumerate(fragments, start=1):
        owner[atoms] = number
    search = radius + SEARCH_MARGIN if math.isfinite(radius) else np.inf
    atom_pairs = cKDTree(geometry).query_pairs(search, output_type="ndarray")
    a, b = owner[atom_pairs[:, 0]], owner[atom_pairs[:, 1]]
    apart = a != b
    atom_pairs, a, b = atom_pairs[apart], a[apart], b[apart]
    distance = np.sqrt(((geometry[atom_pairs[:, 0]] - geometry[atom_pairs[:, 1]]) ** 2).sum(-1))
    code = np.minimum(a, b) * (n + 1) + np.maximum(a, b)
    order = np.lexsort((distance, code))  # per pair, its closest atoms first
    code, distance = code[order], distance[order]
    first = np.ones(len(code), dtype=bool)
    first[1:] = code[1:] != code[:-1]
    code, distance = code[first], distance[first]
    keep = distance <= radius
    code, distance = code[keep], distance[keep]
    return PairDistances(n, float(radius), np.stack([code // (n + 1), code % (n + 1)], axis=1), distance)


def fragment_distances(molecule: Any) -> np.ndarray:
    """Closest atom-atom distance between each pair of fragments, in Angstrom (fragments 1-based at [i-1]):
    the dense matrix, for small systems (reports, tests); screening uses :func:`pair_distances`."""
    return pair_distances(molecule, math.inf).dense()


@dataclass
class ScreenedSet:
    """Kept clusters per order, and how many clusters each order has in all."""

    kept: dict[int, set[tuple[int, ...]]]
    total: dict[int, int]
    settings: Screening
    #: per order, the kept clusters in lexicographic order, one row each (1-based): what the plan is built from
    rows: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def summary(self) -> dict:
        """JSON-friendly counts for the plan, the result's extras and the report."""
        summary = {
            "distance_cutoffs": {str(k): v for k, v in sorted(self.settings.distance_cutoffs.items())},
            "explicit_clusters": self.settings.clusters is not None and self.settings.energy_report is None,
            "orders": {str(n): {"kept": len(self.kept[n]), "all": self.total[n]} for n in sorted(self.kept)},
        }
        if self.settings.energy_report is not None:
            summary["energy"] = self.settings.energy_report
        if self.settings.target is not None:
            summary["target"] = self.settings.target
        return summary


def within_cutoff(cluster: tuple[int, ...], distances: PairDistances, cutoff: float | None) -> bool:
    """Every pair of the cluster's fragments within ``cutoff`` (no cutoff: True)."""
    return cutoff is None or all(distances.distance(a, b) <= cutoff for a, b in itertools.combinations(cluster, 2))


def subclusters_kept(cluster: tuple[int, ...], previous: set[tuple[int, ...]]) -> bool:
    """Every sub-cluster of ``cluster`` one fragment smaller is in ``previous``."""
    return all(cluster[:p] + cluster[p + 1 :] in previous for p in range(len(cluster)))


def reach(cutoffs: Mapping[int, float], order: int) -> float | None:
    """The pair distance a kept cluster of ``order`` cannot exceed: the smallest cutoff of the orders up to it
    (its pairs are kept dimers, its triples kept trimers, ...); None where no order up to it has one."""
    return min((r for n, r in cutoffs.items() if n <= order), default=None)


def grown_clusters(bases: Iterable[tuple[int, ...]], partners: Sequence[frozenset[int]]) -> list[tuple[int, ...]]:
    """The clusters of all-partner fragments one larger than ``bases``: each base (sorted) whose fragments are
    all partners of each other, extended by every higher fragment that is a partner of all of them, in
    lexicographic order (``bases`` a list: taken as sorted already; any other collection is sorted here).

    With ``partners`` the fragments within a pair cutoff, the work is proportional to what
    is found, not to the fragments in the system: a neighbour list, not a loop over all.
    """
    found: list[tuple[int, ...]] = []
    for base in bases if isinstance(bases, list) else sorted(bases):
        if len(base) > 1 and not all(b in partners[a] for a, b in itertools.combinations(base, 2)):
            continue
        last = base[-1]
        common = partners[last].intersection(*(partners[i] for i in base[:-1]))
        found.extend(base + (j,) for j in sorted(common) if j > last)
    return found


def kept_clusters(settings: Screening, distances: PairDistances, max_nbody: int) -> ScreenedSet:
    """Clusters to compute, generated bottom-up so that the kept set is closed under subsets.

    A k-cluster is kept when every (k-1)-sub-cluster was kept, every pair lies within the
    k-body cutoff (if any) and, with an explicit list, it is listed. So all its pairs lie
    within :func:`reach`: without a list the kept k-clusters are grown from the kept
    (k-1)-clusters by neighbours within that reach (all of whose sub-clusters are then kept
    too); with a list, only listed clusters are tried. Neither walks all C(n, k) clusters;
    ``distances`` need to reach the largest cutoff.
    """
    nfr = distances.nfragments
    found: list[tuple[int, ...]] = [(i,) for i in range(1, nfr + 1)]
    kept: dict[int, set[tuple[int, ...]]] = {1: set(found)}
    rows = {1: _as_rows(found, 1)}
    listed: dict[int, list[tuple[int, ...]]] = {}
    for cluster in settings.clusters or ():
        listed.setdefault(len(cluster), []).append(cluster)
    for order in range(2, max_nbody + 1):
        below = kept[order - 1]
        if settings.clusters is not None:
            cutoff = settings.distance_cutoffs.get(order)
            found = sorted(
                c for c in listed.get(order, ()) if subclusters_kept(c, below) and within_cutoff(c, distances, cutoff)
            )
        else:  # grown from sorted bases in order: sorted already
            found = grown_clusters(found, distances.partners(reach(settings.distance_cutoffs, order)))
        kept[order] = set(found)
        rows[order] = _as_rows(found, order)
    total = {n: math.comb(nfr, n) for n in kept}
    return ScreenedSet(kept, total, settings, rows)


def _as_rows(clusters: list[tuple[int, ...]], order: int) -> np.ndarray:
    return np.fromiter(itertools.chain.from_iterable(clusters), dtype=np.int64, count=len(clusters) * order).reshape(
        len(clusters), order
    )


def screening_radius(settings: Screening) -> float | None:
    """How far the neighbour search must look for ``settings``: its largest cutoff (None: no distances needed)."""
    return max(settings.distance_cutoffs.values(), default=None)


def check_screenable(
    settings: Screening, bsse_types: list[str], max_nbody: int, has_supersystem: bool, supersystem_ie_only: bool = False
) -> None:
    """Refuse the expansions a screened set cannot represent, and targets not measured for them, with the reason."""
    if settings.target is not None and max_nbody > RECOMMENDED_MAX_NBODY:
        raise BadInputError(
            f"screening target: cutoffs are measured for expansions through {RECOMMENDED_MAX_NBODY}-body; "
            f"give distance cutoffs for a {max_nbody}-body one"
        )
    if supersystem_ie_only:
        raise BadInputError(
            "screening cannot be combined with supersystem_ie_only (which computes no intermediate order to screen)"
        )
    if "cp" in bsse_types:
        raise BadInputError(
            "screening needs bsse_type nocp or vmfc (--bsse on the command line): "
            "QCManyBody's cp computes every subsystem in the full-cluster basis, "
            "which a screened expansion does not"
        )
    if has_supersystem:
        raise BadInputError("screening cannot be combined with a supersystem level")

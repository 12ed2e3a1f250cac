"""From a ``ManyBodyInput`` to the list of fragment calculations and cluster increments.

The plan is pure bookkeeping: no molecule of a fragment is built and no program runs.
Fragment calculations come from QCManyBody's own ``ManyBodyCore.compute_map`` and are
deduplicated by QCManyBody's labels, so mbdask runs exactly the calculations QCManyBody
would. Increments (the n-body contribution of one cluster, per BSSE treatment) record
which of those calculations they combine and with which sign.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import operator
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pydantic
import qcelemental
from qcmanybody import ManyBodyCore
from qcmanybody.models.v2 import ManyBodyInput
from qcmanybody.v2 import ManyBodyComputer

from mbdask.errors import BadInputError
from mbdask.inputs.load import InputLike, describe_validation_error, load_input
from mbdask.planning.manybody import basis_rule, supersystem_terms, term_shape
from mbdask.planning.screening import (
    ScreenedSet,
    Screening,
    ScreeningLike,
    check_screenable,
    kept_clusters,
    pair_distances,
    screening_radius,
)
from mbdask.upstream import drop_compute_map, job_label, job_labels

#: Programs that ignore ghost atoms: cp/vmfc with them would silently be nocp.
PROGRAMS_WITHOUT_GHOSTS = frozenset(
    {"xtb", "mopac", "aimnet2", "mace", "torchani", "openmm", "rdkit", "dftd3", "dftd4", "s-dftd3", "gcp", "mp2d"}
)
SUPPORTED_DRIVERS = ("energy", "gradient", "hessian")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: building hundreds of thousands of small objects
    otherwise triggers collections that walk them all again and again (3x slower plans)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if not gc.get_freeze_count():
                # what was made here goes straight to the oldest generation: otherwise the first
                # young collection walks every one of those objects, and later ones again
                gc.freeze()
                gc.unfreeze()
            gc.enable()


@dataclass(frozen=True)
class FragmentJob:
    """One QC calculation: model chemistry ``model``, real fragments, basis fragments (1-based)."""

    model: str
    real: tuple[int, ...]
    basis: tuple[int, ...]

    @cached_property
    def label(self) -> str:
        """QCManyBody's label, the key of ``cluster_properties`` (computed once: graphs use it per term)."""
        return job_label(self.model, self.real, self.basis)

    @property
    def nbody(self) -> int:
        return len(self.real)

    @property
    def ghosts(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.basis) - set(self.real)))


_new_object = object.__new__


def _make_job(model: str, real: tuple[int, ...], basis: tuple[int, ...], label: str) -> FragmentJob:
    """``FragmentJob(model, real, basis)`` with its label already set (plans make hundreds of thousands).

    Without the frozen dataclass's ``__init__`` (an ``object.__setattr__`` per field): the same
    instance, its ``__dict__`` holding the three fields and the cached label. Measured for #27
    (2 cores): 0.5 against 0.8 us a job, (H2O)64 4-body's plan 3.0 s against 3.4 s with the
    constructor. tests/test_plan_scale.py compares the jobs with ``FragmentJob(...)``'s.
    """
    job = _new_object(FragmentJob)
    job.__dict__.update(model=model, real=real, basis=basis, label=label)
    return job


@dataclass(frozen=True)
class Increment:
    """The n-body increment of one cluster for one BSSE treatment.

    ``terms`` pairs each fragment calculation with its coefficient (+1 or -1); the
    increment is the signed sum of their energies. For ``nbody == "supersystem"`` the
    terms give the supersystem correction (full system minus its own MBE).
    """

    bsse: str
    model: str
    cluster: tuple[int, ...]
    nbody: int | str
    terms: tuple[tuple[FragmentJob, int], ...]


@dataclass(frozen=True, eq=False)
class IncrementBlock:
    """The increments of one BSSE treatment and n-body order, compactly: one row per cluster.

    Every cluster of an order combines its subsystems with the same signs, so a block keeps
    the clusters (``clusters``, 1-based fragment indices, one row each) and, per cluster,
    the index in ``Plan.jobs`` of each term (``terms``, columns in the order of ``signs``).
    ``shape`` (the positions of each term's fragments within the cluster) and ``basis`` (one
    of :data:`mbdask.planning.manybody.BASIS_RULES`) say how a term follows from its cluster; both are None for the
    supersystem correction, whose one row lists its calculations explicitly.
    :meth:`increments` gives the same :class:`Increment` objects one by one.
    """

    bsse: str
    model: str
    nbody: int | str
    clusters: np.ndarray
    signs: tuple[int, ...]
    terms: np.ndarray
    shape: tuple[tuple[int, ...], ...] | None = None
    basis: str | None = None

    def __len__(self) -> int:
        return len(self.clusters)

    def increments(self, jobs: Sequence[FragmentJob], rows: np.ndarray | None = None) -> list[Increment]:
        """The :class:`Increment` of each cluster (of ``rows`` only, when given)."""
        clusters, terms = (self.clusters, self.terms) if rows is None else (self.clusters[rows], self.terms[rows])
        signs = self.signs
        return [
            Increment(self.bsse, self.model, tuple(cluster), self.nbody, tuple(zip([jobs[i] for i in row], signs)))
            for cluster, row in zip(clusters.tolist(), terms.tolist())
        ]


@dataclass
class Plan:
    """Everything mbdask needs to build a graph, computed without running anything."""

    input: ManyBodyInput
    computer: ManyBodyComputer
    jobs: list[FragmentJob]
    #: the increments, per BSSE treatment and order (:attr:`increments` lists them one by one)
    blocks: list[IncrementBlock]
    natoms_per_fragment: dict[int, int]
    specifications: dict[str, dict] = field(repr=False)
    #: the kept clusters of a screened expansion (None: every cluster runs)
    screened: ScreenedSet | None = None

    @cached_property
    def increments(self) -> list[Increment]:
        """Every increment as an :class:`Increment`, per BSSE treatment and order, clusters in order.

        Made from :attr:`blocks` on first use; at scale prefer the blocks (679,120 increments
        of (H2O)64 at 4-body take seconds and gigabytes as objects)."""
        return [inc for block in self.blocks for inc in block.increments(self.jobs)]

    @property
    def core(self) -> ManyBodyCore:
        return self.computer.qcmb_core

    @property
    def driver(self) -> str:
        return self.input.specification.driver.value

    @property
    def nfragments(self) -> int:
        return self.core.nfragments

    @property
    def bsse_types(self) -> list[str]:
        return [b.value for b in self.core.bsse_type]

    @property
    def models(self) -> list[str]:
        """Model chemistry labels in QCManyBody's order (lowest n-body first)."""
        return list(self.core.nbodies_per_mc_level)

    def program(self, model: str) -> str:
        return self.specifications[model]["program"]

    def natoms(self, job: FragmentJob) -> int:
        """Atoms in the calculation, ghosts included (they carry basis functions)."""
        return sum(self.natoms_per_fragment[i] for i in job.basis)

    @cached_property
    def counts(self) -> dict[str, dict[int, int]]:
        """Fragment calculations per model chemistry and n-body order."""
        counts: dict[str, Counter] = {m: Counter() for m in self.models}
        for job in self.jobs:
            counts[job.model][job.nbody] += 1
        return {m: dict(sorted(c.items())) for m, c in counts.items()}

    def summary(self) -> str:
        """Human-readable table: calculations per model chemistry and n-body order."""
        lines = [
            f"{self.nfragments} fragments, {sum(self.natoms_per_fragment.values())} atoms; driver {self.driver}; "
            f"bsse {', '.join(self.bsse_types)}; max n-body {self.core.max_nbody}"
        ]
        for model in self.models:
            spec = self.specifications[model]
            method = spec["specification"]["model"]
            title = (
                f"{method.get('method')}/{method.get('basis')}" if method.get("basis") else f"{method.get('method')}"
            )
            total = sum(self.counts[model].values())
            lines.append(f"  model '{model}' ({spec['program']} {title}): {total} calculations")
            for nbody, count in self.counts[model].items():
                lines.append(f"      {nbody}-body: {count:8d}")
        if self.screened is not None:
            summary = self.screened.summary()
            cutoffs = ", ".join(f"{k}-body {v:g} A" for k, v in summary["distance_cutoffs"].items()) or "none"
            if "target" in summary:
                cutoffs += f", measured for {summary['target']['measured_for']:g} kcal/mol per monomer"
            lines.append(
                f"  screening (distance cutoffs: {cutoffs}"
                f"{'; explicit clusters' if summary['explicit_clusters'] else ''}):"
            )
            for nbody, row in summary["orders"].items():
                share = 100.0 * row["kept"] / row["all"] if row["all"] else 100.0
                lines.append(f"      {nbody}-body: {row['kept']:8d} of {row['all']} clusters kept ({share:.1f}%)")
            if self.screened.settings.energy_thresholds and "energy" not in summary:
                taus = ", ".join(
                    f"{k}-body {v:g} kcal/mol" for k, v in sorted(self.screened.settings.energy_thresholds.items())
                )
                lines.append(
                    f"  energy screening ({taus}) decides at run time with "
                    f"{self.screened.settings.cheap_model['model']['method']}; "
                    "counted above: the candidates it starts from"
                )
        return "\n".join(lines)


def _build_computer(inp: ManyBodyInput) -> ManyBodyComputer:
    """QCManyBody's own validation of the keywords, without running anything."""
    try:
        return ManyBodyComputer.from_manybodyinput(inp, build_tasks=False)
    except (pydantic.ValidationError, qcelemental.ValidationError, ValueError, KeyError, AssertionError) as exc:
        raise BadInputError(describe_validation_error(exc)) from None


def _specifications(inp: ManyBodyInput, computer: ManyBodyComputer) -> dict[str, dict]:
    """Per inp chemistry: program and atomic specification, driver set to the MBE driver.

    The same transformation QCManyBody's ``ManyBodyComputer.from_manybodyinput`` applies.
    """
    specs = {}
    for name, spec in inp.specification.specification.items():
        spec = spec.model_dump()
        program = spec.pop("program")
        spec["driver"] = computer.driver
        spec.pop("schema_name", None)
        specs[name] = {"program": program, "specification": spec}
    return specs


#: Lookup tables :class:`JobIndex` allocates densely (code -> job): up to this many entries, or up to
#: ``DENSE_TABLE_RATIO`` entries per calculation; beyond, sorted codes and bisection.
DENSE_TABLE_ENTRIES = 1 << 23
DENSE_TABLE_RATIO = 4
#: Most fragments a rank is computed for; larger calculations (a supersystem) are looked up in a dict.
MAX_RANKED = 16


@dataclass
class _Bucket:
    """The calculations of one model chemistry with ``k`` real and ``L`` basis fragments, consecutive in ``Plan.jobs``.

    ``kind``: "own" (basis = real fragments), "same" (one basis for all, ``basis``),
    "pairs" (anything else) or "dict" (too large to rank: ``pairs`` maps (real, basis) to
    the job index). A calculation's code is the colex rank of its real fragments, times
    C(n, L) plus the rank of its basis for "pairs"; ``find`` maps codes to job indices.
    """

    start: int
    k: int
    L: int
    kind: str
    codes: np.ndarray | None = None  # code of each calculation, in job order
    basis: tuple[int, ...] | None = None
    table: np.ndarray | None = None  # dense: code -> job index or -1
    order: np.ndarray | None = None  # sparse: argsort of codes
    pairs: dict[tuple, int] | None = None

    def find(self, codes: np.ndarray) -> np.ndarray:
        if self.table is not None:
            return self.table[codes]
        assert self.codes is not None and self.order is not None  # a sparse bucket has both
        sorted_codes = self.codes[self.order]
        at = np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)
        return np.where(sorted_codes[at] == codes, self.start + self.order[at], -1)


class JobIndex:
    """Vectorised ``(model, real, basis) -> index in Plan.jobs``: a compact plan looks up millions of terms."""

    def __init__(self, nfragments: int):
        self.n = nfragments
        self.binom = np.zeros((nfragments, 1), dtype=np.int64)
        self.buckets: dict[tuple[str, int, int], _Bucket] = {}

    def _ranked(self, k: int) -> bool:
        return k <= MAX_RANKED

    def _fits(self, k: int, L: int) -> bool:
        """Whether codes of ``k`` real fragments (and ``L`` basis fragments for "pairs", else 0) fit in int64."""
        return k <= MAX_RANKED and L <= MAX_RANKED and math.comb(self.n, k) * math.comb(self.n, L) < 2**62

    def rank(self, rows: np.ndarray) -> np.ndarray:
        """Colex rank among C(n, k) of each row of sorted 1-based fragment indices."""
        k = rows.shape[1]
        if self.binom.shape[1] <= k:
            self.binom = np.array(
                [[min(math.comb(v, j), 2**62) for j in range(k + 1)] for v in range(self.n)], dtype=np.int64
            )
        rank = np.zeros(len(rows), dtype=np.int64)
        for j in range(k):
            rank += self.binom[rows[:, j] - 1, j + 1]
        return rank

    def add(
        self,
        model: str,
        jobs: Sequence[FragmentJob],
        start: int,
        reals: np.ndarray,
        bases: np.ndarray | None,
        kind: str,
    ) -> None:
        """The calculations ``jobs[start:]``, all of one model chemistry and size; ``reals``/``bases`` as arrays."""
        k, L = len(jobs[start].real), len(jobs[start].basis)
        if not self._fits(k, L if kind == "pairs" else 0):
            pairs = {(jobs[i].real, jobs[i].basis): i for i in range(start, len(jobs))}
            self.buckets[(model, k, L)] = _Bucket(start, k, L, "dict", pairs=pairs)
            return
        codes = self.rank(reals)
        space = math.comb(self.n, k)
        if kind == "pairs":
            assert bases is not None  # pairs come with their bases
            codes = codes * math.comb(self.n, L) + self.rank(bases)
            space *= math.comb(self.n, L)
        bucket = _Bucket(start, k, L, kind, codes, jobs[start].basis if kind == "same" else None)
        if space <= max(DENSE_TABLE_ENTRIES, DENSE_TABLE_RATIO * len(codes)):
            bucket.table = np.full(space, -1, dtype=np.int64)
            bucket.table[codes] = np.arange(start, start + len(codes))
        else:
            bucket.order = np.argsort(codes, kind="stable")
        self.buckets[(model, k, L)] = bucket

    def lookup(self, model: str, reals: np.ndarray, basis: str | np.ndarray | tuple) -> np.ndarray:
        """Job index of each row of ``reals`` with basis ``basis`` ("own": the real fragments;
        a tuple: the same for all; an array: one row each), -1 where the plan has no such calculation."""
        k = reals.shape[1]
        L = k if isinstance(basis, str) else (len(basis) if isinstance(basis, tuple) else basis.shape[1])
        bucket = self.buckets.get((model, k, L))
        missing = np.full(len(reals), -1, dtype=np.int64)
        if bucket is None or not len(reals):
            return missing
        if isinstance(basis, str):
            bases = reals
        elif isinstance(basis, tuple):
            bases = np.broadcast_to(np.array(basis, dtype=np.int64), (len(reals), L))
        else:
            bases = basis
        if bucket.kind == "dict":
            assert bucket.pairs is not None  # a dict bucket has its pairs
            get = bucket.pairs.get
            return np.array(
                [get((tuple(r), tuple(b)), -1) for r, b in zip(reals.tolist(), bases.tolist())], dtype=np.int64
            )
        if bucket.kind == "pairs":
            return bucket.find(self.rank(reals) * math.comb(self.n, L) + self.rank(bases))
        found = bucket.find(self.rank(reals))
        if bucket.kind == "own":
            same = True if isinstance(basis, str) else (reals == bases).all(axis=1)
        else:
            same = (bases == np.array(bucket.basis, dtype=np.int64)).all(axis=1)
        return np.where(same, found, missing)


def _rows(tuples: Sequence[tuple[int, ...]], width: int) -> np.ndarray:
    """Tuples of ``width`` ints as the rows of an array."""
    return np.fromiter(itertools.chain.from_iterable(tuples), dtype=np.int64, count=len(tuples) * width).reshape(
        len(tuples), width
    )


Calculations = Iterator[tuple[str, list[tuple[tuple[int, ...], tuple[int, ...]]]]]


def _computed(core: ManyBodyCore) -> Calculations:
    """Per model chemistry, the (real, basis) pairs of QCManyBody's compute map: the calculations of a whole expansion
    (one model at a time, so that only one model's list exists at once)."""
    for model, compute_dict in core.compute_map.items():
        yield model, list(set().union(*compute_dict["all"].values()))


def _kept_computed(core: ManyBodyCore, kept: dict[int, np.ndarray], bsse_types: Sequence[str]) -> Calculations:
    """Per model chemistry, the (real, basis) pairs the kept clusters' increments need (``kept``: per order, one row
    per cluster).

    What :func:`_computed` lists for the whole expansion, restricted to the kept clusters,
    but made from them: QCManyBody's map enumerates every combination of every order,
    22 million trimers for 512 waters whatever the screening keeps.
    """
    model_of = {nb: mc for mc, nbs in core.nbodies_per_mc_level.items() for nb in nbs if nb != "supersystem"}
    groups: dict[str, dict[tuple[int, int], list[np.ndarray]]] = {model: {} for model in core.nbodies_per_mc_level}
    for bsse in bsse_types:
        for nbody in range(1, core.max_nbody + 1):
            clusters = kept.get(nbody)
            if clusters is None or not len(clusters):
                continue
            own = basis_rule(bsse, nbody) == "own"  # else the cluster's basis (vmfc): cp is not screenable
            for positions in term_shape(nbody)[0]:
                real = clusters[:, list(positions)]
                basis = real if own else clusters
                # rows of (real, basis) fragments; a basis as large as the real set is the real set
                rows = real if basis.shape[1] == len(positions) else np.hstack([real, basis])
                groups[model_of[nbody]].setdefault((len(positions), basis.shape[1]), []).append(rows)
    for model, by_size in groups.items():
        pairs: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        for (k, width), parts in by_size.items():
            rows = _unique_rows(np.concatenate(parts), core.nfragments)
            reals = list(map(tuple, rows[:, :k].tolist()))
            pairs.extend(zip(reals, reals if width == k else map(tuple, rows[:, k:].tolist())))
        yield model, pairs


def _unique_rows(rows: np.ndarray, nfr: int) -> np.ndarray:
    """``np.unique(rows, axis=0)`` (lexicographic), several times faster where a row of fragment numbers fits one
    int64 as digits in base ``nfr + 1``."""
    base = nfr + 1
    if (base ** rows.shape[1]) >= 2**63:
        return np.unique(rows, axis=0)
    weights = base ** np.arange(rows.shape[1] - 1, -1, -1, dtype=np.int64)
    keys = np.unique(rows @ weights)
    return (keys[:, None] // weights) % base


def _jobs(nfr: int, computed: Calculations) -> tuple[list[FragmentJob], JobIndex]:
    """The calculations ``computed`` lists per model, in a stable order (model, size, indices), and their index.

    The order is that of sorting each model's (real, basis) pairs by
    ``(len(real), len(basis), (real, basis))``, done with numpy; each job's label is made
    alongside (the same string QCManyBody's labeler gives).
    """
    index = JobIndex(nfr)
    jobs: list[FragmentJob] = []
    for model, found in computed:
        if not found:
            continue
        reals_all = list(map(operator.itemgetter(0), found))
        bases_all = list(map(operator.itemgetter(1), found))
        size = np.fromiter(map(len, reals_all), dtype=np.int64, count=len(found)) * (nfr + 1)
        size += np.fromiter(map(len, bases_all), dtype=np.int64, count=len(found))
        by_size = np.argsort(size, kind="stable")
        sizes, starts = np.unique(size[by_size], return_index=True)
        for code, begin, end in zip(sizes.tolist(), starts.tolist(), [*starts[1:].tolist(), len(found)]):
            k, L = divmod(code, nfr + 1)
            members = by_size[begin:end].tolist()
            real_tuples = list(map(reals_all.__getitem__, members))
            basis_tuples = list(map(bases_all.__getitem__, members))
            reals = _rows(real_tuples, k)
            bases = None
            first = basis_tuples[0]
            if L == k:  # the real fragments are among the basis fragments: the same
                kind = "own"
            elif basis_tuples.count(first) == len(basis_tuples):
                kind = "same"
            else:
                kind = "pairs"
                bases = _rows(basis_tuples, L)
            order = np.lexsort((reals if bases is None else np.hstack([reals, bases])).T[::-1])
            reals = reals[order]
            order = order.tolist()
            real_tuples = list(map(real_tuples.__getitem__, order))
            start = len(jobs)
            if kind == "own":
                labels = job_labels(model, real_tuples, None)
                jobs.extend(map(_make_job, itertools.repeat(model), real_tuples, real_tuples, labels))
            elif kind == "same":
                labels = job_labels(model, real_tuples, first)
                jobs.extend(map(_make_job, itertools.repeat(model), real_tuples, itertools.repeat(first), labels))
            else:
                basis_tuples = list(map(basis_tuples.__getitem__, order))
                assert bases is not None  # pairs come with their bases
                bases = bases[order]
                labels = job_labels(model, real_tuples, basis_tuples)
                jobs.extend(map(_make_job, itertools.repeat(model), real_tuples, basis_tuples, labels))
            del labels, real_tuples, basis_tuples
            index.add(model, jobs, start, reals, bases, kind)
    return jobs, index


def _cluster_dtype(nfragments: int) -> type:
    """The smallest integer type for fragment indices: blocks and graph nodes carry clusters in it."""
    return np.int16 if nfragments < 2**15 else np.int32


def _cluster_rows(nfr: int, nbody: int) -> np.ndarray:
    """Every cluster of one order in lexicographic order, one row each (1-based)."""
    flat = itertools.chain.from_iterable(itertools.combinations(range(1, nfr + 1), nbody))
    count = math.comb(nfr, nbody)
    return np.fromiter(flat, dtype=np.int64, count=count * nbody).reshape(count, nbody)


def _increment_blocks(
    core: ManyBodyCore,
    jobs: list[FragmentJob],
    index: JobIndex,
    kept: dict[int, np.ndarray] | None = None,
    bsse_types: Sequence[str] | None = None,
) -> list[IncrementBlock]:
    """Per BSSE treatment and order, the increments of every cluster whose terms were all computed.

    nocp uses each subsystem in its own basis, cp in the full-cluster basis (the 1-body
    increment is the monomer in its own basis, as QCManyBody reports it), vmfc in the
    basis of the cluster itself. Clusters whose terms are not in the plan (for example
    intermediate orders with ``supersystem_ie_only``) get no increment. With ``kept``
    (screening; per order, one row per kept cluster), only the kept clusters of each
    order. ``bsse_types``: these treatments only (default: QCManyBody's).
    tests/test_plan_scale.py builds the same one Increment at a time and compares.
    """
    nfr = core.nfragments
    full = tuple(range(1, nfr + 1))
    model_of = {nb: mc for mc, nbs in core.nbodies_per_mc_level.items() for nb in nbs if nb != "supersystem"}
    blocks = []
    for bsse in bsse_types if bsse_types is not None else [b.value for b in core.bsse_type]:
        for nbody in range(1, core.max_nbody + 1):
            model = model_of[nbody]
            shape, signs = term_shape(nbody)
            rule = basis_rule(bsse, nbody)
            clusters = (
                _cluster_rows(nfr, nbody) if kept is None else kept.get(nbody, np.zeros((0, nbody), dtype=np.int64))
            )
            basis: str | np.ndarray | tuple = "own" if rule == "own" else full if rule == "full" else clusters
            terms = np.empty((len(clusters), len(shape)), dtype=np.int32 if len(jobs) < 2**31 - 1 else np.int64)
            for column, positions in enumerate(shape):
                terms[:, column] = index.lookup(model, clusters[:, list(positions)], basis)
            complete = (terms >= 0).all(axis=1)
            if not complete.all():  # some term not computed (e.g. supersystem_ie_only): no increment
                clusters, terms = clusters[complete], terms[complete]
            if not len(clusters):
                continue
            blocks.append(
                IncrementBlock(bsse, model, nbody, clusters.astype(_cluster_dtype(nfr)), signs, terms, shape, rule)
            )
    if core.has_supersystem:
        have = {(j.model, j.real, j.basis): i for i, j in enumerate(jobs) if j.model == core.levels["supersystem"]}
        model = core.levels["supersystem"]
        merged = supersystem_terms(core)
        if all(key in have for key in merged):
            ss = [(have[key], sign) for key, sign in merged.items() if sign]
            for bsse in (b.value for b in core.bsse_type):
                blocks.append(
                    IncrementBlock(
                        bsse,
                        model,
                        "supersystem",
                        np.array([full], dtype=_cluster_dtype(nfr)),
                        tuple(s for _, s in ss),
                        np.array([[i for i, _ in ss]], dtype=np.int64),
                    )
                )
    return blocks


def _check_programs(
    plan_jobs: list[FragmentJob], specs: dict[str, dict], check_installed: bool, symbols: list[str]
) -> None:
    """Refuse what cannot give a right number: missing programs, ghosts for ghost-less programs."""
    if check_installed:
        import qcengine

        from mbdask.programs import register_programs

        register_programs()
        available = qcengine.list_available_programs()
        for model, spec in specs.items():
            if spec["program"] not in available:
                known = spec["program"] in qcengine.list_all_programs()
                reason = "is not installed here" if known else "is not a QCEngine program"
                raise BadInputError(
                    f"model '{model}': program '{spec['program']}' {reason} "
                    f"(available: {', '.join(sorted(available)) or 'none'})"
                )
    from mbdask.programs import check_specification

    for model, spec in specs.items():
        try:
            check_specification(spec["program"], spec["specification"], symbols)
        except ValueError as exc:
            raise BadInputError(f"model '{model}': {exc}") from None
    ghosted = {job.model for job in plan_jobs if job.basis != job.real}
    for model in sorted(ghosted):
        program = specs[model]["program"]
        if program in PROGRAMS_WITHOUT_GHOSTS:
            raise BadInputError(
                f"model '{model}': {program} ignores ghost atoms, so cp/vmfc would silently give nocp numbers; "
                "use bsse_type nocp (--bsse nocp on the command line) or a program with ghost atoms (pyscf, psi4)"
            )


def _check_levels(levels: dict | None, nfragments: int) -> None:
    """Clear messages for the level errors QCManyBody reports obscurely or not at all."""
    if nfragments < 2:
        raise BadInputError(
            "molecule has only one fragment; an expansion needs at least two: "
            "give 'fragments' (lists of atom indices, one per subsystem)"
        )
    if not levels:
        return
    orders: dict[str, list] = {}
    for nbody, model in levels.items():
        orders.setdefault(model, []).append(nbody)
    for model, nbodies in orders.items():
        if len(nbodies) > 1:
            raise BadInputError(
                f"levels give model chemistry '{model}' to n-body orders {nbodies} separately; each model chemistry "
                "covers one contiguous range of orders (keys are the highest order of each)"
            )
    numeric = [nb for nb in levels if nb != "supersystem"]
    if numeric and max(numeric) > nfragments:
        raise BadInputError(f"levels go up to {max(numeric)}-body but the molecule has only {nfragments} fragments")


def make_plan(inp: InputLike, *, check_installed: bool = True, screening: ScreeningLike = None) -> Plan:
    """Validate an input and list its calculations; raises ``BadInputError`` for bad input.

    ``screening`` (:mod:`mbdask.planning.screening`) keeps only some clusters per order.
    """
    with gc_paused():
        return _make_plan(inp, check_installed, screening)


def _make_plan(inp: InputLike, check_installed: bool, screening: ScreeningLike) -> Plan:
    settings = Screening.from_options(screening)
    model = load_input(inp)
    keywords = model.specification.keywords
    if keywords.embedding_charges:
        raise BadInputError("embedding_charges are not supported by mbdask yet; remove them or use QCManyBody directly")
    driver = model.specification.driver.value
    if driver not in SUPPORTED_DRIVERS:
        raise BadInputError(f"driver '{driver}' is not supported; use one of {', '.join(SUPPORTED_DRIVERS)}")
    _check_levels(keywords.levels, len(model.molecule.fragments))
    computer = _build_computer(model)
    core = computer.qcmb_core
    specs = _specifications(model, computer)
    missing = set(core.nbodies_per_mc_level) - set(specs)
    if missing:
        hint = ""
        if missing == {"(auto)"} and len(specs) == 1:
            only = next(iter(specs))
            hint = f"; with one specification give levels {{{core.max_nbody}: '{only}'}} or name it '(auto)'"
        raise BadInputError(
            f"levels name model chemistries {sorted(missing)} that specification.specification does not define "
            f"(defined: {sorted(specs)}){hint}"
        )
    sizes = {i + 1: len(frag) for i, frag in enumerate(core.molecule.fragments)}
    screened, kept, bsse_types = None, None, None
    if settings is None:
        computed = _computed(core)
    else:  # the calculations from the kept clusters: QCManyBody's compute map is never built
        check_screenable(
            settings,
            [b.value for b in keywords.bsse_type],
            core.max_nbody,
            core.has_supersystem,
            keywords.supersystem_ie_only,
        )
        screened = kept_clusters(settings, pair_distances(model.molecule, screening_radius(settings)), core.max_nbody)
        kept = screened.rows
        # QCManyBody adds cp by itself where vmfc's calculations hold it; a screened set does not
        bsse_types = [b.value for b in core.bsse_type if b.value != "cp"]
        computed = _kept_computed(core, kept, bsse_types)
    jobs, index = _jobs(core.nfragments, computed)
    _check_programs(jobs, specs, check_installed, list(model.molecule.symbols))
    blocks = _increment_blocks(core, jobs, index, kept, bsse_types)
    del index
    drop_compute_map(core)  # QCManyBody's cached compute map (100+ MB at scale): not needed after this
    return Plan(
        input=model,
        computer=computer,
        jobs=jobs,
        blocks=blocks,
        natoms_per_fragment=sizes,
        specifications=specs,
        screened=screened,
    )


def truncated_input(inp: ManyBodyInput, nbody: int) -> ManyBodyInput:
    """The same expansion stopped at ``nbody`` (levels cut there, no supersystem).

    What a run that completed only through ``nbody`` can still answer exactly
    (``keep_going``): each inp chemistry keeps the orders it had up to ``nbody``.
    """
    keywords = inp.specification.keywords
    levels = keywords.levels
    new_levels = None
    if levels:
        new_levels, previous = {}, 0
        for top in sorted(nb for nb in levels if nb != "supersystem"):
            if previous >= nbody:
                break
            new_levels[min(top, nbody)] = levels[top]
            previous = top
    new_keywords = keywords.model_copy(update={"levels": new_levels, "max_nbody": nbody})
    spec = inp.specification.model_copy(update={"keywords": new_keywords})
    return inp.model_copy(update={"specification": spec})

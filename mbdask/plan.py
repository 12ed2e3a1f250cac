"""From a ``ManyBodyInput`` to the list of fragment calculations and cluster increments.

The plan is pure bookkeeping: no molecule of a fragment is built and no program runs.
Fragment calculations come from QCManyBody's own ``ManyBodyCore.compute_map`` and are
deduplicated by QCManyBody's labels, so mbdask runs exactly the calculations QCManyBody
would. Increments (the n-body contribution of one cluster, per BSSE treatment) record
which of those calculations they combine and with which sign.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional, Union

import pydantic
import qcelemental
from qcmanybody import ManyBodyCore
from qcmanybody.models.v2 import ManyBodyInput
from qcmanybody.utils import labeler
from qcmanybody.v2 import ManyBodyComputer

from .errors import InputError
from .inputs import InputLike, describe_validation_error, load_input
from .screening import ScreenedSet, Screening, ScreeningLike, check_screenable, fragment_distances, kept_clusters

#: Programs that ignore ghost atoms: cp/vmfc with them would silently be nocp.
PROGRAMS_WITHOUT_GHOSTS = frozenset({"xtb", "mopac", "aimnet2", "mace", "torchani", "openmm", "rdkit", "dftd3", "dftd4", "s-dftd3", "gcp", "mp2d"})
SUPPORTED_DRIVERS = ("energy", "gradient", "hessian")


@dataclass(frozen=True)
class FragmentJob:
    """One QC calculation: model chemistry ``model``, real fragments, basis fragments (1-based)."""

    model: str
    real: tuple[int, ...]
    basis: tuple[int, ...]

    @cached_property
    def label(self) -> str:
        """QCManyBody's label, the key of ``cluster_properties`` (computed once: graphs use it per term)."""
        return labeler(self.model, self.real, self.basis)

    @property
    def nbody(self) -> int:
        return len(self.real)

    @property
    def ghosts(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.basis) - set(self.real)))


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
    nbody: Union[int, str]
    terms: tuple[tuple[FragmentJob, int], ...]


@dataclass
class Plan:
    """Everything mbdask needs to build a graph, computed without running anything."""

    input: ManyBodyInput
    computer: ManyBodyComputer
    jobs: list[FragmentJob]
    increments: list[Increment]
    natoms_per_fragment: dict[int, int]
    specifications: dict[str, dict] = field(repr=False)
    #: the kept clusters of a screened expansion (None: every cluster runs)
    screened: Optional[ScreenedSet] = None

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

    @cached_property
    def graph_size(self) -> dict[str, int]:
        """Nodes and edges of the graph ``graph.build_graph`` makes from this plan unbatched (one task per
        calculation and per increment): an upper bound on what ``start`` sends after batching."""
        from .graph import collect_size

        levels = {(inc.bsse, inc.nbody) for inc in self.increments}
        chains = len({bsse for bsse, _ in levels})
        collects = math.ceil(len(self.jobs) / collect_size(len(self.jobs)))
        edges = len(self.jobs)  # context -> fragment
        edges += sum(len(inc.terms) for inc in self.increments)  # fragment -> increment
        edges += len(self.increments) + len(levels) - chains  # increment -> level, level -> next level
        edges += len(self.jobs)  # fragment -> collect
        edges += 1 + collects + len(levels)  # context, collects and levels -> result
        nodes = 1 + len(self.jobs) + len(self.increments) + len(levels) + collects + 1
        return {"nodes": nodes, "edges": edges, "fragments": len(self.jobs), "increments": len(self.increments), "levels": len(levels)}

    def summary(self) -> str:
        """Human-readable table: calculations per model chemistry and n-body order."""
        lines = [
            f"{self.nfragments} fragments, {sum(self.natoms_per_fragment.values())} atoms; driver {self.driver}; "
            f"bsse {', '.join(self.bsse_types)}; max n-body {self.core.max_nbody}"
        ]
        for model in self.models:
            spec = self.specifications[model]
            method = spec["specification"]["model"]
            title = f"{method.get('method')}/{method.get('basis')}" if method.get("basis") else f"{method.get('method')}"
            total = sum(self.counts[model].values())
            lines.append(f"  model '{model}' ({spec['program']} {title}): {total} calculations")
            for nbody, count in self.counts[model].items():
                lines.append(f"      {nbody}-body: {count:8d}")
        if self.screened is not None:
            summary = self.screened.summary()
            cutoffs = ", ".join(f"{k}-body {v:g} A" for k, v in summary["distance_cutoffs"].items()) or "none"
            lines.append(f"  screening (distance cutoffs: {cutoffs}{'; explicit clusters' if summary['explicit_clusters'] else ''}):")
            for nbody, row in summary["orders"].items():
                share = 100.0 * row["kept"] / row["all"] if row["all"] else 100.0
                lines.append(f"      {nbody}-body: {row['kept']:8d} of {row['all']} clusters kept ({share:.1f}%), {row['candidates']} candidates")
            if self.screened.settings.energy_thresholds and "energy" not in summary:
                taus = ", ".join(f"{k}-body {v:g} kcal/mol" for k, v in sorted(self.screened.settings.energy_thresholds.items()))
                lines.append(f"  energy screening ({taus}) decides at run time with {self.screened.settings.cheap_model['model']['method']}; "
                             "counted above: the candidates it starts from")
        size = self.graph_size
        lines.append(
            f"  unbatched graph: {size['nodes']} nodes, {size['edges']} edges "
            f"({size['fragments']} fragment, {size['increments']} increment, {size['levels']} level nodes)"
        )
        return "\n".join(lines)


def _build_computer(model: ManyBodyInput) -> ManyBodyComputer:
    """QCManyBody's own validation of the keywords, without running anything."""
    try:
        return ManyBodyComputer.from_manybodyinput(model, build_tasks=False)
    except (pydantic.ValidationError, qcelemental.ValidationError, ValueError, KeyError, AssertionError) as exc:
        raise InputError(describe_validation_error(exc)) from None


def _specifications(model: ManyBodyInput, computer: ManyBodyComputer) -> dict[str, dict]:
    """Per model chemistry: program and atomic specification, driver set to the MBE driver.

    The same transformation QCManyBody's ``ManyBodyComputer.from_manybodyinput`` applies.
    """
    specs = {}
    for name, spec in model.specification.specification.items():
        spec = spec.model_dump()
        program = spec.pop("program")
        spec["driver"] = computer.driver
        spec.pop("schema_name", None)
        specs[name] = {"program": program, "specification": spec}
    return specs


def _jobs(core: ManyBodyCore) -> list[FragmentJob]:
    """Unique calculations in QCManyBody's compute map, in a stable order (model, size, indices)."""
    seen: set[tuple] = set()
    jobs = []
    for model, compute_dict in core.compute_map.items():
        found = set().union(*compute_dict["all"].values())
        for real, basis in sorted(found, key=lambda rb: (len(rb[0]), len(rb[1]), rb)):
            key = (model, tuple(real), tuple(basis))
            if key not in seen:
                seen.add(key)
                jobs.append(FragmentJob(model, tuple(real), tuple(basis)))
    return jobs


def _increments(core: ManyBodyCore, jobs: list[FragmentJob], kept: Optional[dict[int, set]] = None) -> list[Increment]:
    """Per BSSE treatment, the increment of every cluster whose terms were all computed.

    nocp uses each subsystem in its own basis, cp in the full-cluster basis (the 1-body
    increment is the monomer in its own basis, as QCManyBody reports it), vmfc in the
    basis of the cluster itself. Clusters whose terms are not in the plan (for example
    intermediate orders with ``supersystem_ie_only``) get no increment. With ``kept``
    (screening), only the kept clusters of each order.
    """
    have = {(j.model, j.real, j.basis): j for j in jobs}
    nfr = core.nfragments
    full = tuple(range(1, nfr + 1))
    model_of = {nb: mc for mc, nbs in core.nbodies_per_mc_level.items() for nb in nbs if nb != "supersystem"}
    increments = []
    for bsse in (b.value for b in core.bsse_type):
        for nbody in range(1, core.max_nbody + 1):
            model = model_of[nbody]
            # sub-cluster positions and signs are the same for every cluster of this order
            shape = [(sub, (-1) ** (nbody - k)) for k in range(1, nbody + 1) for sub in itertools.combinations(range(nbody), k)]
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
        terms = [((model, full, full), 1)]
        for nbody in range(1, core.max_nbody + 1):
            for cluster in itertools.combinations(full, nbody):
                for k in range(1, nbody + 1):
                    for sub in itertools.combinations(cluster, k):
                        terms.append(((model, sub, sub), -((-1) ** (nbody - k))))
        merged: dict[tuple, int] = defaultdict(int)
        for key, sign in terms:
            merged[key] += sign
        if all(key in have for key in merged):
            ss_terms = tuple((have[key], sign) for key, sign in merged.items() if sign)
            for bsse in (b.value for b in core.bsse_type):
                increments.append(Increment(bsse, model, full, "supersystem", ss_terms))
    return increments


def _check_programs(plan_jobs: list[FragmentJob], specs: dict[str, dict], check_installed: bool, symbols: list[str]) -> None:
    """Refuse what cannot give a right number: missing programs, ghosts for ghost-less programs."""
    if check_installed:
        import qcengine

        from .programs import register_programs

        register_programs()
        available = qcengine.list_available_programs()
        for model, spec in specs.items():
            if spec["program"] not in available:
                known = spec["program"] in qcengine.list_all_programs()
                reason = "is not installed here" if known else "is not a QCEngine program"
                raise InputError(
                    f"model '{model}': program '{spec['program']}' {reason} (available: {', '.join(sorted(available)) or 'none'})"
                )
    from .programs import check_specification

    for model, spec in specs.items():
        try:
            check_specification(spec["program"], spec["specification"], symbols)
        except ValueError as exc:
            raise InputError(f"model '{model}': {exc}") from None
    ghosted = {job.model for job in plan_jobs if job.basis != job.real}
    for model in sorted(ghosted):
        program = specs[model]["program"]
        if program in PROGRAMS_WITHOUT_GHOSTS:
            raise InputError(
                f"model '{model}': {program} ignores ghost atoms, so cp/vmfc would silently give nocp numbers; "
                "use bsse_type nocp or a program with ghost atoms (pyscf, psi4)"
            )


def _check_levels(levels: Optional[dict], nfragments: int) -> None:
    """Clear messages for the level errors QCManyBody reports obscurely or not at all."""
    if nfragments < 2:
        raise InputError(
            "molecule has only one fragment; an expansion needs at least two: give 'fragments' (lists of atom indices, one per subsystem)"
        )
    if not levels:
        return
    orders: dict[str, list] = {}
    for nbody, model in levels.items():
        orders.setdefault(model, []).append(nbody)
    for model, nbodies in orders.items():
        if len(nbodies) > 1:
            raise InputError(
                f"levels give model chemistry '{model}' to n-body orders {nbodies} separately; each model chemistry "
                "covers one contiguous range of orders (keys are the highest order of each)"
            )
    numeric = [nb for nb in levels if nb != "supersystem"]
    if numeric and max(numeric) > nfragments:
        raise InputError(f"levels go up to {max(numeric)}-body but the molecule has only {nfragments} fragments")


def make_plan(inp: InputLike, *, check_installed: bool = True, screening: ScreeningLike = None) -> Plan:
    """Validate an input and list its calculations; raises ``InputError`` for bad input.

    ``screening`` (:mod:`mbdask.screening`) keeps only some clusters per order.
    """
    settings = Screening.from_options(screening)
    model = load_input(inp)
    keywords = model.specification.keywords
    if keywords.embedding_charges:
        raise InputError("embedding_charges are not supported by mbdask yet; remove them or use QCManyBody directly")
    driver = model.specification.driver.value
    if driver not in SUPPORTED_DRIVERS:
        raise InputError(f"driver '{driver}' is not supported; use one of {', '.join(SUPPORTED_DRIVERS)}")
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
        raise InputError(
            f"levels name model chemistries {sorted(missing)} that specification.specification does not define "
            f"(defined: {sorted(specs)}){hint}"
        )
    jobs = _jobs(core)
    _check_programs(jobs, specs, check_installed, list(model.molecule.symbols))
    sizes = {i + 1: len(frag) for i, frag in enumerate(core.molecule.fragments)}
    screened = None
    if settings is not None:
        check_screenable([b.value for b in keywords.bsse_type], core.has_supersystem)
        screened = kept_clusters(settings, fragment_distances(model.molecule), core.max_nbody)
    increments = _increments(core, jobs, screened.kept if screened else None)
    if screened is not None:
        # QCManyBody adds cp by itself where vmfc's calculations hold it; a screened set does not
        increments = [inc for inc in increments if inc.bsse != "cp"]
        needed = {job for inc in increments for job, _ in inc.terms}
        jobs = [job for job in jobs if job in needed]
    return Plan(
        input=model,
        computer=computer,
        jobs=jobs,
        increments=increments,
        natoms_per_fragment=sizes,
        specifications=specs,
        screened=screened,
    )


def truncated_input(model: ManyBodyInput, nbody: int) -> ManyBodyInput:
    """The same expansion stopped at ``nbody`` (levels cut there, no supersystem).

    What a run that completed only through ``nbody`` can still answer exactly
    (``keep_going``): each model chemistry keeps the orders it had up to ``nbody``.
    """
    keywords = model.specification.keywords
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
    spec = model.specification.model_copy(update={"keywords": new_keywords})
    return model.model_copy(update={"specification": spec})

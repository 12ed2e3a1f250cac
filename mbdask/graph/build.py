"""The Dask graph of a planned expansion: keys, tasks, annotations.

Shape (see docs/design.md):

* one *context* node holding the input, sent once to each worker that needs it;
* one *fragment* node per unit (:mod:`mbdask.planning.batching`): one expensive calculation, or a
  batch of cheap ones of the same model chemistry and order, annotated with a priority
  from its predicted cost, retries, and the cores and memory it may use when they are
  resources;
* one *increment* node per cluster and BSSE treatment (per batch of clusters when the
  fragments are batched), depending on exactly the fragment nodes of that cluster's
  subsystems, so a trimer's increment is ready when its seven subsystems are, while other
  trimers still run;
* one *level* node per BSSE treatment and n-body order (sum of that order's increments,
  chained to the previous order so it carries the cumulative result);
* *collect* nodes, each turning the outputs of a few dozen units (in the order they are
  expected to finish) into columns, so that the result node fetches a hundred-odd compact
  keys at the end rather than one dict per calculation;
* one *result* node that runs QCManyBody's ``analyze`` over all fragment results.

Keys are tuples whose first element, the dashboard's group name, reads like
``"2b frag hf/cc_pvdz"``, ``"3b incr nocp"`` or ``"2b level cp"``: one progress row per model
chemistry and n-body order, the order first, because the dashboard's progress panel cuts a
name longer than 15 characters to its first 12.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from mbdask import config
from mbdask.calculation.execute import ExpansionContext, run_unit
from mbdask.planning.batching import Unit, make_units
from mbdask.planning.cost import CostModel
from mbdask.planning.manybody import coefficients
from mbdask.planning.plan import FragmentJob, Increment, IncrementBlock, Plan, gc_paused
from mbdask.results.assemble import (
    assemble_result,
    borrowed_outputs,
    collect_outputs,
    increment_energies,
    inline_limit,
    level_sum,
)
from mbdask.upstream import job_labels

Key = tuple


#: Characters Dask's ``key_split`` cuts a group name at ('-'; ',' in a name that starts with a
#: digit) or strips from its ends (quotes, parentheses, '_'), replaced where a model label has them.
_GROUP_SAFE = str.maketrans({"-": "_", ",": ";", "(": "[", ")": "]", "'": "", '"': ""})


def dashboard_name(text: str) -> str:
    """``text`` as Dask keeps it in a group name: ``dask.utils.key_split`` reads a key's first element up to
    a '-' (and, as the names start with the order's digit, up to a ',' with quotes and parentheses stripped)."""
    name = str(text).translate(_GROUP_SAFE)
    return name.rstrip("_") or name


def _indices(indices: Sequence[int]) -> str:
    return "(" + ",".join(map(str, indices)) + ")"


def _order(nbody: int | str) -> str:
    """The n-body order as a group name starts: ``2b``, or ``full`` for the supersystem (the full cluster;
    ``"full level vmfc"`` fits the progress panel's 15 characters, ``"super level vmfc"`` would not)."""
    return "full" if nbody == "supersystem" else f"{nbody}b"


def group_name(nbody: int | str, kind: str, what: str) -> str:
    """The dashboard's group of a task: ``"2b frag gfn2_xtb"``, ``"3b incr nocp"``.

    What tells groups apart comes first: the dashboard's progress panel shows a name of more
    than 15 characters as its first 12 and "...", so four rows of a 4-body run once all read
    "frag gfn2_xt...". The order, then the kind of task (short), then the model chemistry or
    BSSE treatment.
    """
    return f"{_order(nbody)} {kind} {dashboard_name(what)}"


def _job_name(job: FragmentJob) -> str:
    return f"{_indices(job.real)}@{_indices(job.basis)}"


def fragment_key(job: FragmentJob, token: str, kind: str = "frag") -> Key:
    """Key of a unit holding the one calculation ``job``."""
    return (group_name(job.nbody, kind, job.model), token, _job_name(job))


def unit_key(unit: Unit, index: int, token: str, kind: str = "frag") -> Key:
    """Key of a unit: its calculation's (:func:`fragment_key`), or its batch's, numbered ``index``.

    ``kind`` names the dashboard's group after the order: ``frag`` for the expansion's
    calculations, ``cheap`` for energy screening's."""
    if len(unit.jobs) == 1:
        return fragment_key(unit.jobs[0], token, kind)
    return (
        group_name(unit.nbody, kind, unit.model),
        token,
        f"batch {index} {_job_name(unit.jobs[0])}+{len(unit.jobs) - 1}",
    )


def increment_key(bsse: str, nbody: int | str, cluster: Sequence[int], token: str, batch: Key | None = None) -> Key:
    """Key of the increment of ``cluster``, or of all increments anchored in the unit ``batch``."""
    name = _indices(cluster) if batch is None else f"batch {batch[2]}"
    return (group_name(nbody, "incr", bsse), token, name)


def level_key(bsse: str, nbody: int | str, token: str) -> Key:
    return (group_name(nbody, "level", bsse), token)


def context_key(token: str) -> Key:
    return ("mbdask context", token)


def result_key(token: str) -> Key:
    return ("mbdask result", token)


def collect_key(index: int, token: str) -> Key:
    return ("mbdask collect", token, index)


def collect_size(units: int) -> int:
    """Units per collect node for a graph of ``units`` units: about ``mbdask.graph.collect-nodes``
    nodes (enough that most finish while later fragments still run), each merging at least
    ``mbdask.graph.min-collect-units`` units."""
    return max(
        config.number("mbdask.graph.min-collect-units"), math.ceil(units / config.number("mbdask.graph.collect-nodes"))
    )


def collect_groups(unit_keys: list[Key], priorities: dict[Key, float]) -> list[list[Key]]:
    """Unit keys in chunks, highest priority first, so that a chunk's units run at about the same time."""
    ordered = sorted(unit_keys, key=lambda key: -priorities[key])
    size = collect_size(len(ordered))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def graph_size(plan: Plan) -> dict[str, int]:
    """Nodes and edges of the graph :func:`build_graph` makes from ``plan`` unbatched (one task per
    calculation and per increment): an upper bound on what ``start`` sends after batching."""
    blocks = [block for block in plan.blocks if len(block)]
    levels = {(block.bsse, block.nbody) for block in blocks}
    chains = len({bsse for bsse, _ in levels})
    increments = sum(len(block) for block in blocks)
    collects = math.ceil(len(plan.jobs) / collect_size(len(plan.jobs)))
    edges = len(plan.jobs)  # context -> fragment
    edges += sum(block.terms.size for block in blocks)  # fragment -> increment
    edges += increments + len(levels) - chains  # increment -> level, level -> next level
    edges += len(plan.jobs)  # fragment -> collect
    edges += 1 + collects + len(levels)  # context, collects and levels -> result
    nodes = 1 + len(plan.jobs) + increments + len(levels) + collects + 1
    return {
        "nodes": nodes,
        "edges": edges,
        "fragments": len(plan.jobs),
        "increments": increments,
        "levels": len(levels),
    }


def graph_summary(plan: Plan) -> str:
    """The line ``python -m mbdask plan`` prints under the plan's summary."""
    size = graph_size(plan)
    return (
        f"  unbatched graph: {size['nodes']} nodes, {size['edges']} edges "
        f"({size['fragments']} fragment, {size['increments']} increment, {size['levels']} level nodes)"
    )


@dataclass
class FragmentResources:
    """What one fragment may use: cores for its threads, memory in GiB for the program.

    ``annotate_cores``/``annotate_memory`` say whether tasks carry them as Dask resource
    restrictions. Cores are annotated only where a thread slot is not already a core
    (fragments with more than one core, or workers with more threads than cores): a
    restricted task bypasses the scheduler's queue, which otherwise hands out work in
    priority order as threads free up (the shortest makespan in benchmarks/bench_makespan.py).
    """

    cores: int = 1
    memory_gib: float | None = None
    annotate_cores: bool = True
    annotate_memory: bool = False

    def annotation(self, cores: int | None = None) -> dict[str, float]:
        res: dict[str, float] = {}
        if self.annotate_cores:
            res["cores"] = cores or self.cores
        if self.annotate_memory and self.memory_gib:
            res["memory"] = self.memory_gib * 2**30
        return res


def cluster_increments(
    model: str, basis: str, shape: tuple, signs: tuple, full: tuple, clusters: np.ndarray, *units: dict[str, dict]
) -> list[float]:
    """:func:`increment_energies` of ``clusters`` (one row each), their terms rebuilt here from
    the positions ``shape`` of each subsystem in the cluster, ``signs`` and the basis rule
    (:data:`mbdask.planning.manybody.BASIS_RULES`): the graph carries the clusters, not millions of labels."""
    rows = clusters.tolist()
    columns = []
    for positions, sign in zip(shape, signs):
        reals = [[row[p] for p in positions] for row in rows]
        bases = None if basis == "own" else tuple(full) if basis == "full" else rows
        columns.append([(label, sign) for label in job_labels(model, reals, bases)])
    return increment_energies(list(zip(*columns)), *units)


class IncrementGroups(Mapping):
    """Increment node key -> the :class:`Increment` objects it computes, made when asked for (tests, tools)."""

    def __init__(self, jobs: Sequence[FragmentJob], groups: dict[Key, tuple[IncrementBlock, np.ndarray]]):
        self._jobs = jobs
        self._groups = groups

    def __getitem__(self, key: Key) -> list[Increment]:
        block, rows = self._groups[key]
        return block.increments(self._jobs, rows)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)


@dataclass
class ExpansionGraph:
    """A built graph and the keys a caller wants futures for."""

    graph: HighLevelGraph
    result: Key
    levels: dict[tuple[str, int | str], Key]
    units: dict[Key, Unit]
    #: increment node key -> its increments (a :class:`IncrementGroups`, made on access)
    increments: Mapping[Key, list[Increment]] = field(repr=False)
    #: what every fragment task is given: the :class:`ExpansionContext`, and how the tasks name it
    #: (its key in this graph, a future of it scattered to every worker, or a SharedContext)
    context: Any = field(default=None, repr=False)
    context_ref: Any = field(default=None, repr=False)

    def dependencies(self, key: Key) -> set[Hashable]:
        """Keys a node depends on (used by tests to check the graph's shape)."""
        return set(self._all_dependencies[key])

    @cached_property
    def _all_dependencies(self) -> dict:
        return self.graph.get_all_dependencies()


def _level_order(nbody: int | str) -> float:
    return float("inf") if nbody == "supersystem" else float(nbody)


ORDERS = ("levels", "cost")


#: Priorities of one expansion's fragments span less than this (n-body orders below 49), so that
#: expansions sent together with offsets a multiple of it apart never interleave (:func:`build_graph`).
PRIORITY_SPAN = 100.0


def levels_priority(unit: Unit, max_nbody: int, top: float | None = None) -> float:
    """The ``"levels"`` order's priority of ``unit``: lower n-body orders first, ``(max_nbody - nbody) * 2``, plus
    its seconds over ``top`` (the longest unit's), longest first within an order.

    ``top`` None, where the longest unit is not known (energy screening's pass sends units as it decides them):
    ``s / (1 + s)``, the same order within ``[0, 1)``. That pass once used the seconds alone, so its monomers
    (0.04 s) ran after every trimer and the 1-body level, due first, came last.
    """
    share = unit.seconds / (1.0 + unit.seconds) if top is None else unit.seconds / top
    return (max_nbody - unit.nbody) * 2.0 + share


#: Dask priority of a unit that computes nothing (it takes its outputs from units already sent, or from the
#: store): ahead of everything, whatever the expansion. It costs no time, and the increments and the progress
#: wait for it: behind the queued work of its order, it held back the counts of calculations long finished.
TAKING_PRIORITY = 2e12


def _priorities(
    units: dict[Key, Unit], order: str, offset: float = 0.0, known: Mapping[str, Any] | None = None
) -> dict[Key, float]:
    """Dask priorities (higher runs first) from predicted durations, ``offset`` plus less than :data:`PRIORITY_SPAN`.

    ``"cost"``: longest first, whatever the order. ``"levels"`` (default): lower n-body
    orders first and longest first within an order, so each n-body level completes (and
    streams to the user) as early as possible while the largest tasks of the last order
    still start before the small ones. Units that compute nothing (``sources``, or every
    output ``known``) get :data:`TAKING_PRIORITY`.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, not {order!r}")
    if not units:
        return {}
    top = max(unit.seconds for unit in units.values()) or 1.0
    if order == "cost":
        found = {key: offset + unit.seconds / top for key, unit in units.items()}
    else:
        max_nbody = max(unit.nbody for unit in units.values())
        found = {key: offset + levels_priority(unit, max_nbody, top) for key, unit in units.items()}
    for key, unit in units.items():
        if unit.sources or (known and all(job.label in known for job in unit.jobs)):
            found[key] = TAKING_PRIORITY
    return found


def _anchor_column(block: IncrementBlock, jobs: Sequence[FragmentJob]) -> int:
    """The column of a block's anchor term: the calculation that defines an increment's cluster (its largest
    term, most real fragments then most basis fragments), the same column for every cluster of a block."""
    row = block.terms[0].tolist()
    return max(range(len(row)), key=lambda c: (jobs[row[c]].nbody, len(jobs[row[c]].basis)))


def _first_seen(values: np.ndarray) -> np.ndarray:
    """The distinct values in the order they first appear."""
    distinct, first = np.unique(values, return_index=True)
    return distinct[np.argsort(first, kind="stable")]


def result_function(plan: Plan, upto: int | None = None) -> Any:
    """``assemble_result``, told whether the rows are tables (decided here, on the client, from its Dask config)
    and the kept clusters' coefficients when the expansion is screened."""
    tables = len(plan.jobs) > inline_limit()
    if plan.screened is None:
        return functools.partial(assemble_result, tables=tables)
    labels = [job.label for job in plan.jobs]
    screening = {"coefficients": coefficients(plan.blocks, labels, upto), "summary": plan.screened.summary()}
    return functools.partial(assemble_result, screening=screening, tables=tables)


def _unit_of_jobs(jobs: Sequence[FragmentJob], units: Sequence[Unit]) -> np.ndarray:
    """Per job of the plan, the index of the unit that runs it (-1: none)."""
    sizes = [len(unit.jobs) for unit in units]
    if sum(sizes) == len(jobs) and all(
        map(operator.is_, itertools.chain.from_iterable(unit.jobs for unit in units), jobs)
    ):
        return np.repeat(
            np.arange(len(units), dtype=np.int32), sizes
        )  # the plan's jobs in order, as make_units leaves them
    position = {id(job): i for i, job in enumerate(jobs)}
    unit_of = np.full(len(jobs), -1, dtype=np.int32)
    by_value: dict[FragmentJob, int] | None = None
    for u, unit in enumerate(units):
        for job in unit.jobs:
            i = position.get(id(job))
            if i is None:  # an equal job, not the plan's own object
                if by_value is None:
                    by_value = {j: k for k, j in enumerate(jobs)}
                i = by_value.get(job)
                if i is None:
                    continue
            unit_of[i] = u
    return unit_of


def unit_task(unit: Unit, ctx_ref: Any, memory_gib: float | None, known: dict[str, dict] | None = None) -> tuple:
    """The task of one unit: its calculations (:func:`mbdask.calculation.execute.run_unit`, handed the outputs in
    ``known`` instead of computing them), or, for a unit with ``sources``, the outputs taken from there."""
    if unit.sources:
        return (
            borrowed_outputs,
            [(job.label, there) for job, there in zip(unit.jobs, unit.source_labels)],
            unit.borrowed,
            *unit.sources,
        )
    have = {job.label: known[job.label] for job in unit.jobs if job.label in known} if known else None
    return (run_unit, ctx_ref, list(unit.jobs), unit.cores, memory_gib, have or None, list(unit.predicted))


def fragment_layer(
    units: dict[Key, Unit],
    ctx_ref: Any,
    resources: FragmentResources,
    priority: Callable[[Key], float],
    retries: int = 0,
    known: dict[str, dict] | None = None,
) -> MaterializedLayer:
    """The one place units become Dask tasks: their tasks (:func:`unit_task`) with priority, retries and
    resource annotations. :func:`build_graph` and energy screening's passes
    (:mod:`mbdask.graph.screening_pass`) both send units through it."""
    tasks = {key: unit_task(unit, ctx_ref, resources.memory_gib, known) for key, unit in units.items()}
    # Annotations are evaluated per key when the graph is sent; a dict lookup is all they do.
    annotations: dict[str, Any] = {"priority": priority}
    if resources.annotation() and units:
        cores = {unit.cores for unit in units.values()}
        if len(cores) == 1:
            annotations["resources"] = resources.annotation(cores.pop())
        else:
            annotations["resources"] = lambda key: resources.annotation(units[key].cores)
    if retries:
        annotations["retries"] = int(retries)
    return MaterializedLayer(tasks, annotations=annotations)


def unit_graph(
    units: Sequence[Unit],
    token: str,
    ctx_ref: Any,
    resources: FragmentResources,
    priority: Callable[[Unit], float],
    *,
    retries: int = 0,
    kind: str = "frag",
    first_index: int = 0,
) -> tuple[HighLevelGraph, list[Key]]:
    """A graph of ``units`` alone (no increments, no result) and their keys, for work decided while
    a run goes on (energy screening). ``first_index`` numbers the batches, so that keys sent
    under one ``token`` in several graphs stay distinct; the layer is named ``kind``, so that
    graphs of two kinds merge."""
    by_key = {unit_key(unit, first_index + i, token, kind): unit for i, unit in enumerate(units)}
    layer = fragment_layer(by_key, ctx_ref, resources, lambda key: priority(by_key[key]), retries)
    return HighLevelGraph({kind: layer}, {kind: set()}), list(by_key)


def build_graph(
    plan: Plan,
    token: str,
    *,
    resources: FragmentResources,
    units: list[Unit] | None = None,
    known: dict[str, dict] | None = None,
    retries: int = 0,
    keep_cluster_results: bool | None = None,
    order: str = "levels",
    increment_tasks: int | None = None,
    cluster_cores: int | None = None,
    priority_offset: float = 0.0,
    share: Callable[[Any], Any] | None = None,
) -> ExpansionGraph:
    """Translate a plan into a HighLevelGraph with per-task annotations.

    ``units`` default to one per calculation, costed by :class:`CostModel`; ``known`` are outputs by label already at
    hand (from a checkpoint store), passed to their units instead of being recomputed. The
    graph holds no store: the client writes finished outputs (:class:`mbdask.calculation.store.StoreWriter`).
    ``increment_tasks`` caps the increment nodes per n-body level (neighbouring clusters
    share a node), so that bookkeeping tasks do not outnumber the work. ``priority_offset``
    is added to every fragment's priority: expansions sent together with decreasing offsets
    run one after another, each one's tail filled by the next one's work.

    ``share``: hands the :class:`ExpansionContext` to the workers by other means than the
    graph and returns what the tasks take instead (a future of it scattered to every worker,
    or a :class:`~mbdask.calculation.execute.SharedContext` the scheduler keeps). Without it the context
    is a node of the graph, held by the one worker that "computes" it: Dask sends a task only
    to workers holding its dependencies and leaves the rest to work stealing, which, once
    Dask has learned how short the fragment tasks are, no longer finds them worth moving
    (one worker busy, the other half idle, seen in repeated runs on one cluster).
    """
    with gc_paused():
        return _build_graph(
            plan,
            token,
            resources,
            units,
            known,
            retries,
            keep_cluster_results,
            order,
            increment_tasks,
            cluster_cores,
            priority_offset,
            share,
        )


def _build_graph(
    plan: Plan,
    token: str,
    resources: FragmentResources,
    units: list[Unit] | None,
    known: dict[str, dict] | None,
    retries: int,
    keep_cluster_results: bool | None,
    order: str,
    increment_tasks: int | None,
    cluster_cores: int | None,
    priority_offset: float = 0.0,
    share: Callable[[Any], Any] | None = None,
) -> ExpansionGraph:
    if keep_cluster_results is None:
        keep_cluster_results = plan.input.specification.protocols.cluster_results.value == "all"
    ctx = ExpansionContext(plan.input, plan.specifications, keep_cluster_results, cluster_cores)
    ctx_key = (
        context_key(token) if share is None else share(ctx)
    )  # a key of this graph, or what the workers take instead
    known = known or {}
    if units is None:
        units = make_units(plan.jobs, CostModel.for_plan(plan), workers=1, batch=False, cores=resources.cores)

    unit_keys = {unit_key(unit, index, token): unit for index, unit in enumerate(units)}
    keys = list(unit_keys)
    priorities = _priorities(unit_keys, order, priority_offset, known)
    fragments = fragment_layer(unit_keys, ctx_key, resources, priorities.__getitem__, retries, known)
    unit_of = _unit_of_jobs(plan.jobs, units)
    unit_size = np.array([len(unit.jobs) for unit in units], dtype=np.int64)

    # increments: one node per cluster, or per unit of anchor calculations when batched;
    # consecutive nodes of one level merged so that a level has at most increment_tasks
    full = tuple(range(1, plan.nfragments + 1))
    groups: dict[Key, tuple[IncrementBlock, np.ndarray]] = {}
    inc_tasks: dict[Key, Any] = {}
    by_level: dict[tuple[str, int | str], list[tuple[Key, IncrementBlock, np.ndarray]]] = {}
    for block in plan.blocks:
        if not len(block):
            continue
        terms_units = unit_of[block.terms]
        if (terms_units < 0).any():
            missing = plan.jobs[int(block.terms[terms_units < 0][0])]
            raise KeyError(missing)
        anchors = terms_units[:, _anchor_column(block, plan.jobs)]
        batched = unit_size[anchors] > 1
        # a node per anchor unit (batched) or per cluster, in the order the clusters first name them
        node = np.where(batched, anchors, len(units) + np.arange(len(block)))
        distinct, first, inverse = np.unique(node, return_index=True, return_inverse=True)
        rank = np.empty(len(distinct), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(distinct))
        node_rank = rank[inverse.ravel()]
        rows = np.argsort(node_rank, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(node_rank, minlength=len(distinct)))])
        size = math.ceil(len(distinct) / increment_tasks) if increment_tasks else 1
        level = by_level.setdefault((block.bsse, block.nbody), [])
        small = block.terms.shape[1] * size < 64
        for start in range(0, len(distinct), size):
            chunk = rows[bounds[start] : bounds[min(start + size, len(distinct))]]
            head = int(chunk[0])
            batch = keys[int(anchors[head])] if batched[head] else None
            key = increment_key(block.bsse, block.nbody, block.clusters[head].tolist(), token, batch)
            if small:
                sources = [keys[u] for u in dict.fromkeys(terms_units[chunk].ravel().tolist())]
            else:
                sources = [keys[u] for u in _first_seen(terms_units[chunk].ravel()).tolist()]
            if block.shape is None:  # the supersystem correction: explicit terms
                terms = [
                    [(plan.jobs[i].label, sign) for i, sign in zip(row, block.signs)]
                    for row in block.terms[chunk].tolist()
                ]
                inc_tasks[key] = (increment_energies, terms) + tuple(sources)
            else:
                inc_tasks[key] = (
                    cluster_increments,
                    block.model,
                    block.basis,
                    block.shape,
                    block.signs,
                    full,
                    block.clusters[chunk],
                ) + tuple(sources)
            groups[key] = (block, chunk)
            level.append((key, block, chunk))

    if plan.screened is not None:
        # an order whose screening kept no cluster still has its level: it contributes zero
        for bsse in {b for b, _ in by_level}:
            for level_nbody in range(1, plan.core.max_nbody + 1):
                by_level.setdefault((bsse, level_nbody), [])
    model_of = {nb: mc for mc, nbs in plan.core.nbodies_per_mc_level.items() for nb in nbs}
    level_tasks: dict[Key, Any] = {}
    level_keys: dict[tuple[str, int | str], Key] = {}
    for bsse in plan.bsse_types:
        previous = None
        for nbody in sorted((nb for b, nb in by_level if b == bsse), key=_level_order):
            members = by_level[(bsse, nbody)]
            key = level_key(bsse, nbody, token)
            if members:
                clusters = np.concatenate([block.clusters[rows] for _, block, rows in members])
            else:
                clusters = np.zeros((0, 0 if nbody == "supersystem" else int(nbody)), dtype=np.int64)
            level_tasks[key] = (level_sum, bsse, nbody, model_of[nbody], clusters, previous) + tuple(
                k for k, _, _ in members
            )
            level_keys[(bsse, nbody)] = key
            previous = key

    collect_tasks = {
        collect_key(i, token): (collect_outputs,) + tuple(chunk)
        for i, chunk in enumerate(collect_groups(list(unit_keys), priorities))
    }
    res_key = result_key(token)
    result_task = {res_key: (result_function(plan), ctx_key, list(level_keys.values())) + tuple(collect_tasks)}

    # Cheap bookkeeping nodes go ahead of any fragment so results stream as soon as possible.
    top = {"priority": 1e300}
    layers = {
        "context": MaterializedLayer({ctx_key: ctx} if share is None else {}),
        "fragments": fragments,
        "increments": MaterializedLayer(inc_tasks, annotations=dict(top)),
        "levels": MaterializedLayer(level_tasks, annotations=dict(top)),
        "collect": MaterializedLayer(collect_tasks, annotations=dict(top)),
        "result": MaterializedLayer(result_task, annotations=dict(top)),
    }
    deps = {
        "context": set(),
        "fragments": {"context"},
        "increments": {"fragments"},
        "levels": {"increments"},
        "collect": {"fragments"},
        "result": {"context", "collect", "levels"},
    }
    graph = HighLevelGraph(layers, deps)
    return ExpansionGraph(graph, res_key, level_keys, unit_keys, IncrementGroups(plan.jobs, groups), ctx, ctx_key)

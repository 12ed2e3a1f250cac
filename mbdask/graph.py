"""The Dask graph of a planned expansion: keys, tasks, annotations.

Shape (see docs/design.md):

* one *context* node holding the input, sent once to each worker that needs it;
* one *fragment* node per unique calculation, annotated with the cores and memory it may
  use, a priority from its predicted cost, and retries;
* one *increment* node per cluster and BSSE treatment, depending on exactly the fragment
  nodes of that cluster's subsystems, so a trimer's increment is ready when its seven
  subsystems are, while other trimers still run;
* one *level* node per BSSE treatment and n-body order (sum of that order's increments,
  chained to the previous order so it carries the cumulative result);
* one *result* node that runs QCManyBody's ``analyze`` over all fragment results.

Keys are tuples whose first element reads like ``"frag hf/cc_pvdz 2-body"``, so the
dashboard's progress bars show one row per model chemistry and n-body order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Hashable, Optional, Union

from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from .assemble import assemble_result, increment_energy, level_sum
from .cost import relative_cost
from .execute import ExpansionContext, run_fragment
from .plan import FragmentJob, Increment, Plan

Key = tuple


def _safe(text: str) -> str:
    """Dask groups tasks by the key's prefix up to the first '-' that is followed by a non-word."""
    return str(text).replace("-", "_")


def _indices(indices: tuple[int, ...]) -> str:
    return "(" + ",".join(map(str, indices)) + ")"


def fragment_key(job: FragmentJob, token: str) -> Key:
    return (f"frag {_safe(job.model)} {job.nbody}-body", token, f"{_indices(job.real)}@{_indices(job.basis)}")


def increment_key(inc: Increment, token: str) -> Key:
    order = "supersystem" if inc.nbody == "supersystem" else f"{inc.nbody}-body"
    return (f"incr {inc.bsse} {order}", token, _indices(inc.cluster))


def level_key(bsse: str, nbody: Union[int, str], token: str) -> Key:
    order = "supersystem" if nbody == "supersystem" else f"{nbody}-body"
    return (f"level {bsse} {order}", token)


def context_key(token: str) -> Key:
    return ("mbdask context", token)


def result_key(token: str) -> Key:
    return ("mbdask result", token)


@dataclass
class FragmentResources:
    """What one fragment may use: cores for its threads, memory in GiB for the program."""

    cores: int = 1
    memory_gib: Optional[float] = None
    annotate_cores: bool = True
    annotate_memory: bool = False

    def annotation(self) -> dict[str, float]:
        res: dict[str, float] = {}
        if self.annotate_cores:
            res["cores"] = self.cores
        if self.annotate_memory and self.memory_gib:
            res["memory"] = self.memory_gib * 2**30
        return res


@dataclass
class ExpansionGraph:
    """A built graph and the keys a caller wants futures for."""

    graph: HighLevelGraph
    result: Key
    levels: dict[tuple[str, Union[int, str]], Key]
    fragments: dict[Key, FragmentJob]
    increments: dict[Key, Increment] = field(repr=False)

    def dependencies(self, key: Key) -> set[Hashable]:
        """Keys a node depends on (used by tests to check the graph's shape)."""
        return set(self._all_dependencies[key])

    @cached_property
    def _all_dependencies(self) -> dict:
        return self.graph.get_all_dependencies()


def _level_order(nbody: Union[int, str]) -> float:
    return float("inf") if nbody == "supersystem" else float(nbody)


ORDERS = ("levels", "cost")


def _apply_order(priorities: dict[Key, float], frag_keys: dict[FragmentJob, Key], order: str) -> None:
    """Turn predicted costs into Dask priorities (higher runs first).

    ``"cost"``: longest first, whatever the order. ``"levels"`` (default): lower n-body
    orders first and longest first within an order, so each n-body level completes (and
    streams to the user) as early as possible while the largest tasks of the last order
    still start before the small ones.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, not {order!r}")
    if order == "cost" or not priorities:
        return
    top = max(priorities.values()) or 1.0
    max_nbody = max(job.nbody for job in frag_keys)
    for job, key in frag_keys.items():
        priorities[key] = (max_nbody - job.nbody) * 2.0 + priorities[key] / top


def build_graph(
    plan: Plan,
    token: str,
    *,
    resources: FragmentResources,
    retries: int = 0,
    keep_cluster_results: Optional[bool] = None,
    order: str = "levels",
) -> ExpansionGraph:
    """Translate a plan into a HighLevelGraph with per-task annotations."""
    if keep_cluster_results is None:
        keep_cluster_results = plan.input.specification.protocols.cluster_results.value == "all"
    ctx = ExpansionContext(plan.input, plan.specifications, keep_cluster_results)
    ctx_key = context_key(token)

    frag_tasks: dict[Key, Any] = {}
    frag_keys: dict[FragmentJob, Key] = {}
    priorities: dict[Key, float] = {}
    for job in plan.jobs:
        key = fragment_key(job, token)
        frag_keys[job] = key
        frag_tasks[key] = (run_fragment, ctx_key, job, resources.cores, resources.memory_gib)
        method = plan.specifications[job.model]["specification"]["model"].get("method", "")
        priorities[key] = relative_cost(plan.natoms(job), method, plan.driver)
    _apply_order(priorities, frag_keys, order)

    inc_tasks: dict[Key, Any] = {}
    inc_keys: dict[Key, Increment] = {}
    by_level: dict[tuple[str, Union[int, str]], list[tuple[Key, Increment]]] = {}
    for inc in plan.increments:
        key = increment_key(inc, token)
        signs = [sign for _, sign in inc.terms]
        inc_tasks[key] = (increment_energy, signs) + tuple(frag_keys[job] for job, _ in inc.terms)
        inc_keys[key] = inc
        by_level.setdefault((inc.bsse, inc.nbody), []).append((key, inc))

    level_tasks: dict[Key, Any] = {}
    level_keys: dict[tuple[str, Union[int, str]], Key] = {}
    for bsse in plan.bsse_types:
        previous = None
        for nbody in sorted((nb for b, nb in by_level if b == bsse), key=_level_order):
            members = by_level[(bsse, nbody)]
            key = level_key(bsse, nbody, token)
            meta = [list(inc.cluster) for _, inc in members]
            level_tasks[key] = (level_sum, bsse, nbody, members[0][1].model, meta, previous) + tuple(k for k, _ in members)
            level_keys[(bsse, nbody)] = key
            previous = key

    res_key = result_key(token)
    result_task = {res_key: (assemble_result, ctx_key, list(level_keys.values())) + tuple(frag_keys[j] for j in plan.jobs)}

    # Annotations are evaluated per key when the graph is sent; a dict lookup is all they do.
    frag_annotations: dict[str, Any] = {"priority": priorities.__getitem__}
    resource_annotation = resources.annotation()
    if resource_annotation:
        frag_annotations["resources"] = resource_annotation
    if retries:
        frag_annotations["retries"] = int(retries)
    # Cheap bookkeeping nodes go ahead of any fragment so results stream as soon as possible.
    top = {"priority": 1e300}
    layers = {
        "context": MaterializedLayer({ctx_key: ctx}),
        "fragments": MaterializedLayer(frag_tasks, annotations=frag_annotations),
        "increments": MaterializedLayer(inc_tasks, annotations=dict(top)),
        "levels": MaterializedLayer(level_tasks, annotations=dict(top)),
        "result": MaterializedLayer(result_task, annotations=dict(top)),
    }
    deps = {
        "context": set(),
        "fragments": {"context"},
        "increments": {"fragments"},
        "levels": {"increments"},
        "result": {"context", "fragments", "levels"},
    }
    graph = HighLevelGraph(layers, deps)
    return ExpansionGraph(graph, res_key, level_keys, {k: j for j, k in frag_keys.items()}, inc_keys)

"""The library interface: ``plan``, ``start``, ``submit`` and ``compute``.

``submit`` returns a ``distributed.Future`` of the ``ManyBodyResult``; ``start`` returns a
:class:`Submission` that also holds one future per n-body level, so a notebook can show
the 2-body result while trimers still run.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Union

from distributed import Client, Future, as_completed
from qcmanybody.models.v2 import ManyBodyResult

from .cluster import ClientLike, Connection, connect, worker_resources
from .errors import InputError
from .graph import ORDERS, ExpansionGraph, FragmentResources, build_graph
from .inputs import InputLike
from .plan import Plan, make_plan


@dataclass
class Submission:
    """A running expansion: the result future, level futures, and what it was built from."""

    plan: Plan
    graph: ExpansionGraph
    result: Future
    levels: dict[tuple[str, Union[int, str]], Future]
    connection: Connection = field(repr=False)

    @property
    def client(self) -> Client:
        return self.connection.client

    def as_completed_levels(self) -> Iterator[dict]:
        """Yield each n-body level's dict (bsse, nbody, contribution, through, increments) as it resolves."""
        for future in as_completed(list(self.levels.values()), loop=self.client.loop):
            yield future.result()


def _fragment_resources(client: Client, cores: int, memory_gib: Optional[float]) -> FragmentResources:
    """Decide what each fragment reserves, from what the workers declare.

    Workers that declare ``cores`` (and ``memory``) get resource-restricted tasks; a
    fragment that no worker could ever hold is refused now rather than left waiting.
    Workers without declared resources run fragments on their threads, with BLAS/OpenMP
    still pinned to ``cores``.
    """
    workers = worker_resources(client)
    if not workers:
        raise InputError("the Dask cluster has no workers")
    annotate_cores = all("cores" in w["resources"] for w in workers)
    annotate_memory = all("memory" in w["resources"] for w in workers)
    if memory_gib is None:
        shares = [w["memory_limit"] / max(1, w["nthreads"]) for w in workers if w["memory_limit"]]
        # rounded down, so that the reservation never exceeds what the worker declares
        memory_gib = math.floor(min(shares) * cores / 2**30 * 1000) / 1000 if shares else None
    if annotate_cores and not any(w["resources"]["cores"] >= cores for w in workers):
        most = max(w["resources"]["cores"] for w in workers)
        raise InputError(f"each fragment asks for {cores} cores but no worker has more than {most}")
    if annotate_memory and memory_gib and not any(w["resources"]["memory"] >= memory_gib * 2**30 for w in workers):
        most = max(w["resources"]["memory"] for w in workers) / 2**30
        raise InputError(f"each fragment asks for {memory_gib:.2f} GiB but no worker has more than {most:.2f} GiB")
    return FragmentResources(cores, memory_gib, annotate_cores, annotate_memory)


def plan(inp: InputLike, *, check_installed: bool = True) -> Plan:
    """Validate ``inp`` and count what would run; nothing is computed."""
    return make_plan(inp, check_installed=check_installed)


def start(
    inp: Union[InputLike, Plan],
    client: ClientLike = None,
    *,
    cores_per_fragment: int = 1,
    memory_per_fragment: Optional[float] = None,
    retries: int = 0,
    order: str = "levels",
    n_workers: Optional[int] = None,
    threads_per_worker: Optional[int] = None,
    memory_limit: Union[str, int, float, None] = None,
    check_installed: bool = True,
    security: Any = None,
) -> Submission:
    """Plan ``inp`` (or take a :class:`Plan`), build its graph and send it to the scheduler; returns at once.

    Options: ``cores_per_fragment`` threads each QC call may use (and reserves);
    ``memory_per_fragment`` in GiB (default: the worker's memory per thread times cores);
    ``retries`` per fragment; ``order`` "levels" (n-body orders complete one after another,
    longest first within each) or "cost" (longest first overall); ``n_workers``/``threads_per_worker``/``memory_limit`` size a
    LocalCluster when mbdask starts one.
    """
    the_plan = inp if isinstance(inp, Plan) else make_plan(inp, check_installed=check_installed)
    if order not in ORDERS:
        raise InputError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    if cores_per_fragment < 1:
        raise InputError(f"cores_per_fragment must be at least 1, got {cores_per_fragment}")
    if memory_per_fragment is not None and memory_per_fragment <= 0:
        raise InputError(f"memory_per_fragment must be positive (GiB), got {memory_per_fragment}")
    conn = connect(client, n_workers=n_workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit, security=security)
    try:
        resources = _fragment_resources(conn.client, cores_per_fragment, memory_per_fragment)
        graph = build_graph(the_plan, uuid.uuid4().hex[:12], resources=resources, retries=retries, order=order)
        keys = [graph.result, *graph.levels.values()]
        futures = conn.client.get(graph.graph, keys, sync=False)
    except BaseException:
        conn.close()
        raise
    by_key = dict(zip(keys, futures))
    levels = {name: by_key[key] for name, key in graph.levels.items()}
    return Submission(the_plan, graph, by_key[graph.result], levels, conn)


def submit(inp: InputLike, client: ClientLike = None, **options: Any) -> Future:
    """Start the expansion and return a Future of its ``ManyBodyResult``.

    With ``client=None`` and no default client, the LocalCluster mbdask starts stays up
    until the returned Future is released.
    """
    sub = start(inp, client, **options)
    sub.connection.keep_alive_with(sub.result)
    return sub.result


def compute(inp: InputLike, client: ClientLike = None, **options: Any) -> ManyBodyResult:
    """Run the expansion and wait for it; returns QCManyBody's ``ManyBodyResult``."""
    sub = start(inp, client, **options)
    try:
        return sub.result.result()
    finally:
        sub.connection.close()

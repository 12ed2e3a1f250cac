"""Scheduling quality: makespan against its lower bound, with a program that sleeps for each
fragment's predicted cost (``predicted-sleep`` of tests/doubles.py, not chemistry).

Case: (H2O)16 3-body cp (712 calculations, all in the 48-atom cluster basis) on 16
single-thread worker processes. Lower bound = max(total work / workers, longest task),
where work is each fragment's measured duration (its sleep plus QCEngine's own overhead).
Makespan = submission to result. Compared on the same cluster:

* mbdask as it runs by default (``order="levels"``, queued, no resource restrictions);
* ``order="cost"`` (longest first overall);
* resource-restricted tasks (``cores`` annotated: pushed to workers at once, work stealing);
* a level-by-level executor: all monomers, barrier, all dimers, barrier, all trimers
  (what this project's earlier design did), one Dask task per fragment.

Also: hybrid parallelism (cost-based cores) and fragments per second at zero duration.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the test doubles (tests/doubles.py)

import dask  # noqa: E402
from clusters import water_cluster  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402
from doubles import register_doubles as register  # noqa: E402

import mbdask  # noqa: E402
from mbdask.calculation.execute import ExpansionContext, run_fragment  # noqa: E402
from mbdask.deploy.cluster import ClusterSize, start_local_cluster, worker_resources  # noqa: E402
from mbdask.deploy.workers import increment_tasks  # noqa: E402
from mbdask.graph.build import FragmentResources, build_graph  # noqa: E402
from mbdask.workflows.expansion import _units  # noqa: E402


def sleep_input(nwaters: int, max_nbody: int, bsse: str, unit: float, basis: str = "6-31g*") -> dict:
    return {
        "specification": {
            "driver": "energy",
            "keywords": {"bsse_type": [bsse], "levels": {max_nbody: "sleep"}},
            "specification": {
                "sleep": {
                    "program": "predicted-sleep",
                    "model": {"method": "hf", "basis": basis},
                    "keywords": {"unit": unit},
                }
            },
        },
        "molecule": water_cluster(nwaters),
    }


def _cluster(workers: int, threads: int) -> LocalCluster:
    """mbdask's own LocalCluster configuration (start_local_cluster), the sleep program preloaded."""
    return start_local_cluster(ClusterSize.from_machine(workers, threads), dashboard_address=None, preload=["doubles"])


def _bound(durations: list[float], workers: int) -> float:
    return max(sum(durations) / workers, max(durations))


def run_mbdask(
    client: Client, plan, workers: int, *, order: str = "levels", restricted: bool = False, auto_cores: bool = False
) -> dict:
    resources = FragmentResources(1, None, annotate_cores=restricted or auto_cores)
    workers_info = worker_resources(client)
    units = _units(plan, {}, workers_info, resources, batch=True, auto_cores=auto_cores)
    graph = build_graph(
        plan,
        uuid.uuid4().hex[:8],
        resources=resources,
        units=units,
        order=order,
        increment_tasks=increment_tasks(workers_info),
    )
    start = time.perf_counter()
    (result,) = client.get(graph.graph, [graph.result], sync=True)
    makespan = time.perf_counter() - start
    timing = result.extras["mbdask"]["timing"]
    return {
        "makespan": makespan,
        "span": timing["span_seconds"],
        "bound": _bound([f["seconds"] for f in timing["fragments"]], workers),
        "energy": result.properties.return_energy,
    }


def _warm_up() -> None:
    from mbdask.calculation.execute import warm_up
    from mbdask.programs.basis import basis_functions

    warm_up()
    basis_functions("O", "6-31g*")
    basis_functions("H", "6-31g*")


def run_level_by_level(client: Client, plan, workers: int) -> dict:
    ctx = client.scatter(ExpansionContext(plan.input, plan.specifications, False), broadcast=True)
    start = time.perf_counter()
    outputs = []
    for nbody in sorted({j.nbody for j in plan.jobs}):
        jobs = [j for j in plan.jobs if j.nbody == nbody]
        futures = client.map(run_fragment, [ctx] * len(jobs), jobs, key=[f"lbl-{uuid.uuid4().hex}" for _ in jobs])
        outputs += client.gather(futures)  # the barrier
    analyzed = plan.core.analyze({o["label"]: o["values"] for o in outputs})
    makespan = time.perf_counter() - start
    span = max(o["stop"] for o in outputs) - min(o["start"] for o in outputs)
    return {
        "makespan": makespan,
        "span": span,
        "bound": _bound([o["stop"] - o["start"] for o in outputs], workers),
        "energy": analyzed["ret_energy"],
    }


def makespan_rows(nwaters=16, max_nbody=3, bsse="cp", workers=16, unit=None) -> list[dict]:
    register()
    # about 0.25 s per cp calculation (all in the 48-atom basis); nocp trimers get the same
    unit = unit or (1.0e-8 if bsse == "cp" else 1.0e-8 * (288 / 54) ** 3)
    plan = mbdask.plan(sleep_input(nwaters, max_nbody, bsse, unit))
    rows = []
    with _cluster(workers, 1) as cluster, Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(workers)
        client.run(_warm_up)  # imports and caches in every worker, outside the measurement
        for name, run in [
            ("mbdask (default: levels order, queued)", lambda: run_mbdask(client, plan, workers)),
            ("mbdask, order=cost", lambda: run_mbdask(client, plan, workers, order="cost")),
            (
                "mbdask, resource-restricted tasks (work stealing)",
                lambda: run_mbdask(client, plan, workers, restricted=True),
            ),
            ("level-by-level executor (barriers)", lambda: run_level_by_level(client, plan, workers)),
        ]:
            row = run()
            row["name"] = name
            row["ratio"] = row["makespan"] / row["bound"]
            row["span_ratio"] = row["span"] / row["bound"]
            print(row, flush=True)
            rows.append(row)
    return rows


def profiler_rows(nwaters: int = 16, workers: int = 16, repeats: int = 3) -> list[dict]:
    """mbdask's default run (cp) with the workers' stack sampling every 10 ms (Dask's default)
    and every 100 ms (mbdask's LocalCluster), interleaved, one cluster per setting."""
    register()
    plan = mbdask.plan(sleep_input(nwaters, 3, "cp", 1.0e-8))
    ratios: dict[str, list[float]] = {"10ms": [], "100ms": []}
    for _ in range(repeats):
        for interval in ratios:
            with dask.config.set({"mbdask.local-cluster.profile-interval": interval}):
                cluster = _cluster(workers, 1)
            with cluster, Client(cluster, set_as_default=False) as client:
                client.wait_for_workers(workers)
                client.run(_warm_up)
                row = run_mbdask(client, plan, workers)
            ratios[interval].append(row["makespan"] / row["bound"])
            print(interval, ratios[interval][-1], flush=True)
    return [
        {"interval": interval, "ratios": values, "mean": sum(values) / len(values)}
        for interval, values in ratios.items()
    ]


def hybrid_rows(unit: float = 5e-6, cores: int = 16) -> list[dict]:
    """Fragments of very unequal size: (H2O)8 with its first four waters as one fragment,
    2-body nocp (1 large monomer and 4 large dimers, 4 small monomers and 6 small dimers),
    on one worker declaring 16 cores. The sleep program uses no CPU and divides its sleep
    by the cores it gets (ideal scaling; real programs scale less), so 16 cores can be
    simulated on this machine. Compared: every fragment on 1 core versus
    ``cores_per_fragment="auto"``.
    """
    register()
    mol = water_cluster(8)
    mol["fragments"] = [sum(mol["fragments"][:4], [])] + mol["fragments"][4:]
    inp = sleep_input(8, 2, "nocp", unit)
    inp["molecule"] = mol
    inp["specification"]["specification"]["sleep"]["keywords"]["ideal_scaling"] = True
    rows = []
    with _cluster(1, cores) as cluster, Client(cluster, set_as_default=False) as client:
        client.run(_warm_up)
        for per_fragment in (1, "auto"):
            start = time.perf_counter()
            result = mbdask.compute(inp, client, cores_per_fragment=per_fragment)
            wall = time.perf_counter() - start
            timing = result.extras["mbdask"]["timing"]["fragments"]
            core_seconds = sum(f["seconds"] * f["ncores"] for f in timing)
            rows.append(
                {
                    "cores_per_fragment": per_fragment,
                    "makespan": wall,
                    "bound": core_seconds / cores,
                    "max_cores": max(f["ncores"] for f in timing),
                }
            )
            print(rows[-1], flush=True)
    return rows


def throughput_row(nwaters: int = 64, workers: int = 2) -> dict:
    """Fragments per second end to end, (H2O)64 3-body with zero-duration sleeps."""
    register()
    inp = sleep_input(nwaters, 3, "nocp", 0.0)
    with _cluster(workers, 1) as cluster, Client(cluster, set_as_default=False) as client:
        start = time.perf_counter()
        result = mbdask.compute(inp, client)
        wall = time.perf_counter() - start
    n = result.extras["mbdask"]["nfragment_calculations"]
    return {"fragments": n, "wall": wall, "per_second": n / wall, "workers": workers}


if __name__ == "__main__":
    makespan_rows()
    makespan_rows(bsse="nocp")
    hybrid_rows()
    print(throughput_row())

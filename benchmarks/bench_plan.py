"""Planning and graph building at scale: time and peak memory.

Targets: (H2O)64 3-body < 10 s and < 1 GB (issue 2); (H2O)64 4-body, 679,120 fragments,
plan + graph <= 10 s and <= 1 GB (issue 16). The graph is built as ``mbdask.start`` builds
it before submission: ``api._units`` (costed, batched for 2 single-thread workers) and
``build_graph`` with ``increment_tasks``.

Each case runs in a fresh process so peak RSS is its own; ``--tracemalloc`` runs each case
once more under tracemalloc for the peak of Python allocations (slower: its times are not
reported). Usage: python benchmarks/bench_plan.py [--tracemalloc] [WATERS:NBODY ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = [(32, 3), (64, 3), (32, 4), (64, 4)]

CHILD = r"""
import json, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
from clusters import xtb_input
import mbdask
from mbdask.workflows.expansion import _units
from mbdask.deploy.workers import increment_tasks
from mbdask.graph.build import FragmentResources, build_graph
n, nb, traced = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
inp = xtb_input(n, nb)
workers = [{"address": "a", "nthreads": 1, "memory_limit": 2**30, "resources": {"cores": 1, "memory": 2**30}}] * 2
resources = FragmentResources()
if traced:
    tracemalloc.start()
t0 = time.perf_counter()
plan = mbdask.plan(inp, check_installed=False)
t1 = time.perf_counter()
units = _units(plan, {}, workers, resources, batch=True, auto_cores=False)
t2 = time.perf_counter()
graph = build_graph(
    plan, "bench", resources=resources, units=units, increment_tasks=increment_tasks(workers), cluster_cores=2
)
layers = graph.graph.layers
nodes = len(layers["fragments"]) + len(layers["increments"]) + len(layers["levels"]) + 2
t3 = time.perf_counter()
# VmHWM, not ru_maxrss: the latter survives exec and would report the parent's peak
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
row = {"waters": n, "nbody": nb, "fragments": len(plan.jobs), "nodes": nodes, "units": len(units),
       "plan_s": t1 - t0, "units_s": t2 - t1, "graph_s": t3 - t1, "peak_mb": rss}
if traced:
    row["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
print(json.dumps(row))
"""


def run(cases=CASES, traced: bool = False) -> list[dict]:
    rows = []
    for n, nb in cases:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(HERE), str(n), str(nb), "0"], capture_output=True, text=True, check=True
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        if traced:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(HERE), str(n), str(nb), "1"],
                capture_output=True,
                text=True,
                check=True,
            )
            row["traced_peak_mb"] = json.loads(out.stdout.strip().splitlines()[-1])["traced_peak_mb"]
        rows.append(row)
    return rows


if __name__ == "__main__":
    args = sys.argv[1:]
    traced = "--tracemalloc" in args
    cases = [tuple(map(int, a.split(":"))) for a in args if a != "--tracemalloc"] or CASES
    print(
        "| cluster | fragments | graph nodes | plan s | graph s (units + build) | plan + graph s | peak RSS MB |"
        + (" tracemalloc peak MB |" if traced else "")
    )
    print("|---|---|---|---|---|---|---|" + ("---|" if traced else ""))
    for row in run(cases, traced):
        print(
            f"| (H2O){row['waters']} {row['nbody']}-body | {row['fragments']} | {row['nodes']} | {row['plan_s']:.2f} | "
            f"{row['graph_s']:.2f} ({row['units_s']:.2f} + {row['graph_s'] - row['units_s']:.2f}) | "
            f"{row['plan_s'] + row['graph_s']:.2f} | "
            f"{row['peak_mb']:.0f} |" + (f" {row['traced_peak_mb']:.0f} |" if traced else ""),
            flush=True,
        )

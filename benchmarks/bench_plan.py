"""Planning and graph building at scale: time and peak memory.

Targets: (H2O)64 3-body < 10 s and < 1 GB (issue 2); (H2O)64 4-body, 679,120 fragments,
< 60 s and < 4 GB (issue 4). The graph is built as ``mbdask.start`` builds it: costed,
batched for 2 workers.

Each case runs in a fresh process so peak RSS is its own. Usage: python benchmarks/bench_plan.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = [(32, 3), (64, 3)]

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from clusters import xtb_input
import mbdask
from mbdask.batching import make_units
from mbdask.cost import CostModel
from mbdask.graph import FragmentResources, build_graph
n, nb = int(sys.argv[2]), int(sys.argv[3])
inp = xtb_input(n, nb)
t0 = time.perf_counter()
plan = mbdask.plan(inp, check_installed=False)
t1 = time.perf_counter()
units = make_units(plan.jobs, CostModel.for_plan(plan), workers=2)
graph = build_graph(plan, "bench", resources=FragmentResources(), units=units)
nodes = len(graph.graph.layers["fragments"]) + len(graph.graph.layers["increments"]) + len(graph.graph.layers["levels"]) + 2
t2 = time.perf_counter()
# VmHWM, not ru_maxrss: the latter survives exec and would report the parent's peak
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps({"waters": n, "nbody": nb, "fragments": len(plan.jobs), "nodes": nodes, "units": len(units),
                  "plan_s": t1 - t0, "graph_s": t2 - t1, "peak_mb": rss}))
"""


def run(cases=CASES) -> list[dict]:
    rows = []
    for n, nb in cases:
        out = subprocess.run([sys.executable, "-c", CHILD, str(HERE), str(n), str(nb)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


if __name__ == "__main__":
    cases = [tuple(map(int, a.split(":"))) for a in sys.argv[1:]] or CASES
    for row in run(cases):
        print(f"(H2O){row['waters']} {row['nbody']}-body: {row['fragments']} fragments, {row['nodes']} graph nodes; "
              f"plan {row['plan_s']:.2f} s, graph {row['graph_s']:.2f} s, peak RSS {row['peak_mb']:.0f} MB")

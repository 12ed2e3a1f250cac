"""Energy screening's pass, two checkouts side by side: the whole screened run, and when ``start`` returns.

    python benchmarks/bench_screening_pass.py --old /tmp/old-tree [--repeats 5]

(``git worktree add /tmp/old-tree REV`` makes the old checkout.) Prints a markdown section for docs/benchmarks.md.

(H2O)20 dodecahedron through 3-body, GFN1-xTB screened by GFN2-xTB increments (2-body 0.1,
3-body 0.05 kcal/mol), on one LocalCluster of two single-thread workers per checkout, started
and warmed up before the timings. Each repeat runs the old checkout's mbdask and then this
one's, in fresh processes, so both meet the same machine load. Reported: ``start`` (the
screening pass and the graph sent: until the pass gathered every expensive output in the
old code, until the last decision in the new one), the whole run, and the energies (they
must agree to 1e-10).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRIPT = r"""
import json, sys, time
import mbdask
from mbdask.deploy.cluster import ClusterSize, start_local_cluster
from mbdask.inputs.xyz import ModelOptions, molecule_from_xyz
from distributed import Client
if __name__ == "__main__":
    inp = ModelOptions(method="gfn1-xtb", max_nbody=3).input_for(molecule_from_xyz(sys.argv[1]))
    screening = {"energy_thresholds": {2: 0.1, 3: 0.05}}
    size = ClusterSize(2, 1, 4 * 2**30)
    with start_local_cluster(size, dashboard_address=None) as cluster, Client(cluster) as client:
        # warm up, both models
        warm = ModelOptions(method="gfn1-xtb", max_nbody=2).input_for(molecule_from_xyz(sys.argv[2]))
        mbdask.compute(warm, client, screening=screening)
        t0 = time.perf_counter()
        sub = mbdask.start(inp, client, screening=screening)
        t1 = time.perf_counter()
        result = sub.result()
        t2 = time.perf_counter()
    orders = result.extras["mbdask"]["screening"]["orders"]
    print(json.dumps({"start": t1 - t0, "total": t2 - t0, "energy": result.return_result,
                      "kept": {n: orders[n]["kept"] for n in orders},
                      "computed": len(result.extras["mbdask"]["timing"]["fragments"])}))
"""


def run(tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    data = HERE / "data"
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(data / "water20-dodecahedron.xyz"), str(data / "water6-prism.xyz")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd="/tmp",
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="checkout of the code to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {"old": [], "new": []}
    for i in range(args.repeats):
        for name, tree in (("old", args.old), ("new", ROOT)):
            rows[name].append(run(tree))
            print(name, i, rows[name][-1], file=sys.stderr)
    old, new = rows["old"], rows["new"]
    assert all(abs(r["energy"] - old[0]["energy"]) < 1e-10 for r in old + new), "energies differ"
    assert all(r["kept"] == old[0]["kept"] for r in old + new), "kept clusters differ"
    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    print("\n## Energy screening's pass: expensive outputs handed on as futures\n")
    print(
        f"Measured {datetime.date.today()} on {platform.machine()}, {psutil.cpu_count()} logical cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()} with `python "
        f"benchmarks/bench_screening_pass.py --old OLD --repeats {args.repeats}`: (H2O)20 dodecahedron to 3-body, "
        f"GFN1-xTB screened by GFN2-xTB (2-body 0.1, 3-body 0.05 kcal/mol), kept {old[0]['kept']}, "
        f"{new[0]['computed']} GFN1 calculations; LocalCluster of 2 single-thread workers, warmed up; old and new "
        f"alternating, medians of {args.repeats}.\n"
    )
    spread = lambda runs, key: f"{min(r[key] for r in runs):.2f}-{max(r[key] for r in runs):.2f}"  # noqa: E731
    print("| code | `start` returns (s), median (range) | whole run (s), median (range) |")
    print("|---|---|---|")
    for name, runs in (
        ("old: the pass gathers the expensive outputs", old),
        ("new: their futures handed to the graph", new),
    ):
        print(
            f"| {name} | {med(runs, 'start'):.2f} ({spread(runs, 'start')}) | {med(runs, 'total'):.2f} "
            f"({spread(runs, 'total')}) |"
        )
    print(
        "\nEnergies equal to 1e-10 and the same clusters kept in every run; whole run new/old: "
        f"{med(new, 'total') / med(old, 'total'):.2f} (medians)."
    )


if __name__ == "__main__":
    main()

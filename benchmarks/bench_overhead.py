"""Issue #15: mbdask's own cost, each figure a whole process, side by side in one run.

Every executor runs as a fresh ``python`` process timed from outside (interpreter start,
imports, cluster start, plan, run, assembly, output: what a user waits for):

* ``mbdask``: ``python -m mbdask run INPUT --profile`` (default: workers forked from the
  command-line process, :mod:`mbdask.forked_workers`);
* ``mbdask spawned``: the same with ``DASK_MBDASK__LOCAL_CLUSTER__WORKERS=spawn`` (Dask's own
  LocalCluster start, the default before);
* ``QCManyBody``: sequential ``ManyBodyComputer`` in its default setting and truly single
  threaded (``QCENGINE_NCORES=1``, BLAS/OpenMP pools at 1); the faster of the two counts;
* ``pool``: a plain ``ProcessPoolExecutor`` over QCManyBody's fragment molecules
  (``bench_executors.run_pool``), the peer a chemist would write.

Efficiency (the issue's definition) = zero-overhead bound / mbdask's wall time, bound =
max(sum of mbdask's single-core fragment times / cores, longest fragment). Executors run
``REPEATS`` times, interleaved; the best wall time of each counts.

Throughput: (H2O)64 3-body (43,744 calculations) with the benchmark's zero-duration sleep
program (NOT chemistry), a whole process calling ``mbdask.compute``.

    python benchmarks/bench_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

REPEATS = 2
SINGLE_THREAD = {"QCENGINE_NCORES": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

QCMANYBODY = """
import json, sys, time
import mbdask
from qcmanybody.v2 import ManyBodyComputer
mbdask.register_programs()
result = ManyBodyComputer.from_manybodyinput(mbdask.load_input(sys.argv[1]))
print(json.dumps({"energy": float(result.properties.return_energy)}))
"""

POOL = """
import json, sys
sys.path.insert(0, sys.argv[2])
from bench_executors import run_pool
if __name__ == "__main__":
    wall, energy = run_pool(json.load(open(sys.argv[1])), int(sys.argv[3]))
    print(json.dumps({"energy": energy}))
"""

THROUGHPUT = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from sleep_program import register
from bench_makespan import sleep_input
import mbdask
if __name__ == "__main__":
    register()
    result = mbdask.compute(sleep_input(64, 3, "nocp", 0.0))
    print(json.dumps({"fragments": result.extras["mbdask"]["nfragment_calculations"], "energy": result.properties.return_energy}))
"""


def _timed(args: list[str], env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{args[:4]} failed: {proc.stderr[-2000:]}")
    return wall, proc.stdout


def cases(quick: bool) -> dict[str, dict]:
    from clusters import water_cluster, xtb_input
    from run_all import pyscf_input

    found = {
        "(H2O)20 3-body GFN2-xTB": xtb_input(20, 3),
        "(H2O)16 3-body GFN2-xTB": xtb_input(16, 3),
        "(H2O)8 3-body HF/6-31G* PySCF": pyscf_input(8, 3),
    }
    if quick:
        found = {"(H2O)6 3-body GFN2-xTB": {**xtb_input(16, 3), "molecule": water_cluster(6)}}
    return found


def run_case(name: str, inp: dict, workers: int, repeats: int, work: Path) -> dict:
    path = work / "input.json"
    path.write_text(json.dumps(inp))
    runs: dict[str, list] = {key: [] for key in ("mbdask", "mbdask spawned", "qcmb default", "qcmb 1 thread", "pool")}
    energies: list[float] = []
    profile = {}
    for _ in range(repeats):
        for key, env in (("mbdask", {}), ("mbdask spawned", {"DASK_MBDASK__LOCAL_CLUSTER__WORKERS": "spawn"})):
            out, prof = work / "result.json", work / "profile.json"
            wall, _ = _timed([sys.executable, "-m", "mbdask", "run", str(path), "--no-progress", "--workers", str(workers), "-o", str(out), "--profile", str(prof)], env)
            runs[key].append(wall)
            energies.append(json.loads(out.read_text())["properties"]["return_energy"])
            if key == "mbdask" and wall == min(runs[key]):
                profile = json.loads(prof.read_text())
        for key, env in (("qcmb default", {}), ("qcmb 1 thread", SINGLE_THREAD)):
            wall, stdout = _timed([sys.executable, "-c", QCMANYBODY, str(path)], env)
            runs[key].append(wall)
            energies.append(json.loads(stdout.strip().splitlines()[-1])["energy"])
        wall, stdout = _timed([sys.executable, "-c", POOL, str(path), str(HERE), str(workers)], SINGLE_THREAD)
        runs["pool"].append(wall)
        energies.append(json.loads(stdout.strip().splitlines()[-1])["energy"])
    best = {key: min(values) for key, values in runs.items()}
    sequential = min(best["qcmb default"], best["qcmb 1 thread"])
    bound = profile["zero_overhead_bound_seconds"]
    phases = {row["phase"]: row["seconds"] for row in profile["phases"]}
    return {
        "case": name, "fragments": profile["fragments"], "workers": workers, **{f"{k} s": v for k, v in best.items()},
        "bound s": bound, "efficiency": bound / best["mbdask"], "efficiency spawned": bound / best["mbdask spawned"],
        "vs best sequential": sequential / best["mbdask"], "vs pool": best["pool"] / best["mbdask"],
        "max energy diff": max(energies) - min(energies), "profile": profile, "phases": phases,
    }


def throughput(work: Path) -> dict:
    wall, stdout = _timed([sys.executable, "-c", THROUGHPUT, str(HERE)], {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    data = json.loads(stdout.strip().splitlines()[-1])
    return {"fragments": data["fragments"], "wall": wall, "per_second": data["fragments"] / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small case, one repeat, no throughput run")
    parser.add_argument("--json", metavar="FILE", help="write the rows here")
    args = parser.parse_args()
    from mbdask.cluster import usable_cores

    workers = usable_cores()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, inp in cases(args.quick).items():
            rows.append(run_case(name, inp, workers, 1 if args.quick else REPEATS, Path(tmp)))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "profile"}), flush=True)
        result = {"rows": rows}
        if not args.quick:
            result["throughput"] = throughput(Path(tmp))
            print(json.dumps(result["throughput"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

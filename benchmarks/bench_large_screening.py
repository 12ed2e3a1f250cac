"""Distance-screened (H2O)64 4-body GFN2-xTB against the unscreened reference (issue #16).

Reads the unscreened reference that ``bench_large.py`` left (``result.json`` and its
``result.increments.nocp.csv.gz`` in ``--reference``), and for a grid of distance cutoffs
(mbdask's rule: a k-cluster is kept when each pair of its fragments is within r_k, closest
atoms, and all its sub-clusters were kept; so it is kept when its largest pair distance is
within min(r_2..r_k)) gives, without running anything:

* the calculations kept (monomers + kept clusters; nocp: one calculation per cluster) and
  their share of the 679,120,
* the screened energy's error per monomer: the sum of the dropped clusters' increments
  (mbdask's screened energy is the sum of the kept increments, each exactly the full
  expansion's; docs/screening.md) over 64 waters, in kcal/mol.

``--run 2:R2,3:R3,4:R4`` then runs that screening for real through the CLI (fresh, no store)
and checks that the run's kept count and energy are what the reference predicts, and times
it against the reference's wall time.

Usage: python benchmarks/bench_large_screening.py --reference /tmp/large4 [--run 2:9,3:6,4:5] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_large import gfn2_command  # noqa: E402

KCAL = 627.5094740631


def pair_distances(xyz: Path) -> np.ndarray:
    """Closest atom-atom distance (Angstrom) between each pair of waters (3 atoms each, in file order)."""
    lines = xyz.read_text().splitlines()
    natom = int(lines[0])
    coords = np.array([[float(v) for v in line.split()[1:4]] for line in lines[2 : 2 + natom]])
    waters = coords.reshape(-1, 3, 3)
    diff = waters[:, None, :, None, :] - waters[None, :, None, :, :]
    return np.sqrt((diff**2).sum(-1)).min(axis=(2, 3))


def increments(reference: Path) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], dict]:
    """Per order: clusters (0-based, one row each) and their increments (Eh), and the reference's levels."""
    sys.path.insert(0, str(HERE.parent))
    from mbdask.tables import Rows

    rows = Rows.read_csv(reference / "result.increments.nocp.csv.gz")
    nbody = np.array(rows.column("nbody"))
    energy = np.array(rows.column("energy"), dtype=float)
    fragments = rows.column("fragments")
    clusters, values = {}, {}
    for n in sorted(set(nbody.tolist())):
        idx = np.flatnonzero(nbody == n)
        clusters[n] = np.array([fragments[i] for i in idx], dtype=np.int64) - 1
        values[n] = energy[idx]
    levels = json.loads((reference / "result.json").read_text())["extras"]["mbdask"]["levels"]["nocp"]
    return clusters, values, levels


def largest_pair(clusters: np.ndarray, dist: np.ndarray) -> np.ndarray:
    k = clusters.shape[1]
    return np.max([dist[clusters[:, a], clusters[:, b]] for a, b in itertools.combinations(range(k), 2)], axis=0)


def scan(clusters, values, dist, grid) -> list[dict]:
    spans = {n: largest_pair(c, dist) for n, c in clusters.items() if n >= 2}
    rows = []
    for cutoffs in grid:
        kept_calcs, dropped = len(values[1]), 0.0
        effective = np.inf
        per_order = {}
        for n in sorted(spans):
            effective = min(effective, cutoffs.get(n, np.inf))  # an order without a cutoff keeps all
            keep = spans[n] <= effective
            kept_calcs += int(keep.sum())
            dropped += float(values[n][~keep].sum())
            per_order[n] = {"kept": int(keep.sum()), "all": int(len(keep))}
        rows.append(
            {
                "cutoffs": cutoffs,
                "calculations": kept_calcs,
                "share": kept_calcs / sum(len(v) for v in values.values()),
                "error_per_monomer_kcal": abs(dropped) * KCAL / len(values[1]),
                "error_total_kcal": -dropped * KCAL,
                "orders": per_order,
            }
        )
    return rows


def run_screened(cutoffs: dict[int, float], workdir: Path, geometry: str) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    text = ",".join(f"{n}:{r:g}" for n, r in sorted(cutoffs.items()))
    xyz = HERE / "data" / f"water64-{geometry}.xyz"
    cmd = gfn2_command("run", xyz, 4, "--distance-cutoffs", text, "-o", "result.json", "--profile", "profile.json")
    start = time.perf_counter()
    proc = subprocess.run(
        cmd,
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "DASK_MBDASK__PROGRESS__LOG_INTERVAL": "30"},
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    result = json.loads((workdir / "result.json").read_text())
    profile = json.loads((workdir / "profile.json").read_text())
    return {
        "cutoffs": text,
        "wall_s": wall,
        "calculations": result["extras"]["mbdask"]["nfragment_calculations"],
        "through_4": result["extras"]["mbdask"]["levels"]["nocp"]["4"]["through"],
        "efficiency": profile["efficiency"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=Path("/tmp/mbdask-large"))
    parser.add_argument("--geometry", default="droplet")
    parser.add_argument("--run", default=None, help="cutoffs to run for real, e.g. 2:9,3:6,4:5")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    dist = pair_distances(HERE / "data" / f"water64-{args.geometry}.xyz")
    clusters, values, levels = increments(args.reference)
    grid = [
        {2: r2, 3: r3, 4: r4}
        for r2 in (8.0, 12.0, 99.0)
        for r3 in (4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0)
        for r4 in (3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
        if r4 <= r3 <= r2
    ]
    rows = scan(clusters, values, dist, grid)
    out: dict = {"reference_through": levels, "scan": rows}
    good = sorted((r for r in rows if r["share"] <= 0.10), key=lambda r: r["error_per_monomer_kcal"])
    out["best_within_10_percent"] = good[:5]
    for row in good[:5]:
        print(json.dumps({k: row[k] for k in ("cutoffs", "calculations", "share", "error_per_monomer_kcal")}))
    if args.run:
        cutoffs = {int(n): float(r) for n, r in (part.split(":") for part in args.run.split(","))}
        predicted = scan(clusters, values, dist, [cutoffs])[0]
        real = run_screened(cutoffs, args.reference.parent / (args.reference.name + "-screened"), args.geometry)
        real["predicted_calculations"] = predicted["calculations"]
        real["error_per_monomer_kcal"] = abs(real["through_4"] - levels["4"]["through"]) * KCAL / 64
        real["predicted_error_per_monomer_kcal"] = predicted["error_per_monomer_kcal"]
        out["run"] = real
        print(json.dumps(real))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()

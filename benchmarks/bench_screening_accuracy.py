"""How good a distance-screened 3-body energy is, and which cutoffs to recommend (issue #26).

mbdask's screened energy is the exact sum of the kept clusters' increments (each one the
full expansion's), so the error of any cutoffs follows from the increments of one run that
kept more, without running anything again: a k-cluster is kept at cutoffs r_2..r_k when its
largest pair distance (closest atoms) is within min(r_2..r_k); its sub-clusters are then kept
too. This script reads the per-cluster increments a run wrote (``result.increments.nocp.csv.gz``
beside ``result.json``) and the XYZ file it ran on, and for a grid of cutoffs gives the
calculations kept and the energy per water against that run's own energy:

* ``--reference DIR`` of an **unscreened** run (e.g. the 128-water droplet, 3-body: 349,632
  calculations): the error per water of every cutoff pair, and the recommended cutoffs per
  target (the cheapest cutoffs whose error, and that of every larger pair in the grid, stays
  within the target: no lucky cancellation).
* ``--convergence DIR`` of a **screened** run with large cutoffs (e.g. 1,024 waters at
  2-body 15 A, 3-body 7 A): how the energy per water changes as the cutoffs grow towards it.

Usage: python benchmarks/bench_screening_accuracy.py --reference /tmp/ref128 --xyz DROPLET.xyz
       [--convergence /tmp/conv1024 --convergence-xyz DROPLET1024.xyz] [--json OUT] [--docs]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

SECTION = "## Screening accuracy and recommended cutoffs"
KCAL = 627.5094740631
TARGETS = (0.1, 0.05, 0.02)  # kcal/mol per water
R2 = (6.0, 7.0, 8.0, 9.0, 10.0, 12.0, 14.0, 16.0, 20.0, 25.0)
R3 = (4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0, 15.0)


def net_dipole_per_water(xyz: Path) -> tuple[float, float]:
    """The droplet's net dipole per water and one water's dipole, in Debye, from TIP3P's point charges (O -0.834 e,
    H +0.417 e; a fixed-charge estimate, enough to tell a polarised droplet from a disordered one)."""
    lines = xyz.read_text().splitlines()
    natom = int(lines[0])
    atoms = [line.split() for line in lines[2 : 2 + natom]]
    coords = np.array([[float(v) for v in a[1:4]] for a in atoms])
    charges = np.array([-0.834 if a[0] == "O" else 0.417 for a in atoms])
    debye = 4.80320  # e * Angstrom
    waters = (charges[:, None] * coords).reshape(-1, 3, 3).sum(axis=1)  # per water (neutral, so origin-free)
    return float(np.linalg.norm(waters.sum(axis=0)) * debye / len(waters)), float(
        np.linalg.norm(waters, axis=1).mean() * debye
    )


def load(run: Path, xyz: Path) -> dict:
    """Per order, the clusters (1-based rows), their increments (Eh) and largest pair distance (A); and the run's
    levels."""
    from mbdask.inputs.xyz import molecule_from_xyz
    from mbdask.planning.screening import pair_distances
    from mbdask.tables import Rows

    rows = Rows.read_csv(run / "result.increments.nocp.csv.gz")
    nbody = np.array(rows.column("nbody"))
    energy = np.array(rows.column("energy"), dtype=float)
    fragments = rows.column("fragments")
    result = json.loads((run / "result.json").read_text())
    # geometry (bohr) and fragments are all the neighbour search reads: no QCElemental Molecule needed
    molecule = SimpleNamespace(**molecule_from_xyz(xyz))
    assert len(molecule.fragments) == result["extras"]["mbdask"]["levels"]["nocp"]["1"]["nclusters"], (
        "not the run's XYZ file"
    )
    distances = pair_distances(molecule, max(R2) + 10.0)
    out: dict = {
        "levels": result["extras"]["mbdask"]["levels"]["nocp"],
        "nwaters": len(molecule.fragments),
        "orders": {},
    }
    for n in sorted(set(nbody.tolist())):
        idx = np.flatnonzero(nbody == n)
        clusters = np.array([fragments[i] for i in idx], dtype=np.int64).reshape(len(idx), n)
        out["orders"][n] = {"energy": energy[idx], "span": distances.largest(clusters)}
    return out


def scan(data: dict, grid: list[tuple[float, float]]) -> list[dict]:
    """Per cutoff pair (r2, r3): calculations kept per water, and the screened energy per water minus the run's
    (kcal/mol)."""
    orders = data["orders"]
    whole = sum(float(o["energy"].sum()) for n, o in orders.items() if n > 1)  # the run's interaction energy
    nw = data["nwaters"]
    rows = []
    for r2, r3 in grid:
        keep2 = orders[2]["span"] <= r2
        keep3 = orders[3]["span"] <= min(r2, r3)
        kept = float(orders[2]["energy"][keep2].sum() + orders[3]["energy"][keep3].sum())
        rows.append(
            {
                "r2": r2,
                "r3": r3,
                "dimers": int(keep2.sum()),
                "trimers": int(keep3.sum()),
                "calculations_per_water": (nw + keep2.sum() + keep3.sum()) / nw,
                "error_per_water_kcal": (kept - whole) * KCAL / nw,
            }
        )
    return rows


def recommend(rows: list[dict], targets=TARGETS) -> dict[float, dict]:
    """Per target, the cheapest cutoffs whose error, and the error of every larger cutoff pair in the grid, is within
    it."""
    out = {}
    for target in targets:
        safe = [
            r
            for r in rows
            if all(abs(o["error_per_water_kcal"]) <= target for o in rows if o["r2"] >= r["r2"] and o["r3"] >= r["r3"])
        ]
        if safe:
            out[target] = min(safe, key=lambda r: (r["calculations_per_water"], -r["r2"]))
    return out


def section_markdown(reference: dict, recommended: dict, convergence: list[dict], conv_info: dict, machine: str) -> str:
    lines = [
        SECTION,
        "",
        f"Measured {datetime.date.today().isoformat()} on {machine} with `python "
        "benchmarks/bench_screening_accuracy.py --docs` from the per-cluster increments of real GFN2-xTB nocp 3-body "
        "runs (no model of the error: mbdask's screened energy is the exact sum of the kept increments, so a screened "
        "energy at any smaller cutoffs follows from a run that kept more).",
        "",
        f"**Error against the unscreened expansion**: the {reference['nwaters']}-water droplet (the first "
        f"{reference['nwaters']} waters of `water4096-liquid-sphere.xyz`), unscreened 3-body, "
        f"{reference['calculations']:,} calculations. Screened energy per water minus the unscreened one, kcal/mol "
        "(rows: 2-body cutoff; columns: 3-body cutoff; in brackets: calculations per water):",
        "",
    ]
    r3s = sorted({r["r3"] for r in reference["scan"]})
    lines.append("| 2-body \\ 3-body (A) | " + " | ".join(f"{r:g}" for r in r3s) + " |")
    lines.append("|---" * (len(r3s) + 1) + "|")
    for r2 in sorted({r["r2"] for r in reference["scan"]}):
        cells = [next(r for r in reference["scan"] if r["r2"] == r2 and r["r3"] == r3) for r3 in r3s]
        lines.append(
            f"| {r2:g} | "
            + " | ".join(f"{c['error_per_water_kcal']:+.3f} ({c['calculations_per_water']:.0f})" for c in cells)
            + " |"
        )
    lines += [
        "",
        "Recommended (the cheapest cutoffs whose error, and that of every larger pair above, stays within the target):",
        "",
        "| target, kcal/mol per water | 2-body cutoff (A) | 3-body cutoff (A) | calculations per water | error here |",
        "|---|---|---|---|---|",
    ]
    for target, row in sorted(recommended.items(), reverse=True):
        lines.append(
            f"| {target:g} | {row['r2']:g} | {row['r3']:g} | {row['calculations_per_water']:.0f} | "
            f"{row['error_per_water_kcal']:+.3f} |"
        )
    if convergence:
        lines += [
            "",
            f"**Convergence at {conv_info['nwaters']:,} waters**: one screened run at 2-body {conv_info['r2']:g} A, "
            f"3-body {conv_info['r3']:g} A ({conv_info['calculations']:,} calculations); the energy per water at "
            "smaller cutoffs minus that run's, kcal/mol (calculations per water in brackets):",
            "",
        ]
        dipole = conv_info.get("net_dipole_debye_per_water")
        r3s = sorted({r["r3"] for r in convergence})
        lines.append("| 2-body \\ 3-body (A) | " + " | ".join(f"{r:g}" for r in r3s) + " |")
        lines.append("|---" * (len(r3s) + 1) + "|")
        for r2 in sorted({r["r2"] for r in convergence}):
            cells = [next(r for r in convergence if r["r2"] == r2 and r["r3"] == r3) for r3 in r3s]
            lines.append(
                f"| {r2:g} | "
                + " | ".join(f"{c['error_per_water_kcal']:+.3f} ({c['calculations_per_water']:.0f})" for c in cells)
                + " |"
            )
        if dipole is not None:
            lines += [
                "",
                (
                    f"Read: the 2-body sum of the {conv_info['nwaters']:,}-water droplet has not converged at "
                    f"{conv_info['r2']:g} A: each further 2 A of 2-body cutoff from 10 A on still lowers the energy by "
                    "more than 0.1 kcal/mol per water, where the 128-water droplet (about 20 A across, so with few "
                    "pairs beyond 16 A) had converged. The droplets are cut from a 64-water box tiled in space, and "
                    f"the box has a net dipole: {dipole:.2f} D per water along one direction (TIP3P charges; one "
                    f"water's dipole is {conv_info['water_dipole_debye']:.2f} D), a polarised, ferroelectric-like "
                    "droplet whose dipole-dipole pair sum falls off no faster than the number of pairs grows. In a "
                    "disordered liquid the net dipole per water shrinks as one over the square root of the number of "
                    "waters; so this slow 2-body convergence is mostly the tiled geometry's, and the recommended "
                    "cutoffs above, from the 128-water droplet, are the better guide for liquid water. For polar "
                    "systems with long-range order (crystals, oriented interfaces), check the 2-body cutoff on the "
                    "system itself."
                ),
            ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference", type=Path, required=True, help="folder of an unscreened 3-body run (result.json and its tables)"
    )
    parser.add_argument("--xyz", type=Path, required=True, help="the XYZ file that run used")
    parser.add_argument(
        "--convergence", type=Path, default=None, help="folder of a screened 3-body run with large cutoffs"
    )
    parser.add_argument("--convergence-xyz", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--docs", action="store_true")
    args = parser.parse_args()
    from bench_overhead import write_section
    from run_all import machine

    ref = load(args.reference, args.xyz)
    grid = [(r2, r3) for r2 in R2 for r3 in R3]
    reference = {
        "nwaters": ref["nwaters"],
        "scan": scan(ref, grid),
        "calculations": json.loads((args.reference / "result.json").read_text())["extras"]["mbdask"][
            "nfragment_calculations"
        ],
    }
    recommended = recommend(reference["scan"])
    out: dict = {"reference": reference, "recommended": {str(k): v for k, v in recommended.items()}}
    convergence, info = [], {}
    if args.convergence:
        conv = load(args.convergence, args.convergence_xyz)
        summary = json.loads((args.convergence / "result.json").read_text())["extras"]["mbdask"]
        top = summary["screening"]["distance_cutoffs"]
        info = {
            "nwaters": conv["nwaters"],
            "r2": float(top["2"]),
            "r3": float(top["3"]),
            "calculations": summary["nfragment_calculations"],
        }
        info["net_dipole_debye_per_water"], info["water_dipole_debye"] = net_dipole_per_water(args.convergence_xyz)
        convergence = scan(conv, [(r2, r3) for r2 in R2 for r3 in R3 if r2 <= info["r2"] and r3 <= info["r3"]])
        out["convergence"] = {"info": info, "scan": convergence}
    for target, row in recommended.items():
        print(f"target {target}: {json.dumps(row)}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    if args.docs:
        write_section(section_markdown(reference, recommended, convergence, info, machine()), section=SECTION)


if __name__ == "__main__":
    main()

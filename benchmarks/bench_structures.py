"""Issue #19: many structures in one run against a loop of single runs.

20 frames of a trajectory-like set of (H2O)10 (the pentagonal-prism minimum of
benchmarks/data with Gaussian displacements of 0.05 Angstrom per coordinate, seeded; not a
molecular-dynamics trajectory: xtb-python has no MD), 3-body GFN2-xTB, nocp (175
calculations per frame). Routes, each a whole process timed from outside, interleaved,
best of ``REPEATS``:

* ``one run``: ``python -m mbdask run traj.xyz --output-dir DIR``: every frame on one cluster;
* ``shell loop``: ``python -m mbdask run traj-K.json -o K.json`` once per frame, what a
  chemist's shell loop does (each frame's input as the one run builds it: the first frame's
  fragments; found per frame from connectivity, a stretched O-H bond in one frame makes a
  fragment of a lone H, whose trimers xtb cannot converge);
* ``library loop``: one process, one cluster, ``mbdask.compute`` per frame in a loop (a
  script's loop on mbdask's own LocalCluster: no start-up per frame, but each frame's tail idles).

Idle-core share = 1 - (sum of the fragments' QC program seconds) / (cores x wall time).

    python benchmarks/bench_structures.py [--frames N] [--docs]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

REPEATS = 2
SECTION = "## Many structures in one run"
LIBRARY_LOOP = """
import json, sys, time
import mbdask
from mbdask.deploy.cluster import connected
if __name__ == "__main__":
    paths = sys.argv[1:]
    start = time.perf_counter()
    busy, energies = 0.0, []
    with connected() as conn:  # the LocalCluster mbdask starts: workers forked from this process
        client = conn.client
        for path in paths:
            result = mbdask.compute(path, client)
            busy += result.extras["mbdask"]["timing"]["sum_task_seconds"]
            energies.append(result.properties.nocp_corrected_total_energy)
    print(json.dumps({"busy": busy, "energies": energies}))
"""


def frames(count: int, shift: float = 0.05, seed: int = 2026) -> list[str]:
    """``count`` XYZ frames of (H2O)10: the minimum, then displaced copies."""
    lines = (HERE / "data" / "water10-pp1.xyz").read_text().splitlines()
    natoms = int(lines[0])
    atoms = [line.split()[:4] for line in lines[2 : 2 + natoms]]
    rng = np.random.default_rng(seed)
    out = []
    for number in range(count):
        body = [str(natoms), f"water10 frame {number + 1}"]
        for symbol, *xyz in atoms:
            moved = np.array(xyz, dtype=float) + (rng.normal(0.0, shift, 3) if number else 0.0)
            body.append(f"{symbol} {moved[0]:.6f} {moved[1]:.6f} {moved[2]:.6f}")
        out.append("\n".join(body) + "\n")
    return out


def _timed(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{args[:5]} failed: {proc.stderr[-2000:]}")
    return wall, proc.stdout


def one_run(traj: Path, work: Path) -> dict:
    out = work / "out"
    wall, _ = _timed(
        [
            sys.executable,
            "-m",
            "mbdask",
            "run",
            str(traj),
            "--max-nbody",
            "3",
            "--no-progress",
            "--output-dir",
            str(out),
        ]
    )
    rows = list(csv.DictReader((out / "structures.csv").open()))
    return {
        "wall": wall,
        "busy": sum(float(r["task_seconds"]) for r in rows),
        "energies": [float(r["total_energy_Eh"]) for r in rows],
    }


def shell_loop(paths: list[Path], work: Path) -> dict:
    wall, busy, energies = 0.0, 0.0, []
    for number, path in enumerate(paths):
        out = work / f"{number}.json"
        seconds, _ = _timed([sys.executable, "-m", "mbdask", "run", str(path), "--no-progress", "-o", str(out)])
        wall += seconds
        result = json.loads(out.read_text())
        busy += result["extras"]["mbdask"]["timing"]["sum_task_seconds"]
        energies.append(result["properties"]["nocp_corrected_total_energy"])
    return {"wall": wall, "busy": busy, "energies": energies}


def library_loop(paths: list[Path]) -> dict:
    wall, stdout = _timed([sys.executable, "-c", LIBRARY_LOOP, *map(str, paths)])
    return {"wall": wall, **json.loads(stdout.strip().splitlines()[-1])}


def frame_inputs(traj: Path, work: Path) -> list[Path]:
    """Each frame's ManyBodyInput as a JSON file, exactly as the one run builds it (the first frame's fragments)."""
    from mbdask.inputs.xyz import ModelOptions, molecules_from_xyz

    paths = []
    for molecule in molecules_from_xyz(traj, guess_ions=True):
        paths.append(work / f"{molecule['name']}.json")
        paths[-1].write_text(json.dumps(ModelOptions(max_nbody=3).input_for(molecule)))
    return paths


def measure(count: int, repeats: int) -> dict:
    from mbdask.deploy.cluster import usable_cores

    cores = usable_cores()
    routes: dict[str, list[dict]] = {"one run": [], "library loop": [], "shell loop": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        texts = frames(count)
        traj = work / "traj.xyz"
        traj.write_text("".join(texts))
        paths = frame_inputs(traj, work)
        for _ in range(repeats):
            routes["one run"].append(one_run(traj, work))
            routes["library loop"].append(library_loop(paths))
            routes["shell loop"].append(shell_loop(paths, work))
            print(json.dumps({k: round(v[-1]["wall"], 2) for k, v in routes.items()}), flush=True)
    best = {name: min(runs, key=lambda r: r["wall"]) for name, runs in routes.items()}
    reference = best["one run"]["energies"]
    rows = []
    for name, run in best.items():
        rows.append(
            {
                "route": name,
                "wall": run["wall"],
                "busy": run["busy"],
                "idle": 1.0 - run["busy"] / (cores * run["wall"]),
                "vs one run": run["wall"] / best["one run"]["wall"],
                "max energy diff": max(abs(a - b) for a, b in zip(run["energies"], reference)),
            }
        )
    return {"frames": count, "cores": cores, "rows": rows}


def section_markdown(result: dict, machine: str) -> str:
    lines = [
        SECTION,
        "",
        f"Measured {datetime.date.today().isoformat()} on {machine} with `python benchmarks/bench_structures.py "
        f"--docs`: {result['frames']} frames of (H2O)10 (the minimum and copies displaced by 0.05 Angstrom per "
        "coordinate, seeded; trajectory-like, not molecular dynamics), 3-body GFN2-xTB, nocp, 175 calculations per "
        f"frame. Whole processes timed from outside, routes interleaved, best of {REPEATS}. Idle-core share = 1 - QC "
        f"program seconds / ({result['cores']} cores x wall time).",
        "",
        "| route | wall s | QC program s | idle-core share | wall / one run | max energy diff vs one run, Eh |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "one run": "`python -m mbdask run traj.xyz` (one run, one cluster)",
        "library loop": "`mbdask.compute` per frame on one cluster (a script's loop)",
        "shell loop": "`python -m mbdask run traj-K.json` per frame (a shell loop)",
    }
    for row in result["rows"]:
        lines.append(
            f"| {names[row['route']]} | {row['wall']:.2f} | {row['busy']:.2f} | {row['idle']:.0%} | "
            f"{row['vs one run']:.2f} | {row['max energy diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--docs", action="store_true", help="write the section of docs/benchmarks.md")
    args = parser.parse_args()
    from bench_overhead import write_section
    from run_all import machine

    result = measure(args.frames, args.repeats)
    text = section_markdown(result, machine())
    print(text)
    if args.docs:
        write_section(text, section=SECTION)


if __name__ == "__main__":
    main()

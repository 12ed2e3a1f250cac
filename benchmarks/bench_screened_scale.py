"""Screened expansions of 64 to 4,096 waters: what a screened plan, its graph and its run cost (issue #26).

Two measurements, each in fresh processes:

* ``plan`` (default): GFN2-xTB nocp 3-body screened by distance (default 2-body 9 A, 3-body
  6 A) on the droplets of ``droplets.py`` (the first N waters of the 4,096-water liquid
  sphere). A child process plans, batches for two single-thread workers and builds the
  graph exactly as ``mbdask.start`` does before sending it (as ``bench_plan.py`` does for
  unscreened expansions), and reports each step's time, its peak RSS (VmHWM) and the time
  per kept calculation. Then ``python -m mbdask plan`` on the whole 4,096-water file, as a
  user types it, timed as a whole process.
* ``--run N:NBODY:CUTOFFS`` (repeatable): the command line as a user runs it, with a store
  and ``--profile``, on the N-water droplet: wall time, the zero-overhead bound
  (QC program time / cores, or the longest fragment) and its ratio, peak memory of the
  client and of each worker, calculations, energy per monomer.

* ``--energy N:CUTOFFS:THRESHOLDS``: energy screening of the candidates within CUTOFFS on a copy
  of the store the distance-screened ``--run`` of N waters left, GFN2-xTB as that run computed
  it as the cheap model: every calculation is found, so the client's CPU per candidate is
  mbdask's own (candidates, decisions, store look-ups, graph, assembly).

Usage: python benchmarks/bench_screened_scale.py [--sizes 64 256 1024 4096] [--cutoffs 2:9,3:6]
       [--run 1024:3:2:9,3:6 ...] [--energy 1024:2:9,3:6:2:0.05,3:0.01] [--workdir DIR] [--json OUT] [--docs]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_large import gfn2_command, sampled_run  # noqa: E402
from droplets import SPHERE, droplet_xyz  # noqa: E402

SECTION = "## Thousands of fragments: screened plans and runs"
KCAL = 627.5094740631
SIZES = (64, 128, 256, 512, 1024, 2048, 4096)

#: One plan and graph, timed step by step, as ``mbdask.start`` makes them before sending the graph.
CHILD = r"""
import json, sys, time
t_start = time.perf_counter()
import scipy.spatial  # imported by the first screened plan: counted with the imports, not the plan
import mbdask
from mbdask.workflows.expansion import _units
from mbdask.graph.build import FragmentResources, build_graph
from mbdask.deploy.workers import increment_tasks
from mbdask.inputs.xyz import ModelOptions, molecule_from_xyz
path, nbody, text = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cutoffs = {int(n): float(r) for n, r in (part.split(":") for part in text.split(","))}
t0 = time.perf_counter()
inp = ModelOptions(max_nbody=nbody).input_for(molecule_from_xyz(path))
t1 = time.perf_counter()
plan = mbdask.plan(inp, check_installed=False, screening={"distance_cutoffs": cutoffs})
t2 = time.perf_counter()
workers = [{"address": "a", "nthreads": 1, "memory_limit": 2**30, "resources": {"cores": 1, "memory": 2**30}}] * 2
resources = FragmentResources()
units = _units(plan, {}, workers, resources, batch=True, auto_cores=False)
graph = build_graph(
    plan, "bench", resources=resources, units=units, increment_tasks=increment_tasks(workers), cluster_cores=2
)
t3 = time.perf_counter()
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
kept = {n: len(c) for n, c in plan.screened.kept.items()}
print(json.dumps({"waters": plan.nfragments, "nbody": nbody, "cutoffs": text, "calculations": len(plan.jobs),
                  "kept": kept, "imports_s": t0 - t_start, "xyz_s": t1 - t0, "plan_s": t2 - t1, "graph_s": t3 - t2,
                  "peak_mb": rss, "tasks": len(graph.units)}))
"""


def plan_row(xyz: Path, nbody: int, cutoffs: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(xyz), str(nbody), cutoffs], capture_output=True, text=True, check=True
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["us_per_calculation"] = 1e6 * (row["plan_s"] + row["graph_s"]) / row["calculations"]
    return row


def cli_plan(xyz: Path, nbody: int, cutoffs: str) -> dict:
    """``python -m mbdask plan`` as a user types it: a whole process, start-up included."""
    cmd = gfn2_command("plan", xyz, nbody, "--distance-cutoffs", cutoffs)
    done = sampled_run(cmd)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return {
        "file": xyz.name,
        "cutoffs": cutoffs,
        "wall_s": done.wall_s,
        "peak_mb": done.sampler.main_peak / 2**20,
        "stdout": done.stdout,
    }


def run_row(nwaters: int, nbody: int, cutoffs: str, workdir: Path, driver: str = "energy") -> dict:
    """The command line on the ``nwaters`` droplet with a store and a profile (a fresh store each time)."""
    folder = workdir / f"run{nwaters}-{nbody}b-{cutoffs.replace(':', '_').replace(',', '-')}-{driver}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("run.sqlite", "run.sqlite-wal", "run.sqlite-shm"):
        (folder / name).unlink(missing_ok=True)
    xyz = droplet_xyz(nwaters, workdir)
    cmd = gfn2_command(
        "run", xyz, nbody, "--driver", driver, "--distance-cutoffs", cutoffs, "--store", "run.sqlite"
    ) + ["-o", "result.json", "--profile", "profile.json", "--report", "report.html"]
    env = {**os.environ, "DASK_MBDASK__PROGRESS__LOG_INTERVAL": "60"}
    done = sampled_run(cmd, folder, env)
    wall, sampler = done.wall_s, done.sampler
    (folder / "stdout.txt").write_text(done.stdout)
    (folder / "stderr.txt").write_text(done.stderr)
    if done.returncode:
        raise RuntimeError(f"mbdask exited {done.returncode}: {done.stderr[-3000:]}")
    profile = json.loads((folder / "profile.json").read_text())
    result = json.loads((folder / "result.json").read_text())
    extras = result["extras"]["mbdask"]
    levels = extras["levels"]["nocp"]
    bound = profile["zero_overhead_bound_seconds"]
    return {
        "waters": nwaters,
        "nbody": nbody,
        "cutoffs": cutoffs,
        "driver": driver,
        "wall_s": wall,
        "bound_s": bound,
        "wall_over_bound": wall / bound,
        "calculations": extras["nfragment_calculations"],
        "kept": {n: row["kept"] for n, row in extras["screening"]["orders"].items()},
        "interaction_per_monomer_kcal": levels[str(nbody)]["interaction"] * KCAL / nwaters,
        "client_peak_mb": sampler.main_peak / 2**20,
        "worker_peak_mb": max(sampler.child_peaks.values(), default=0) / 2**20,
        "report_mb": (folder / "report.html").stat().st_size / 2**20,
        "folder": str(folder),
        "phases": profile.get("phases"),
    }


#: Energy screening over a distance-screened run's store: the cheap model is GFN2-xTB as that run computed it, so
#: every cheap and expensive calculation is found and the figures are mbdask's own work per candidate.
ENERGY_SCRIPT = """
import json, sys, time
import mbdask
from mbdask.inputs.xyz import ModelOptions, molecule_from_xyz
if __name__ == "__main__":
    xyz, nbody, cutoffs, thresholds = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
    inp = ModelOptions(max_nbody=nbody).input_for(molecule_from_xyz(xyz))
    cheap = {"program": "xtb", "model": {"method": "gfn2-xtb"}}
    screening = {"distance_cutoffs": cutoffs, "energy_thresholds": thresholds, "cheap_model": cheap}
    result = mbdask.compute(inp, store="run.sqlite", screening=screening)
    mbdask.save_result(result, "result.json")
"""


def energy_row(run_folder: Path, nwaters: int, nbody: int, cutoffs: str, thresholds: str, workdir: Path) -> dict:
    """Energy screening (``thresholds``, kcal/mol per order) of the candidates within ``cutoffs``, on a copy
    of the store the distance-screened run at ``cutoffs`` left in ``run_folder``: nothing is computed."""
    import shutil

    folder = workdir / f"energy{nwaters}-{thresholds.replace(':', '_').replace(',', '-')}"
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        if (run_folder / f"run.sqlite{suffix}").exists():
            shutil.copyfile(run_folder / f"run.sqlite{suffix}", folder / f"run.sqlite{suffix}")
    per_order = {int(n): float(v) for n, v in (part.split(":") for part in cutoffs.split(","))}
    taus = {int(n): float(v) for n, v in (part.split(":") for part in thresholds.split(","))}
    cmd = [
        sys.executable,
        "-c",
        ENERGY_SCRIPT,
        str(droplet_xyz(nwaters, workdir)),
        str(nbody),
        json.dumps(per_order),
        json.dumps(taus),
    ]
    done = sampled_run(cmd, folder)
    wall, sampler = done.wall_s, done.sampler
    if done.returncode:
        raise RuntimeError(f"mbdask exited {done.returncode}: {done.stderr[-3000:]}")
    extras = json.loads((folder / "result.json").read_text())["extras"]["mbdask"]
    report = extras["screening"]["energy"]
    candidates = sum(row["candidates"] for row in report["orders"].values())
    return {
        "waters": nwaters,
        "cutoffs": cutoffs,
        "thresholds": thresholds,
        "wall_s": wall,
        "client_cpu_s": sampler.main_cpu,
        "client_peak_mb": sampler.main_peak / 2**20,
        "candidates": candidates,
        "orders": report["orders"],
        "screening_seconds": report.get("screening_seconds"),
        "calculations": extras["nfragment_calculations"],
        "computed": len(extras["timing"]["fragments"]),
        "client_ms_per_candidate": 1000 * sampler.main_cpu / candidates,
    }


def section_markdown(
    plans: list[dict],
    cli: dict,
    runs: list[dict],
    machine: str,
    energy: list[dict] | None = None,
    unscreened: dict | None = None,
) -> str:
    lines = [
        SECTION,
        "",
        f"Measured {datetime.date.today().isoformat()} on {machine} with `python benchmarks/bench_screened_scale.py` "
        "(the plan table by default; each end-to-end run with `--run N:K:CUTOFFS[:gradient]`, energy screening with "
        "`--energy N:CUTOFFS:THRESHOLDS`; `--from-json` of their merged output writes this section): GFN2-xTB nocp "
        "expansions screened by distance (closest atoms; a k-cluster is kept when all its sub-clusters are kept and "
        "each pair lies within the k-body cutoff) on liquid-water droplets of N waters, the first N waters of "
        "`benchmarks/data/water4096-liquid-sphere.xyz` (ordered by distance from its centre). Plan + graph: a fresh "
        "process plans, batches for two single-thread workers and builds the graph as `mbdask.start` does before "
        "sending it (imports, SciPy's 0.4 s included, not counted); peak RSS is that process's (imports included, "
        "about 120 MB).",
        "",
        "| waters | cutoffs (A) | kept 2-body / 3-body | calculations | plan s | graph s | plan + graph s | per "
        "calculation, us | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in plans:
        kept = " / ".join(f"{row['kept'].get(str(n), row['kept'].get(n, 0)):,}" for n in range(2, row["nbody"] + 1))
        lines.append(
            f"| {row['waters']:,} | {row['cutoffs']} | {kept} | {row['calculations']:,} | {row['plan_s']:.2f} | "
            f"{row['graph_s']:.2f} | {row['plan_s'] + row['graph_s']:.2f} | {row['us_per_calculation']:.1f} | "
            f"{row['peak_mb']:.0f} |"
        )
    if unscreened:
        lines += [
            "",
            "Unscreened plans did not get slower: `python benchmarks/bench_plan.py 64:4` ((H2O)64 4-body, 679,120 "
            "calculations, plan + graph), this checkout and the one before issue #26 alternately: "
            + "; ".join(
                f"{who} {', '.join(f'{r[0]:.2f} s / {r[1]:.0f} MB' for r in rows)}" for who, rows in unscreened.items()
            )
            + ".",
        ]
    if cli:
        lines += [
            "",
            f"`python -m mbdask plan {cli['file']} --program xtb --method gfn2-xtb --max-nbody 3 --distance-cutoffs "
            f"{cli['cutoffs']}` (the whole 4,096-water file, a whole process as a user runs it, start-up and reading "
            f"the XYZ file included): **{cli['wall_s']:.1f} s**, peak {cli['peak_mb']:.0f} MB.",
        ]
    if runs:
        lines += [
            "",
            "End to end, the command line as a user runs it (`python -m mbdask run DROPLET.xyz --program xtb --method "
            "gfn2-xtb --max-nbody K --distance-cutoffs ... --store run.sqlite -o result.json --profile profile.json "
            "--report report.html`, a fresh store, LocalCluster of 2 single-thread workers). Bound = QC program time "
            "/ 2 cores (or the longest fragment); wall includes Python's start, planning, the cluster's start, "
            "writing the result, its tables and the report (together 2-4 s: they dominate the ratio below 256 waters; "
            "from 512 waters on the runs stay within 1.1 of the bound).",
            "",
            "| waters | n-body | driver | cutoffs (A) | calculations | wall s | bound s | wall / bound | client peak "
            "MB | worker peak MB | report MB | interaction per water, kcal/mol |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in runs:
            lines.append(
                f"| {row['waters']:,} | {row['nbody']} | {row['driver']} | {row['cutoffs']} | {row['calculations']:,} "
                f"| {row['wall_s']:.1f} | {row['bound_s']:.1f} | **{row['wall_over_bound']:.3f}** | "
                f"{row['client_peak_mb']:.0f} | {row['worker_peak_mb']:.0f} | {row['report_mb']:.1f} | "
                f"{row['interaction_per_monomer_kcal']:.4f} |"
            )
    if energy:
        lines += [
            "",
            "Energy screening of thousands of waters: the candidates are the clusters within the distance cutoffs (a "
            "neighbour search), decided by GFN2-xTB as the cheap model; run on a copy of the distance-screened run's "
            "store with that run's GFN2-xTB as the cheap model, so that every calculation is found there and the "
            "figures are mbdask's own work (a whole process calling `mbdask.compute`: candidates, decisions, store "
            "look-ups, the graph and the assembly of the kept set; 'computed': calculations the store did not hold). "
            "Client CPU varies by about 5% between runs (0.107-0.113 ms per candidate in three).",
            "",
            "| waters | cutoffs (A) | thresholds (kcal/mol) | candidates | kept per order | calculations | computed | "
            "wall s | client CPU s | per candidate, ms | client peak MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in energy:
            kept = ", ".join(f"{n}-body {o['kept']:,}/{o['candidates']:,}" for n, o in row["orders"].items())
            lines.append(
                f"| {row['waters']:,} | {row['cutoffs']} | {row['thresholds']} | {row['candidates']:,} | {kept} | "
                f"{row['calculations']:,} | {row['computed']} | {row['wall_s']:.1f} | {row['client_cpu_s']:.1f} | "
                f"**{row['client_ms_per_candidate']:.3f}** | {row['client_peak_mb']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=list(SIZES), help="droplet sizes for the plan table (none: skip it)"
    )
    parser.add_argument("--nbody", type=int, default=3)
    parser.add_argument("--cutoffs", default="2:9,3:6")
    parser.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="N:NBODY:CUTOFFS[:gradient]",
        help="an end-to-end run, e.g. 1024:3:2:9,3:6 (cutoffs as --distance-cutoffs takes them)",
    )
    parser.add_argument(
        "--energy",
        action="append",
        default=[],
        metavar="N:CUTOFFS:THRESHOLDS",
        help="energy screening over the store of the --run at N waters with CUTOFFS, e.g. 1024:2:9,3:6:2:0.05,3:0.01 "
        "(the run's folder must be in --workdir)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mbdask-screened-scale"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--from-json", type=Path, default=None, help="measure nothing: the section from an earlier --json"
    )
    parser.add_argument("--docs", action="store_true", help="write the section of docs/benchmarks.md")
    args = parser.parse_args()
    from bench_overhead import write_section
    from run_all import machine

    if args.from_json:
        data = json.loads(args.from_json.read_text())
    else:
        args.workdir.mkdir(parents=True, exist_ok=True)
        data: dict = {"plans": [], "cli": {}, "runs": []}
        for n in args.sizes:
            row = plan_row(droplet_xyz(n, args.workdir), args.nbody, args.cutoffs)
            data["plans"].append(row)
            print(json.dumps(row), flush=True)
        if args.sizes:
            data["cli"] = cli_plan(SPHERE, args.nbody, args.cutoffs)
            print(json.dumps({k: v for k, v in data["cli"].items() if k != "stdout"}), flush=True)
        for spec in args.run:
            n, nbody, rest = spec.split(":", 2)
            driver = "energy"
            if rest.endswith(":gradient"):
                rest, driver = rest[: -len(":gradient")], "gradient"
            row = run_row(int(n), int(nbody), rest, args.workdir, driver)
            data["runs"].append(row)
            print(json.dumps(row), flush=True)
        data["energy"] = []
        for spec in args.energy:
            n, rest = spec.split(":", 1)
            cutoffs, thresholds = _split_energy_spec(rest)
            folder = args.workdir / f"run{n}-3b-{cutoffs.replace(':', '_').replace(',', '-')}-energy"
            row = energy_row(folder, int(n), 3, cutoffs, thresholds, args.workdir)
            data["energy"].append(row)
            print(json.dumps(row), flush=True)
        if args.json:
            args.json.write_text(json.dumps(data, indent=1))
    if args.docs:
        write_section(
            section_markdown(
                data["plans"], data["cli"], data["runs"], machine(), data.get("energy"), data.get("unscreened")
            ),
            section=SECTION,
        )


def _split_energy_spec(text: str) -> tuple[str, str]:
    """``2:9,3:6:2:0.05,3:0.01`` -> ("2:9,3:6", "2:0.05,3:0.01"): the cutoffs' orders come first,
    then the thresholds'."""
    parts = text.split(",")
    middle = next(i for i, part in enumerate(parts) if part.count(":") == 3)
    left, right = parts[middle].split(":", 2)[:2], parts[middle].split(":", 2)[2]
    return ",".join(parts[:middle] + [":".join(left)]), ",".join([right] + parts[middle + 1 :])


if __name__ == "__main__":
    main()

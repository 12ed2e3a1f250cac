"""Issue #15: mbdask's own cost, each figure a whole process, side by side in one run.

Every executor runs as a fresh ``python`` process timed from outside (interpreter start,
imports, cluster start, plan, run, assembly, output: what a user waits for):

* ``mbdask``: ``python -m mbdask run INPUT --profile`` (default: workers forked from the
  command-line process, :mod:`mbdask.deploy.forked_workers`);
* ``mbdask spawned``: the same with ``DASK_MBDASK__LOCAL_CLUSTER__WORKERS=spawn`` (Dask's own
  LocalCluster start, the default before);
* ``mbdask.compute``: a script calling ``mbdask.compute(INPUT)`` without a client, in the
  environment as it is (no thread variables set: numpy's OpenBLAS starts its threads), writing
  the result with ``mbdask.save_result``: the library's start-up against the command line's
  (issue #25: workers forked where the command line forks them);
* ``QCManyBody``: sequential ``ManyBodyComputer`` in its default setting, truly single
  threaded (``QCENGINE_NCORES=1``, BLAS/OpenMP pools at 1), and with BLAS at one thread but the
  program's own OpenMP threads on every core (PySCF's fastest sequential setting on 2 cores);
  the fastest of the three counts;
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
#: BLAS at one thread, the program's own OpenMP threads on every core (QCEngine tells PySCF and xtb all cores).
BLAS_PINNED = {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SEQUENTIAL = {"qcmb default": {}, "qcmb 1 thread": SINGLE_THREAD, "qcmb BLAS pinned": BLAS_PINNED}

QCMANYBODY = """
import json, sys, time
import mbdask
from qcmanybody.v2 import ManyBodyComputer
mbdask.register_programs()
result = ManyBodyComputer.from_manybodyinput(mbdask.load_input(sys.argv[1]))
print(json.dumps({"energy": float(result.properties.return_energy)}))
"""

LIBRARY = """
import sys
import mbdask
if __name__ == "__main__":
    result = mbdask.compute(sys.argv[1], n_workers=int(sys.argv[2]))
    mbdask.save_result(result, sys.argv[3])
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
sys.path.insert(0, sys.argv[1] + "/../tests")
from doubles import register_doubles as register
from bench_makespan import sleep_input
import mbdask
if __name__ == "__main__":
    register()
    inp = sleep_input(64, 3, "nocp", 0.0)
    inp["specification"]["specification"]["sleep"]["model"]["method"] = sys.argv[2]
    result = mbdask.compute(inp)
    timing = result.extras["mbdask"]["timing"]
    print(json.dumps({"fragments": result.extras["mbdask"]["nfragment_calculations"],
                      "energy": result.properties.return_energy,
                      "own_ms": 1000 * sum(f["own_seconds"] for f in timing["fragments"]) / len(timing["fragments"]),
                      "program_ms": 1000 * timing["sum_task_seconds"] / len(timing["fragments"])}))
"""
WARM = """
import json, sys, time
import mbdask
from mbdask.deploy.cluster import connected
if __name__ == "__main__":
    paths, repeats = sys.argv[1:-1], int(sys.argv[-1])
    with connected() as conn:  # the LocalCluster mbdask.compute would start here: workers forked from this process
        client = conn.client
        for path in paths:
            inp = mbdask.load_input(path)
            mbdask.compute(inp, client)  # warm-up: the workers import the QC program
            best = None
            for _ in range(repeats):
                called = time.time()
                start = time.perf_counter()
                result = mbdask.compute(inp, client)
                wall = time.perf_counter() - start
                timing = result.extras["mbdask"]["timing"]
                fragments = timing["fragments"]
                cores = timing.get("cluster_cores") or 1
                bound = max(timing["sum_task_seconds"] / cores, max(f["seconds"] for f in fragments))
                row = {"path": path, "wall": wall, "bound": bound, "efficiency": bound / wall,
                       "first": min(f["start"] for f in fragments) - called}
                best = row if best is None or row["efficiency"] > best["efficiency"] else best
            print(json.dumps(best), flush=True)
"""
#: The zero-duration program under two names: "hf", which the cost model prices as HF/6-31G*
#: (0.1-0.2 s a trimer: one calculation or a few per Dask task, so Dask's per-task cost is what
#: is measured), and "gfn2-xtb", priced as xtb (milliseconds: batched as cheap fragments are).
THROUGHPUT_METHODS = ("hf", "gfn2-xtb")


#: For the library's script: the thread variables left unset, as in a user's shell
#: (``_timed`` drops variables set to None).
UNSET_THREADS = {name: None for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def _timed(args: list[str], env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    merged = {**os.environ, **(env or {})}
    proc = subprocess.run(
        args, capture_output=True, text=True, env={k: v for k, v in merged.items() if v is not None}, cwd=ROOT
    )
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


def _muted_xtb(inp: dict) -> dict | None:
    """``inp`` with xtb told to write no output file (what mbdask asks of xtb by default), or None without xtb.

    So that the pool's comparison does not credit mbdask with a keyword a chemist could set too."""
    specs = inp["specification"]["specification"]
    if not any(spec["program"] == "xtb" for spec in specs.values()):
        return None
    muted = json.loads(json.dumps(inp))
    for spec in muted["specification"]["specification"].values():
        if spec["program"] == "xtb":
            spec["keywords"] = {"verbosity": "muted", **spec.get("keywords", {})}
    return muted


def warm(paths: list[Path], repeats: int = 3) -> list[dict]:
    """Each input through ``mbdask.compute`` on a cluster that is already up, as in a script's loop: one
    process, the LocalCluster mbdask starts (workers forked from it), one warm-up run, then best of 3."""
    _, stdout = _timed(
        [sys.executable, "-c", WARM, *map(str, paths), str(repeats)],
        {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    )
    return [json.loads(line) for line in stdout.strip().splitlines() if line.startswith("{")]


def run_case(name: str, path: Path, workers: int, repeats: int, work: Path) -> dict:
    inp = json.loads(path.read_text())
    muted = _muted_xtb(inp)
    if muted is not None:
        (work / "muted.json").write_text(json.dumps(muted))
    runs: dict[str, list] = {
        key: []
        for key in (
            "mbdask",
            "mbdask spawned",
            "mbdask.compute",
            *SEQUENTIAL,
            "pool",
            *(["pool muted"] if muted else []),
        )
    }
    energies: list[float] = []
    profile = {}
    for _ in range(repeats):
        for key, env in (("mbdask", {}), ("mbdask spawned", {"DASK_MBDASK__LOCAL_CLUSTER__WORKERS": "spawn"})):
            out, prof = work / "result.json", work / "profile.json"
            wall, _ = _timed(cli_run_command(path, workers, out, prof), env)
            runs[key].append(wall)
            energies.append(json.loads(out.read_text())["properties"]["return_energy"])
            if key == "mbdask" and wall == min(runs[key]):
                profile = json.loads(prof.read_text())
        out = work / "library-result.json"
        wall, _ = _timed([sys.executable, "-c", LIBRARY, str(path), str(workers), str(out)], UNSET_THREADS)
        runs["mbdask.compute"].append(wall)
        energies.append(json.loads(out.read_text())["properties"]["return_energy"])
        for key, env in SEQUENTIAL.items():
            wall, stdout = _timed([sys.executable, "-c", QCMANYBODY, str(path)], env)
            runs[key].append(wall)
            energies.append(json.loads(stdout.strip().splitlines()[-1])["energy"])
        for key, given in (("pool", path), ("pool muted", work / "muted.json")):
            if key in runs:
                wall, stdout = _timed([sys.executable, "-c", POOL, str(given), str(HERE), str(workers)], SINGLE_THREAD)
                runs[key].append(wall)
                energies.append(json.loads(stdout.strip().splitlines()[-1])["energy"])
    best = {key: min(values) for key, values in runs.items()}
    sequential = min(best[key] for key in SEQUENTIAL)
    pool = min(best[key] for key in ("pool", "pool muted") if key in best)
    bound = profile["zero_overhead_bound_seconds"]
    phases = {row["phase"]: row["seconds"] for row in profile["phases"]}
    return {
        "case": name,
        "input": str(path),
        "fragments": profile["fragments"],
        "workers": workers,
        **{f"{k} s": v for k, v in best.items()},
        "bound s": bound,
        "efficiency": bound / best["mbdask"],
        "efficiency spawned": bound / best["mbdask spawned"],
        "library vs command line": best["mbdask.compute"] / best["mbdask"],
        "vs best sequential": sequential / best["mbdask"],
        "vs pool": pool / best["mbdask"],
        "max energy diff": max(energies) - min(energies),
        "profile": profile,
        "phases": phases,
    }


def long_case() -> dict:
    """A job of about a minute on 2 cores: (H2O)16 3-body HF/6-31G* with PySCF, 696 calculations."""
    from run_all import pyscf_input

    return pyscf_input(16, 3)


def cli_run_command(path: Path, workers: int, out: Path, profile: Path) -> list[str]:
    """``python -m mbdask run PATH`` on ``workers`` workers, no progress, its result and profile written."""
    outputs = ["-o", str(out), "--profile", str(profile)]
    return [sys.executable, "-m", "mbdask", "run", str(path), "--no-progress", "--workers", str(workers), *outputs]


def long_run(path: Path, workers: int, work: Path) -> dict:
    """The command line on ``path`` once, whole process: wall time, bound and efficiency from its profile."""
    profile_path = work / "long-profile.json"
    wall, _ = _timed(cli_run_command(path, workers, work / "long-result.json", profile_path))
    profile = json.loads(profile_path.read_text())
    bound = profile["zero_overhead_bound_seconds"]
    return {
        "fragments": profile["fragments"],
        "wall": wall,
        "bound": bound,
        "efficiency": bound / wall,
        "phases": {row["phase"]: row["seconds"] for row in profile["phases"]},
    }


def throughput(method: str) -> dict:
    """(H2O)64 3-body through the zero-duration program, priced by the cost model as ``method``; a whole process."""
    wall, stdout = _timed(
        [sys.executable, "-c", THROUGHPUT, str(HERE), method], {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    )
    data = json.loads(stdout.strip().splitlines()[-1])
    return {
        "priced as": method,
        "fragments": data["fragments"],
        "wall": wall,
        "per_second": data["fragments"] / wall,
        "own_ms": data["own_ms"],
        "program_ms": data["program_ms"],
    }


#: Title of the benchmarks page's section that this script writes (run_all.py keeps it).
SECTION = "## Overhead: whole processes"


def section_markdown(result: dict, machine: str) -> str:
    """The benchmarks page's section for ``result`` (rows and throughput)."""
    import datetime

    lines = [
        SECTION,
        "",
        f"Measured {datetime.date.today().isoformat()} on {machine} with `python benchmarks/bench_overhead.py --docs`. "
        "Each figure is a whole process timed from outside (interpreter start, imports, plan, cluster start, run, "
        "assembly, output, exit); executors interleaved, best of "
        f"{REPEATS} runs each. Efficiency = zero-overhead bound / wall time, bound = max(sum of mbdask's single-core "
        "fragment times / cores, longest fragment). QCManyBody: the fastest of its default, truly single-threaded and "
        "BLAS-pinned settings (columns). Pool: `concurrent.futures.ProcessPoolExecutor` over QCManyBody's fragments.",
        "",
        "| case | calcs | mbdask s | mbdask, spawned workers s | script calling mbdask.compute s | QCManyBody default "
        "/ 1 thread / BLAS pinned s | pool s (xtb muted) | bound s | efficiency | efficiency, spawned | vs best "
        "QCManyBody | vs pool | max energy diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result.get("rows", []):
        sequential = " / ".join(f"{row[f'{key} s']:.1f}" for key in SEQUENTIAL)
        lines.append(
            f"| {row['case']} | {row['fragments']} | {row['mbdask s']:.2f} | {row['mbdask spawned s']:.2f} | "
            f"{_library(row)} | {sequential} | {_pools(row)} | {row['bound s']:.2f} | {row['efficiency']:.2f} | "
            f"{row['efficiency spawned']:.2f} | {row['vs best sequential']:.2f} | {row['vs pool']:.2f} | "
            f"{row['max energy diff']:.1e} |"
        )
    if result.get("rows"):
        lines += ["", "Where mbdask's wall time goes (`--profile` of the best mbdask run; seconds):", ""]
        phases = list(result["rows"][0]["phases"])
        lines.append(
            "| case | " + " | ".join(phases) + " | mbdask per fragment ms | Dask and idle in the span, core-s |"
        )
        lines.append("|---|" + "---|" * (len(phases) + 2))
        for row in result["rows"]:
            span = row["profile"]["fragment_span"]
            own = span.get("mbdask_own_ms_per_fragment")
            cells = [f"{row['phases'].get(name, 0.0):.2f}" for name in phases]
            cells += ["" if own is None else f"{own:.3f}", f"{span['dask_and_idle_seconds']:.2f}"]
            lines.append(f"| {row['case']} | " + " | ".join(cells) + " |")
    if any("warm" in row for row in result.get("rows", [])):
        lines += [
            "",
            "The same inputs through `mbdask.compute` on a cluster that is already up (one process, the LocalCluster "
            "mbdask starts, with workers forked from it; one warm-up run, then best of 3: a script's loop):",
            "",
            "| case | wall s | bound s | efficiency | call to first fragment s |",
            "|---|---|---|---|---|",
        ]
        for row in result["rows"]:
            if "warm" in row:
                w = row["warm"]
                lines.append(
                    f"| {row['case']} | {w['wall']:.2f} | {w['bound']:.2f} | {w['efficiency']:.2f} | {w['first']:.2f} |"
                )
    if "long" in result:
        long = result["long"]
        lines += [
            "",
            f"A job of about a minute, (H2O)16 3-body HF/6-31G* PySCF ({long['fragments']} calculations), whole "
            f"command-line process: {long['wall']:.1f} s against a bound of {long['bound']:.1f} s, **efficiency "
            f"{long['efficiency']:.2f}**.",
        ]
    for row in result.get("throughput", []):
        lines += [
            "",
            "Throughput, (H2O)64 3-body through the zero-duration sleep program priced by the cost model as "
            f"`{row['priced as']}` (a TEST DOUBLE, not chemistry; whole process, LocalCluster on all cores): "
            f"{row['fragments']} calculations in {row['wall']:.1f} s, **{row['per_second']:.0f} fragments/s**; per "
            f"fragment {row['own_ms']:.3f} ms of mbdask around the call and {row['program_ms']:.3f} ms in QCEngine and "
            "the double.",
        ]
    return "\n".join(lines) + "\n"


def _library(row: dict) -> str:
    """The script's wall time (rows of a --json file from before it was measured: not measured)."""
    wall = row.get("mbdask.compute s")
    return "" if wall is None else f"{wall:.2f}"


def _pools(row: dict) -> str:
    muted = row.get("pool muted s")
    return f"{row['pool s']:.2f}" + ("" if muted is None else f" ({muted:.2f})")


def write_section(text: str, page: Path = ROOT / "docs" / "benchmarks.md", section: str = SECTION) -> None:
    """Put ``text`` in place of the page's section titled ``section`` (appended where there is none)."""
    old = page.read_text()
    start = old.find(section)
    if start < 0:
        page.write_text(old.rstrip("\n") + "\n\n" + text)
        return
    end = old.find("\n## ", start + len(section))
    page.write_text(old[:start] + text.rstrip("\n") + "\n" + (("\n" + old[end + 1 :]) if end >= 0 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small case, one repeat, no throughput run")
    parser.add_argument("--json", metavar="FILE", help="write the rows here")
    parser.add_argument("--throughput-only", action="store_true", help="only the (H2O)64 zero-cost throughput runs")
    parser.add_argument(
        "--long",
        action="store_true",
        help="also the job of about a minute, (H2O)16 3-body HF/6-31G* PySCF, mbdask only",
    )
    parser.add_argument("--docs", action="store_true", help="write the section of docs/benchmarks.md")
    parser.add_argument(
        "--from-json", metavar="FILE", help="measure nothing: the section from a --json file of an earlier run"
    )
    args = parser.parse_args()
    from run_all import machine

    from mbdask.deploy.cluster import usable_cores

    if args.from_json:
        write_section(section_markdown(json.loads(Path(args.from_json).read_text()), machine()))
        return
    workers = usable_cores()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for number, (name, inp) in enumerate(({} if args.throughput_only else cases(args.quick)).items()):
            path = work / f"case{number}.json"
            path.write_text(json.dumps(inp))
            rows.append(run_case(name, path, workers, 1 if args.quick else REPEATS, work))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "profile"}), flush=True)
        result = {"rows": rows}
        if rows:
            for row, warm_row in zip(rows, warm([Path(row["input"]) for row in rows], 1 if args.quick else 3)):
                row["warm"] = warm_row
            print(json.dumps([row["warm"] for row in rows]), flush=True)
        if args.long:
            path = work / "long.json"
            path.write_text(json.dumps(long_case()))
            result["long"] = long_run(path, workers, work)
            print(json.dumps(result["long"]), flush=True)
        if not args.quick:
            result["throughput"] = [throughput(method) for method in THROUGHPUT_METHODS]
            print(json.dumps(result["throughput"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.docs:
        write_section(section_markdown(result, machine()))


if __name__ == "__main__":
    main()

"""(H2O)64 at 4-body end to end (issue #16): 679,120 GFN2-xTB calculations through the CLI.

Runs ``python -m mbdask run benchmarks/data/water64-<geometry>.xyz --program xtb --method
gfn2-xtb --max-nbody 4 --store run.sqlite -o result.json --profile profile.json`` in a
scratch folder, as a user would, and records:

* wall time against the zero-overhead bound (sum of the fragments' own times / cores),
* peak memory of the command's process (client and, for a LocalCluster, the scheduler in
  the same process) and of each worker process, sampled every second with psutil,
* the result's size on disk (JSON and its CSV tables), the n-body energies,
* the progress lines (``mbdask.progress.log-interval`` 15 s) and, after the run, how far
  each "time left" written after the first tenth of the run was from the time it really
  took,
* an independent check of the assembly: the n-body energies QCManyBody's ``analyze``
  gave (``properties``) against the sums of mbdask's own per-cluster increments
  (``levels``, computed by the graph's increment nodes from the fragment energies).

``--kill-at F`` instead kills the command (SIGKILL to its whole process group) once a
fraction F of the calculations is in the store, reruns it with the same store, and
reports how many calculations the rerun found there and how many it computed again.

Usage: python benchmarks/bench_large.py [--geometry droplet|liquid-box] [--nbody 4]
       [--workdir DIR] [--kill-at 0.5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROGRESS = re.compile(r"mbdask: (\d+)/(\d+) fragment calculations, (.+?) elapsed(?:, about (.+?) left)?$")


def _seconds(text: str) -> float:
    """'1 h 02 min', '3 min 05 s', '12 s' -> seconds."""
    total = 0.0
    for value, unit in re.findall(r"(\d+) (h|min|s)", text):
        total += int(value) * {"h": 3600, "min": 60, "s": 1}[unit]
    return total


class MemorySampler(threading.Thread):
    """Peak RSS of a process and, separately, of each of its descendants, and the process's last CPU seconds, sampled
    every second."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.main_peak = 0
        self.main_cpu = 0.0
        self.child_peaks: dict[int, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            proc = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.is_set():
            try:
                self.main_peak = max(self.main_peak, proc.memory_info().rss)
                times = proc.cpu_times()
                self.main_cpu = times.user + times.system
                for child in proc.children(recursive=True):
                    try:
                        self.child_peaks[child.pid] = max(self.child_peaks.get(child.pid, 0), child.memory_info().rss)
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            self.stop.wait(1.0)


@dataclass
class SampledRun:
    """A finished whole process: its exit code, output, wall time, and the memory and CPU its sampler saw."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    sampler: MemorySampler


def sampled_run(command: list[str], cwd: Path | None = None, env: dict | None = None) -> SampledRun:
    """Run ``command`` to its end under a :class:`MemorySampler`, timed from outside."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = MemorySampler(proc.pid)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    return SampledRun(proc.returncode, stdout, stderr, wall, sampler)


def gfn2_command(subcommand: str, xyz: str | Path, nbody: int, *options: str) -> list[str]:
    """``python -m mbdask SUBCOMMAND XYZ`` with GFN2-xTB through ``nbody``, then ``options``: the benchmarks'
    command lines on water clusters, as a user types them."""
    model = ["--program", "xtb", "--method", "gfn2-xtb", "--max-nbody", str(nbody)]
    return [sys.executable, "-m", "mbdask", subcommand, str(xyz), *model, *options]


def command(geometry: str, nbody: int) -> list[str]:
    xyz = HERE / "data" / f"water64-{geometry}.xyz"
    return gfn2_command("run", xyz, nbody, "--store", "run.sqlite", "-o", "result.json", "--profile", "profile.json")


def _env() -> dict:
    return {
        **os.environ,
        "DASK_MBDASK__PROGRESS__LOG_INTERVAL": "15",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def _store_rows(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM fragments").fetchone()[0]


@dataclass
class WatchedRun:
    """A finished command: its output, wall time, memory (sampled) and progress lines as they came, timed."""

    stdout: str
    wall: float
    sampler: MemorySampler
    progress: list[tuple[float, int, int, float | None]]


def watched_run(cmd: list[str], workdir: Path, env: dict) -> WatchedRun:
    """Run ``cmd`` under a :class:`MemorySampler`, reading its progress lines (seconds since start, done, total,
    time left) as they are written; raises with the tail of stderr if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = MemorySampler(proc.pid)
    sampler.start()
    progress: list[tuple[float, int, int, float | None]] = []
    stderr_lines: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            stderr_lines.append(line)
            match = PROGRESS.search(line.strip())
            if match:
                done, total, elapsed, left = match.groups()
                progress.append((time.perf_counter() - start, int(done), int(total), _seconds(left) if left else None))
            sys.stderr.write(line)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    stdout = proc.stdout.read()  # type: ignore[union-attr]
    proc.wait()
    reader.join()
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"mbdask exited {proc.returncode}: {''.join(stderr_lines)[-3000:]}")
    return WatchedRun(stdout, wall, sampler, progress)


def full_run(workdir: Path, geometry: str, nbody: int) -> dict:
    run = watched_run(command(geometry, nbody), workdir, _env())
    stdout, wall, sampler, progress = run.stdout, run.wall, run.sampler, run.progress
    profile = json.loads((workdir / "profile.json").read_text())
    result_json = json.loads((workdir / "result.json").read_text())
    files = {p.name: p.stat().st_size for p in workdir.glob("result*")}
    levels = result_json["extras"]["mbdask"]["levels"]["nocp"]
    props = result_json["properties"]
    # independent route: mbdask's increments (graph nodes) against QCManyBody's analyze
    qcmb = {n: props.get(f"nocp_corrected_total_energy_through_{n}_body") for n in range(1, nbody + 1)}
    diffs = {n: abs(levels[str(n)]["through"] - qcmb[n]) for n in qcmb if qcmb[n] is not None}
    eta = _eta_errors(progress, wall)
    return {
        "geometry": geometry,
        "nbody": nbody,
        "wall_s": wall,
        "calculations": profile["fragments"],
        "bound_s": profile["zero_overhead_bound_seconds"],
        "efficiency": profile["zero_overhead_bound_seconds"] / wall,
        "wall_over_bound": wall / profile["zero_overhead_bound_seconds"],
        "client_peak_mb": sampler.main_peak / 2**20,
        "worker_peak_mb": max(sampler.child_peaks.values(), default=0) / 2**20,
        "files_bytes": files,
        "store_rows": _store_rows(workdir / "run.sqlite"),
        "through": {n: levels[str(n)]["through"] for n in range(1, nbody + 1)},
        "interaction_kcal": {n: levels[str(n)]["interaction"] * 627.5094740631 for n in range(1, nbody + 1)},
        "max_diff_increments_vs_qcmanybody": max(diffs.values()) if diffs else None,
        "eta": eta,
        "progress": progress,
        "profile_phases": profile.get("phases"),
        "stdout_tail": stdout[-1500:],
    }


def _eta_errors(progress: list, wall: float) -> dict:
    """Relative error of each 'time left' written after the first tenth, against when the fragments really ended."""
    stamped = [(t, left) for t, done, total, left in progress if left is not None]
    if not stamped:
        return {}
    end = max(t for t, done, total, _ in progress)  # the last line: all fragments done
    errors = [abs(left - (end - t)) / (end - t) for t, left in stamped if t >= 0.1 * end and end - t > 0]
    return {
        "lines": len(stamped),
        "after_first_tenth": len(errors),
        "max_relative_error": max(errors, default=None),
        "median_relative_error": sorted(errors)[len(errors) // 2] if errors else None,
    }


def kill_and_resume(workdir: Path, geometry: str, nbody: int, fraction: float) -> dict:
    proc = subprocess.Popen(
        command(geometry, nbody),
        cwd=workdir,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    store = workdir / "run.sqlite"
    total = None
    while proc.poll() is None:
        time.sleep(2.0)
        try:
            rows = _store_rows(store)
        except sqlite3.Error:
            continue
        total = total or _planned(geometry, nbody)
        if rows >= fraction * total:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    killed_rows = _store_rows(store)
    run = full_run(workdir, geometry, nbody)
    timing = json.loads((workdir / "result.json").read_text())["extras"]["mbdask"]
    return {
        "geometry": geometry,
        "nbody": nbody,
        "killed_at_rows": killed_rows,
        "planned": total,
        "rerun_from_store": timing["timing"]["from_store"],
        "rerun_computed": run["calculations"],  # the profile counts computed ones
        "rerun": {k: run[k] for k in ("wall_s", "efficiency")},
    }


def _planned(geometry: str, nbody: int) -> int:
    from math import comb

    return sum(comb(64, k) for k in range(1, nbody + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", default="droplet", choices=["droplet", "liquid-box"])
    parser.add_argument("--nbody", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mbdask-large"))
    parser.add_argument(
        "--kill-at", type=float, default=None, help="kill once this fraction is in the store, then rerun"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.kill_at is None:
        row = full_run(args.workdir, args.geometry, args.nbody)
    else:
        row = kill_and_resume(args.workdir, args.geometry, args.nbody, args.kill_at)
    text = json.dumps(row, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()

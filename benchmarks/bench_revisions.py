"""Two revisions of mbdask side by side on the hot paths: planning at scale, throughput, a whole run.

For a change that should leave speed alone (a restructuring, a dependency bump), this runs
each revision's own benchmark code from a git worktree of it, interleaved (before, after,
before, after...) so that both see the same machine load, and keeps the best of each:

* plan + graph of (H2O)64 3-body and 4-body (``bench_plan.run``: fresh process, peak RSS);
* throughput: (H2O)64 3-body through the zero-duration sleep program priced as xtb
  (``bench_overhead.throughput``; the program is a TEST DOUBLE, not chemistry);
* a whole process: ``python -m mbdask run`` of (H2O)20 3-body GFN2-xTB (real xtb), start-up,
  LocalCluster and output included.

Usage: python benchmarks/bench_revisions.py BEFORE AFTER [--repeats N] [--docs]
(revisions as git understands them; AFTER may be ``WORKTREE`` for the uncommitted tree).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECTION = "## Before and after: two revisions on the hot paths"

PLAN = (
    "import json, sys; sys.path.insert(0, 'benchmarks'); from bench_plan import run; "
    "print(json.dumps(run([(64, 3), (64, 4)])))"
)
THROUGHPUT = (
    "import json, sys; sys.path.insert(0, 'benchmarks'); from bench_overhead import throughput; "
    "print(json.dumps(throughput('gfn2-xtb')))"
)
INPUT = (
    "import json, sys; sys.path.insert(0, 'benchmarks'); from clusters import xtb_input; "
    "print(json.dumps(xtb_input(20, 3)))"
)


def checkout(revision: str, where: Path) -> Path:
    """A worktree of ``revision`` under ``where`` (``WORKTREE``: this checkout as it is)."""
    if revision == "WORKTREE":
        return ROOT
    path = where / revision.replace("/", "_")
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(path), revision], cwd=ROOT, check=True)
    return path


def _python(tree: Path, code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{tree}: {proc.stderr[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def whole_run(tree: Path, inp: Path, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mbdask", "run", str(inp), "-o", str(out), "--no-progress"],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def measure(trees: dict[str, Path], repeats: int, work: Path) -> dict[str, dict]:
    """Best of ``repeats`` per revision and measurement, revisions interleaved."""
    best: dict[str, dict] = {name: {} for name in trees}
    inputs = {}
    for name, tree in trees.items():
        inputs[name] = work / f"{name}-input.json"
        inputs[name].write_text(_python(tree, INPUT))
    for _ in range(repeats):
        for name, tree in trees.items():
            rows = json.loads(_python(tree, PLAN))
            for row in rows:
                key = f"(H2O){row['waters']} {row['nbody']}-body"
                seen = best[name].setdefault(key, row)
                if row["plan_s"] + row["graph_s"] < seen["plan_s"] + seen["graph_s"]:
                    best[name][key] = row
            through = json.loads(_python(tree, THROUGHPUT))
            if through["wall"] < best[name].get("throughput", {"wall": float("inf")})["wall"]:
                best[name]["throughput"] = through
            wall = whole_run(tree, inputs[name], work / f"{name}-out.json")
            best[name]["run"] = min(wall, best[name].get("run", float("inf")))
            print(name, json.dumps({k: v for k, v in best[name].items()}), flush=True)
    return best


def section(best: dict[str, dict], revisions: dict[str, str], machine: str, repeats: int) -> str:
    before, after = list(best)
    lines = [
        SECTION,
        "",
        f"Measured {datetime.date.today()} on {machine} with `python benchmarks/bench_revisions.py "
        f"{revisions[before]} {revisions[after]}`: each revision's own benchmark code from a git worktree, "
        f"revisions interleaved, best of {repeats}. Before: `{revisions[before]}`; after: `{revisions[after]}`.",
        "",
        "| measurement | before | after | after / before |",
        "|---|---|---|---|",
    ]
    for key in (k for k in best[before] if k.startswith("(H2O)")):
        b, a = best[before][key], best[after][key]
        for label, field in (("plan + graph s", None), ("peak RSS MB", "peak_mb")):
            vb = b["plan_s"] + b["graph_s"] if field is None else b[field]
            va = a["plan_s"] + a["graph_s"] if field is None else a[field]
            lines.append(f"| {key} ({b['fragments']} calculations), {label} | {vb:.2f} | {va:.2f} | {va / vb:.2f} |")
    tb, ta = best[before]["throughput"], best[after]["throughput"]
    lines.append(
        f"| throughput, (H2O)64 3-body zero-cost double priced as xtb, fragments/s | {tb['per_second']:.0f} | "
        f"{ta['per_second']:.0f} | {ta['per_second'] / tb['per_second']:.2f} |"
    )
    rb, ra = best[before]["run"], best[after]["run"]
    lines.append(
        f"| `python -m mbdask run` (H2O)20 3-body GFN2-xTB, whole process s | {rb:.2f} | {ra:.2f} | {ra / rb:.2f} |"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--docs", action="store_true", help="write the section of docs/benchmarks.md")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from bench_overhead import write_section
    from run_all import machine

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        revisions = {"before": args.before, "after": args.after}
        trees = {name: checkout(rev, work) for name, rev in revisions.items()}
        try:
            best = measure(trees, args.repeats, work)
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    text = section(best, revisions, machine(), args.repeats)
    print(text)
    if args.docs:
        write_section(text, section=SECTION)


if __name__ == "__main__":
    main()

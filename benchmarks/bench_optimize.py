"""Geometry optimisation on MBE gradients: steps per minute, mbdask versus sequential QCManyBody, side by side.

Both routes run the same optimiser, geomeTRIC as :func:`mbdask.workflows.optimize.minimise` sets it
up (TRIC coordinates, the same convergence set), from the same start geometry; only the
MBE gradient at each geometry is computed differently:

* ``mbdask``: :func:`mbdask.workflows.optimize.optimize` with no client, so it starts a LocalCluster
  (one single-threaded worker per core) once and runs each step's expansion on it, the
  wall time including starting and closing that cluster; and again on a LocalCluster
  that is already up (a notebook's case);
* ``QCManyBody sequential``: QCManyBody's fragments one after another in this process
  through QCEngine, then ``ManyBodyCore.analyze``, as installed and on one thread (QCManyBody's
  ``ManyBodyComputer`` itself cannot collect xtb gradients: xtb leaves
  ``properties.return_gradient`` empty).

The routes should take the same steps to the same energy; the table says how far apart
they ended. Case: (H2O)10 (water10-pp1), 3-body nocp GFN2-xTB, 175 calculations a step,
at most 30 steps (``--waters 6``: the hexamer prism, 41 calculations a step, where a step
is too cheap for 2 cores to matter).

    python benchmarks/bench_optimize.py [--quick] [--max-steps N] [--docs] [--json FILE] [--from-json FILE]

``--quick`` stops every route after 4 steps (about 30 s); ``--docs`` writes the section of
docs/benchmarks.md (replacing it where it is); ``--from-json`` writes it from an earlier
run's ``--json`` without measuring.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: Title of the benchmarks page's section that this script writes.
SECTION = "## Geometry optimisation on MBE gradients"
#: Steps allowed in a full run: about 2 minutes for all four routes on 2 cores.
MAX_STEPS = 30
QUICK_STEPS = 4
#: The default case, (H2O)n of benchmarks/clusters.py.
NWATERS = 10
CLUSTER_FILES = {
    3: "water3-uud",
    6: "water6-prism",
    8: "water8-s4",
    10: "water10-pp1",
    16: "water16-4444a",
    20: "water20-dodecahedron",
}
#: Runs of each route, interleaved; the best wall time of each counts.
REPEATS = 2
#: Settings of the sequential route (bench_executors.py's "default" and "1 thread").
SEQUENTIAL = ("default", "1 thread")


def case_input(nwaters: int = NWATERS, max_nbody: int = 3) -> dict:
    """(H2O)n, n-body nocp GFN2-xTB, xtb writing no output file (mbdask's default, given to both routes)."""
    from clusters import xtb_input

    inp = xtb_input(nwaters, max_nbody, driver="gradient")
    for spec in inp["specification"]["specification"].values():
        spec["keywords"] = {"verbosity": "muted", **spec.get("keywords", {})}
    return inp


def sequential_mbe(inp: dict):
    """``evaluate(coords_bohr) -> (energy, gradient)`` by QCManyBody, one fragment after another in this process."""
    import numpy as np
    import qcengine
    from qcelemental.models.v2 import AtomicInput
    from qcmanybody.v2 import ManyBodyComputer

    import mbdask
    from mbdask.calculation.execute import extract_properties
    from mbdask.workflows.optimize import gradient_input, molecule_at

    mbdask.register_programs()
    model = gradient_input(inp)
    specs = mbdask.plan(model).specifications

    def evaluate(coords):
        step = model.model_copy(update={"molecule": molecule_at(model.molecule, coords)})
        core = ManyBodyComputer.from_manybodyinput(step, build_tasks=False).qcmb_core
        components = {}
        for mc, label, mol in core.iterate_molecules():
            atomic = AtomicInput(molecule=mol, specification=copy.deepcopy(specs[mc]["specification"]))
            result = qcengine.compute(atomic, specs[mc]["program"], raise_error=True)
            components[label] = extract_properties(result, "gradient")
        out = core.analyze(components)
        return float(out["ret_energy"]), np.asarray(out["ret_gradient"], dtype=float)

    return model, evaluate


def run_mbdask(inp: dict, max_steps: int, workers: int, *, running: bool = False) -> dict:
    """``mbdask.optimize`` with no client (it starts and closes a LocalCluster, timed), or with ``running``
    on a LocalCluster started beforehand (untimed), as in a notebook."""

    from mbdask.deploy.cluster import connected
    from mbdask.workflows.optimize import optimize

    with contextlib.ExitStack() as stack:
        client, where = None, "cluster start included"
        if running:
            # the LocalCluster mbdask itself starts (workers forked from this process), started before the clock
            conn = stack.enter_context(connected(n_workers=workers, dashboard=False))
            client, where = conn.client, "on a running cluster"
        start = time.perf_counter()
        result = optimize(inp, client, max_steps=max_steps, n_workers=workers)
        wall = time.perf_counter() - start
    return {
        "route": f"mbdask, {workers} workers, {where}",
        "steps": result.steps,
        "evaluations": result.evaluations,
        "wall": wall,
        "energy": result.energies[-1],
        "converged": result.converged,
    }


def run_sequential(inp: dict, max_steps: int, setting: str) -> dict:
    """The sequential route in ``setting``: "default" (as installed: QCEngine gives each program every core)
    or "1 thread" (``QCENGINE_NCORES=1`` and BLAS/OpenMP pools at one thread), as bench_executors.py runs QCManyBody."""
    import os
    from unittest import mock

    from mbdask.calculation.execute import pinned_threads
    from mbdask.workflows.optimize import minimise

    model, evaluate = sequential_mbe(inp)
    with contextlib.ExitStack() as stack:
        if setting == "1 thread":
            stack.enter_context(pinned_threads(1))
            stack.enter_context(mock.patch.dict(os.environ, {"QCENGINE_NCORES": "1"}))
        start = time.perf_counter()
        run = minimise(model.molecule, evaluate, max_steps=max_steps)
        wall = time.perf_counter() - start
    return {
        "route": f"QCManyBody sequential, {setting}",
        "steps": run.steps,
        "evaluations": len(run.frames),
        "wall": wall,
        "energy": run.frames[-1].energy,
        "converged": run.converged,
    }


def section_markdown(
    rows: list[dict], machine: str, command: str, case: str, date: str | None = None, repeats: int = 1
) -> str:
    """The benchmarks page's section: one row per route, energy differences against the first sequential one."""
    reference = next(row for row in rows if row["route"].startswith("QCManyBody"))
    sequential = [row for row in rows if row["route"].startswith("QCManyBody")]
    lines = [
        SECTION,
        "",
        f"Measured {date or datetime.date.today().isoformat()} on {machine} with `{command}`. {case}, from the same "
        "start geometry, the same optimiser on every route (geomeTRIC, TRIC coordinates, GAU convergence, as "
        "`mbdask.optimize` sets it up); only each step's MBE gradient is computed differently: one mbdask expansion "
        "on a LocalCluster started once (its start included in the wall time, or already up), or QCManyBody's "
        "fragments one after another in one process (as installed, and truly single-threaded). Steps/min counts "
        "geomeTRIC's steps; each step is one MBE gradient. "
        + (
            f"Routes interleaved, {repeats} runs each; the best wall time counts (all runs in the last column)."
            if repeats > 1
            else ""
        ),
        "",
        "| route | steps | converged | wall s | steps/min | final energy (Eh) | energy diff (Eh) | every run, wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        walls = ", ".join(f"{wall:.1f}" for wall in row.get("walls", [row["wall"]]))
        lines.append(
            f"| {row['route']} | {row['steps']} | {'yes' if row['converged'] else 'no'} | {row['wall']:.1f} | "
            f"{60 * row['steps'] / row['wall']:.1f} | {row['energy']:.10f} | {row['energy'] - reference['energy']:.1e} "
            f"| {walls} |"
        )
    mbdask_rows = [row for row in rows if row["route"].startswith("mbdask")]
    fastest = min(sequential, key=lambda row: row["wall"])
    if len({row["steps"] for row in rows}) == 1:
        ratios = "; ".join(f"{row['route']}: {fastest['wall'] / row['wall']:.2f}" for row in mbdask_rows)
        lines += [
            "",
            f"Every route took the same steps. Speed-up over the fastest sequential setting ({fastest['route']}), "
            f"its wall time over mbdask's: {ratios}.",
        ]
    else:
        lines += ["", "The routes took different numbers of steps: compare steps/min."]
    spread = max(max(row.get("walls", [row["wall"]])) / min(row.get("walls", [row["wall"]])) for row in rows)
    if spread > 1.0:
        lines[-1] += f" The machine is shared: runs of one route differed by up to {100 * (spread - 1):.0f}%."
    return "\n".join(lines) + "\n"


def write_docs(text: str, page: Path = HERE.parent / "docs" / "benchmarks.md") -> None:
    """Put ``text`` into docs/benchmarks.md (or ``page``), replacing this script's section (bench_overhead's
    ``write_section``)."""
    from bench_overhead import write_section

    write_section(text, page, section=SECTION)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"every route stops after {QUICK_STEPS} steps (about 30 s)"
    )
    parser.add_argument(
        "--max-steps", type=int, help=f"geomeTRIC's step limit (default {MAX_STEPS}, --quick {QUICK_STEPS})"
    )
    parser.add_argument(
        "--waters", type=int, default=NWATERS, help=f"the water cluster (benchmarks/clusters.py; default {NWATERS})"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=REPEATS,
        help=f"runs of each route, interleaved, the best counts (default {REPEATS}; --quick 1)",
    )
    parser.add_argument("--docs", action="store_true", help="write the section of docs/benchmarks.md")
    parser.add_argument("--json", metavar="FILE", help="write the measurements here")
    parser.add_argument(
        "--from-json", metavar="FILE", help="measure nothing: the section from a --json file of an earlier run"
    )
    args = parser.parse_args()
    if args.from_json:
        run = json.loads(Path(args.from_json).read_text())
    else:
        run = measure(args.quick, args.max_steps, args.waters, 1 if args.quick else args.repeats)
    text = section_markdown(
        run["rows"], run["machine"], run["command"], run["case"], run["date"], run.get("repeats", 1)
    )
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(run, indent=1))
    if args.docs:
        write_docs(text)


def measure(quick: bool, steps: int | None, nwaters: int = NWATERS, repeats: int = REPEATS) -> dict:
    """Every route ``repeats`` times, interleaved (the machine is shared: each route's best wall time counts).

    mbdask first in each round: its workers fork from a process that has no threads yet.
    """
    from run_all import machine

    from mbdask.deploy.cluster import usable_cores

    max_steps = steps or (QUICK_STEPS if quick else MAX_STEPS)
    inp = case_input(nwaters)
    workers = usable_cores()
    routes = [
        lambda: run_mbdask(inp, max_steps, workers),
        lambda: run_mbdask(inp, max_steps, workers, running=True),
        *[lambda setting=setting: run_sequential(inp, max_steps, setting) for setting in SEQUENTIAL],
    ]
    runs: list[list[dict]] = [[] for _ in routes]
    for _ in range(repeats):
        for route, done in zip(routes, runs):
            done.append(route())
            print(json.dumps(done[-1]), flush=True)
    rows = [{**min(done, key=lambda row: row["wall"]), "walls": [row["wall"] for row in done]} for done in runs]
    options = (
        (" --quick" if quick else "")
        + (f" --max-steps {steps}" if steps else "")
        + (f" --waters {nwaters}" if nwaters != NWATERS else "")
    )
    options += f" --repeats {repeats}" if repeats != REPEATS else ""
    command = f"python benchmarks/bench_optimize.py{options} --docs"
    calculations = nwaters + math.comb(nwaters, 2) + math.comb(nwaters, 3)
    case = (
        f"(H2O){nwaters} ({CLUSTER_FILES.get(nwaters, 'tiled')}), 3-body nocp GFN2-xTB ({calculations} calculations a "
        f"step), at most {max_steps} steps"
    )
    return {
        "rows": rows,
        "machine": machine(),
        "command": command,
        "case": case,
        "date": datetime.date.today().isoformat(),
        "repeats": repeats,
    }


if __name__ == "__main__":
    main()

"""ASE on MBE forces (mbdask.ManyBodyCalculator): optimisation, NVE MD and vibrations, and the per-step overhead.

Three parts, each a few minutes at most on 2 cores, run one at a time (``--part``), their
measurements merged into one JSON file (``--json``), from which ``--docs`` writes the section
"ASE: optimisation, MD and vibrations on MBE forces" of docs/benchmarks.md:

* ``bfgs``: (H2O)6 prism, 3-body nocp GFN2-xTB. ASE's BFGS on the calculator's forces
  (fmax 0.005 eV/A) against :func:`mbdask.optimize` (geomeTRIC, GAU_TIGHT) from the same start:
  final energies, steps, expansions, wall time, and the RMSD of the two minima after aligning them.
* ``md``: the same hexamer and model, Velocity Verlet NVE, 0.5 fs, from Maxwell-Boltzmann
  velocities at 300 K (no net momentum or rotation), ``--steps`` steps (default 200) on a
  LocalCluster started before the clock. Total-energy conservation: max |E_tot - E_tot(0)| and
  the slope of a straight line through E_tot(t), per atom. Throughput: the wall time per step,
  the fragments' own seconds per step (``extras["mbdask"]["timing"]["sum_task_seconds"]``)
  and the zero-overhead bound (those seconds over the workers); overhead per step = wall time
  per step minus that bound. Against sequential QCManyBody (its fragments one after another
  in this process through QCEngine, then ``ManyBodyCore.analyze``, as bench_optimize.py runs
  it, as installed and truly single-threaded) on geometries of the same trajectory.
* ``vib``: (H2O)2 2-body HF/STO-3G (PySCF), nocp and cp, relaxed by BFGS (fmax 0.001 eV/A):
  ASE's ``Vibrations`` (central differences, 0.01 A and 0.002 A) on the calculator's forces against the
  frequencies of the MBE Hessian (driver hessian), translations and rotations projected out.

    python benchmarks/bench_ase.py --part bfgs --json ase.json
    python benchmarks/bench_ase.py --part md --json ase.json
    python benchmarks/bench_ase.py --part vib --json ase.json --docs
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # helpers.internal_frequencies, the tests' own

#: Title of the benchmarks page's section that this script writes.
SECTION = "## ASE: optimisation, MD and vibrations on MBE forces"
#: The section it goes before when the page has none yet.
BEFORE = "## Ab initio expansions at scale"
#: xtb's SCF accuracy for every part (tighter than xtb's default 1.0: MD conserves energy only with converged forces).
XTB_KEYWORDS = {"accuracy": 0.01}
MD_STEPS = 200
#: Geometries of the trajectory that the sequential route computes (its time per step is their mean).
SEQUENTIAL_STEPS = 5
#: Vibrations' displacements (A): ASE's default, and one small enough for the soft modes of a cp surface.
DELTAS = (0.01, 0.002)


def hexamer():
    from ase.io import read

    return read(HERE / "data" / "water6-prism.xyz")


def xtb_calculator(**keywords):
    from mbdask.interfaces.ase import ManyBodyCalculator

    return ManyBodyCalculator(max_nbody=3, program_keywords=XTB_KEYWORDS, **keywords)


def aligned_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD (A) of two geometries after the rotation and translation that best lay b onto a (Kabsch)."""
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    u, _, vt = np.linalg.svd(b.T @ a)
    d = np.sign(np.linalg.det(u @ vt))
    rotation = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(np.mean(np.sum((b @ rotation - a) ** 2, axis=1))))


def part_bfgs(workers: int) -> dict:
    """BFGS on the calculator and mbdask.optimize, each on its own LocalCluster (started inside the wall time)."""
    from ase import units
    from ase.optimize import BFGS

    import mbdask
    from mbdask.inputs.xyz import ModelOptions, molecule_from_xyz

    atoms = hexamer()
    start = time.perf_counter()
    with xtb_calculator(n_workers=workers) as calc:
        atoms.calc = calc
        optimiser = BFGS(atoms, logfile=None)
        converged = bool(optimiser.run(fmax=0.005, steps=500))
        energy = atoms.get_potential_energy() / units.Hartree
        expansions = calc.expansions
    bfgs_wall = time.perf_counter() - start
    inp = ModelOptions(max_nbody=3, driver="gradient").input_for(molecule_from_xyz(HERE / "data" / "water6-prism.xyz"))
    (spec,) = inp["specification"]["specification"].values()
    spec["keywords"] = dict(XTB_KEYWORDS)
    start = time.perf_counter()
    optimized = mbdask.optimize(inp, None, convergence="GAU_TIGHT", n_workers=workers)
    geometric_wall = time.perf_counter() - start
    final = np.asarray(optimized.trajectory[-1]) * units.Bohr
    return {
        "case": "(H2O)6 prism, 3-body nocp GFN2-xTB (41 calculations a geometry)",
        "workers": workers,
        "rows": [
            {
                "route": "ASE BFGS (fmax 0.005 eV/A) on ManyBodyCalculator",
                "steps": optimiser.nsteps,
                "expansions": expansions,
                "converged": converged,
                "energy": energy,
                "wall": bfgs_wall,
            },
            {
                "route": "mbdask.optimize (geomeTRIC, GAU_TIGHT)",
                "steps": optimized.steps,
                "expansions": optimized.evaluations,
                "converged": optimized.converged,
                "energy": optimized.energy,
                "wall": geometric_wall,
            },
        ],
        "rmsd": aligned_rmsd(final, atoms.positions),
    }


def part_md(workers: int, steps: int) -> dict:
    """NVE MD on a LocalCluster started before the clock; then sequential QCManyBody on its geometries."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from ase.md.verlet import VelocityVerlet
    from bench_optimize import sequential_mbe
    from distributed import Client

    import mbdask
    from mbdask.calculation.execute import pinned_threads

    atoms = hexamer()
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(2026))
    Stationary(atoms)
    ZeroRotation(atoms)
    with (
        mbdask.local_cluster(n_workers=workers, dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        client.wait_for_workers(workers)
        with xtb_calculator(client=client) as calc:
            atoms.calc = calc
            totals, fragment_seconds, stamps, geometries = [atoms.get_total_energy()], [], [], []

            def record() -> None:
                stamps.append(time.perf_counter())
                totals.append(atoms.get_total_energy())
                fragment_seconds.append(calc.last_result.extras["mbdask"]["timing"]["sum_task_seconds"])
                geometries.append(atoms.positions.copy())

            dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs, logfile=None)
            dyn.attach(record, interval=1)
            warm = time.perf_counter()
            dyn.run(steps)
            expansions = calc.expansions
    # the first step after the start-up geometry pays the workers' first xtb calls: timed from step 1 to the end
    walls = np.diff(np.array([warm, *stamps]))[1:]
    per_atom = (np.array(totals) - totals[0]) / len(atoms) * 1e3  # meV/atom
    times = np.arange(len(totals)) * 0.5e-3  # ps
    slope = float(np.polyfit(times, per_atom, 1)[0])
    mean_fragments = float(np.mean(fragment_seconds[1:]))
    bound = mean_fragments / workers
    inp = _hexamer_gradient_input()
    model, evaluate = sequential_mbe(inp)
    order = [a for f in _fragments(atoms) for a in f]
    picks = np.linspace(0, len(geometries) - 1, SEQUENTIAL_STEPS).astype(int)
    sequential = {}
    for setting in ("default", "1 thread"):
        with contextlib.ExitStack() as stack:
            if setting == "1 thread":
                stack.enter_context(pinned_threads(1))
                stack.enter_context(mock.patch.dict(os.environ, {"QCENGINE_NCORES": "1"}))
            start = time.perf_counter()
            for index in picks:
                evaluate(geometries[index][order] / units.Bohr)
            sequential[setting] = (time.perf_counter() - start) / len(picks)
    return {
        "case": "(H2O)6 prism, 3-body nocp GFN2-xTB (41 calculations a step)",
        "workers": workers,
        "steps": steps,
        "expansions": expansions,
        "timestep_fs": 0.5,
        "temperature_K": 300,
        "max_drift_mev_per_atom": float(np.abs(per_atom).max()),
        "slope_mev_per_atom_per_ps": slope,
        "final_drift_mev_per_atom": float(per_atom[-1]),
        "wall_per_step": float(np.mean(walls)),
        "wall_per_step_median": float(np.median(walls)),
        "fragment_seconds_per_step": mean_fragments,
        "bound_per_step": bound,
        "overhead_per_step": float(np.mean(walls)) - bound,
        "sequential_per_step": sequential,
        "sequential_steps": len(picks),
    }


def _hexamer_gradient_input() -> dict:
    from mbdask.inputs.xyz import ModelOptions, molecule_from_xyz

    inp = ModelOptions(max_nbody=3, driver="gradient").input_for(molecule_from_xyz(HERE / "data" / "water6-prism.xyz"))
    (spec,) = inp["specification"]["specification"].values()
    spec["keywords"] = dict(XTB_KEYWORDS)
    return inp


def _fragments(atoms) -> list[list[int]]:
    from mbdask.inputs.xyz import find_fragments

    return find_fragments(atoms.get_chemical_symbols(), atoms.positions)


def water_dimer():
    from ase import Atoms

    positions = [[-1.9, 0.2, 0.0], [-1.2, 0.9, 0.0], [-1.3, -0.6, 0.0], [1.2, -0.1, 0.0], [1.9, -0.2, -0.8]]
    return Atoms("OHHOHH", positions=[*positions, [1.9, -0.2, 0.8]])


def part_vib(workers: int, scratch: Path) -> dict:
    """Vibrations of the relaxed water dimer, nocp and cp, against the MBE Hessian's frequencies."""
    from ase.optimize import BFGS
    from ase.vibrations import Vibrations
    from distributed import Client
    from helpers import internal_frequencies

    import mbdask
    from mbdask.interfaces.ase import ManyBodyCalculator

    rows = []
    with (
        mbdask.local_cluster(n_workers=workers, dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        for bsse in ("nocp", "cp"):
            atoms = water_dimer()
            keywords = {"conv_tol": 1e-12, "conv_tol_grad": 1e-9}
            with ManyBodyCalculator(
                "hf", program="pyscf", basis="sto-3g", bsse=bsse, program_keywords=keywords, client=client
            ) as calc:
                atoms.calc = calc
                BFGS(atoms, logfile=None).run(fmax=1e-3, steps=200)
                start = time.perf_counter()
                hessian = calc.hessian(atoms)
                hessian_wall = time.perf_counter() - start
                finite = {}
                for delta in DELTAS:
                    before = calc.expansions
                    start = time.perf_counter()
                    vib = Vibrations(atoms, name=str(scratch / f"vib-{bsse}-{delta}"), delta=delta)
                    vib.run()
                    finite[str(delta)] = {
                        "frequencies": internal_frequencies(atoms, vib.get_vibrations().get_hessian_2d()).tolist(),
                        "expansions": calc.expansions - before,
                        "wall": time.perf_counter() - start,
                    }
                rows.append(
                    {
                        "bsse": bsse,
                        "finite": finite,
                        "analytic": internal_frequencies(atoms, hessian).tolist(),
                        "hessian_wall": hessian_wall,
                    }
                )
    return {"case": "(H2O)2, 2-body HF/STO-3G (PySCF), relaxed by BFGS to fmax 0.001 eV/A", "rows": rows}


def section_markdown(run: dict) -> str:
    """The benchmarks page's section from the merged measurements (the parts measured so far)."""
    lines = [
        SECTION,
        "",
        f"Measured {run['date']} on {run['machine']} with `python benchmarks/bench_ase.py --part PART` "
        "(bfgs, md, vib; each a few minutes). `mbdask.ManyBodyCalculator` runs one MBE gradient expansion per "
        "geometry ASE asks for, on a cluster connected once; GFN2-xTB with `accuracy: 0.01`.",
    ]
    if "bfgs" in run:
        bfgs = run["bfgs"]
        lines += [
            "",
            f"**Optimisation.** {bfgs['case']}, from the same start, {bfgs['workers']} workers, each route starting "
            "and closing its own LocalCluster inside its wall time:",
            "",
            "| route | steps | expansions | converged | final energy (Eh) | wall s |",
            "|---|---|---|---|---|---|",
        ]
        for row in bfgs["rows"]:
            lines.append(
                f"| {row['route']} | {row['steps']} | {row['expansions']} | {'yes' if row['converged'] else 'no'} | "
                f"{row['energy']:.8f} | {row['wall']:.1f} |"
            )
        first, second = bfgs["rows"]
        lines += [
            "",
            f"The two minima differ by {abs(first['energy'] - second['energy']):.1e} Eh in energy and "
            f"{bfgs['rmsd']:.4f} A in RMSD after alignment: the same minimum, as far as BFGS's fmax (0.005 eV/A) is "
            "looser than GAU_TIGHT's largest gradient (1.5e-5 Eh/bohr, 0.0008 eV/A) on the hexamer's flat surface.",
        ]
    if "md" in run:
        md = run["md"]
        lines += [
            "",
            f"**NVE molecular dynamics.** {md['case']}, Velocity Verlet, {md['timestep_fs']} fs, {md['steps']} steps "
            f"({md['steps'] * md['timestep_fs']:.0f} fs) from Maxwell-Boltzmann velocities at {md['temperature_K']} K "
            f"(no net momentum or rotation), on a LocalCluster of {md['workers']} workers started before the clock; "
            f"{md['expansions']} expansions (one per step and the start: the energy asked for after each step "
            "comes from the forces' expansion, through ASE's results cache).",
            "",
            "| total energy, per atom | meV/atom |",
            "|---|---|",
            f"| max abs(E_tot - E_tot(0)) | {md['max_drift_mev_per_atom']:.3f} |",
            f"| E_tot(end) - E_tot(0) | {md['final_drift_mev_per_atom']:.3f} |",
            f"| linear drift (least-squares slope) | {md['slope_mev_per_atom_per_ps']:.3f} per ps |",
            "",
            "| per MD step | s |",
            "|---|---|",
            f"| wall time (mean; median {md['wall_per_step_median']:.3f}) | {md['wall_per_step']:.3f} |",
            f"| fragments' own seconds (sum over the 41 calculations) | {md['fragment_seconds_per_step']:.3f} |",
            f"| zero-overhead bound (those over {md['workers']} workers) | {md['bound_per_step']:.3f} |",
            f"| **overhead** (wall time minus the bound) | **{md['overhead_per_step']:.3f}** |",
            f"| sequential QCManyBody, as installed (fragments one after another in one process, mean of "
            f"{md['sequential_steps']} geometries of the trajectory) | {md['sequential_per_step']['default']:.3f} |",
            f"| sequential QCManyBody, 1 thread (`QCENGINE_NCORES=1`, BLAS/OpenMP pools at one thread) | "
            f"{md['sequential_per_step']['1 thread']:.3f} |",
            "",
            f"Sequential QCManyBody takes {min(md['sequential_per_step'].values()) / md['wall_per_step']:.2f}x "
            "mbdask's time per step in its faster setting. The overhead is what each step pays beyond its "
            "fragments: planning the geometry, building and sending the graph, the scheduler's round trips, "
            "assembling the result, and the integrator's own work.",
        ]
    if "vib" in run:
        vib = run["vib"]
        lines += [
            "",
            f"**Vibrations.** {vib['case']}: ASE's `Vibrations` (central differences of the calculator's forces, "
            "displacement delta: ASE's default 0.01 A and 0.002 A) against the frequencies of the MBE Hessian (driver "
            "hessian, one expansion), translations and rotations projected out of both; cm^-1, lowest first.",
            "",
            "| bsse | route | frequencies (cm^-1) | max abs difference | wall s |",
            "|---|---|---|---|---|",
        ]
        for row in vib["rows"]:
            analytic = np.array(row["analytic"])
            lines.append(
                f"| {row['bsse']} | MBE Hessian | {', '.join(f'{f:.1f}' for f in analytic)} | | "
                f"{row['hessian_wall']:.1f} |"
            )
            for delta, found in row["finite"].items():
                finite = np.array(found["frequencies"])
                worst = float(np.abs(finite - analytic).max())
                upper = float(np.abs(finite[2:] - analytic[2:]).max())
                lines.append(
                    f"| {row['bsse']} | Vibrations, delta {delta} A ({found['expansions']} expansions) | "
                    f"{', '.join(f'{f:.1f}' for f in finite)} | {worst:.1f} (upper ten: {upper:.1f}) | "
                    f"{found['wall']:.1f} |"
                )
        lines += [
            "",
            "Over ASE's default displacement (0.01 A), finite differences of the cp forces put the dimer's two "
            "lowest intermolecular modes 15-30 cm^-1 below the analytic Hessian's (their Hessian is asymmetric by "
            "0.012 eV/A^2 there, by 0.0004 at 0.002 A: the cp forces are not linear over 0.01 A in those "
            "directions); at 0.002 A they agree with it, as nocp does at either (checked once by hand: the whole "
            "force-difference Hessian at 0.002 A is within 0.0006 eV/A^2 of the analytic cp one). Where the program "
            "has Hessians, one MBE Hessian expansion replaces Vibrations' 6N.",
        ]
    return "\n".join(lines) + "\n"


def write_docs(text: str, page: Path = HERE.parent / "docs" / "benchmarks.md") -> None:
    """Replace this script's section of the page, or put it before :data:`BEFORE` (at the end if that is missing)."""
    from bench_overhead import write_section

    old = page.read_text()
    if SECTION in old or BEFORE not in old:
        write_section(text, page, section=SECTION)
        return
    at = old.index(BEFORE)
    page.write_text(old[:at] + text.rstrip("\n") + "\n\n" + old[at:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("bfgs", "md", "vib"), action="append", help="what to measure (repeatable)")
    parser.add_argument("--steps", type=int, default=MD_STEPS, help=f"MD steps (default {MD_STEPS})")
    parser.add_argument(
        "--json", metavar="FILE", help="merge the measurements into this file (read first if it exists)"
    )
    parser.add_argument("--docs", action="store_true", help="write the section of docs/benchmarks.md")
    args = parser.parse_args()

    from run_all import machine

    from mbdask.deploy.cluster import usable_cores

    run: dict = {}
    if args.json and Path(args.json).exists():
        run = json.loads(Path(args.json).read_text())
    run.update(date=datetime.date.today().isoformat(), machine=machine())
    workers = usable_cores()
    for part in args.part or ():
        print(f"measuring {part} ...", flush=True)
        if part == "bfgs":
            run["bfgs"] = part_bfgs(workers)
        elif part == "md":
            run["md"] = part_md(workers, args.steps)
        else:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="mbdask-vib-") as scratch:
                run["vib"] = part_vib(workers, Path(scratch))
        if args.json:
            Path(args.json).write_text(json.dumps(run, indent=1))
    text = section_markdown(run)
    print(text)
    if args.docs:
        write_docs(text)


if __name__ == "__main__":
    main()

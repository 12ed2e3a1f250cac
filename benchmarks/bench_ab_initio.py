"""Ab initio many-body expansions at scale (issue #28): PySCF with dispersion, screened, through the command line.

Everything runs as a user would run it: a ManyBodyInput JSON written for the droplet
(``droplets.droplet_xyz``: the first N waters of the 4,096-water liquid sphere, so a smaller
cut is the centre of a larger one), ``python -m mbdask run`` with ``--store`` (one store for
all steps: a calculation of the 24-water cut is the same fragment in the 64-water droplet,
and runs once), ``--profile`` and progress lines, sampled for memory every second.

Steps (each writes ``<workdir>/<step>.json``; ``docs`` writes the section of
docs/benchmarks.md from them):

* ``probe``: one monomer, dimer and trimer of the droplet per level of theory, timed on one
  core, to choose the level (seconds a calculation, not a benchmark figure);
* ``reference``: the unscreened 3-body expansion of the first ``--cut`` waters (24);
* ``accuracy``: screened expansions of that cut (distance cutoffs; GFN2-xTB energy screening),
  from the store: kept calculations and the error per monomer against the reference;
* ``run``: the screened ``--waters`` (64) droplet end to end: kept counts, wall, zero-overhead
  bound, peak memory per worker, the time-left estimates against the real end, and the cost
  model's predictions against measured seconds per kind of calculation.

Usage: python benchmarks/bench_ab_initio.py STEP [--workdir DIR] [--waters 64] [--cut 24]
       [--method hf-d3bj] [--basis 6-31g*] [--cutoffs 2:9,3:6]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_large import watched_run  # noqa: E402
from droplets import droplet_xyz  # noqa: E402

ROOT = HERE.parent
SECTION = "## Ab initio expansions at scale: PySCF, dispersion, screening"
HARTREE_KCAL = 627.5094740631
#: Levels the probe times (method, basis); the first that keeps a 64-water 3-body run to tens of minutes here is used.
PROBE_LEVELS = (("hf-d3bj", "6-31g*"), ("b3lyp-d3bj", "def2-svp"), ("hf-d3bj", "def2-svp"))


def droplet_input(nwaters: int, workdir: Path, method: str, basis: str, max_nbody: int = 3) -> dict:
    """The droplet's ``nwaters``-water ManyBodyInput (nocp, PySCF, density fitting) as plain JSON data."""
    import mbdask

    xyz = droplet_xyz(nwaters, workdir)
    inp = mbdask.xyz_input(xyz, program="pyscf", method=method, basis=basis, bsse="nocp", max_nbody=max_nbody)
    data = json.loads(json.dumps(inp, default=lambda value: value.tolist()))
    for spec in data["specification"]["specification"].values():
        spec["keywords"] = {"density_fit": True}
    return data


def expansion_input(nwaters: int, workdir: Path, method: str, basis: str, max_nbody: int = 3) -> Path:
    """:func:`droplet_input` written as JSON; its path."""
    path = workdir / f"water{nwaters}-{method}-{basis.replace('*', 's')}.json"
    path.write_text(json.dumps(droplet_input(nwaters, workdir, method, basis, max_nbody)))
    return path


def _env() -> dict:
    return {
        **os.environ,
        "DASK_MBDASK__PROGRESS__LOG_INTERVAL": "15",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def cli_run(inp: Path, workdir: Path, name: str, *options: str) -> dict:
    """``python -m mbdask run INP --store ab.sqlite -o NAME.json --profile NAME.profile.json OPTIONS``, watched."""
    out, profile = workdir / f"{name}.result.json", workdir / f"{name}.profile.json"
    cmd = [sys.executable, "-m", "mbdask", "run", str(inp), "--store", str(workdir / "ab.sqlite")]
    cmd += ["-o", str(out), "--profile", str(profile), *options]
    run = watched_run(cmd, workdir, _env())
    result = json.loads(out.read_text())
    prof = json.loads(profile.read_text())
    extras = result["extras"]["mbdask"]
    bound = prof["zero_overhead_bound_seconds"]
    fragments = extras["timing"]["fragments"]
    computed = [f for f in fragments if f.get("seconds") is not None]
    nwaters = len(result["input_data"]["molecule"]["fragments"])
    return {
        "name": name,
        "waters": nwaters,
        "options": list(options),
        "calculations": extras["nfragment_calculations"],
        "screening": extras.get("screening"),
        "energy": result["properties"]["return_energy"],
        "wall_s": run.wall,
        "bound_s": bound,
        "wall_over_bound": run.wall / bound if bound else None,
        "client_peak_mb": run.sampler.main_peak / 2**20,
        "worker_peak_mb": max(run.sampler.child_peaks.values(), default=0) / 2**20,
        "from_store": prof.get("from_store", 0),
        "progress": run.progress,
        **kinds_and_tail(out),
        "longest_s": max((f["seconds"] for f in computed), default=0.0),
    }


def kinds_and_tail(result_path: Path) -> dict:
    """The report's cost model per kind of calculation and its tail (``mbdask.diagnostics.costs``), from a result."""
    import dataclasses

    import mbdask
    from mbdask.diagnostics.costs import costs_by_kind, tail

    timing = mbdask.load_result(result_path).extras["mbdask"]["timing"]
    found = tail(timing["fragments"], timing.get("cluster_cores"))
    return {
        "kinds": {
            f"{k.model} {k.name}": {
                "count": k.count,
                "median_s": k.median_seconds,
                "measured_over_predicted": k.over_predicted and dataclasses.asdict(k.over_predicted),
                "measured_over_calibrated": k.over_calibrated and dataclasses.asdict(k.over_calibrated),
            }
            for k in costs_by_kind(timing["fragments"])
        },
        "tail": found
        and {
            "seconds": found.seconds,
            "share": found.share,
            "lost_seconds": found.lost_seconds,
            "longest_running_s": max((f.seconds for f in found.running), default=0.0),
        },
    }


def probe(workdir: Path) -> dict:
    """Seconds of one monomer, dimer and trimer (adjacent waters of the droplet's centre) per level, one core."""
    import qcengine
    from qcelemental.models.v2 import AtomicInput

    import mbdask

    mbdask.register_programs()
    from qcelemental.models.v2 import Molecule

    inp = mbdask.xyz_input(droplet_xyz(3, workdir), program="pyscf", method="hf", basis="sto-3g")
    molecule = Molecule(**inp["molecule"])
    rows = []
    for method, basis in PROBE_LEVELS:
        for frags in ([0], [0, 1], [0, 1, 2]):
            sub = molecule.get_fragment(frags)
            inp = AtomicInput(
                molecule=sub,
                specification={
                    "driver": "energy",
                    "model": {"method": method, "basis": basis},
                    "keywords": {"density_fit": True},
                },
            )
            start = time.perf_counter()
            res = qcengine.compute(inp, "pyscf", task_config={"ncores": 1, "memory": 2.0})
            rows.append(
                {
                    "method": method,
                    "basis": basis,
                    "nbody": len(frags),
                    "seconds": time.perf_counter() - start,
                    "ok": res.success,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


def multilevel_input(nwaters: int, workdir: Path) -> Path:
    """The droplet's ``nwaters`` waters, DF-MP2/cc-pVDZ through 2-body and HF-D3(BJ)/6-31G* through 3-body (nocp)."""
    data = droplet_input(nwaters, workdir, "hf-d3bj", "6-31g*")
    (hf,) = data["specification"]["specification"].values()
    data["specification"]["keywords"]["levels"] = {"2": "mp2", "3": "hf"}
    data["specification"]["specification"] = {
        "mp2": {"program": "pyscf", "model": {"method": "df-mp2", "basis": "cc-pvdz"}, "keywords": {}},
        "hf": hf,
    }
    path = workdir / f"water{nwaters}-multilevel.json"
    path.write_text(json.dumps(data))
    return path


def alternatives(workdir: Path, nwaters: int) -> dict:
    """The multilevel expansion through mbdask's command line, sequential QCManyBody (PySCF's own threads) and a
    process pool over QCManyBody's fragments, one after another on the same input; the same energy from each."""
    from bench_overhead import POOL, QCMANYBODY, SINGLE_THREAD, _timed

    from mbdask.deploy.cluster import usable_cores

    path = multilevel_input(nwaters, workdir)
    workers = usable_cores()
    out, prof = workdir / "multilevel.result.json", workdir / "multilevel.profile.json"
    mbdask_cmd = [sys.executable, "-m", "mbdask", "run", str(path), "--no-progress", "-o", str(out)]
    wall, _ = _timed([*mbdask_cmd, "--profile", str(prof)])
    result = json.loads(out.read_text())
    profile = json.loads(prof.read_text())
    rows = {"mbdask": {"wall_s": wall, "energy": result["properties"]["return_energy"]}}
    wall, stdout = _timed([sys.executable, "-c", QCMANYBODY, str(path)])
    rows["QCManyBody, sequential"] = {"wall_s": wall, "energy": json.loads(stdout.strip().splitlines()[-1])["energy"]}
    wall, stdout = _timed([sys.executable, "-c", POOL, str(path), str(HERE), str(workers)], SINGLE_THREAD)
    rows["process pool"] = {"wall_s": wall, "energy": json.loads(stdout.strip().splitlines()[-1])["energy"]}
    for name, row in rows.items():
        print(name, json.dumps(row), flush=True)
    counts: dict[str, int] = {}
    for f in result["extras"]["mbdask"]["timing"]["fragments"]:
        counts[f["model"]] = counts.get(f["model"], 0) + 1
    return {
        "waters": nwaters,
        "workers": workers,
        "calculations": result["extras"]["mbdask"]["nfragment_calculations"],
        "per_model": counts,
        "bound_s": profile["zero_overhead_bound_seconds"],
        "rows": rows,
    }


def accuracy(workdir: Path, args: argparse.Namespace) -> dict:
    """Screened expansions of the cut against its unscreened reference (every calculation from the store)."""
    reference = json.loads((workdir / "reference.json").read_text())
    inp = expansion_input(args.cut, workdir, args.method, args.basis)
    rows = []
    for label, options in (
        ("distance 2:9,3:6", ["--distance-cutoffs", "2:9,3:6"]),
        ("distance 2:9,3:5", ["--distance-cutoffs", "2:9,3:5"]),
        ("distance 2:12,3:7", ["--distance-cutoffs", "2:12,3:7"]),
        ("GFN2-xTB 2:0.05,3:0.01 kcal/mol", ["--energy-thresholds", "2:0.05,3:0.01"]),
        ("GFN2-xTB 2:0.02,3:0.005 kcal/mol", ["--energy-thresholds", "2:0.02,3:0.005"]),
    ):
        row = cli_run(inp, workdir, f"cut-{len(rows)}", *options, "--no-progress")
        row["screening_label"] = label
        row["error_kcal_per_monomer"] = (row["energy"] - reference["energy"]) * HARTREE_KCAL / args.cut
        rows.append(row)
        said = ("screening_label", "calculations", "error_kcal_per_monomer")
        print(json.dumps({k: row[k] for k in said}), flush=True)
    return {"reference": {k: reference[k] for k in ("calculations", "energy", "wall_s")}, "rows": rows}


def _kinds_table(kinds: dict[str, dict]) -> list[str]:
    """Markdown lines: measured seconds against the cost model per kind of calculation, and a blank line."""
    lines = [
        "| kind | calculations | median s | measured / predicted (p10, median, p90) | "
        "measured / calibrated during the run (p10, median, p90) |",
        "|---|---|---|---|---|",
    ]
    for kind, k in kinds.items():
        p, c = k["measured_over_predicted"], k["measured_over_calibrated"]
        lines.append(
            f"| {kind} | {k['count']} | {k['median_s']:.2f} | "
            + (f"{p['p10']:.2f}, {p['median']:.2f}, {p['p90']:.2f}" if p else "-")
            + " | "
            + (f"{c['p10']:.2f}, {c['median']:.2f}, {c['p90']:.2f}" if c else "-")
            + " |"
        )
    return [*lines, ""]


def section(workdir: Path, args: argparse.Namespace) -> str:
    """The section of docs/benchmarks.md from the steps' JSON files."""
    from run_all import machine

    steps = ("reference", "accuracy", "alternatives")
    found = {p.stem: json.loads(p.read_text()) for p in workdir.glob("*.json") if p.stem in steps}
    runs = [json.loads(p.read_text()) for p in sorted(workdir.glob("run-*.json")) if len(p.suffixes) == 1]
    lines = [
        SECTION,
        "",
        f"Measured {datetime.date.today()} on {machine()} with `python benchmarks/bench_ab_initio.py` "
        "(steps reference, accuracy, run, alternatives): mbdask's PySCF harness (density fitting; D3(BJ) over the "
        "real atoms), nocp, 3-body, the liquid droplet (`benchmarks/droplets.py`), one checkpoint store for all "
        f"steps, the command line's LocalCluster on all cores. Reference and accuracy: {args.method}/{args.basis}; "
        "each run names its level.",
        "",
    ]
    if "reference" in found:
        ref = found["reference"]
        lines += [
            f"Reference: the unscreened 3-body expansion of the first {ref['waters']} waters, "
            f"{ref['calculations']} calculations, {ref['wall_s'] / 60:.1f} min wall, "
            f"{ref['wall_over_bound']:.3f} x the zero-overhead bound.",
            "",
        ]
    if "accuracy" in found:
        lines += [
            "| screening of the cut | calculations kept | error per monomer, kcal/mol (screened - reference) |",
            "|---|---|---|",
        ]
        for row in found["accuracy"]["rows"]:
            lines.append(f"| {row['screening_label']} | {row['calculations']} | {row['error_kcal_per_monomer']:+.4f} |")
        lines.append("")
    for run in runs:
        result_path = workdir / f"{run['name']}.result.json"
        if result_path.exists():  # the tables as the report computes them today, from the run's own result
            run.update(kinds_and_tail(result_path))
        lines += [
            f"The {run['waters']}-water droplet, {run['level']}, screened ({' '.join(run['options'])}): "
            f"{run['calculations']} calculations ({run['from_store']} from the store), "
            f"{run['wall_s'] / 60:.1f} min wall, bound {run['bound_s'] / 60:.1f} min, "
            f"**{run['wall_over_bound']:.3f} x the bound**; longest calculation {run['longest_s']:.1f} s; "
            f"peak memory {run['worker_peak_mb']:.0f} MB per worker, {run['client_peak_mb']:.0f} MB client.",
            "",
        ]
        eta = run.get("eta") or {}
        if eta.get("max_relative_error") is not None:
            lines += [
                f"Time left, as the progress lines said it after the first tenth of the run, against when the "
                f"fragments really ended: median error {100 * eta['median_relative_error']:.0f}%, "
                f"largest {100 * eta['max_relative_error']:.0f}% ({eta['after_first_tenth']} lines).",
                "",
            ]
        tail = run.get("tail")
        if tail:
            lines += [
                f"The tail (from the last moment all cores were busy to the last stop): {tail['seconds']:.2f} s, "
                f"{100 * tail['share']:.2f}% of the fragment span, {tail['lost_seconds']:.2f} s of wall time idle; "
                f"the longest calculation running in it took {tail['longest_running_s']:.2f} s.",
                "",
            ]
        lines += _kinds_table(run["kinds"])
    if "alternatives" in found:
        alt = found["alternatives"]
        ours = alt["rows"]["mbdask"]
        lines += [
            f"Multilevel, the first {alt['waters']} waters: DF-MP2/cc-pVDZ through 2-body, HF-D3(BJ)/6-31G* through "
            f"3-body, nocp ({alt['calculations']} calculations: "
            + ", ".join(f"{n} {m}" for m, n in alt["per_model"].items())
            + f"; zero-overhead bound {alt['bound_s']:.0f} s on {alt['workers']} cores). The same input, one after "
            "another, whole processes:",
            "",
            "| executor | wall s | mbdask is faster by | energy - mbdask's, Eh |",
            "|---|---|---|---|",
        ]
        for name, row in alt["rows"].items():
            lines.append(
                f"| {name} | {row['wall_s']:.1f} | {row['wall_s'] / ours['wall_s']:.2f} x | "
                f"{row['energy'] - ours['energy']:.1e} |"
            )
        lines.append("")
        multilevel = workdir / "multilevel.result.json"
        if multilevel.exists():
            lines += [
                "mbdask's run of it, per kind of calculation:",
                "",
                *_kinds_table(kinds_and_tail(multilevel)["kinds"]),
            ]
    return "\n".join(lines) + "\n"


def main() -> None:
    from bench_large import _eta_errors
    from bench_overhead import write_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("probe", "reference", "accuracy", "run", "alternatives", "docs"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mbdask-ab-initio"))
    parser.add_argument("--waters", type=int, default=64)
    parser.add_argument("--cut", type=int, default=24)
    parser.add_argument("--method", default="hf-d3bj")
    parser.add_argument("--basis", default="6-31g*")
    parser.add_argument("--cutoffs", default="2:9,3:6", help="run: distance cutoffs (--distance-cutoffs)")
    parser.add_argument("--thresholds", help="run: GFN2-xTB energy screening instead (--energy-thresholds)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.step == "docs":
        write_section(section(args.workdir, args), section=SECTION)
        return
    if args.step == "probe":
        found = probe(args.workdir)
    elif args.step == "reference":
        found = cli_run(expansion_input(args.cut, args.workdir, args.method, args.basis), args.workdir, "reference")
        found["eta"] = _eta_errors(found["progress"], found["wall_s"])
    elif args.step == "accuracy":
        found = accuracy(args.workdir, args)
    elif args.step == "alternatives":
        found = alternatives(args.workdir, args.cut)
    else:
        inp = expansion_input(args.waters, args.workdir, args.method, args.basis)
        name = f"run-{args.waters}-{args.method}-{args.basis.replace('*', 's')}"
        screening = (
            ["--energy-thresholds", args.thresholds] if args.thresholds else ["--distance-cutoffs", args.cutoffs]
        )
        found = cli_run(inp, args.workdir, name, *screening)
        found["eta"] = _eta_errors(found["progress"], found["wall_s"])
        found["level"] = f"{args.method}/{args.basis}"
    name = args.step if args.step != "run" else found["name"]
    (args.workdir / f"{name}.json").write_text(json.dumps(found, indent=1))
    print(json.dumps({k: v for k, v in found.items() if k not in ("progress",)}, indent=1)[:4000])


if __name__ == "__main__":
    main()

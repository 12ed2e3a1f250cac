"""Screened expansions against the unscreened one: error, subsystems kept, time.

    python benchmarks/bench_screening.py --store hf20.sqlite --reference hf20-ref.json

1. GFN2-xTB on the (H2O)20 dodecahedron: the full 2-, 3- and 4-body interaction sums.
2. HF/6-31G (PySCF) on the same cluster through 4-body, screened by GFN2-xTB increments at
   several thresholds: error against the unscreened HF 4-body expansion, the share of the
   subsystems computed, and the share of the HF compute time they took (from the per-fragment
   timings of the unscreened run).
3. Distance screening with cutoffs chosen to keep the same number of clusters per order as
   an energy-screened run: the error of each at equal cost.

The unscreened HF reference is the expensive part (6,195 PySCF calculations, about 25 min on
2 cores); it is computed once into the checkpoint store and its result file, then every
screened run reloads its HF fragments from the store. Prints a markdown section.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from distributed import Client  # noqa: E402
from qcelemental import constants  # noqa: E402
from qcmanybody.models.v2 import ManyBodyResult  # noqa: E402
from qcmanybody.utils import delabeler  # noqa: E402

import mbdask  # noqa: E402
from mbdask.inputs.xyz import molecule_from_xyz  # noqa: E402
from mbdask.planning.screening import fragment_distances, subclusters_kept  # noqa: E402

KCAL = constants.hartree2kcalmol
GEOMETRY = HERE / "data" / "water20-dodecahedron.xyz"
ENERGY_THRESHOLDS = (
    {2: 0.1, 3: 0.05, 4: 0.02},
    {2: 0.05, 3: 0.02, 4: 0.01},
    {2: 0.02, 3: 0.01, 4: 0.005},
    # every dimer kept (190 of them, cheap next to trimers and tetramers), trimers and tetramers screened
    {2: 0.0, 3: 0.005, 4: 0.002},
    {2: 0.0, 3: 0.002, 4: 0.001},
)


def expansion(name: str, program: str, model: dict, keywords: dict, max_nbody: int) -> dict:
    return {
        "specification": {
            "driver": "energy",
            "keywords": {"bsse_type": ["nocp"], "levels": {max_nbody: name}},
            "specification": {name: {"program": program, "model": model, "keywords": keywords}},
        },
        "molecule": molecule_from_xyz(GEOMETRY),
    }


def hf(max_nbody: int) -> dict:
    return expansion("hf", "pyscf", {"method": "hf", "basis": "6-31g"}, {"conv_tol": 1e-10}, max_nbody)


GFN2 = expansion("gfn2", "xtb", {"method": "gfn2-xtb"}, {"accuracy": 0.01}, 4)


def interaction_sums(result: ManyBodyResult) -> dict[int, float]:
    top = max(int(n) for n in result.input_data.specification.keywords.levels)
    return {
        n: getattr(result.properties, f"nocp_corrected_interaction_energy_through_{n}_body") * KCAL
        for n in range(2, top + 1)
    }


def candidates(previous: set, order: int, distances, cutoff) -> list[tuple[int, ...]]:
    """Clusters of ``order`` whose sub-clusters are all in ``previous`` and whose pairs lie within ``cutoff``
    (None: any), by trying every extension: fine for 20 waters (mbdask itself grows them from neighbour lists)."""
    n = distances.shape[0]
    return [
        cluster
        for base in sorted(previous)
        for cluster in (base + (j,) for j in range(base[-1] + 1, n + 1))
        if subclusters_kept(cluster, previous)
        and (cutoff is None or all(distances[a - 1, b - 1] <= cutoff for a, b in itertools.combinations(cluster, 2)))
    ]


def distance_cutoffs_matching(kept: dict[str, int]) -> dict[int, float]:
    """Per order, the cutoff that keeps the same number of clusters (bottom-up, closed under subsets)."""
    distances = fragment_distances(mbdask.load_input(GFN2).molecule)
    previous = {(i,) for i in range(1, distances.shape[0] + 1)}
    cutoffs = {}
    for order in sorted(int(n) for n in kept if n != "1"):
        found = candidates(previous, order, distances, None)
        span = sorted(max(distances[a - 1, b - 1] for a, b in itertools.combinations(c, 2)) for c in found)
        target = kept[str(order)]
        cutoffs[order] = span[target - 1] if target else 0.5 * span[0]
        previous = set(candidates(previous, order, distances, cutoffs[order]))
    return cutoffs


def stored_seconds(store: str, model: str) -> dict[tuple[int, ...], float]:
    """Measured seconds of each calculation of model chemistry ``model`` in the checkpoint store, by real fragments."""
    import sqlite3

    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT label, seconds FROM fragments").fetchall()
    return {tuple(delabeler(label)[1]): secs for label, secs in rows if delabeler(label)[0] == model}


def screened_row(
    label: str, result: ManyBodyResult, reference: ManyBodyResult, seconds: dict, total_seconds: float
) -> str:
    summary = result.extras["mbdask"]["screening"]
    kept = "/".join(str(row["kept"]) for n, row in summary["orders"].items() if n != "1")
    ncalc = result.extras["mbdask"]["nfragment_calculations"]
    nall = reference.extras["mbdask"]["nfragment_calculations"]
    used = sum(seconds.get(tuple(delabeler(label)[1]), 0.0) for label in result.cluster_properties)
    error = (result.properties.return_energy - reference.properties.return_energy) * KCAL
    fill = summary.get("return_energy_with_fill_in")
    fill_error = f"{(fill - reference.properties.return_energy) * KCAL:+.3f}" if fill is not None else ""
    return (
        f"| {label} | {kept} | {100 * ncalc / nall:.1f}% | {100 * used / total_seconds:.1f}% "
        f"| {error:+.3f} | {fill_error} | {summary.get('energy', {}).get('screening_seconds', 0):.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="hf20.sqlite", help="checkpoint store for the HF and xtb fragments")
    parser.add_argument("--reference", default="hf20-ref.json", help="unscreened HF result (computed if missing)")
    parser.add_argument("--max-nbody", type=int, default=4, help="highest order of the HF expansion (default 4)")
    parser.add_argument(
        "--out",
        default=str(HERE.parent / "docs" / "benchmarks.md"),
        help="markdown file whose screening section is replaced ('' to only print)",
    )
    args = parser.parse_args()

    HF = hf(args.max_nbody)
    with mbdask.deploy.cluster.connected(n_workers=2) as conn:
        client = conn.client
        lines = ["## Screened expansions: (H2O)20 dodecahedron", ""]
        start = time.perf_counter()
        gfn2 = mbdask.compute(GFN2, client, store=args.store)
        gfn2_wall = time.perf_counter() - start
        sums = interaction_sums(gfn2)
        lines += [
            f"Measured {datetime.date.today().isoformat()} on the machine above with `python "
            "benchmarks/bench_screening.py`.",
            "",
            f"GFN2-xTB, unscreened, nocp (6,195 calculations, {gfn2.extras['mbdask']['timing']['from_store']} of them "
            f"reloaded from the store; {gfn2_wall:.0f} s here incl. start-up): interaction energy through 2-body "
            f"{sums[2]:.3f}, 3-body {sums[3]:.3f}, 4-body {sums[4]:.3f} kcal/mol.",
            "",
        ]
        reference_path = Path(args.reference)
        if reference_path.exists():
            reference = ManyBodyResult.model_validate_json(reference_path.read_text())
        else:
            reference = mbdask.compute(HF, client, store=args.store)
            reference_path.write_text(reference.model_dump_json())
        seconds = stored_seconds(args.store, "hf")
        computed = {tuple(delabeler(label)[1]) for label in reference.cluster_properties}
        total_seconds = sum(seconds[real] for real in computed)
        ref_sums = interaction_sums(reference)
        lines += [
            f"HF/6-31G (PySCF), unscreened reference through {args.max_nbody}-body: interaction energy "
            + ", ".join(f"through {n}-body {e:.3f}" for n, e in ref_sums.items())
            + f" kcal/mol; {len(computed)} calculations, "
            f"{total_seconds:.0f} s of fragment compute (about {total_seconds / 2:.0f} s on 2 workers).",
            "",
            "Screened runs reload their HF fragments from the reference's checkpoint store, so the HF time they would "
            "take is given as the share of the reference's fragment compute time that the kept calculations took. "
            "Screening s: wall time until the last screening decision (expensive calculations run meanwhile; "
            "fragments reused from the store).",
            "",
            "| screening | kept clusters per order (2/3/...) | calculations | HF compute time | error kcal/mol | with "
            "fill-in | screening s |",
            "|---|---|---|---|---|---|---|",
        ]
        for thresholds in ENERGY_THRESHOLDS:
            energy = mbdask.compute(HF, client, store=args.store, screening={"energy_thresholds": thresholds})
            label = "energy " + ", ".join(f"{n}: {t:g}" for n, t in thresholds.items()) + " kcal/mol"
            lines.append(screened_row(label, energy, reference, seconds, total_seconds))
            cutoffs = distance_cutoffs_matching(
                {n: row["kept"] for n, row in energy.extras["mbdask"]["screening"]["orders"].items()}
            )
            distance = mbdask.compute(HF, client, store=args.store, screening={"distance_cutoffs": cutoffs})
            dlabel = "distance " + ", ".join(f"{n}: {c:.2f}" for n, c in cutoffs.items()) + " A (same counts)"
            lines.append(screened_row(dlabel, distance, reference, seconds, total_seconds))
            print("\n".join(lines[-2:]), flush=True)
        lines.append("")
        lines += overlap_lines(client)
    print("\n".join(lines))
    if args.out:
        replace_section(Path(args.out), lines)


def overlap_lines(client: Client) -> list[str]:
    """Energy screening from scratch (no store): how much expensive work ran before the last decision."""
    inp = expansion("hf", "pyscf", {"method": "hf", "basis": "6-31g"}, {"conv_tol": 1e-10}, 3)
    inp["molecule"] = molecule_from_xyz(HERE / "data" / "water10-pp1.xyz")
    start = time.perf_counter()
    result = mbdask.compute(inp, client, screening={"energy_thresholds": {2: 0.05, 3: 0.02}})
    wall = time.perf_counter() - start
    energy = result.extras["mbdask"]["screening"]["energy"]
    kept = "/".join(str(row["kept"]) for n, row in result.extras["mbdask"]["screening"]["orders"].items() if n != "1")
    return [
        "Overlap, measured from scratch (no store): (H2O)10 HF/6-31G through 3-body screened by GFN2-xTB at 2: 0.05, "
        f"3: 0.02 kcal/mol (kept {kept}): the last screening decision came {energy['screening_seconds']:.1f} s into "
        f"the {wall:.1f} s run, with {energy['expensive_units_done_when_decided']} expensive units already finished; "
        "cheap and expensive calculations share the workers, cheap ones first.",
        "",
    ]


def replace_section(path: Path, lines: list[str]) -> None:
    """Put ``lines`` (starting with a ``## `` heading) into ``path``, replacing the section of that heading."""
    text = path.read_text().splitlines() if path.exists() else []
    heading = lines[0]
    if heading in text:
        start = text.index(heading)
        end = next((i for i in range(start + 1, len(text)) if text[i].startswith("## ")), len(text))
        text[start:end] = lines
    else:
        text += [""] + lines
    path.write_text("\n".join(text).rstrip("\n") + "\n")


if __name__ == "__main__":
    main()

"""Benchmark: which cheap xtb model should screen GFN2-xTB 3- and 4-body increments of (H2O)64 (issue 16)?

This is a benchmark, not a test: it runs a few thousand xtb single points (about 3-5 min
on one core) and writes a JSON file; nothing in mbdask or its tests depends on it.

    OMP_NUM_THREADS=1 python benchmarks/bench_screening_models.py \
        [--out /tmp/screening_models.json] [--n-random 300] [--n-close 150] [--n-timing 50]

What it measures, on benchmarks/data/water64-droplet.xyz (64 waters, one fragment each),
for the target GFN2-xTB and every cheap candidate the installed xtb can run (GFN1-xTB,
GFN-FF; GFN0-xTB and IPEA-xTB are tried and reported as unavailable if their parameter
files are missing), all with the keywords mbdask's xtb specifications use
(``{"accuracy": 0.01}``), through the route mbdask uses (``mbdask.calculation.engine.run_program``,
i.e. QCEngine's ``xtb`` harness -> ``xtb.qcschema.harness.run_qcschema`` -> xtb-python),
single thread:

1. cost: median (and quartiles) wall seconds of one energy single point of a water trimer
   and of a tetramer (``--n-timing`` clusters each, taken from the closest-packed ones;
   the models are timed interleaved, cluster by cluster, so background load hits all alike).
   The time of xtb's own ``singlepoint()`` alone (xtb-python ``Calculator``) is given too.
2. fidelity: for a sample of trimers and tetramers (``--n-random`` uniformly random ones
   plus the ``--n-close`` closest-packed by their largest O-O distance), each cluster's nocp
   increment by inclusion-exclusion over the energies of all its subsets (cached), for
   GFN2 and each candidate. Reported: Pearson r, least-squares slope (cheap on GFN2), mean
   absolute error, and for the rule "keep a cluster if |cheap increment| > t" the share of
   clusters kept and the share of sum |GFN2 increment| that the dropped ones carry, on the
   whole sample and on the random part alone (an unbiased estimate for all C(64,k)
   clusters). The same for the rule "keep if the largest O-O distance < d", and, for
   tetramers, for the hierarchical rule mbdask applies (a tetramer is a candidate only if
   its four trimers were kept at the 3-body threshold). Since the models' increments differ
   in scale, also a calibration-free comparison: keep the same share of the clusters
   (ranked by |cheap increment|, by max O-O distance, or by |GFN2 increment| = ideal) and
   compare the share of sum |GFN2| that is dropped. ``population_estimate`` weights the
   sample by strata (closest ones once, each random one for (N - n_close) / n_random
   clusters) to estimate kept counts and dropped sums over all C(64,k) clusters; it rests
   on 300 random clusters and is rough for the sparse far tail.

GFN-FF writes gfnff_topo / gfnff_charges / gfnff_adjacency into the working directory and
prints its setup to stdout whatever the verbosity; the script runs in a temporary
directory and sends file descriptor 1 to /dev/null while xtb runs.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from qcelemental import constants  # noqa: E402
from qcelemental.models.v2 import AtomicInput, Molecule  # noqa: E402

from mbdask.calculation.engine import run_program  # noqa: E402
from mbdask.inputs.xyz import molecule_from_xyz  # noqa: E402

HERE = Path(__file__).resolve().parent
GEOMETRY = HERE / "data" / "water64-droplet.xyz"
KCAL = constants.hartree2kcalmol
TARGET = "gfn2-xtb"
CANDIDATES = ["gfn1-xtb", "gfn-ff", "gfn0-xtb", "ipea-xtb"]
KEYWORDS = {"accuracy": 0.01}  # as mbdask's xtb specifications (tests/conftest.py xtb_input)
THRESHOLDS = [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1]  # kcal/mol
DISTANCES = [4.5, 5.0, 5.5, 6.0, 7.0, 8.0]  # Angstrom, largest O-O distance in the cluster
BUDGETS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7]  # fraction of sampled clusters kept, for the matched-budget comparison


@contextlib.contextmanager
def quiet_stdout():
    """Send fd 1 (where xtb's Fortran writes) to /dev/null."""
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


class Energies:
    """Energies (Hartree) of fragment subsets for one model, cached; computed via mbdask's route."""

    def __init__(self, molecule: dict, method: str):
        self.geometry = np.asarray(molecule["geometry"], float).reshape(-1, 3)
        self.symbols = list(molecule["symbols"])
        self.fragments = [list(f) for f in molecule["fragments"]]
        self.method = method
        self.cache: dict[tuple[int, ...], float] = {}
        self.seconds = 0.0

    def atomic_input(self, subset: tuple[int, ...]) -> AtomicInput:
        atoms = [a for f in subset for a in self.fragments[f]]
        mol = Molecule(
            symbols=[self.symbols[a] for a in atoms],
            geometry=self.geometry[atoms],
            fix_com=True,
            fix_orientation=True,
        )
        return AtomicInput(
            molecule=mol, specification={"driver": "energy", "model": {"method": self.method}, "keywords": KEYWORDS}
        )

    def __call__(self, subset: tuple[int, ...]) -> float:
        subset = tuple(sorted(subset))
        if subset not in self.cache:
            ai = self.atomic_input(subset)
            t = time.perf_counter()
            result = run_program(ai, "xtb")
            self.seconds += time.perf_counter() - t
            if not getattr(result, "success", False):
                raise RuntimeError(f"{self.method} failed on {subset}: {getattr(result, 'error', result)}")
            self.cache[subset] = float(result.return_result)
        return self.cache[subset]

    def increment(self, cluster: tuple[int, ...]) -> float:
        """nocp k-body increment of ``cluster`` in kcal/mol, by inclusion-exclusion."""
        k = len(cluster)
        total = 0.0
        for m in range(1, k + 1):
            sign = (-1) ** (k - m)
            for sub in itertools.combinations(cluster, m):
                total += sign * self(sub)
        return total * KCAL


def available(molecule: dict, method: str) -> tuple[bool, str]:
    e = Energies(molecule, method)
    result = run_program(e.atomic_input((0,)), "xtb")
    if getattr(result, "success", False):
        return True, ""
    return False, str(getattr(result, "error", result))[:300]


def max_oo(oxygens: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """All k-clusters of the waters and their largest O-O distance (Angstrom)."""
    n = len(oxygens)
    d = np.linalg.norm(oxygens[:, None] - oxygens[None], axis=-1)
    combos = np.array(list(itertools.combinations(range(n), k)), dtype=np.int16)
    worst = np.zeros(len(combos))
    for i, j in itertools.combinations(range(k), 2):
        worst = np.maximum(worst, d[combos[:, i], combos[:, j]])
    return combos, worst


def stats(ref: np.ndarray, cheap: np.ndarray) -> dict:
    slope, intercept = np.polyfit(ref, cheap, 1)
    return {
        "pearson_r": float(np.corrcoef(ref, cheap)[0, 1]),
        "slope": float(slope),
        "intercept_kcal": float(intercept),
        "mae_kcal": float(np.mean(np.abs(cheap - ref))),
        "max_abs_err_kcal": float(np.max(np.abs(cheap - ref))),
    }


def rule(ref: np.ndarray, keep: np.ndarray) -> dict:
    total = np.abs(ref).sum()
    dropped = ~keep
    return {
        "kept_fraction": float(keep.mean()),
        "dropped_abs_fraction": float(np.abs(ref[dropped]).sum() / total) if total else 0.0,
        "dropped_abs_sum_kcal": float(np.abs(ref[dropped]).sum()),
        "dropped_signed_sum_kcal": float(ref[dropped].sum()),
        "max_dropped_abs_kcal": float(np.abs(ref[dropped]).max()) if dropped.any() else 0.0,
    }


def population(ref: np.ndarray, keep: np.ndarray, w: np.ndarray) -> dict:
    """Stratified estimate over all C(64,k) clusters: the closest ones count once, each random one for its stratum."""
    total = (w * np.abs(ref)).sum()
    drop = ~keep
    return {
        "kept_fraction": float((w * keep).sum() / w.sum()),
        "kept_clusters": float((w * keep).sum()),
        "dropped_abs_fraction": float((w * np.abs(ref))[drop].sum() / total),
        "dropped_abs_sum_kcal": float((w * np.abs(ref))[drop].sum()),
        "dropped_signed_sum_kcal": float((w * ref)[drop].sum()),
        "total_signed_sum_kcal": float((w * ref).sum()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/screening_models.json")
    p.add_argument("--n-random", type=int, default=300)
    p.add_argument("--n-close", type=int, default=150)
    p.add_argument("--n-timing", type=int, default=50)
    p.add_argument("--seed", type=int, default=16)
    args = p.parse_args()
    t_start = time.perf_counter()

    molecule = molecule_from_xyz(GEOMETRY)
    symbols = molecule["symbols"]
    frags = [list(f) for f in molecule["fragments"]]
    assert len(frags) == 64 and all(len(f) == 3 and [symbols[a] for a in f] == ["O", "H", "H"] for f in frags)
    geom_ang = np.asarray(molecule["geometry"], float).reshape(-1, 3) * constants.bohr2angstroms
    oxygens = geom_ang[[f[0] for f in frags]]

    workdir = tempfile.mkdtemp(prefix="screening_models_")
    os.chdir(workdir)  # GFN-FF writes its topology files into the working directory

    import xtb

    out: dict = {
        "geometry": str(GEOMETRY),
        "keywords": KEYWORDS,
        "route": "mbdask.calculation.engine.run_program (qcengine xtb harness)",
        "xtb_python": getattr(xtb, "__version__", "?"),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
        "args": vars(args),
        "models": {},
        "unavailable": {},
    }
    with quiet_stdout():
        models = [TARGET]
        for m in CANDIDATES:
            ok, why = available(molecule, m)
            if ok:
                models.append(m)
            else:
                out["unavailable"][m] = why
    print("models:", models, "unavailable:", list(out["unavailable"]), flush=True)

    rng = np.random.default_rng(args.seed)
    samples: dict[int, dict] = {}
    for k in (3, 4):
        combos, worst = max_oo(oxygens, k)
        close = np.argsort(worst, kind="stable")[: args.n_close]
        rest = np.setdiff1d(np.arange(len(combos)), close)
        rand = rng.choice(rest, size=args.n_random, replace=False)
        idx = np.concatenate([close, rand])
        samples[k] = {
            "clusters": [tuple(int(x) for x in combos[i]) for i in idx],
            "max_oo": worst[idx],
            "is_close": np.array([True] * len(close) + [False] * len(rand)),
            "total_clusters": len(combos),
            "close_max_oo_range": [float(worst[close].min()), float(worst[close].max())],
        }
        print(
            f"{k}-body: {len(combos)} clusters; closest {args.n_close} have max O-O "
            f"{worst[close].min():.2f}-{worst[close].max():.2f} A",
            flush=True,
        )

    # 1. cost per single point, interleaved over models
    from xtb.interface import Calculator
    from xtb.libxtb import VERBOSITY_MUTED
    from xtb.utils import get_method

    engines = {m: Energies(molecule, m) for m in models}
    timing: dict = {m: {} for m in models}
    with quiet_stdout():
        for m in models:  # warm up each harness / parametrisation once
            run_program(engines[m].atomic_input((0, 1, 2)), "xtb")
        for k in (3, 4):
            route = {m: [] for m in models}
            kernel = {m: [] for m in models}
            for cluster in samples[k]["clusters"][: args.n_timing]:
                for m in models:
                    ai = engines[m].atomic_input(cluster)
                    t = time.perf_counter()
                    run_program(ai, "xtb")
                    route[m].append(time.perf_counter() - t)
                    atoms = [a for f in cluster for a in frags[f]]
                    calc = Calculator(get_method(m), np.array(ai.molecule.atomic_numbers), engines[m].geometry[atoms])
                    calc.set_verbosity(VERBOSITY_MUTED)
                    calc.set_accuracy(KEYWORDS["accuracy"])
                    t = time.perf_counter()
                    calc.singlepoint()
                    kernel[m].append(time.perf_counter() - t)
            for m in models:
                q = np.percentile(route[m], [25, 50, 75])
                timing[m][f"{k}-mer"] = {
                    "route_median_s": float(q[1]),
                    "route_q25_s": float(q[0]),
                    "route_q75_s": float(q[2]),
                    "singlepoint_median_s": float(np.median(kernel[m])),
                    "n": len(route[m]),
                }
    for m in models:
        print(
            f"{m:9s} trimer {timing[m]['3-mer']['route_median_s'] * 1e3:6.2f} ms  "
            f"tetramer {timing[m]['4-mer']['route_median_s'] * 1e3:6.2f} ms  "
            f"(singlepoint alone {timing[m]['3-mer']['singlepoint_median_s'] * 1e3:.2f} / "
            f"{timing[m]['4-mer']['singlepoint_median_s'] * 1e3:.2f} ms)",
            flush=True,
        )

    # 2. increments
    incr: dict[str, dict[int, np.ndarray]] = {m: {} for m in models}
    with quiet_stdout():
        for m in models:
            t = time.perf_counter()
            for k in (3, 4):
                incr[m][k] = np.array([engines[m].increment(c) for c in samples[k]["clusters"]])
            out["models"][m] = {
                "timing": timing[m],
                "n_energies": len(engines[m].cache),
                "increment_pass_s": time.perf_counter() - t,
            }
    for m in models:
        print(f"{m}: {len(engines[m].cache)} energies in {out['models'][m]['increment_pass_s']:.0f} s", flush=True)

    # sub-trimer increments of each sampled tetramer (for the hierarchical rule), from the caches
    sub3 = {
        m: np.array([[engines[m].increment(t) for t in itertools.combinations(c, 3)] for c in samples[4]["clusters"]])
        for m in models
    }

    for k in (3, 4):
        s = samples[k]
        ref = incr[TARGET][k]
        parts = {"all": np.ones(len(ref), bool), "random": ~s["is_close"], "close": s["is_close"]}
        dist = {}
        for part, mask in parts.items():
            dist[part] = {str(d): rule(ref[mask], s["max_oo"][mask] < d) for d in DISTANCES}
        out.setdefault("distance_rule", {})[f"{k}-body"] = dist
        out.setdefault("gfn2_increments", {})[f"{k}-body"] = {
            "abs_sum_kcal": {part: float(np.abs(ref[mask]).sum()) for part, mask in parts.items()},
            "abs_sum_close_share": float(np.abs(ref[s["is_close"]]).sum() / np.abs(ref).sum()),
            "max_abs_kcal": float(np.abs(ref).max()),
            "median_abs_kcal": {part: float(np.median(np.abs(ref[mask]))) for part, mask in parts.items()},
        }
        for m in models:
            if m == TARGET:
                continue
            cheap = incr[m][k]
            entry = out["models"][m].setdefault("fidelity", {})[f"{k}-body"] = {
                "stats": {part: stats(ref[mask], cheap[mask]) for part, mask in parts.items()},
                "threshold_rule": {
                    part: {str(t): rule(ref[mask], np.abs(cheap[mask]) > t) for t in THRESHOLDS}
                    for part, mask in parts.items()
                },
            }
            if k == 4:
                hier = {}
                for part, mask in parts.items():
                    hier[part] = {}
                    for t in THRESHOLDS:
                        keep = (np.abs(cheap) > t) & (np.abs(sub3[m]) > t).all(axis=1)
                        hier[part][str(t)] = rule(ref[mask], keep[mask])
                entry["hierarchical_rule_same_t_for_trimers"] = hier
        # matched budget: keep the same number of clusters under every ranking (|cheap|, -max O-O, |GFN2|)
        ranks = {m: np.abs(incr[m][k]) for m in models}
        ranks["distance"] = -s["max_oo"]
        budget = {}
        for part, mask in parts.items():
            budget[part] = {}
            for name, score in ranks.items():
                budget[part][name] = {}
                for q in BUDGETS:
                    n_keep = int(round(q * mask.sum()))
                    order = np.argsort(-score[mask], kind="stable")
                    keep = np.zeros(mask.sum(), bool)
                    keep[order[:n_keep]] = True
                    budget[part][name][str(q)] = rule(ref[mask], keep)
        out.setdefault("matched_budget_rule", {})[f"{k}-body"] = budget
        # stratified estimate for the whole (H2O)64 k-body population
        w = np.where(s["is_close"], 1.0, (s["total_clusters"] - s["is_close"].sum()) / (~s["is_close"]).sum())
        pop = {
            "distance": {str(d): population(ref, s["max_oo"] < d, w) for d in DISTANCES},
            "ideal_gfn2": {str(t): population(ref, np.abs(ref) > t, w) for t in THRESHOLDS},
        }
        for m in models:
            if m != TARGET:
                pop[m] = {str(t): population(ref, np.abs(incr[m][k]) > t, w) for t in THRESHOLDS}
                if k == 4:
                    pop[m + " hierarchical"] = {
                        str(t): population(ref, (np.abs(incr[m][k]) > t) & (np.abs(sub3[m]) > t).all(axis=1), w)
                        for t in THRESHOLDS
                    }
        out.setdefault("population_estimate", {})[f"{k}-body"] = pop
        # GFN2 screening itself (self-screening): the ideal a cheap model can reach
        out.setdefault("ideal_gfn2_threshold_rule", {})[f"{k}-body"] = {
            part: {str(t): rule(ref[mask], np.abs(ref[mask]) > t) for t in THRESHOLDS} for part, mask in parts.items()
        }

    out["raw"] = {
        f"{k}-body": {
            "clusters": samples[k]["clusters"],
            "max_oo_A": samples[k]["max_oo"].tolist(),
            "is_close": samples[k]["is_close"].tolist(),
            "increments_kcal": {m: incr[m][k].tolist() for m in models},
        }
        for k in (3, 4)
    }
    out["samples"] = {
        f"{k}-body": {
            "total_clusters": samples[k]["total_clusters"],
            "close_max_oo_range_A": samples[k]["close_max_oo_range"],
        }
        for k in (3, 4)
    }
    out["loadavg_end"] = os.getloadavg()
    out["wall_s"] = time.perf_counter() - t_start
    Path(args.out).write_text(json.dumps(out, indent=1))

    for k in (3, 4):
        print(f"\n{k}-body (all sampled): model r slope MAE | kept/dropped% at t=" + " ".join(map(str, THRESHOLDS)))
        for m in models:
            if m == TARGET:
                continue
            f = out["models"][m]["fidelity"][f"{k}-body"]
            st = f["stats"]["all"]
            rr = " ".join(
                f"{f['threshold_rule']['all'][str(t)]['kept_fraction']:.2f}/"
                f"{100 * f['threshold_rule']['all'][str(t)]['dropped_abs_fraction']:.2f}"
                for t in THRESHOLDS
            )
            print(f"  {m:9s} {st['pearson_r']:.3f} {st['slope']:.2f} {st['mae_kcal']:.4f} | {rr}")
    print(f"\nwrote {args.out} in {out['wall_s']:.0f} s")


if __name__ == "__main__":
    main()

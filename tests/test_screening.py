"""Screened expansions: exact when off, sums of kept increments when on, gradients consistent."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import DATA, EXAMPLES, assert_close, needs_xtb, xtb_input
from helpers import in_process_client
from qcelemental import constants

import mbdask
from mbdask.cli import main
from mbdask.errors import BadInputError
from mbdask.planning.plan import make_plan
from mbdask.planning.screening import PairDistances, Screening, fragment_distances, kept_clusters, pair_distances

WATER6 = EXAMPLES / "water6-prism.xyz"
CUTOFFS = {"distance_cutoffs": {2: 3.0, 3: 2.5}}  # Angstrom: drops 5 of 15 dimers, keeps 2 of 20 trimers


def _numbers(result) -> dict:
    return {k: v for k, v in result.properties.model_dump().items() if v is not None and not isinstance(v, str)}


@needs_xtb
@pytest.mark.parametrize("driver", ["energy", "gradient"])
def test_infinite_cutoffs_reproduce_the_unscreened_expansion(process_client, driver):
    inp = xtb_input(WATER6, driver=driver)
    full = mbdask.compute(inp, process_client)
    screened = mbdask.compute(inp, process_client, screening={"distance_cutoffs": {2: 1e6, 3: 1e6}})
    assert screened.extras["mbdask"]["screening"]["orders"]["3"] == {"kept": 20, "all": 20}
    expected, got = _numbers(full), _numbers(screened)
    assert set(expected) == set(got)
    for name, value in expected.items():
        assert_close(got[name], value, atol=1e-9)
    assert_close(screened.return_result, full.return_result, atol=1e-9)


@needs_xtb
def test_screened_energy_is_the_sum_of_the_kept_clusters_increments(process_client):
    inp = xtb_input(WATER6)
    full = mbdask.compute(inp, process_client)
    screened = mbdask.compute(inp, process_client, screening=CUTOFFS)
    plan = make_plan(inp, screening=CUTOFFS)
    kept = plan.screened.kept
    assert (len(kept[2]), len(kept[3])) == (10, 2)
    increments = {tuple(r["fragments"]): r["energy"] for r in full.extras["mbdask"]["increments"]["nocp"]}
    for nbody in (2, 3):
        expected = sum(increments[c] for n in range(2, nbody + 1) for c in kept[n])
        got = getattr(screened.properties, f"nocp_corrected_interaction_energy_through_{nbody}_body")
        assert got == pytest.approx(expected, abs=1e-10)
    # only the kept clusters ran: 6 monomers + 10 dimers + 2 trimers
    assert screened.extras["mbdask"]["nfragment_calculations"] == len(plan.jobs) == 18
    assert "screened expansion, clusters kept 2-body 10/15, 3-body 2/20" in screened.stdout
    assert "N/A" not in screened.stdout  # QCManyBody's table without its empty rows for orders 4 to 6
    # and the report says so
    assert "kept of all" in mbdask.report(screened)


@needs_xtb
def test_screened_gradient_matches_finite_differences_of_the_screened_energy(process_client):
    """Central differences of the screened energy, the kept clusters frozen (explicit cluster list)."""
    plan = make_plan(xtb_input(WATER6), screening=CUTOFFS)
    frozen = {"clusters": [list(c) for n in (2, 3) for c in plan.screened.kept[n]]}
    gradient = np.asarray(
        mbdask.compute(xtb_input(WATER6, driver="gradient"), process_client, screening=frozen).return_result
    )
    base = xtb_input(WATER6)
    geometry = np.asarray(base["molecule"]["geometry"], dtype=float).reshape(-1, 3)
    step = 1e-3  # bohr
    for atom, axis in ((0, 0), (4, 1), (13, 2)):  # atoms in different waters, every axis once
        energies = []
        for sign in (1, -1):
            moved = geometry.copy()
            moved[atom, axis] += sign * step
            inp = {**base, "molecule": {**base["molecule"], "geometry": moved.ravel().tolist()}}
            inp["specification"]["keywords"]["return_total_data"] = True
            energies.append(mbdask.compute(inp, process_client, screening=frozen).return_result)
        assert (energies[0] - energies[1]) / (2 * step) == pytest.approx(gradient[atom, axis], abs=2e-6)


@needs_xtb
@pytest.mark.slow
def test_screened_gradient_of_a_droplet_matches_finite_differences(process_client, tmp_path):
    """A few hundred atoms: 100 waters of the liquid droplet (300 atoms), 3-body screened at 2-body 5 A and 3-body
    3.5 A, the kept clusters frozen; central differences of the screened energy on a handful of coordinates."""
    lines = (DATA / "water4096-liquid-sphere.xyz").read_text().splitlines()
    xyz = tmp_path / "water100.xyz"
    xyz.write_text("\n".join(["300", lines[1], *lines[2:302]]) + "\n")
    base = xtb_input(xyz)
    plan = make_plan(base, screening={"distance_cutoffs": {2: 5.0, 3: 3.5}})
    assert (
        300 < len(plan.screened.kept[2]) < 4950 and len(plan.screened.kept[3]) > 100
    )  # really screened, and trimers kept
    frozen = {"clusters": [list(c) for n in (2, 3) for c in plan.screened.kept[n]]}
    gradient = np.asarray(
        mbdask.compute(xtb_input(xyz, driver="gradient"), process_client, screening=frozen).return_result
    )
    geometry = np.asarray(base["molecule"]["geometry"], dtype=float).reshape(-1, 3)
    step = 1e-3  # bohr
    for atom, axis in ((0, 0), (151, 1), (299, 2)):  # the droplet's centre, middle and surface
        energies = []
        for sign in (1, -1):
            moved = geometry.copy()
            moved[atom, axis] += sign * step
            inp = {**base, "molecule": {**base["molecule"], "geometry": moved.ravel().tolist()}}
            inp["specification"]["keywords"]["return_total_data"] = True  # the gradient is the total energy's
            energies.append(mbdask.compute(inp, process_client, screening=frozen).return_result)
        assert (energies[0] - energies[1]) / (2 * step) == pytest.approx(gradient[atom, axis], abs=1e-5)


def test_kept_set_is_closed_under_subsets_and_respects_cutoffs():
    model = mbdask.load_input(xtb_input(WATER6, max_nbody=4)).molecule
    distances = fragment_distances(model)
    screened = kept_clusters(Screening({2: 3.0, 3: 4.0, 4: 2.9}), pair_distances(model, 4.0), 4)
    for n in (3, 4):
        for cluster in screened.kept[n]:
            assert all(sub in screened.kept[n - 1] for sub in itertools.combinations(cluster, n - 1))
            cutoff = {3: 4.0, 4: 2.9}[n]
            assert all(distances[a - 1, b - 1] <= cutoff for a, b in itertools.combinations(cluster, 2))
    # a larger 3-body cutoff than 2-body cannot bring back a trimer whose dimer was dropped
    for cluster in itertools.combinations(range(1, 7), 3):
        if any(distances[a - 1, b - 1] > 3.0 for a, b in itertools.combinations(cluster, 2)):
            assert cluster not in screened.kept[3]


def _random_fragments(rng: np.random.Generator, nfragments: int, box: float) -> SimpleNamespace:
    """Fragments of 1-3 atoms at random places in a box (Angstrom), as a molecule-like object (geometry in bohr)."""
    sizes = rng.integers(1, 4, nfragments)
    centres = rng.uniform(0.0, box, (nfragments, 3))
    atoms = np.concatenate([c + rng.normal(0.0, 0.6, (k, 3)) for c, k in zip(centres, sizes)])
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    fragments = [list(range(bounds[i], bounds[i + 1])) for i in range(nfragments)]
    return SimpleNamespace(geometry=atoms / constants.bohr2angstroms, fragments=fragments)


def _brute_force_kept(molecule, cutoffs: dict, listed, max_nbody: int) -> dict[int, set]:
    """The rule itself, the slow way: every cluster of every order, every atom pair."""
    xyz = np.asarray(molecule.geometry).reshape(-1, 3) * constants.bohr2angstroms
    n = len(molecule.fragments)

    def distance(a, b):
        return min(
            np.sqrt(((xyz[i] - xyz[j]) ** 2).sum())
            for i in molecule.fragments[a - 1]
            for j in molecule.fragments[b - 1]
        )

    pair = {c: distance(*c) for c in itertools.combinations(range(1, n + 1), 2)}
    kept = {1: {(i,) for i in range(1, n + 1)}}
    for order in range(2, max_nbody + 1):
        kept[order] = {
            c
            for c in itertools.combinations(range(1, n + 1), order)
            if all(s in kept[order - 1] for s in itertools.combinations(c, order - 1))
            and (order not in cutoffs or all(pair[p] <= cutoffs[order] for p in itertools.combinations(c, 2)))
            and (listed is None or c in listed)
        }
    return kept


@pytest.mark.parametrize("seed", range(12))
def test_neighbour_search_keeps_what_the_brute_force_rule_keeps(seed):
    """Random fragments and cutoffs (some orders without one, cutoffs rising or falling with the order,
    explicit lists): the neighbour search keeps exactly the clusters that testing all C(n, k) keeps."""
    rng = np.random.default_rng(seed)
    molecule = _random_fragments(rng, int(rng.integers(8, 16)), 9.0)
    max_nbody = 4
    orders = [n for n in range(2, max_nbody + 1) if rng.random() < 0.8]
    cutoffs = {n: float(rng.uniform(2.0, 7.0)) for n in orders}
    listed = None
    if seed % 3 == 2:  # an explicit list: a random share of the clusters the cutoffs alone keep, and some they do not
        alone = _brute_force_kept(molecule, cutoffs, None, max_nbody)
        everything = [
            c for k in range(2, max_nbody + 1) for c in itertools.combinations(range(1, len(molecule.fragments) + 1), k)
        ]
        listed = frozenset(c for n in range(2, max_nbody + 1) for c in alone[n] if rng.random() < 0.7)
        listed |= frozenset(everything[i] for i in rng.choice(len(everything), 20, replace=False))
    settings = Screening(cutoffs, listed)
    expected = _brute_force_kept(molecule, cutoffs, listed, max_nbody)
    radius = max(cutoffs.values(), default=None)
    assert kept_clusters(settings, pair_distances(molecule, radius), max_nbody).kept == expected
    assert sum(len(expected[n]) for n in range(2, max_nbody + 1)) > 0


def test_pair_distances_are_the_closest_atoms_within_the_radius():
    rng = np.random.default_rng(7)
    molecule = _random_fragments(rng, 30, 12.0)
    dense = _brute_force_distances(molecule)
    for radius in (0.5, 3.0, 6.5):
        found = pair_distances(molecule, radius)
        expected = {
            (a + 1, b + 1): dense[a, b] for a, b in itertools.combinations(range(30), 2) if dense[a, b] <= radius
        }
        assert dict(zip(map(tuple, found.pairs.tolist()), found.distances.tolist())) == pytest.approx(expected, abs=0)
        assert found.distance(3, 1) == expected.get((1, 3), np.inf)
        trimers = np.array(list(itertools.combinations(range(1, 31), 3)))
        largest = [max(expected.get(p, np.inf) for p in itertools.combinations(c, 2)) for c in trimers.tolist()]
        assert np.array_equal(found.largest(trimers), largest)
    assert np.array_equal(fragment_distances(molecule), dense)


def _brute_force_distances(molecule) -> np.ndarray:
    xyz = np.asarray(molecule.geometry).reshape(-1, 3) * constants.bohr2angstroms
    n = len(molecule.fragments)
    out = np.zeros((n, n))
    for a, b in itertools.combinations(range(n), 2):
        diff = xyz[molecule.fragments[a]][:, None, :] - xyz[molecule.fragments[b]][None, :, :]
        out[a, b] = out[b, a] = np.sqrt((diff**2).sum(-1)).min()
    return out


def test_screened_plan_builds_no_job_for_a_dropped_cluster(monkeypatch):
    """The screened plan is made from the kept clusters: QCManyBody's map of every combination is never built."""
    from qcmanybody import ManyBodyCore

    def refuse(self):
        raise AssertionError("a screened plan built QCManyBody's compute map of every combination")

    monkeypatch.setattr(ManyBodyCore, "compute_map", property(refuse))
    plan = make_plan(xtb_input(WATER6, max_nbody=3), check_installed=False, screening=CUTOFFS)
    kept = plan.screened.kept
    assert {job.real for job in plan.jobs} == set().union(*kept.values())
    assert len(plan.jobs) == sum(len(c) for c in kept.values()) == 18


def test_screening_refuses_cp_and_bad_options():
    inp = xtb_input(WATER6)
    inp["specification"]["specification"]["gfn2"].update(
        program="pyscf", model={"method": "hf", "basis": "sto-3g"}, keywords={}
    )
    inp["specification"]["keywords"]["bsse_type"] = ["cp"]
    with pytest.raises(BadInputError, match=r"screening needs bsse_type nocp or vmfc \(--bsse on the command line\)"):
        make_plan(inp, screening=CUTOFFS)
    for bad, message in (
        ({"distance_cutoffs": {1: 3.0}}, "orders start at 2"),
        ({"distance_cutoffs": {2: -1}}, "must be positive"),
        ({"distance_cutof": {2: 3}}, "unknown screening option"),
        ([2, 3], "screening must be a dict"),
    ):
        with pytest.raises(BadInputError, match=message):
            make_plan(xtb_input(WATER6), screening=bad)


def test_vmfc_with_infinite_cutoffs_is_the_unscreened_vmfc(process_client):
    pytest.importorskip("pyscf")
    from mbdask.inputs.xyz import molecule_from_xyz

    inp = {
        "specification": {
            "driver": "energy",
            "keywords": {"bsse_type": ["vmfc", "nocp"], "levels": {3: "hf"}},
            "specification": {"hf": {"program": "pyscf", "model": {"method": "hf", "basis": "sto-3g"}}},
        },
        "molecule": molecule_from_xyz(EXAMPLES / "water3-uud.xyz"),
    }
    full = mbdask.compute(inp, process_client)
    screened = mbdask.compute(inp, process_client, screening={"distance_cutoffs": {2: 1e3, 3: 1e3}})
    # QCManyBody adds cp by itself when vmfc's calculations contain it; a screened run reports what was asked
    expected = {k: v for k, v in _numbers(full).items() if not k.startswith("cp_")}
    assert any(k.startswith("vmfc_") for k in expected)
    for name, value in expected.items():
        assert_close(_numbers(screened)[name], value, atol=1e-9)


def test_plan_cli_prints_what_screening_keeps(capsys):
    assert main(["plan", str(EXAMPLES / "water6-gfn2.json"), "--distance-cutoffs", "2:3.0,3:2.5"]) == 0
    out = capsys.readouterr().out
    assert "2-body:       10 of 15 clusters kept (66.7%)" in out
    assert "3-body:        2 of 20 clusters kept (10.0%)" in out
    assert main(["plan", str(EXAMPLES / "water6-gfn2.json"), "--distance-cutoffs", "2=3"]) == 2
    assert "expected ORDER:VALUE" in capsys.readouterr().err


def _closed_bottom_up(increments: dict, thresholds: dict, nfr: int, max_nbody: int) -> dict[int, set]:
    """The kept set energy screening must find, computed independently from full-expansion increments."""
    kcal = 627.5094740631
    kept = {1: {(i,) for i in range(1, nfr + 1)}}
    for n in range(2, max_nbody + 1):
        kept[n] = {
            c
            for c in itertools.combinations(range(1, nfr + 1), n)
            if all(s in kept[n - 1] for s in itertools.combinations(c, n - 1))
            and abs(increments[c]) * kcal > thresholds.get(n, -1)
        }
    return kept


@needs_xtb
def test_energy_screening_keeps_what_the_cheap_increments_say(process_client):
    """GFN1-xTB screened by GFN2-xTB (both real; stands for HF screened by xtb at test speed)."""
    inp = xtb_input(WATER6, levels={3: "gfn1"})
    cheap_full = mbdask.compute(xtb_input(WATER6), process_client)
    expensive_full = mbdask.compute(inp, process_client)
    thresholds = {2: 1.0, 3: 0.1}  # kcal/mol
    screened = mbdask.compute(inp, process_client, screening={"energy_thresholds": thresholds})

    cheap = {tuple(r["fragments"]): r["energy"] for r in cheap_full.extras["mbdask"]["increments"]["nocp"]}
    expected = _closed_bottom_up(cheap, thresholds, 6, 3)
    summary = screened.extras["mbdask"]["screening"]
    assert {n: summary["orders"][str(n)]["kept"] for n in (2, 3)} == {2: len(expected[2]), 3: len(expected[3])}
    assert 0 < len(expected[3]) < 20 and len(expected[2]) < 15  # the thresholds really screen
    # the expensive energy is the sum of the expensive increments of exactly those clusters
    full = {tuple(r["fragments"]): r["energy"] for r in expensive_full.extras["mbdask"]["increments"]["nocp"]}
    assert screened.return_result == pytest.approx(sum(full[c] for n in (2, 3) for c in expected[n]), abs=1e-10)
    # fill-in: the dropped clusters' cheap increments (dimers dropped, and trimers among the candidates)
    dropped_pairs = [c for c in itertools.combinations(range(1, 7), 2) if c not in expected[2]]
    candidates3 = [
        c for c in itertools.combinations(range(1, 7), 3) if all(s in expected[2] for s in itertools.combinations(c, 2))
    ]
    dropped = sum(cheap[c] for c in dropped_pairs) + sum(cheap[c] for c in candidates3 if c not in expected[3])
    assert summary["energy"]["fill_in"] == pytest.approx(dropped, abs=1e-10)
    assert summary["return_energy_with_fill_in"] == pytest.approx(screened.return_result + dropped, abs=1e-10)


@needs_xtb
def test_zero_energy_thresholds_reproduce_the_unscreened_expansion(process_client):
    inp = xtb_input(WATER6, levels={3: "gfn1"})
    full = mbdask.compute(inp, process_client)
    screened = mbdask.compute(inp, process_client, screening={"energy_thresholds": {2: 0.0, 3: 0.0}})
    assert screened.extras["mbdask"]["screening"]["orders"]["3"]["kept"] == 20
    for name, value in _numbers(full).items():
        assert_close(_numbers(screened)[name], value, atol=1e-9)


@needs_xtb
def test_cli_energy_thresholds_screen_and_report_the_fill_in(tmp_path, capsys):
    import json

    out = tmp_path / "result.json"
    code = main(
        [
            "run",
            str(EXAMPLES / "water6-gfn2.json"),
            "--energy-thresholds",
            "2:1.0,3:0.1",
            "--no-progress",
            "-o",
            str(out),
            "--workers",
            "2",
            "--profile",
            str(tmp_path / "profile.json"),
        ]
    )
    assert code == 0
    stdout = capsys.readouterr().out
    assert "mbdask: screened expansion, clusters kept 2-body" in stdout and "(fill-in)" in stdout
    result = json.loads(out.read_text())
    screening = result["extras"]["mbdask"]["screening"]
    assert screening["energy"]["orders"]["3"]["candidates"] >= screening["orders"]["3"]["kept"]
    assert screening["orders"]["3"]["kept"] < 20
    # the cheap calculations are the run's work too: the zero-overhead bound counts them
    profile = json.loads((tmp_path / "profile.json").read_text())
    cheap = screening["energy"]["cheap_seconds"]
    assert cheap > 0 and profile["screening_cheap_seconds"] == cheap
    program = result["extras"]["mbdask"]["timing"]["sum_task_seconds"]
    assert profile["zero_overhead_bound_seconds"] >= (program + cheap) / profile["fragment_span"]["cores"]


def test_energy_screening_has_no_barrier_between_orders():
    """A trimer is screened as soon as its three dimers are kept, while other dimers are undecided,
    and a kept dimer's expensive calculation is released at once (no per-order pass)."""
    import numpy as np

    from mbdask.planning.energy_screening import Decisions
    from mbdask.planning.manybody import nocp_increment

    decisions = Decisions(4, 3, {2: 0.5, 3: 0.5}, {}, PairDistances(4, 0.0, np.zeros((0, 2), dtype=int), np.zeros(0)))
    decisions.start()
    cheap, kept = decisions.take_work()
    assert kept == [(1,), (2,), (3,), (4,)]  # monomers: expensive calculations at once
    # cheap energies of monomers and, without waiting for them, of every dimer (all candidates)
    assert sorted(cheap) == [(1,), (1, 2), (1, 3), (1, 4), (2,), (2, 3), (2, 4), (3,), (3, 4), (4,)]
    for i in range(1, 5):
        decisions.cheap_energy((i,), -1.0 * i)
    assert decisions.take_work() == ([], [])
    bound = -0.01  # Eh: about -6 kcal/mol, kept
    for pair in [(1, 2), (1, 3), (2, 3)]:
        decisions.cheap_energy(pair, -1.0 * sum(pair) + bound)
    cheap, kept = decisions.take_work()
    assert kept == [(1, 2), (1, 3), (2, 3)]  # their expensive calculations go now
    assert cheap == [(1, 2, 3)]  # and the trimer is screened, while (1,4), (2,4), (3,4) are still undecided
    decisions.cheap_energy((1, 4), -5.0)  # increment 0: dropped
    decisions.cheap_energy((1, 2, 3), -6.0 + 3 * bound + 0.001)
    assert nocp_increment((1, 2, 3), decisions.energies) == pytest.approx(0.001)
    cheap, kept = decisions.take_work()
    assert kept == [(1, 2, 3)] and cheap == []  # 0.63 kcal/mol > 0.5; (1,2,4) never a candidate
    assert decisions.report({})["orders"]["2"] == {
        "threshold_kcal": 0.5,
        "candidates": 6,
        "kept": 3,
        "dropped_cheap_sum": 0.0,
    }


EMPTY_TOP_ORDER = {
    "distance": lambda plan3: {"distance_cutoffs": {2: 1e3, 3: 1e3, 4: 0.5}},  # no two waters within 0.5 A
    "energy": lambda plan3: {"energy_thresholds": {2: 0.0, 3: 0.0, 4: 1e6}},  # no tetramer gives 10^6 kcal/mol
    "explicit": lambda plan3: {
        "clusters": [list(c) for n in (2, 3) for c in plan3.screened.kept[n]]
    },  # dimers, trimers only
}


@needs_xtb
@pytest.mark.parametrize("how", sorted(EMPTY_TOP_ORDER))
def test_an_order_that_keeps_no_cluster_contributes_zero(process_client, how):
    """(H2O)6 to 4-body, screened so that every dimer and trimer is kept and no tetramer:
    the 4-body energy equals the 3-body one, and result and report say that 0 were kept."""
    plan3 = make_plan(xtb_input(WATER6), screening={"distance_cutoffs": {2: 1e3, 3: 1e3}})
    three = mbdask.compute(xtb_input(WATER6), process_client)
    screened = mbdask.compute(xtb_input(WATER6, max_nbody=4), process_client, screening=EMPTY_TOP_ORDER[how](plan3))
    props = screened.properties
    assert props.nocp_corrected_interaction_energy_through_4_body == pytest.approx(
        three.properties.nocp_corrected_interaction_energy_through_3_body, abs=1e-10
    )
    assert props.nocp_corrected_4_body_contribution_to_energy == 0.0
    extras = screened.extras["mbdask"]
    assert extras["screening"]["orders"]["4"]["kept"] == 0 and extras["screening"]["orders"]["3"]["kept"] == 20
    assert extras["levels"]["nocp"]["4"]["nclusters"] == 0 and extras["levels"]["nocp"]["4"]["contribution"] == 0.0
    assert "4-body 0/15" in screened.stdout
    assert "kept of all" in mbdask.report(screened)


def test_energy_screening_hands_the_graph_futures_not_outputs(tmp_path):
    """The kept dimers' expensive calculations go out while screening, and the expansion's graph takes
    their outputs from those futures: ``start`` returns while they still run (held at a gate), the
    outputs never pass through the client, and they count as this run's work.

    Test doubles (the ``sleep`` program, not chemistry) for both models; 16 threads, so the 15 gated
    dimers can never hold every thread while cheap calculations wait."""
    import threading
    import time

    from helpers import sleep_input

    gate = tmp_path / "dimers may finish"
    plain = sleep_input()
    plain["specification"]["keywords"]["levels"] = {2: "sleepy"}
    gated = sleep_input()
    gated["specification"]["keywords"]["levels"] = {2: "sleepy"}
    gated["specification"]["specification"]["sleepy"]["keywords"]["gate"] = {"2": str(gate)}
    # every cheap dimer increment is -0.02 i j Eh: all kept
    screening = {
        "energy_thresholds": {2: 0.1},
        "cheap_model": {"program": "sleep", "model": {"method": "cheap"}, "keywords": {}},
    }
    with in_process_client(threads_per_worker=16, cores=None) as client:
        started: dict = {}
        thread = threading.Thread(
            target=lambda: started.update(sub=mbdask.start(gated, client, screening=screening, progress=True)),
            daemon=True,
        )
        thread.start()
        try:
            thread.join(timeout=120)  # a deadline for a hang, not a timing: the old pass waited at the gate for good
            assert "sub" in started, "start() waited for the expensive calculations"
            sub = started["sub"]
            sent = [unit for unit in sub.graph.units.values() if unit.sources]
            assert all(not unit.borrowed for unit in sent)
            assert {job.label for unit in sent for job in unit.jobs} == {
                job.label for job in sub.plan.jobs
            }  # nothing recomputed
            assert any(source.status == "pending" for unit in sent for source in unit.sources)  # still at the gate
            # progress counts what the pass sent, as it finishes, and prices it for the time left
            sub.progress.poll()
            assert sub.progress.total == len(sub.plan.jobs) and sub.progress.done < sub.progress.total
            assert sub.progress.predicted_total > 0 and all(unit.seconds > 0 for unit in sent)
        finally:
            gate.touch()
        result = sub.result(timeout=120)
        deadline = time.monotonic() + 60  # the units' futures may report in after the result's
        while not sub.progress.poll() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sub.progress.done == sub.progress.total
        reference = mbdask.compute(plain, client)
    assert result.return_result == pytest.approx(reference.return_result, abs=1e-12)
    assert result.extras["mbdask"]["screening"]["orders"]["2"]["kept"] == 15
    assert (
        len(result.extras["mbdask"]["timing"]["fragments"]) == len(sub.plan.jobs) == 21
    )  # this run's own work, none "stored"


def test_screening_target_picks_the_measured_cutoffs_and_says_which(capsys):
    from mbdask.planning.screening import RECOMMENDED_CUTOFFS

    picked = Screening.from_options({"target": 0.07})  # the loosest measured target within 0.07: 0.05
    assert picked.distance_cutoffs == RECOMMENDED_CUTOFFS[0.05] and picked.target == {
        "kcal_per_monomer": 0.07,
        "measured_for": 0.05,
    }
    assert main(["plan", str(EXAMPLES / "water6-prism.xyz"), "--max-nbody", "3", "--screening-target", "0.1"]) == 0
    captured = capsys.readouterr()
    cutoffs = ", ".join(f"{n}-body {r:g} A" for n, r in sorted(RECOMMENDED_CUTOFFS[0.1].items()))
    assert f"--screening-target 0.1: distance cutoffs {cutoffs}" in captured.err
    assert f"distance cutoffs: {cutoffs}, measured for 0.1 kcal/mol per monomer" in captured.out
    for extra, message in (
        (["--screening-target", "0.01"], "cutoffs are measured for 0.02, 0.05, 0.1 kcal/mol per monomer"),
        (["--screening-target", "0.1", "--distance-cutoffs", "2:9"], "give it or --distance-cutoffs, not both"),
        (["--screening-target", "0.1", "--max-nbody", "4"], "measured for expansions through 3-body"),
    ):
        args = ["plan", str(EXAMPLES / "water6-prism.xyz"), "--max-nbody", "3", *extra]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and err[-1].startswith("mbdask: error:")


def test_screened_sums_place_gradients_and_hessians_where_qcmanybody_pads_them():
    """The screened assembly adds each fragment's gradient/Hessian rows where its atoms are, instead of padding every
    one to the full system first (11 GB for 150,000 gradients of 3,072 atoms): the same sums as QCManyBody's padding."""
    from qcmanybody.utils import delabeler

    from mbdask.planning.manybody import coefficients, weighted_sum

    inp = xtb_input(WATER6, bsse=("vmfc",), max_nbody=3)  # vmfc: fragments with ghosts too
    inp["specification"]["specification"]["gfn2"].update(
        program="pyscf", model={"method": "hf", "basis": "sto-3g"}, keywords={}
    )
    plan = make_plan(inp, check_installed=False, screening=CUTOFFS)
    core = plan.core
    rng = np.random.default_rng(11)
    values = {}
    for job in plan.jobs:
        n = sum(len(core.molecule.fragments[i - 1]) for i in job.basis)
        values[job.label] = {"gradient": rng.normal(size=(n, 3)), "hessian": rng.normal(size=(3 * n, 3 * n))}
    table = coefficients(plan.blocks, [job.label for job in plan.jobs])
    for orders in table.values():
        for weights in orders.values():
            for prop, resize in (("gradient", core.resize_gradient), ("hessian", core.resize_hessian)):
                padded = sum(c * resize(values[label][prop], delabeler(label)[2]) for label, c in weights.items())
                assert np.allclose(weighted_sum(core, prop, weights, values), padded, rtol=0, atol=1e-12)


def test_units_taking_the_pass_calculations_group_sources_that_run_together():
    """Energy screening's pass sends its expensive units as it decides them; Dask runs them in the levels order
    (lower n-body orders first, longest first within one). The units taking their outputs for the graph group
    sources in that order, so that each finishes (and its increments arrive) when its sources do."""
    from mbdask.planning.plan import FragmentJob
    from mbdask.workflows.expansion import _taking_units

    jobs = [FragmentJob("hf", (i, i + 1), (i, i + 1)) for i in range(1, 7)] + [FragmentJob("hf", (7,), (7,))]
    cost = dict(zip(jobs, [1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 0.5]))  # decided in this order
    taken = {job.label: (SimpleNamespace(key=f"unit-{n}"), job.label) for n, job in enumerate(jobs)}
    units = _taking_units(taken, {job.label: job for job in jobs}, 2, 1, False, seconds=cost.__getitem__)
    assert [[cost[job] for job in unit.jobs] for unit in units] == [[0.5, 8.0], [7.0, 6.0], [3.0, 2.0], [1.0]]
    assert [unit.predicted for unit in units] == [(0.5, 8.0), (7.0, 6.0), (3.0, 2.0), (1.0,)]


def test_progress_counts_the_pass_calculations_as_the_pass_units_finish():
    """Counted by the units taking them, calculations that had finished long before were counted with the last of
    their taking unit's sources: on (H2O)64 HF-D3 energy-screened, the time left came out 2-5x too long."""
    from mbdask.planning.batching import Unit
    from mbdask.planning.plan import FragmentJob
    from mbdask.workflows.expansion import _watched

    class Key:  # stands for a Dask future: hashable, by identity
        def __init__(self, key: str) -> None:
            self.key = key

    a, b, c = (FragmentJob("hf", (i,), (i,)) for i in (1, 2, 3))
    source_1, source_2, own = Key("s1"), Key("s2"), Key("u0")
    taking = Unit((a, b, c), 6.0, 1, (1.0, 2.0, 3.0), sources=(source_1, source_2), borrowed=False)
    computing = Unit((FragmentJob("hf", (4,), (4,)),), 4.0)
    graph = SimpleNamespace(units={"take": taking, "compute": computing})
    running = {a.label: source_1, b.label: source_2, c.label: source_2}
    watched = _watched(graph, {"take": Key("t"), "compute": own}, running)
    assert watched[own] is computing
    assert (watched[source_1].jobs, watched[source_1].seconds) == ((a,), 1.0)
    assert (watched[source_2].jobs, watched[source_2].seconds) == ((b, c), 5.0)
    assert len(watched) == 3  # the taking unit itself is not watched

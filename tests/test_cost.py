"""The cost model learns from what it measures: per kind of calculation, across runs and during one."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import EXAMPLES

from mbdask.planning.cost import CostModel, ModelCost, calibrated_during_run, kind_of
from mbdask.planning.plan import FragmentJob


def _cp_model() -> CostModel:
    """Three fragments of equal size: every calculation in the full basis has one predicted cost."""
    return CostModel(
        {
            "hf": ModelCost(
                exponent=3,
                driver_factor=1.0,
                unit_seconds=1e-6,
                overhead=0.0,
                per_fragment_size={1: 25.0, 2: 25.0, 3: 25.0},
            )
        }
    )


def test_calibration_tells_apart_kinds_the_size_model_cannot():
    """cp: a monomer and a dimer in the full-cluster basis have the same size, not the same time."""
    cost = _cp_model()
    monomers = [FragmentJob("hf", (i,), (1, 2, 3)) for i in (1, 2, 3)]
    dimers = [FragmentJob("hf", pair, (1, 2, 3)) for pair in ((1, 2), (1, 3), (2, 3))]
    assert cost.seconds(monomers[0]) == cost.seconds(dimers[0])
    cost.calibrate([(job, 1.1) for job in monomers] + [(job, 1.8) for job in dimers])
    assert cost.seconds(monomers[0]) == pytest.approx(1.1)
    assert cost.seconds(dimers[2]) == pytest.approx(1.8)
    # a kind never measured keeps the model chemistry's fit
    trimer = FragmentJob("hf", (1, 2, 3), (1, 2, 3))
    assert kind_of("hf", trimer.real, trimer.basis) not in cost.kind_scale
    assert cost.seconds(trimer) == pytest.approx(cost.models["hf"].seconds(trimer.basis))


def _fragment(real, start, seconds, predicted=0.5, worker="w1"):
    return {
        "model": "hf",
        "real": list(real),
        "basis": [1, 2, 3],
        "start": start,
        "seconds": seconds,
        "predicted": predicted,
        "worker": worker,
    }


def test_a_run_calibrates_each_kind_from_its_first_finished_fragments():
    fragments = [
        _fragment((1,), -1.0, 9.0, worker="w2"),  # a worker's first fragment imports the program: not a sample
        _fragment((2, 3), -1.0, 0.5, worker="w3"),
        _fragment((1, 2, 3), -1.0, 0.9),
        _fragment((1,), 0.0, 1.0),  # first monomer: nothing of its kind finished yet
        _fragment((1, 2), 0.0, 2.0),
        _fragment((2,), 1.0, 1.2),  # starts when monomer 1 finished: 2x
        _fragment((3,), 2.2, 1.1),  # monomers 1 and 2 finished: median of 2.0 and 2.4
        _fragment((1, 3), 1.0, 4.0),  # dimer (1,2) still running: no correction
        _fragment((2, 3), 2.5, 3.0),  # dimer (1,2) finished at 2.0: 4x
    ]
    calibrated = calibrated_during_run(fragments)
    assert calibrated == pytest.approx([0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 0.5 * 2.2, 0.5, 2.0])
    assert calibrated_during_run([]) == []
    assert calibrated_during_run([{**fragments[0], "predicted": None}]) == [None]


def _replayed_in_full(fragments: list[dict]) -> list:
    """The straightforward replay (every fragment, in start order), the reference for the early stop."""
    import heapq
    import statistics

    from mbdask import config

    CALIBRATION_SAMPLES = config.get("mbdask.cost.calibration-samples")

    order = sorted(range(len(fragments)), key=lambda i: fragments[i]["start"])
    warm_up = set({fragments[i].get("worker"): i for i in reversed(order)}.values())
    finished, ratios, factor, out = [], {}, {}, [None] * len(fragments)
    for i in order:
        frag = fragments[i]
        while finished and finished[0][0] <= frag["start"]:
            _, j = heapq.heappop(finished)
            done = fragments[j]
            samples = ratios.setdefault(kind_of(done["model"], done["real"], done["basis"]), [])
            if (
                len(samples) < CALIBRATION_SAMPLES
                and j not in warm_up
                and done.get("predicted")
                and done["seconds"] > 0
            ):
                samples.append(done["seconds"] / done["predicted"])
                factor[kind_of(done["model"], done["real"], done["basis"])] = statistics.median(samples)
        heapq.heappush(finished, (frag["start"] + frag["seconds"], i))
        if frag.get("predicted"):
            out[i] = frag["predicted"] * factor.get(kind_of(frag["model"], frag["real"], frag["basis"]), 1.0)
    return out


def test_the_replay_stops_early_once_every_kind_is_calibrated_and_changes_nothing():
    # thousands of fragments of three kinds, some without a prediction, on three workers: every
    # kind fills its samples early, so the replay stops there and prices the rest in one step
    rng = np.random.default_rng(7)
    fragments = []
    for i in range(3000):
        real = tuple(range(1, 2 + i % 3))
        fragments.append(
            {
                **_fragment(real, float(rng.uniform(0, 100)), float(rng.uniform(0.1, 2.0)), worker=f"w{i % 3}"),
                "predicted": None if i % 17 == 0 else float(rng.uniform(0.1, 1.0)),
            }
        )
    assert calibrated_during_run(fragments) == _replayed_in_full(fragments)
    # a kind that never fills (five trimers) keeps the replay going to the end: same answer
    few = fragments[:200] + [{**_fragment((1, 2, 3, 4), 50.0 + k, 1.0), "predicted": 0.5} for k in range(5)]
    assert calibrated_during_run(few) == _replayed_in_full(few)


@pytest.mark.parametrize(
    "method, functional",
    [("b3lyp-d3bj", True), ("pbe0", True), ("wb97x-v", True), ("hf", False), ("hf-d3bj", False), ("mp2", False)],
)
def test_a_density_functional_is_priced_above_hartree_fock_in_the_same_basis(method, functional):
    """Before any calibration: the same scaling (so the same order of work), a functional's quadrature on top."""
    import mbdask
    from mbdask.planning.cost import _FUNCTIONAL_FACTOR, is_functional

    def unit_seconds(name: str) -> float:
        plan = mbdask.plan(
            EXAMPLES / "water6-prism.xyz", program="pyscf", method=name, basis="6-31g*", check_installed=False
        )
        return CostModel.for_plan(plan).models[plan.models[0]].unit_seconds

    assert is_functional(method) is functional
    if method != "mp2":
        ratio = unit_seconds(method) / unit_seconds("hf")
        assert ratio == pytest.approx(_FUNCTIONAL_FACTOR if functional else 1.0)

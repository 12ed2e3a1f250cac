"""Replay QCManyBody's stored component data through mbdask's graph (test double program).

Covers nocp/cp/vmfc together, energy/gradient/Hessian, single-level, multilevel and
supersystem. The reference is QCManyBody's own ``ManyBodyComputer`` run sequentially with
the same replay program, and QCManyBody's stored expected values (ref_data).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip(
    "zstandard", reason="zstandard (QCManyBody's stored component data) is not installed (pip install 'mbdask[test]')"
)

from helpers import replay_input  # noqa: E402
from qcmanybody.tests.utils import load_ref_data  # noqa: E402
from reference import sequential_computer  # noqa: E402

import mbdask  # noqa: E402

CASES = [
    ({1: "e_scf", 2: "e_scf", 3: "e_scf"}, "h2o_trimer_single_energy_1", "h2o_trimer_single_gradient_1"),
    ({1: "e_scf", 2: "e_scf"}, "h2o_trimer_single_energy_2", "h2o_trimer_single_gradient_2"),
    ({1: "g_scf", 2: "g_scf", 3: "g_scf"}, "h2o_trimer_single_gradient_1", "h2o_trimer_single_gradient_1"),
    ({1: "g_scf", 2: "g_scf"}, "h2o_trimer_single_gradient_2", "h2o_trimer_single_gradient_2"),
    ({1: "h_scf", 2: "h_scf", 3: "h_scf"}, "h2o_trimer_single_hessian_1", "h2o_trimer_single_hessian_1"),
    ({1: "h_scf", 2: "h_scf"}, "h2o_trimer_single_hessian_2", "h2o_trimer_single_hessian_2"),
    ({1: "e_mp2", 2: "e_b3lyp", 3: "e_scf"}, "h2o_trimer_multi_energy_1", "h2o_trimer_multi_gradient_1"),
    ({1: "e_mp2", 2: "e_b3lyp"}, "h2o_trimer_multi_energy_2", "h2o_trimer_multi_gradient_2"),
    ({1: "g_mp2", 2: "g_b3lyp", 3: "g_scf"}, "h2o_trimer_multi_gradient_1", "h2o_trimer_multi_gradient_1"),
    ({1: "g_mp2", 2: "g_b3lyp"}, "h2o_trimer_multi_gradient_2", "h2o_trimer_multi_gradient_2"),
    (
        {1: "e_mp2", 2: "e_b3lyp", "supersystem": "e_scf"},
        "h2o_trimer_multi_ss_energy_1",
        "h2o_trimer_multi_ss_gradient_1",
    ),
    ({1: "e_mp2", "supersystem": "e_scf"}, "h2o_trimer_multi_ss_energy_2", "h2o_trimer_multi_ss_gradient_2"),
    (
        {1: "g_mp2", 2: "g_b3lyp", "supersystem": "g_scf"},
        "h2o_trimer_multi_ss_gradient_1",
        "h2o_trimer_multi_ss_gradient_1",
    ),
    ({1: "g_mp2", "supersystem": "g_scf"}, "h2o_trimer_multi_ss_gradient_2", "h2o_trimer_multi_ss_gradient_2"),
]


def _compare(ours, ref) -> None:
    assert ours.properties.model_dump().keys() == ref.properties.model_dump().keys()
    for key, value in ref.properties.model_dump().items():
        mine = ours.properties.model_dump()[key]
        if value is None or isinstance(value, (str, int)):
            assert mine == value, key
        else:
            np.testing.assert_allclose(
                np.asarray(mine, dtype=float), np.asarray(value, dtype=float), rtol=0, atol=1e-10, err_msg=key
            )
    np.testing.assert_allclose(np.asarray(ours.return_result), np.asarray(ref.return_result), rtol=0, atol=1e-10)
    assert ours.cluster_properties.keys() == ref.cluster_properties.keys()
    assert ours.stdout == ref.stdout  # same numbers, same summation order: the same table


@pytest.mark.parametrize("levels, data, ref_file", CASES, ids=[c[1] for c in CASES])
def test_replayed_component_data_matches_qcmanybody(inprocess_client, levels, data, ref_file):
    inp = replay_input(levels, data)
    ours = mbdask.compute(inp, inprocess_client)
    _compare(ours, sequential_computer(inp))

    expected = load_ref_data(ref_file)
    assert abs(ours.properties.return_energy - expected["CURRENT ENERGY"]) < 1e-7  # QCManyBody's own tolerance
    # every BSSE treatment's increments add up to its n-body totals
    props = ours.properties.model_dump()
    for bsse, levels_done in ours.extras["mbdask"]["levels"].items():
        for nbody, level in levels_done.items():
            if nbody != "supersystem" and props.get(f"{bsse}_corrected_total_energy_through_{nbody}_body") is not None:
                assert abs(level["through"] - props[f"{bsse}_corrected_total_energy_through_{nbody}_body"]) < 1e-10


@pytest.mark.parametrize(
    "bsse, keywords",
    [
        (("nocp",), {"return_total_data": False}),
        (("cp",), {"return_total_data": False}),
        (("vmfc",), {}),
        (("cp",), {"supersystem_ie_only": True}),
        (("nocp",), {"supersystem_ie_only": True}),
    ],
)
def test_keyword_variants_match_qcmanybody(inprocess_client, bsse, keywords):
    inp = replay_input({1: "g_scf", 2: "g_scf", 3: "g_scf"}, "h2o_trimer_single_gradient_1", bsse=bsse, **keywords)
    _compare(mbdask.compute(inp, inprocess_client), sequential_computer(inp))


def test_cluster_results_protocol_all_keeps_atomic_results(inprocess_client):
    inp = replay_input({1: "e_scf", 2: "e_scf", 3: "e_scf"}, "h2o_trimer_single_energy_1")
    inp["specification"]["protocols"] = {"cluster_results": "all"}
    ours = mbdask.compute(inp, inprocess_client)
    assert len(ours.cluster_results) == len(ours.cluster_properties) > 0

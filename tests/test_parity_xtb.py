"""mbdask equals a sequential QCManyBody run with real GFN-xTB, to 1e-10."""

from __future__ import annotations

from conftest import assert_close, needs_xtb, xtb_input
from distributed import Future
from qcmanybody.models.v2 import ManyBodyResult
from reference import sequential_analyze, sequential_computer

import mbdask

pytestmark = needs_xtb


def _assert_levels_sum_to_properties(result: ManyBodyResult, bsse: str = "nocp") -> None:
    """Increments summed per order equal QCManyBody's n-body energies."""
    extras = result.extras["mbdask"]
    props = result.properties.model_dump()
    for nbody, level in extras["levels"][bsse].items():
        total = props[f"{bsse}_corrected_total_energy_through_{nbody}_body"]
        assert abs(level["through"] - total) < 1e-10
        assert (
            abs(
                sum(r["energy"] for r in extras["increments"][bsse] if str(r["nbody"]) == nbody) - level["contribution"]
            )
            < 1e-12
        )


def test_nocp_energy_3body_matches_manybodycomputer(process_client):
    inp = xtb_input("water6-prism.xyz", driver="energy")
    future = mbdask.submit(inp, process_client)
    assert isinstance(future, Future)
    ours = future.result()
    ref = sequential_computer(inp)
    assert isinstance(ours, ManyBodyResult)
    assert abs(ours.return_result - ref.return_result) < 1e-10
    ours_props, ref_props = ours.properties.model_dump(), ref.properties.model_dump()
    assert ours_props.keys() == ref_props.keys()
    for key, value in ref_props.items():
        if isinstance(value, float):
            assert abs(ours_props[key] - value) < 1e-10, key
        else:
            assert ours_props[key] == value, key
    assert ours.cluster_properties.keys() == ref.cluster_properties.keys()
    for label, props in ref.cluster_properties.items():  # xtb's own threads differ from the reference's: 1e-10
        assert abs(ours.cluster_properties[label].return_energy - props.return_energy) < 1e-10
    assert ours.extras["mbdask"]["nfragment_calculations"] == 41
    _assert_levels_sum_to_properties(ours)


def test_nocp_gradient_3body_matches_sequential(process_client):
    inp = xtb_input("water6-prism.xyz", driver="gradient")
    ours = mbdask.compute(inp, process_client)
    ref = sequential_analyze(inp)
    assert abs(ours.properties.return_energy - ref["ret_energy"]) < 1e-10
    assert_close(ours.return_result, ref["ret_gradient"])
    assert ours.return_result.shape == (18, 3)
    _assert_levels_sum_to_properties(ours)


def test_multilevel_gfn2_gfn1_gradient_matches_sequential(process_client):
    inp = xtb_input("water3-uud.xyz", driver="gradient", levels={2: "gfn2", 3: "gfn1"})
    ours = mbdask.compute(inp, process_client)
    ref = sequential_analyze(inp)
    assert abs(ours.properties.return_energy - ref["ret_energy"]) < 1e-10
    assert_close(ours.return_result, ref["ret_gradient"])
    levels = ours.extras["mbdask"]["levels"]["nocp"]
    assert [levels[n]["model"] for n in ("1", "2", "3")] == ["gfn2", "gfn2", "gfn1"]
    _assert_levels_sum_to_properties(ours)


def test_multilevel_energy_matches_manybodycomputer(process_client):
    inp = xtb_input("water6-prism.xyz", driver="energy", levels={1: "gfn2", 3: "gfn1"})
    ours = mbdask.compute(inp, process_client)
    ref = sequential_computer(inp)
    assert abs(ours.return_result - ref.return_result) < 1e-10
    assert ours.properties.calcinfo_nmbe == ref.properties.calcinfo_nmbe


def test_submit_without_client_starts_a_cluster_and_closes_it_with_the_future():
    import gc

    future = mbdask.submit(xtb_input("water3-uud.xyz", max_nbody=2), n_workers=1)
    assert isinstance(future.result(), ManyBodyResult)
    cluster = future.client.cluster
    assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    del future
    gc.collect()
    assert cluster.status.name == "closed"

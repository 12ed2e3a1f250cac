"""Fragment molecules built by mbdask are the ones QCManyBody's iterate_molecules builds."""

from __future__ import annotations

import json

import pytest

import mbdask
from mbdask.fragments import FragmentFactory
from test_parity_component_data import replay_input


@pytest.mark.parametrize("bsse", [("nocp",), ("cp",), ("vmfc",), ("cp", "nocp", "vmfc")])
@pytest.mark.parametrize("fix_c1", [False, True])
def test_fragment_molecules_identical_to_qcmanybody(bsse, fix_c1):
    inp = replay_input({1: "e_scf", 2: "e_scf", 3: "e_scf"}, "h2o_trimer_single_energy_1", bsse=bsse)
    inp["molecule"]["name"] = "trimer"
    if fix_c1:
        inp["molecule"]["fix_symmetry"] = "c1"
    plan = mbdask.plan(inp, check_installed=False)
    factory = FragmentFactory(plan.core.molecule)
    ours = {job.label: factory.molecule(job.real, job.basis) for job in plan.jobs}
    reference = {label: mol for _, label, mol in plan.core.iterate_molecules()}
    assert ours.keys() == reference.keys()
    for label, mol in reference.items():
        assert json.dumps(ours[label].model_dump(), default=str, sort_keys=True) == json.dumps(
            mol.model_dump(), default=str, sort_keys=True
        ), label

"""Sequential QCManyBody references that mbdask's results are compared with."""

from __future__ import annotations

import copy

import qcengine
from qcelemental.models.v2 import AtomicInput
from qcmanybody.v2 import ManyBodyComputer

import mbdask
from mbdask.calculation.execute import extract_properties

mbdask.register_programs()  # QCManyBody's own runs call mbdask's PySCF harness through plain QCEngine


def sequential_computer(inp):
    """QCManyBody's own ManyBodyComputer run, one fragment after another."""
    return ManyBodyComputer.from_manybodyinput(mbdask.load_input(inp))


def sequential_analyze(inp) -> dict:
    """ManyBodyCore.analyze over one-by-one QCEngine calls on iterate_molecules' fragments.

    Needed for xtb gradients, where ManyBodyComputer itself fails (xtb leaves
    properties.return_gradient empty).
    """
    model = mbdask.load_input(inp)
    computer = ManyBodyComputer.from_manybodyinput(model, build_tasks=False)
    plan = mbdask.plan(model)
    components = {}
    for mc, label, mol in computer.qcmb_core.iterate_molecules():
        spec = plan.specifications[mc]
        atomic = AtomicInput(molecule=mol, specification=copy.deepcopy(spec["specification"]))
        result = qcengine.compute(atomic, spec["program"], raise_error=True, task_config={"ncores": 1})
        components[label] = extract_properties(result, plan.driver)
    return computer.qcmb_core.analyze(components)

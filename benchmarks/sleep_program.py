"""A benchmark-only QCEngine program that sleeps for a fragment's predicted cost: NOT chemistry.

``predicted-sleep`` sleeps ``keywords["unit"] * nbf ** 3`` seconds, where ``nbf`` counts the
basis functions of every atom of the fragment molecule, ghosts included (PySCF's basis
library, the same count mbdask's cost model uses), divided by the cores it was given when
``keywords["ideal_scaling"]`` is set. It returns a made-up energy. It exists
to measure scheduling quality (makespan against its lower bound) without QC noise.

Workers load it with Dask's preload (``preload=["sleep_program"]``), which calls
:func:`dask_setup`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import qcengine
from qcelemental.models.v2 import AtomicResult
from qcengine.programs.base import programs

from mbdask.programs.basis import basis_functions

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from doubles import DoubleHarness  # noqa: E402  (the test doubles' common harness settings)


class PredictedSleepHarness(DoubleHarness):
    """Sleeps for the predicted cost of the fragment (benchmark double, not chemistry)."""

    _defaults: ClassVar[dict[str, Any]] = {**DoubleHarness._defaults, "name": "predicted-sleep"}

    def compute(self, input_data, config):
        spec = input_data.specification
        nbf = sum(basis_functions(s, spec.model.basis) for s in input_data.molecule.symbols)
        seconds = float(spec.keywords.get("unit", 1e-7)) * nbf**3
        if spec.keywords.get("ideal_scaling"):  # pretend the program scales perfectly with cores
            seconds /= max(1, int(config.ncores))
        time.sleep(seconds)
        nreal = sum(input_data.molecule.real)
        return AtomicResult(
            input_data=input_data,
            molecule=input_data.molecule,
            properties={"return_energy": -0.1 * nreal},
            return_result=-0.1 * nreal,
            success=True,
            extras={"slept": seconds},
            provenance={"creator": "predicted-sleep", "version": "0", "routine": "benchmarks.sleep_program"},
        )


def register() -> None:
    if "predicted-sleep" not in programs:
        qcengine.register_program(PredictedSleepHarness())


def dask_setup(worker=None) -> None:
    register()

"""QCEngine harnesses that mbdask ships, registered with QCEngine on import of mbdask.

Registration is idempotent and happens in every process that runs a fragment (workers
import mbdask to unpickle the task), so ``"program": "pyscf"`` works on workers and in a
plain ``qcengine.compute`` call alike.
"""

from __future__ import annotations

import qcengine

from .pyscf import PySCFHarness

SHIPPED_HARNESSES = (PySCFHarness,)


def register_programs() -> None:
    """Register mbdask's harnesses with QCEngine unless a harness of that name exists."""
    from qcengine.programs.base import programs

    for harness in SHIPPED_HARNESSES:
        name = harness._defaults["name"]
        if name not in programs:
            qcengine.register_program(harness())


__all__ = ["PySCFHarness", "register_programs"]

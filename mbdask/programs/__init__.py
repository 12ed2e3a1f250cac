"""QCEngine harnesses that mbdask ships, registered with QCEngine on import of mbdask.

Registration is idempotent and happens in every process that runs a fragment (workers
import mbdask to unpickle the task), so ``"program": "pyscf"`` works on workers and in a
plain ``qcengine.compute`` call alike.
"""

from __future__ import annotations

import qcengine

from .pyscf import PySCFHarness, check_specification as check_pyscf

SHIPPED_HARNESSES = (PySCFHarness,)

#: Drivers of programs whose QCEngine harness supports fewer than energy/gradient/hessian.
PROGRAM_DRIVERS = {"xtb": ("energy", "gradient")}


def check_specification(program: str, specification: dict, symbols: list[str]) -> None:
    """Raise (one line) if ``program`` cannot run ``specification`` on these elements.

    Checked while planning, so an unknown basis or an unsupported driver is refused before
    anything is submitted rather than on every worker.
    """
    driver = getattr(specification["driver"], "value", specification["driver"])
    allowed = PROGRAM_DRIVERS.get(program)
    if allowed and driver not in allowed:
        raise ValueError(f"{program} does not support driver '{driver}' (supported: {', '.join(allowed)})")
    if program == "pyscf":
        model = specification["model"]
        try:
            check_pyscf(model.get("method", ""), model.get("basis"), driver, specification.get("keywords") or {}, symbols)
        except Exception as exc:
            raise ValueError(str(exc).removeprefix("pyscf: ")) from None


def register_programs() -> None:
    """Register mbdask's harnesses with QCEngine unless a harness of that name exists."""
    from qcengine.programs.base import programs

    for harness in SHIPPED_HARNESSES:
        name = harness._defaults["name"]
        if name not in programs:
            qcengine.register_program(harness())


__all__ = ["PROGRAM_DRIVERS", "PySCFHarness", "check_specification", "register_programs"]

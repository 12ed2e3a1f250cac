"""QC programs: what each can run (checked while planning), and the QCEngine harnesses mbdask ships.

A stage of its own, below planning: the plan refuses a model chemistry a program cannot
run (unknown method or basis, ghost atoms for a program without them) before anything is
submitted, and the cost model counts basis functions with PySCF's basis library
(``basis``). The harnesses (``pyscf``) are registered with QCEngine by :func:`register_programs`.
Registration is idempotent. mbdask's planning registers them, and so does every worker
before its first fragment (``mbdask.calculation.execute.warm_up``), so ``"program": "pyscf"`` works in
any mbdask run; a plain ``qcengine.compute`` or QCManyBody run calls
``mbdask.register_programs()`` first (``import mbdask`` no longer does: it imports nothing heavy).
"""

from __future__ import annotations

from collections.abc import Iterable

import qcengine

from mbdask.programs.pyscf import PySCFHarness
from mbdask.programs.pyscf import check_specification as check_pyscf
from mbdask.programs.pyscf import memory_needed_gib as pyscf_memory_needed_gib

SHIPPED_HARNESSES = (PySCFHarness,)

#: Drivers of programs whose QCEngine harness supports fewer than energy/gradient/hessian.
PROGRAM_DRIVERS = {"xtb": ("energy", "gradient")}

#: Methods QCEngine's xtb harness runs: it hands ``model.method`` to xtb-python's
#: ``xtb.utils.get_method`` (case-insensitive), whose table (xtb-python 22.1) is this one;
#: any other name fails on every worker. Checked against the installed xtb in the tests.
XTB_METHODS = (
    "gfn2-xtb",
    "gfn2xtb",
    "gfn1-xtb",
    "gfn1xtb",
    "ipea-xtb",
    "ipeaxtb",
    "gfn0-xtb",
    "gfn0xtb",
    "gfn-ff",
    "gfnff",
)


#: Keywords mbdask adds to each fragment's input where the user did not set them (the store
#: key and the result's input keep the user's specification). xtb: xtb-python's harness
#: (22.1) writes a full output to a temporary file per calculation and its library keeps
#: that file open: one file descriptor leaked per fragment, so a worker stops with "Too many
#: open files" after ~20,000 calculations (the default limit here); ``muted`` writes none.
PROGRAM_DEFAULT_KEYWORDS = {"xtb": {"verbosity": "muted"}}


def with_program_defaults(program: str, specification: dict) -> dict:
    """``specification`` (a plain-data copy) with :data:`PROGRAM_DEFAULT_KEYWORDS` filled in."""
    defaults = PROGRAM_DEFAULT_KEYWORDS.get(program)
    if defaults:
        specification["keywords"] = {**defaults, **(specification.get("keywords") or {})}
    return specification


def check_specification(program: str, specification: dict, symbols: list[str]) -> None:
    """Raise (one line) if ``program`` cannot run ``specification`` on these elements.

    Checked while planning, so an unknown basis or an unsupported driver is refused before
    anything is submitted rather than on every worker.
    """
    driver = getattr(specification["driver"], "value", specification["driver"])
    allowed = PROGRAM_DRIVERS.get(program)
    if allowed and driver not in allowed:
        raise ValueError(f"{program} does not support driver '{driver}' (supported: {', '.join(allowed)})")
    if program == "xtb":
        _check_xtb(specification["model"])
    if program == "pyscf":
        model = specification["model"]
        try:
            check_pyscf(
                model.get("method", ""), model.get("basis"), driver, specification.get("keywords") or {}, symbols
            )
        except Exception as exc:
            raise ValueError(str(exc).removeprefix("pyscf: ")) from None


#: Programs :func:`memory_needed_gib` estimates for (xtb's needs are small; Psi4 sizes itself).
PROGRAMS_WITH_MEMORY_ESTIMATES = ("pyscf",)


def memory_needed_gib(program: str, specification: dict, nbasis: int, nocc: int) -> float | None:
    """The least memory (GiB) ``program`` needs for a calculation of ``nbasis`` functions and ``nocc``
    occupied orbitals, or None where mbdask has no estimate (:data:`PROGRAMS_WITH_MEMORY_ESTIMATES`)."""
    if program not in PROGRAMS_WITH_MEMORY_ESTIMATES:
        return None
    return pyscf_memory_needed_gib(specification["model"].get("method", ""), nbasis, nocc)


def _check_xtb(model: dict) -> None:
    """A method xtb-python knows, and no basis set.

    QCEngine's xtb harness never reads ``model.basis`` (the GFN methods have their own
    minimal basis), so a basis there would only label the result with a basis never used.
    """
    method = model.get("method") or ""
    if method.lower() not in XTB_METHODS:
        raise ValueError(
            f"xtb has no method {method!r} "
            f"(xtb methods: {', '.join(m for m in XTB_METHODS if '-' in m)}; case does not matter)"
        )
    if model.get("basis"):
        raise ValueError(
            f"xtb takes no basis set (its GFN methods come with their own), got basis {model['basis']!r}; leave it out"
        )


#: Modules a worker imports for a program's first fragment: forked workers get them from the
#: process they were forked from (:func:`mbdask.deploy.cluster.start_local_cluster`).
PROGRAM_MODULES = {
    "xtb": ("xtb.interface", "xtb.qcschema.harness"),
    "pyscf": ("pyscf.gto", "pyscf.scf", "pyscf.dft"),
}


def program_modules(programs: Iterable[str]) -> list[str]:
    """The modules of :data:`PROGRAM_MODULES` for ``programs`` (unknown programs: none)."""
    return [module for program in sorted(set(programs)) for module in PROGRAM_MODULES.get(program, ())]


def register_programs() -> None:
    """Register mbdask's harnesses with QCEngine unless a harness of that name exists (QCEngine's public
    ``list_all_programs`` and ``register_program``; names are lower case there)."""
    registered = qcengine.list_all_programs()
    for cls in SHIPPED_HARNESSES:
        harness = cls()
        if harness.name.lower() not in registered:
            qcengine.register_program(harness)


__all__ = [
    "PROGRAM_DRIVERS",
    "PROGRAM_MODULES",
    "program_modules",
    "XTB_METHODS",
    "PySCFHarness",
    "check_specification",
    "register_programs",
]

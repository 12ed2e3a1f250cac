"""Predicted relative cost of a fragment calculation, used to order the work.

Only ratios matter: the scheduler runs expensive fragments first so that the largest
trimers do not finish the run alone. The exponent follows the method's formal scaling in
the number of atoms (basis functions grow with atoms, ghosts included); derivatives cost
a constant factor more. Calibration from measured durations is future work (issue 4).
"""

from __future__ import annotations

_SCALING = (
    (("ccsd(t)", "ccsd[t]"), 7),
    (("ccsd", "cc2", "cc3"), 6),
    (("mp3", "mp4"), 5),
    (("mp2", "ri-mp2", "df-mp2", "dlpno"), 5),
    (("gfn", "xtb", "pm6", "pm7", "am1", "mndo", "ani", "mace", "aimnet"), 2),
)
_DRIVER_FACTOR = {"energy": 1.0, "gradient": 2.0, "hessian": 10.0}


def scaling_exponent(method: str) -> int:
    """Formal scaling with system size: 3 for HF/DFT unless the method name says otherwise."""
    name = (method or "").lower()
    for prefixes, exponent in _SCALING:
        if any(name.startswith(p) or p in name for p in prefixes):
            return exponent
    return 3


def relative_cost(natoms: int, method: str, driver: str) -> float:
    """A number proportional to the expected run time of one fragment calculation."""
    return float(natoms) ** scaling_exponent(method) * _DRIVER_FACTOR.get(driver, 1.0)

"""Predicted run time of each fragment calculation: priorities, batching and cores.

``seconds = overhead + unit_seconds * size ** p * driver_factor`` where ``size`` is the
number of basis functions (ghost atoms included; counted with PySCF's basis library when it
is installed) or the number of atoms for semi-empirical and force-field methods, and ``p``
is the method's formal scaling. ``overhead`` is QCEngine's fixed cost per call (input
validation, result model), which dominates for xtb and is why cheap fragments are batched.

The defaults were measured on the development machine (docs/benchmarks.md); they only need
to be right in ratio for priorities, and within a factor of a few for batching. Measured
durations (from a checkpoint store, or a previous result's timings) replace them through
:meth:`CostModel.calibrate`, per model chemistry.
"""

from __future__ import annotations

import functools
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Optional

_SCALING = (
    (("ccsd(t)", "ccsd[t]"), 7),
    (("ccsd", "cc2", "cc3"), 6),
    (("mp3", "mp4"), 5),
    (("mp2", "ri-mp2", "df-mp2", "dlpno"), 5),
    (("gfn", "xtb", "pm6", "pm7", "am1", "mndo", "ani", "mace", "aimnet"), 2),
)
_DRIVER_FACTOR = {"energy": 1.0, "gradient": 2.0, "hessian": 10.0}

#: Fixed cost of one QCEngine call by scaling exponent (measured 2026-11 on 2 cores: GFN2-xTB
#: and PySCF HF/6-31G* water monomers to trimers through QCEngine).
_DEFAULT_OVERHEAD_SECONDS = {2: 0.005}
DEFAULT_OVERHEAD_SECONDS = 0.02
#: Seconds per size unit by scaling exponent (same measurements; correlated methods guessed).
_DEFAULT_UNIT_SECONDS = {2: 3.0e-5, 3: 1.0e-6, 5: 2.0e-9, 6: 2.0e-10, 7: 2.0e-11}


def scaling_exponent(method: str) -> int:
    """Formal scaling with system size: 3 for HF/DFT unless the method name says otherwise."""
    name = (method or "").lower()
    for prefixes, exponent in _SCALING:
        if any(name.startswith(p) or p in name for p in prefixes):
            return exponent
    return 3


@functools.lru_cache(maxsize=None)
def basis_functions(symbol: str, basis: str) -> Optional[int]:
    """Basis functions of one atom of ``symbol`` in ``basis`` (PySCF's library), or None if unknown."""
    try:
        from pyscf import gto
        from pyscf.data.elements import charge

        with warnings.catch_warnings():  # PySCF suggests installing basis-set-exchange for unknown names
            warnings.simplefilter("ignore")
            mol = gto.M(atom=f"{symbol} 0 0 0", basis=basis, spin=charge(symbol) % 2, verbose=0)
        return int(mol.nao)
    except Exception:  # no PySCF, unknown basis or element: fall back to counting atoms
        return None


@dataclass
class ModelCost:
    """Cost parameters of one model chemistry."""

    exponent: int
    driver_factor: float
    unit_seconds: float
    overhead: float = DEFAULT_OVERHEAD_SECONDS
    per_fragment_size: dict[int, float] = field(default_factory=dict)  # size of each parent fragment
    calibrated: bool = False

    def units(self, basis_fragments: Iterable[int]) -> float:
        size = sum(self.per_fragment_size[i] for i in basis_fragments)
        return size**self.exponent * self.driver_factor

    def seconds(self, basis_fragments: Iterable[int]) -> float:
        return self.overhead + self.unit_seconds * self.units(basis_fragments)


@dataclass
class CostModel:
    """Predicted seconds for every fragment calculation of a plan, per model chemistry."""

    models: dict[str, ModelCost]

    @classmethod
    def for_plan(cls, plan) -> "CostModel":
        """Sizes from the plan's molecule: basis functions where the basis is known, else atoms."""
        symbols = list(plan.input.molecule.symbols)
        fragments = [list(f) for f in plan.input.molecule.fragments]
        models = {}
        for model, spec in plan.specifications.items():
            method_spec = spec["specification"]["model"]
            method, basis = method_spec.get("method", ""), method_spec.get("basis")
            exponent = scaling_exponent(method)
            sizes = {i + 1: float(len(atoms)) for i, atoms in enumerate(fragments)}
            if basis and exponent > 2:
                counts = {s: basis_functions(s.capitalize(), basis) for s in set(symbols)}
                if all(c is not None for c in counts.values()):
                    sizes = {i + 1: float(sum(counts[symbols[a]] for a in atoms)) for i, atoms in enumerate(fragments)}
                else:  # atoms as size: a basis of ~10 functions per atom keeps the default units sensible
                    sizes = {i: 10.0 * n for i, n in sizes.items()}
            models[model] = ModelCost(
                exponent,
                _DRIVER_FACTOR.get(plan.driver, 1.0),
                _DEFAULT_UNIT_SECONDS.get(exponent, 1.0e-6),
                _DEFAULT_OVERHEAD_SECONDS.get(exponent, DEFAULT_OVERHEAD_SECONDS),
                per_fragment_size=sizes,
            )
        return cls(models)

    def seconds(self, job) -> float:
        """Predicted wall seconds of ``job`` on one core."""
        return self.models[job.model].seconds(job.basis)

    def calibrate(self, samples: Iterable[tuple[str, tuple[int, ...], float]]) -> "CostModel":
        """Fit ``overhead`` and ``unit_seconds`` per model chemistry to measured (model, basis, seconds).

        Least squares of ``seconds = overhead + unit_seconds * units`` over the median time
        of each size, both kept non-negative; a model measured at one size only keeps its
        default ratio, scaled to the measurement.
        """
        by_model: dict[str, dict[float, list[float]]] = {}
        for model, basis, seconds in samples:
            if model in self.models and seconds > 0:
                units = self.models[model].units(basis)
                by_model.setdefault(model, {}).setdefault(units, []).append(float(seconds))
        for model, groups in by_model.items():
            cost = self.models[model]
            # one point per size: the median, so a first call that imports the program is ignored
            points = [(x, statistics.median_low(ys)) for x, ys in groups.items()]
            if len(points) >= 2:
                xs, ys = zip(*points)
                mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
                slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x in xs)
                slope = max(slope, 0.0)
                cost.unit_seconds, cost.overhead = slope, max(mean_y - slope * mean_x, 0.0)
            else:
                (x, y), = points
                predicted = cost.overhead + cost.unit_seconds * x
                scale = y / predicted if predicted > 0 else 1.0
                cost.unit_seconds *= scale
                cost.overhead *= scale
            cost.calibrated = True
        return self


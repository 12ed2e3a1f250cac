"""Predicted run time of each fragment calculation: priorities, batching and cores.

``seconds = overhead + unit_seconds * size ** p * driver_factor`` where ``size`` is the
number of basis functions (ghost atoms included; counted with PySCF's basis library when it
is installed) or the number of atoms for semi-empirical and force-field methods, and ``p``
is the method's formal scaling. ``overhead`` is QCEngine's fixed cost per call (input
validation, result model), which dominates for xtb and is why cheap fragments are batched.

The defaults were measured on the development machine (docs/benchmarks.md); they only need
to be right in ratio for priorities, and within a factor of a few for batching. Measured
durations (from a checkpoint store, or a previous result's timings) replace them through
:meth:`CostModel.calibrate`, per model chemistry, and then per *kind* of calculation (model
chemistry, real fragments, basis fragments): a size model cannot tell a counterpoise monomer
in the full-cluster basis from a dimer in the same basis, but their measured times can.
:func:`calibrated_during_run` replays that correction over a finished run, so the report
shows what the first finished fragments of each kind predicted for the rest.
"""

from __future__ import annotations

import heapq
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mbdask import config
from mbdask.programs.basis import fragment_basis_functions
from mbdask.tables import none_for_nan

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
#: A density functional's quadrature on top of the Fock build: measured B3LYP-D3(BJ)/def2-SVP water monomers to
#: trimers took 8-10x what the HF price predicts, HF-D3(BJ)/6-31G* 0.8-0.9x (docs/benchmarks.md, "Ab initio
#: expansions, read"). Same scaling, so it changes no order of work, only the price before calibration.
_FUNCTIONAL_FACTOR = 8.0
#: Mean-field methods priced as HF (a dispersion suffix such as ``-d3bj`` aside); other exponent-3 methods are
#: taken for density functionals.
_HARTREE_FOCK = ("hf", "scf", "rhf", "uhf", "rohf")


def is_functional(method: str) -> bool:
    """Whether ``method`` (a QC program's name for it) is priced as a density functional: formal N^3, not HF."""
    name = (method or "").lower()
    base = name.split("-d3")[0].split("-d4")[0]
    return scaling_exponent(name) == 3 and base not in _HARTREE_FOCK


def scaling_exponent(method: str) -> int:
    """Formal scaling with system size: 3 for HF/DFT unless the method name says otherwise."""
    name = (method or "").lower()
    for prefixes, exponent in _SCALING:
        if any(name.startswith(p) or p in name for p in prefixes):
            return exponent
    return 3


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


Kind = tuple[str, int, int]


def kind_of(model: str, real: Iterable[int], basis: Iterable[int]) -> Kind:
    """Calculations that cost about the same relative to the size model: model chemistry, n-body, basis fragments."""
    return (model, len(tuple(real)), len(tuple(basis)))


@dataclass
class CostModel:
    """Predicted seconds for every fragment calculation of a plan, per model chemistry."""

    models: dict[str, ModelCost]
    #: measured / predicted per kind of calculation (:func:`kind_of`), from :meth:`calibrate`
    kind_scale: dict[Kind, float] = field(default_factory=dict)

    @classmethod
    def for_plan(cls, plan) -> CostModel:
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
                functions = fragment_basis_functions(symbols, fragments, basis)
                if functions is not None:
                    sizes = {i + 1: float(n) for i, n in enumerate(functions)}
                else:  # atoms as size: a basis of ~10 functions per atom keeps the default units sensible
                    sizes = {i: 10.0 * n for i, n in sizes.items()}
            unit_seconds = _DEFAULT_UNIT_SECONDS.get(exponent, 1.0e-6)
            if basis and is_functional(method):
                unit_seconds *= _FUNCTIONAL_FACTOR
            models[model] = ModelCost(
                exponent,
                _DRIVER_FACTOR.get(plan.driver, 1.0),
                unit_seconds,
                _DEFAULT_OVERHEAD_SECONDS.get(exponent, DEFAULT_OVERHEAD_SECONDS),
                per_fragment_size=sizes,
            )
        return cls(models)

    def seconds(self, job) -> float:
        """Predicted wall seconds of ``job`` on one core."""
        scale = self.kind_scale.get(kind_of(job.model, job.real, job.basis), 1.0) if self.kind_scale else 1.0
        return self.models[job.model].seconds(job.basis) * scale

    def seconds_all(self, jobs: Iterable[Any]) -> list[float]:
        """``[self.seconds(job) for job in jobs]``, the same numbers, computed once per model, kind and size.

        Where every fragment of a model chemistry has the same size, a job's size follows from
        its number of basis fragments (summed in the same order, so to the same float).
        """
        uniform = {model: len(set(cost.per_fragment_size.values())) <= 1 for model, cost in self.models.items()}
        sizes = {model: cost.per_fragment_size.__getitem__ for model, cost in self.models.items()}
        memo: dict[tuple, float] = {}
        out: list[float] = []
        append = out.append
        for job in jobs:
            model, basis = job.model, job.basis
            key: tuple[Any, ...]
            if uniform[model]:
                key = (model, len(job.real), len(basis))
            else:
                key = (model, len(job.real), len(basis), sum(map(sizes[model], basis)))
            seconds = memo.get(key)
            if seconds is None:
                seconds = memo[key] = self.seconds(job)
            append(seconds)
        return out

    def calibrate(self, samples: Iterable[tuple[Any, float]]) -> CostModel:
        """Fit the model to measured ``(job, seconds)``: per model chemistry, then per kind of calculation.

        Per model chemistry, least squares of ``seconds = overhead + unit_seconds * units``
        over the median time of each size, both kept non-negative (a model measured at one
        size only keeps its default ratio, scaled to the measurement). Then each kind
        measured gets the median of measured over fitted seconds as its own factor.
        """
        samples = [(job, float(seconds)) for job, seconds in samples if job.model in self.models and seconds > 0]
        by_model: dict[str, dict[float, list[float]]] = {}
        for job, seconds in samples:
            units = self.models[job.model].units(job.basis)
            by_model.setdefault(job.model, {}).setdefault(units, []).append(seconds)
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
                ((x, y),) = points
                predicted = cost.overhead + cost.unit_seconds * x
                scale = y / predicted if predicted > 0 else 1.0
                cost.unit_seconds *= scale
                cost.overhead *= scale
            cost.calibrated = True
        ratios: dict[Kind, list[float]] = {}
        for job, seconds in samples:
            fitted = self.models[job.model].seconds(job.basis)
            if fitted > 0:
                ratios.setdefault(kind_of(job.model, job.real, job.basis), []).append(seconds / fitted)
        self.kind_scale.update({kind: statistics.median(values) for kind, values in ratios.items()})
        return self


def calibrated_during_run(fragments: list[dict]) -> list[float | None]:
    """Per fragment, its prediction corrected by the fragments of its kind that had finished when it started.

    ``fragments`` as in ``extras["mbdask"]["timing"]["fragments"]`` (model, real, basis,
    start, seconds, predicted, worker). The factor of a kind is the median of measured over
    predicted seconds of its first ``mbdask.cost.calibration-samples`` finished fragments, leaving
    out the first fragment of each worker (it pays for importing the program); a fragment
    that started before any of its kind finished keeps its prediction. This is what a run
    learns as it goes, so the report's plot shows it without hindsight.
    """
    nan = float("nan")
    calibrated = calibrated_predictions(
        [kind_of(f["model"], f["real"], f["basis"]) for f in fragments],
        np.array([f["start"] for f in fragments], dtype=float),
        np.array([f["seconds"] for f in fragments], dtype=float),
        np.array([nan if f.get("predicted") is None else f["predicted"] for f in fragments], dtype=float),
        [f.get("worker") for f in fragments],
    )
    return none_for_nan(calibrated)


def calibrated_predictions(
    kinds: Sequence[Kind], start: np.ndarray, seconds: np.ndarray, predicted: np.ndarray, workers: Sequence[Any]
) -> np.ndarray:
    """:func:`calibrated_during_run` over columns (NaN: no prediction), for 679,120 fragments in a second.

    The replay in start order stops as soon as no kind can gain a sample (each has
    its samples or no fragment left to finish): from there on every factor is
    fixed, and the rest is one array product.
    """
    n = len(kinds)
    wanted = config.number("mbdask.cost.calibration-samples")  # later measurements change nothing
    out = np.full(n, np.nan)
    if not n:
        return out
    order = np.argsort(start, kind="stable").tolist()
    starts, secs, preds = start.tolist(), seconds.tolist(), predicted.tolist()
    warm_up = set({workers[i]: i for i in reversed(order)}.values())
    pending = Counter(kinds)  # per kind, fragments not yet finished in the replay
    unsettled = len(pending)
    finished: list[tuple[float, int]] = []  # (stop, index) of started fragments, earliest stop first
    ratios: dict[Kind, list[float]] = {}
    factor: dict[Kind, float] = {}
    for position, i in enumerate(order):
        while finished and finished[0][0] <= starts[i]:
            _, j = heapq.heappop(finished)
            kind = kinds[j]
            samples = ratios.setdefault(kind, [])
            full_before = len(samples) >= wanted or pending[kind] == 0
            if len(samples) < wanted and j not in warm_up and preds[j] == preds[j] and preds[j] and secs[j] > 0:
                samples.append(secs[j] / preds[j])
                factor[kind] = statistics.median(samples)
            pending[kind] -= 1
            if not full_before and (len(samples) >= wanted or pending[kind] == 0):
                unsettled -= 1
        if not unsettled:
            rest = np.array(order[position:], dtype=np.int64)
            scale = np.array([factor.get(kinds[k], 1.0) for k in rest.tolist()], dtype=float)
            with np.errstate(invalid="ignore"):
                out[rest] = np.where(predicted[rest] != 0, predicted[rest] * scale, np.nan)
            return out
        heapq.heappush(finished, (starts[i] + secs[i], i))
        if preds[i] == preds[i] and preds[i]:
            out[i] = preds[i] * factor.get(kinds[i], 1.0)
    return out

"""Assembly: cluster increments, n-body levels and the final ``ManyBodyResult``.

The final result is QCManyBody's own ``ManyBodyCore.analyze`` plus ``get_results`` over the
fragment numbers, so it is the number a sequential QCManyBody run gives, digit for digit.
Increments and levels are computed alongside for what QCManyBody cannot show (which
cluster contributes what, and the n-body energies while higher orders still run); they
must sum to QCManyBody's n-body energies, which the tests check.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput, ManyBodyResult
from qcmanybody.v2 import ManyBodyComputer

from mbdask import config
from mbdask.calculation.execute import resolve_context
from mbdask.planning.cost import calibrated_predictions
from mbdask.planning.manybody import screened_analysis
from mbdask.planning.plan import gc_paused
from mbdask.tables import Ragged, Rows, none_for_nan
from mbdask.upstream import job_label, parse_label
from mbdask.version import package_version

#: Columns of the per-cluster increments table, per BSSE treatment.
INCREMENT_COLUMNS = ("nbody", "model", "fragments", "energy")
#: Columns of the per-fragment timings table.
TIMING_COLUMNS = (
    "model",
    "real",
    "basis",
    "seconds",
    "start",
    "worker",
    "ncores",
    "predicted",
    "own_seconds",
    "calibrated",
)


def inline_limit() -> int:
    """Calculations up to which a result carries its rows as plain lists (``mbdask.result.inline-limit``)."""
    return config.number("mbdask.result.inline-limit")


def qcmanybody_order(core: Any) -> tuple[list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """Labels in the order QCManyBody's ``iterate_molecules`` yields them (no molecules built), and
    each one's (model, real, basis), so that nothing has to parse the labels again."""
    seen: dict[tuple, None] = {}
    for model, compute_dict in core.compute_map.items():
        for compute_list in compute_dict["all"].values():
            for real, basis in compute_list:
                seen.setdefault((model, real, basis))
    parts = list(seen)
    return [job_label(model, real, basis) for model, real, basis in parts], parts


#: Atoms up to which QCElemental's own nuclear repulsion energy is used (its number, bit for bit).
NUCLEAR_REPULSION_LOOP_ATOMS = 512


def nuclear_repulsion_energy(molecule: Any, rows: int = 256) -> float:
    """``Molecule.nuclear_repulsion_energy()`` (real atoms only), with numpy a block of rows at a time.

    QCElemental's is a Python loop over all atom pairs: 11 s of a 3,072-atom result's assembly
    (1,024 waters), minutes at 12,288 atoms. The same sum in another order: equal to about 1e-15
    relative (tests/test_tables.py compares them).
    """
    from scipy.spatial.distance import cdist

    xyz = np.asarray(molecule.geometry, dtype=float).reshape(-1, 3)
    charge = np.asarray(molecule.atomic_numbers, dtype=float) * np.asarray(molecule.real, dtype=float)
    total = 0.0
    for start in range(0, len(xyz), rows):
        stop = min(start + rows, len(xyz))
        distance = cdist(xyz[start:stop], xyz[:stop])
        below = np.arange(stop)[None, :] < np.arange(start, stop)[:, None]  # each pair once: j < i
        total += float((charge[start:stop, None] * charge[None, :stop] / np.where(below, distance, np.inf)).sum())
    return total


class LargeMolecule(Molecule):
    """A QCElemental ``Molecule`` whose whole-molecule nuclear repulsion energy (which QCManyBody's
    ``get_results`` asks for) is :func:`nuclear_repulsion_energy`; everything else is QCElemental's."""

    def nuclear_repulsion_energy(self, ifr: int | None = None, real_only: bool = True) -> float:
        if ifr is not None or not real_only or len(self.symbols) <= NUCLEAR_REPULSION_LOOP_ATOMS:
            return super().nuclear_repulsion_energy(ifr, real_only)
        return nuclear_repulsion_energy(self)


def for_results(inp: ManyBodyInput) -> ManyBodyInput:
    """``inp`` as QCManyBody's ``get_results`` should see it: above :data:`NUCLEAR_REPULSION_LOOP_ATOMS` atoms with
    its molecule a :class:`LargeMolecule` (the same fields, not validated again), otherwise as it is."""
    if len(inp.molecule.symbols) <= NUCLEAR_REPULSION_LOOP_ATOMS:
        return inp
    molecule = inp.molecule.model_copy()
    molecule.__class__ = LargeMolecule
    return inp.model_copy(update={"molecule": molecule})


@dataclass
class OutputColumns:
    """Fragment outputs of many units as columns: what a collect node hands to the result node.

    679,120 output dicts pickle, travel and unpickle in seconds and take gigabytes on the worker
    that assembles the result; these columns move in milliseconds. The collect nodes make
    them while fragments still run, so the work is off the end of the run. ``values`` is
    kept only where an output holds more than its energy (gradients...), ``results`` only
    for outputs that carry their ``AtomicResult``; missing numbers are NaN.
    """

    labels: list[str]
    energy: np.ndarray
    stored: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    predicted: np.ndarray
    own: np.ndarray
    ncores: np.ndarray
    worker: list
    values: list[dict] | None = None
    results: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, *units: dict[str, dict]) -> OutputColumns:
        """The outputs of ``units`` (dicts by label, as fragment units return them), later units winning."""
        outputs = list(merge_units(*units).values())
        values = [out["values"] for out in outputs]
        plain = all(len(v) == 1 and "energy" in v for v in values)

        def numbers(records: list[dict], key: str) -> np.ndarray:
            return np.array([np.nan if record.get(key) is None else record[key] for record in records], dtype=float)

        return cls(
            labels=[out["label"] for out in outputs],
            energy=numbers(values, "energy"),
            stored=np.array([bool(out.get("stored")) for out in outputs], dtype=bool),
            start=numbers(outputs, "start"),
            stop=numbers(outputs, "stop"),
            predicted=numbers(outputs, "predicted"),
            own=numbers(outputs, "own"),
            ncores=np.array([out.get("ncores", 0) for out in outputs], dtype=np.int64),
            worker=[out.get("worker") for out in outputs],
            values=None if plain else values,
            results={out["label"]: out["result"] for out in outputs if "result" in out},
        )

    @classmethod
    def concatenate(cls, parts: Sequence[OutputColumns | dict[str, dict]]) -> OutputColumns:
        """One table of ``parts`` (columns, or unit outputs by label), in order."""
        cols = [part if isinstance(part, OutputColumns) else cls.of(part) for part in parts]
        if len(cols) == 1:
            return cols[0]
        arrays = {
            name: np.concatenate([getattr(c, name) for c in cols]) if cols else np.zeros(0)
            for name in ("energy", "stored", "start", "stop", "predicted", "own", "ncores")
        }
        plain = all(c.values is None for c in cols)
        return cls(
            labels=[label for c in cols for label in c.labels],
            worker=[w for c in cols for w in c.worker],
            values=None
            if plain
            else [v for c in cols for v in (c.values if c.values is not None else c.energy_values())],
            results={k: v for c in cols for k, v in c.results.items()},
            **arrays,
        )

    def energy_values(self) -> list[dict]:
        """Per output, its ``values`` dict (only an energy unless :attr:`values` says otherwise)."""
        if self.values is not None:
            return self.values
        return [{"energy": e} for e in self.energy.tolist()]


def collect_outputs(*units: dict[str, dict]) -> OutputColumns:
    """A collect node: the outputs of a few dozen units as one :class:`OutputColumns`."""
    return OutputColumns.of(*units)


def merge_units(*units: dict[str, dict]) -> dict[str, dict]:
    """Fragment outputs by label, from the outputs of several units (also the task of a collect node)."""
    merged: dict[str, dict] = {}
    for outputs in units:
        merged.update(outputs)
    return merged


def borrowed_outputs(labels: list[tuple[str, str]], borrowed: bool, *sources: dict[str, dict]) -> dict[str, dict]:
    """Outputs of the same calculations in units already sent, ``sources``, under this expansion's labels.

    ``borrowed`` (another expansion's units): marked ``stored``, as outputs found in a store
    are, since this expansion did not compute them. Not borrowed (this expansion's own
    units, sent before its graph by energy screening, under its own labels): they stay this
    expansion's work, as they are.
    """
    source = sources[0] if len(sources) == 1 else merge_units(*sources)
    if not borrowed:
        return {label: source[there] for label, there in labels}
    return {label: {**source[there], "label": label, "stored": True} for label, there in labels}


def increment_energies(terms: list[list[tuple[str, int]]], *units: dict[str, dict]) -> list[float]:
    """Per cluster, the signed sum of its subsystem energies (nocp, cp or vmfc by the terms)."""
    by_label = merge_units(*units)
    return [float(sum(sign * by_label[label]["values"]["energy"] for label, sign in cluster)) for cluster in terms]


def level_sum(
    bsse: str,
    nbody: int | str,
    model: str,
    clusters: np.ndarray | Sequence[Sequence[int]],
    previous: dict | None,
    *groups: list[float],
) -> dict:
    """One n-body order of one BSSE treatment, the orders below chained in (rows as :func:`level_table`).

    ``through`` is the total energy through this order; ``None`` where the monomers in their
    own basis were not computed (cp alone without ``return_total_data``), since then no
    total exists. ``interaction`` is the interaction energy through this order (0 at 1-body).
    ``increments`` (``fragments``, ``energy`` per cluster) are :class:`~mbdask.tables.Rows`:
    a level of 635,376 tetramers is two arrays, not as many dicts.
    """
    increments = [energy for group in groups for energy in group]
    contribution = float(sum(increments))
    if previous is None:
        # a chain starts at 1-body (monomer totals) or, when those were not computed, at the
        # first interaction order: then only interaction energies exist
        through = contribution if nbody == 1 else None
        interaction = 0.0 if nbody == 1 else contribution
    else:
        through = None if previous["through"] is None else previous["through"] + contribution
        interaction = previous["interaction"] + contribution
    return {
        "bsse": bsse,
        "nbody": nbody,
        "model": model,
        "contribution": contribution,
        "through": through,
        "interaction": interaction,
        "increments": Rows.from_columns(
            fragments=np.asarray(clusters, dtype=np.int64), energy=np.asarray(increments, dtype=float)
        ),
    }


def monomers_not_computed(model: str | None) -> dict:
    """The 1-body row of a treatment whose monomers were not computed in their own basis: no total, interaction 0."""
    return {"model": model, "contribution": None, "through": None, "interaction": 0.0, "nclusters": 0}


def level_table(levels: list[dict], core: Any) -> dict[str, dict[str, dict]]:
    """``extras["mbdask"]["levels"]``: per BSSE treatment, one row per n-body order, 1-body always first.

    Every row means the same for nocp, cp and vmfc (docs/api.md): ``contribution`` (the sum of
    that order's increments; at 1-body the monomer energies), ``through`` (total energy
    through n, or ``None`` where no total exists), ``interaction`` (interaction energy
    through n) and ``nclusters``. A cp expansion without monomers in their own basis gets a
    1-body row with ``interaction`` 0 and no total, so that tables and plots start at 1.
    """
    model_of = {nb: mc for mc, nbs in core.nbodies_per_mc_level.items() for nb in nbs}
    table: dict[str, dict[str, dict]] = {}
    for level in levels:
        rows = table.setdefault(level["bsse"], {})
        if level["nbody"] != 1 and "1" not in rows:
            rows["1"] = monomers_not_computed(model_of.get(1))
        rows[str(level["nbody"])] = {
            "model": level["model"],
            "contribution": level["contribution"],
            "through": level["through"],
            "interaction": level["interaction"],
            "nclusters": len(level["increments"]),
        }
    return table


def _timings(
    cols: OutputColumns,
    rows: np.ndarray,
    parts: Sequence[tuple[str, Sequence[int], Sequence[int]]],
    cluster_cores: int | None,
    tables: bool,
) -> dict[str, Any]:
    """Per computed fragment: when, where, how long; outputs loaded from a store are only counted.

    ``rows`` are the positions in ``cols`` of the calculations in QCManyBody's order, ``parts``
    their (model, real, basis). With ``tables`` the per-fragment records are
    :class:`~mbdask.tables.Rows`, made from the columns without a dict per fragment.
    """
    computed = ~cols.stored[rows]
    sel = rows[computed]
    picked = [parts[k] for k in np.flatnonzero(computed).tolist()]
    models = [model for model, _, _ in picked]
    reals = [list(real) for _, real, _ in picked]
    bases = [list(basis) for _, _, basis in picked]
    start, stop = cols.start[sel], cols.stop[sel]
    seconds = stop - start
    workers = [cols.worker[k] for k in sel.tolist()]
    calibrated = calibrated_predictions(
        [(m, len(r), len(b)) for m, r, b in zip(models, reals, bases)], start, seconds, cols.predicted[sel], workers
    )
    columns = {
        "model": models,
        "real": reals,
        "basis": bases,
        "seconds": seconds.tolist(),
        "start": start.tolist(),
        "worker": workers,
        "ncores": cols.ncores[sel].tolist(),
        "predicted": none_for_nan(cols.predicted[sel]),
        "own_seconds": none_for_nan(cols.own[sel]),
        "calibrated": none_for_nan(calibrated),
    }
    if tables:
        fragments: Any = Rows([(columns, {})], TIMING_COLUMNS)
    else:
        fragments = [dict(zip(TIMING_COLUMNS, values)) for values in zip(*(columns[name] for name in TIMING_COLUMNS))]
    return {
        "fragments": fragments,
        "sum_task_seconds": sum(columns["seconds"]),
        "span_seconds": float(stop.max() - start.min()) if len(sel) else 0.0,
        "workers": sorted(set(workers)),
        "from_store": len(rows) - len(sel),
        "cluster_cores": cluster_cores,
    }


def _cluster_energies(
    cols: OutputColumns, rows: np.ndarray, parts: Sequence[tuple[str, Sequence[int], Sequence[int]]]
) -> Rows:
    """Every calculation's energy (what ``cluster_properties`` holds for a small result), as a table."""
    return Rows.from_columns(
        model=[model for model, _, _ in parts],
        real=Ragged.from_lists([real for _, real, _ in parts]),
        basis=Ragged.from_lists([basis for _, _, basis in parts]),
        energy=cols.energy[rows],
    )


def assemble_result(
    ctx: Any,
    levels: list[dict],
    *units: dict[str, dict],
    partial: dict | None = None,
    screening: dict | None = None,
    tables: bool | None = None,
) -> ManyBodyResult:
    """QCManyBody's analysis of all fragment results, with mbdask's extras attached.

    ``partial`` (set by ``keep_going`` when a higher order failed) is recorded in the extras.
    ``screening`` (``{"coefficients": ..., "summary": ...}`` for a screened expansion) assembles
    from the kept clusters instead of QCManyBody's level formulas (:mod:`mbdask.planning.screening`).
    ``tables``: keep the rows as :class:`~mbdask.tables.Rows` (docs/api.md, large
    expansions); the graph decides it on the client, where the user's Dask config is; by
    default, more calculations than :func:`inline_limit`.
    """
    began = time.time()
    ctx = resolve_context(ctx)
    with gc_paused():  # hundreds of thousands of objects made here: a third faster at 43,744 calculations
        result = _assemble_result(ctx, levels, units, partial, screening, tables)
    # when the assembly ran (worker clock, as the fragments' times): ``--profile`` shows it as a phase
    result.extras["mbdask"]["timing"]["assembly"] = {"start": began, "stop": time.time()}
    return result


def _assemble_result(
    ctx: Any,
    levels: list[dict],
    units: tuple[OutputColumns | dict[str, dict], ...],
    partial: dict | None,
    screening: dict | None,
    tables: bool | None,
) -> ManyBodyResult:
    computer = ManyBodyComputer.from_manybodyinput(for_results(ctx.input), build_tasks=False)
    cols = OutputColumns.concatenate(units)
    position = dict(zip(cols.labels, range(len(cols.labels))))  # a label given twice: the later output, as merge_units
    if screening is None:
        # QCManyBody's order, so that its sums are carried out in the same order, bit for bit.
        parts: Sequence[tuple[str, Sequence[int], Sequence[int]]]
        order, parts = qcmanybody_order(computer.qcmb_core)
    else:
        order = list(position)
        parts = [parse_label(label) for label in order]
    at = np.fromiter((position[label] for label in order), dtype=np.int64, count=len(order))
    all_values = cols.energy_values()
    values = {label: all_values[row] for label, row in zip(order, at.tolist())}
    # a large expansion keeps its rows as tables
    if tables is None:
        tables = len(order) > inline_limit()
    if screening is None:
        analyzed = computer.qcmb_core.analyze(values)
    else:
        analyzed = screened_analysis(computer.qcmb_core, values, screening["coefficients"], components=not tables)
    analyzed["nbody_number"] = len(order)
    if tables:
        # 679k validated AtomicProperties would be gigabytes: the energies go into a table instead
        analyzed["component_properties"] = {}
    cluster_results = {label: cols.results[label] for label in order if label in cols.results}
    result = computer.get_results(external_results=analyzed, component_results=cluster_results)

    increments: dict[str, Any] = {}
    for bsse in dict.fromkeys(level["bsse"] for level in levels):
        blocks = [
            (lv["increments"], {"nbody": lv["nbody"], "model": lv["model"]}) for lv in levels if lv["bsse"] == bsse
        ]
        rows = Rows(
            [(columns, {**constants, **const}) for table, const in blocks for columns, constants in table.blocks],
            INCREMENT_COLUMNS,
        )
        increments[bsse] = rows if tables else list(rows)
    extras = dict(result.extras)
    extras["mbdask"] = {
        "version": package_version(),
        "increments": increments,
        "levels": level_table(levels, computer.qcmb_core),
        "nfragment_calculations": len(order),
        "timing": _timings(cols, at, parts, ctx.cluster_cores, tables),
    }
    if tables:
        extras["mbdask"]["cluster_energies"] = _cluster_energies(cols, at, parts)
    if partial:
        extras["mbdask"]["partial"] = partial
    update: dict[str, Any] = {"extras": extras}
    if screening is not None:
        summary = extras["mbdask"]["screening"] = dict(screening["summary"])
        kept = ", ".join(f"{n}-body {row['kept']}/{row['all']}" for n, row in summary["orders"].items() if n != "1")
        note = f"\n   mbdask: screened expansion, clusters kept {kept}; dropped clusters contribute zero\n"
        if "energy" in summary:
            # the dropped clusters' cheap increments, added back: the "fill-in" total
            summary["return_energy_with_fill_in"] = result.properties.return_energy + summary["energy"]["fill_in"]
            note += (
                "   mbdask: with the dropped clusters' cheap increments (fill-in): "
                f"{summary['return_energy_with_fill_in']:.12f} Eh\n"
            )
        update["stdout"] = note + (result.stdout or "")
    return result.model_copy(update=update)

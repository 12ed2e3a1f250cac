"""Assembly: cluster increments, n-body levels and the final ``ManyBodyResult``.

The final result is QCManyBody's own ``ManyBodyCore.analyze`` plus ``get_results`` over the
fragment numbers, so it is the number a sequential QCManyBody run gives, digit for digit.
Increments and levels are computed alongside for what QCManyBody cannot show (which
cluster contributes what, and the n-body energies while higher orders still run); they
must sum to QCManyBody's n-body energies, which the tests check.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
from qcmanybody.models.v2 import ManyBodyResult
from qcmanybody.utils import delabeler, labeler
from qcmanybody.v2 import ManyBodyComputer

from . import config
from .cost import calibrated_during_run
from .plan import gc_paused
from .tables import Rows

#: Columns of the per-cluster increments table, per BSSE treatment.
INCREMENT_COLUMNS = ("nbody", "model", "fragments", "energy")
#: Columns of the per-fragment timings table.
TIMING_COLUMNS = ("model", "real", "basis", "seconds", "start", "worker", "ncores", "predicted", "own_seconds", "calibrated")


def inline_limit() -> int:
    """Calculations up to which a result carries its rows as plain lists (``mbdask.result.inline-limit``)."""
    return int(config.get("mbdask.result.inline-limit"))


def parse_label(label: str) -> tuple[str, list[int], list[int]]:
    """QCManyBody's ``delabeler`` for the labels its ``labeler`` writes, without a JSON parser per label.

    ``'["mc", [1, 2], [1, 2, 3]]'`` -> ``("mc", [1, 2], [1, 2, 3])``; anything else (an escaped
    model name) goes through ``delabeler``. At 679k calculations, twice per calculation,
    this saves about 15 s of the result's assembly.
    """
    head, sep, rest = label.partition('", [')
    if sep and head.startswith('["') and "\\" not in head and rest.endswith("]]"):
        real_text, sep2, basis_text = rest[:-2].partition("], [")
        if sep2:
            real = list(map(int, real_text.split(", ")))
            return head[2:], real, real[:] if basis_text == real_text else list(map(int, basis_text.split(", ")))
    model, real_t, basis_t = delabeler(label)
    return model, list(real_t), list(basis_t)


def qcmanybody_order(core: Any) -> list[str]:
    """Labels in the order QCManyBody's ``iterate_molecules`` yields them (no molecules built)."""
    seen: dict[str, None] = {}
    for model, compute_dict in core.compute_map.items():
        for compute_list in compute_dict["all"].values():
            for real, basis in compute_list:
                seen.setdefault(labeler(model, real, basis))
    return list(seen)


def merge_units(*units: dict[str, dict]) -> dict[str, dict]:
    """Fragment outputs by label, from the outputs of several units (also the task of a collect node)."""
    merged: dict[str, dict] = {}
    for outputs in units:
        merged.update(outputs)
    return merged


def borrowed_outputs(labels: list[tuple[str, str]], source: dict[str, dict]) -> dict[str, dict]:
    """Outputs of the same calculations in another expansion's unit ``source``, under this expansion's labels.

    Marked ``stored`` as outputs found in a store are: this expansion did not compute them.
    """
    return {label: {**source[there], "label": label, "stored": True} for label, there in labels}


def increment_energies(terms: list[list[tuple[str, int]]], *units: dict[str, dict]) -> list[float]:
    """Per cluster, the signed sum of its subsystem energies (nocp, cp or vmfc by the terms)."""
    by_label = merge_units(*units)
    return [float(sum(sign * by_label[label]["values"]["energy"] for label, sign in cluster)) for cluster in terms]


def level_sum(
    bsse: str,
    nbody: Union[int, str],
    model: str,
    clusters: Union[np.ndarray, Sequence[Sequence[int]]],
    previous: Optional[dict],
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
        "increments": Rows.from_columns(fragments=np.asarray(clusters, dtype=np.int64), energy=np.asarray(increments, dtype=float)),
    }


def monomers_not_computed(model: Optional[str]) -> dict:
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


def _timings(all_outputs: list[dict], cluster_cores: Optional[int] = None, parsed: Optional[dict[str, tuple]] = None) -> dict[str, Any]:
    """Per computed fragment: when, where, how long; outputs loaded from a store are only counted.

    ``parsed`` (labels already parsed, by label) is given for large expansions, whose
    per-fragment records are then :class:`~mbdask.tables.Rows`.
    """
    outputs = [out for out in all_outputs if not out.get("stored")]
    per_fragment = []
    for out in outputs:
        model, real, basis = parsed[out["label"]] if parsed is not None else parse_label(out["label"])
        per_fragment.append(
            {
                "model": model,
                "real": real,
                "basis": basis,
                "seconds": out["stop"] - out["start"],
                "start": out["start"],
                "worker": out["worker"],
                "ncores": out["ncores"],
                "predicted": out.get("predicted"),
                "own_seconds": out.get("own"),
            }
        )
    for frag, calibrated in zip(per_fragment, calibrated_during_run(per_fragment)):
        frag["calibrated"] = calibrated
    starts = [o["start"] for o in outputs]
    stops = [o["stop"] for o in outputs]
    return {
        "fragments": Rows.from_dicts(per_fragment, TIMING_COLUMNS) if parsed is not None else per_fragment,
        "sum_task_seconds": sum(f["seconds"] for f in per_fragment),
        "span_seconds": (max(stops) - min(starts)) if outputs else 0.0,
        "workers": sorted({o["worker"] for o in outputs}),
        "from_store": len(all_outputs) - len(outputs),
        "cluster_cores": cluster_cores,
    }


def _cluster_energies(order: list[str], by_label: dict[str, dict], parsed: dict[str, tuple]) -> Rows:
    """Every calculation's energy (what ``cluster_properties`` holds for a small result), as a table."""
    return Rows.from_columns(
        model=[parsed[label][0] for label in order],
        real=[parsed[label][1] for label in order],
        basis=[parsed[label][2] for label in order],
        energy=np.array([by_label[label]["values"]["energy"] for label in order], dtype=float),
    )


def assemble_result(
    ctx: Any,
    levels: list[dict],
    *units: dict[str, dict],
    partial: Optional[dict] = None,
    screening: Optional[dict] = None,
    tables: Optional[bool] = None,
) -> ManyBodyResult:
    """QCManyBody's analysis of all fragment results, with mbdask's extras attached.

    ``partial`` (set by ``keep_going`` when a higher order failed) is recorded in the extras.
    ``screening`` (``{"coefficients": ..., "summary": ...}`` for a screened expansion) assembles
    from the kept clusters instead of QCManyBody's level formulas (:mod:`mbdask.screening`).
    ``tables``: keep the rows as :class:`~mbdask.tables.Rows` (docs/api.md, large
    expansions); the graph decides it on the client, where the user's Dask config is; by
    default, more calculations than :func:`inline_limit`.
    """
    from .execute import resolve_context

    ctx = resolve_context(ctx)
    with gc_paused():  # hundreds of thousands of objects made here: a third faster at 43,744 calculations
        return _assemble_result(ctx, levels, units, partial, screening, tables)


def _assemble_result(
    ctx: Any, levels: list[dict], units: tuple[dict[str, dict], ...], partial: Optional[dict], screening: Optional[dict], tables: Optional[bool]
) -> ManyBodyResult:
    computer = ManyBodyComputer.from_manybodyinput(ctx.input, build_tasks=False)
    by_label = merge_units(*units)
    if screening is None:
        # QCManyBody's order, so that its sums are carried out in the same order, bit for bit.
        order = qcmanybody_order(computer.qcmb_core)
        analyzed = computer.qcmb_core.analyze({label: by_label[label]["values"] for label in order})
    else:
        from .screening import screened_analysis

        order = list(by_label)
        analyzed = screened_analysis(computer.qcmb_core, {label: by_label[label]["values"] for label in order}, screening["coefficients"])
    analyzed["nbody_number"] = len(order)
    # a large expansion keeps its rows as tables (labels parsed once, for two of them)
    if tables is None:
        tables = len(order) > inline_limit()
    parsed = {label: parse_label(label) for label in order} if tables else None
    if parsed is not None:
        # 679k validated AtomicProperties would be gigabytes: the energies go into a table instead
        analyzed["component_properties"] = {}
    cluster_results = {label: by_label[label]["result"] for label in order if "result" in by_label[label]}
    result = computer.get_results(external_results=analyzed, component_results=cluster_results)

    from . import __version__

    increments: dict[str, Any] = {}
    for bsse in dict.fromkeys(level["bsse"] for level in levels):
        blocks = [(lv["increments"], {"nbody": lv["nbody"], "model": lv["model"]}) for lv in levels if lv["bsse"] == bsse]
        rows = Rows([(columns, {**constants, **const}) for table, const in blocks for columns, constants in table.blocks], INCREMENT_COLUMNS)
        increments[bsse] = rows if parsed is not None else list(rows)
    extras = dict(result.extras)
    extras["mbdask"] = {
        "version": __version__,
        "increments": increments,
        "levels": level_table(levels, computer.qcmb_core),
        "nfragment_calculations": len(order),
        "timing": _timings([by_label[label] for label in order], ctx.cluster_cores, parsed),
    }
    if parsed is not None:
        extras["mbdask"]["cluster_energies"] = _cluster_energies(order, by_label, parsed)
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
            note += f"   mbdask: with the dropped clusters' cheap increments (fill-in): {summary['return_energy_with_fill_in']:.12f} Eh\n"
        update["stdout"] = note + (result.stdout or "")
    return result.model_copy(update=update)

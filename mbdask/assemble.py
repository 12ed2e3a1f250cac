"""Assembly: cluster increments, n-body levels and the final ``ManyBodyResult``.

The final result is QCManyBody's own ``ManyBodyCore.analyze`` plus ``get_results`` over the
fragment numbers, so it is the number a sequential QCManyBody run gives, digit for digit.
Increments and levels are computed alongside for what QCManyBody cannot show (which
cluster contributes what, and the n-body energies while higher orders still run); they
must sum to QCManyBody's n-body energies, which the tests check.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from qcmanybody.models.v2 import ManyBodyResult
from qcmanybody.utils import delabeler, labeler
from qcmanybody.v2 import ManyBodyComputer

from .cost import calibrated_during_run


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


def increment_energies(terms: list[list[tuple[str, int]]], *units: dict[str, dict]) -> list[float]:
    """Per cluster, the signed sum of its subsystem energies (nocp, cp or vmfc by the terms)."""
    by_label = merge_units(*units)
    return [float(sum(sign * by_label[label]["values"]["energy"] for label, sign in cluster)) for cluster in terms]


def level_sum(
    bsse: str,
    nbody: Union[int, str],
    model: str,
    clusters: list[list[int]],
    previous: Optional[dict],
    *groups: list[float],
) -> dict:
    """One n-body order of one BSSE treatment, the orders below chained in (rows as :func:`level_table`).

    ``through`` is the total energy through this order; ``None`` where the monomers in their
    own basis were not computed (cp alone without ``return_total_data``), since then no
    total exists. ``interaction`` is the interaction energy through this order (0 at 1-body).
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
        "increments": [{"fragments": c, "energy": e} for c, e in zip(clusters, increments)],
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


def _timings(all_outputs: list[dict], cluster_cores: Optional[int] = None) -> dict[str, Any]:
    """Per computed fragment: when, where, how long; outputs loaded from a store are only counted."""
    outputs = [out for out in all_outputs if not out.get("stored")]
    per_fragment = []
    for out in outputs:
        model, real, basis = delabeler(out["label"])
        per_fragment.append(
            {
                "model": model,
                "real": list(real),
                "basis": list(basis),
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
        "fragments": per_fragment,
        "sum_task_seconds": sum(f["seconds"] for f in per_fragment),
        "span_seconds": (max(stops) - min(starts)) if outputs else 0.0,
        "workers": sorted({o["worker"] for o in outputs}),
        "from_store": len(all_outputs) - len(outputs),
        "cluster_cores": cluster_cores,
    }


def assemble_result(
    ctx: Any, levels: list[dict], *units: dict[str, dict], partial: Optional[dict] = None, screening: Optional[dict] = None
) -> ManyBodyResult:
    """QCManyBody's analysis of all fragment results, with mbdask's extras attached.

    ``partial`` (set by ``keep_going`` when a higher order failed) is recorded in the extras.
    ``screening`` (``{"coefficients": ..., "summary": ...}`` for a screened expansion) assembles
    from the kept clusters instead of QCManyBody's level formulas (:mod:`mbdask.screening`).
    """
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
    cluster_results = {label: by_label[label]["result"] for label in order if "result" in by_label[label]}
    result = computer.get_results(external_results=analyzed, component_results=cluster_results)

    from . import __version__

    increments: dict[str, list[dict]] = {}
    for level in levels:
        rows = increments.setdefault(level["bsse"], [])
        rows.extend({**row, "nbody": level["nbody"], "model": level["model"]} for row in level["increments"])
    extras = dict(result.extras)
    extras["mbdask"] = {
        "version": __version__,
        "increments": increments,
        "levels": level_table(levels, computer.qcmb_core),
        "nfragment_calculations": len(order),
        "timing": _timings([by_label[label] for label in order], ctx.cluster_cores),
    }
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

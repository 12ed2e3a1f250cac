"""The many-body algebra in one place: how an increment's terms follow from its cluster, the
coefficient of each calculation over a set of clusters, and the analysis built from them.

QCManyBody's ``ManyBodyCore`` holds the same algebra for whole expansions, level by level;
mbdask needs it cluster by cluster (per-cluster increments while the run goes on, screened
expansions that keep some clusters of an order and not others, energy screening that decides
from cheap increments). :mod:`mbdask.planning.plan` builds the increments of a plan from these
rules, :mod:`mbdask.graph.build` and :mod:`mbdask.results.assemble` evaluate them, :mod:`mbdask.planning.screening`
and :mod:`mbdask.planning.energy_screening` choose the clusters.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from qcmanybody.utils import collect_vars, delabeler, modelchem_labels, print_nbody_energy

#: How a term's basis follows from its cluster: its own fragments (nocp, and cp at 1-body),
#: the full system (cp) or the cluster itself (vmfc).
BASIS_RULES = ("own", "full", "cluster")


def term_shape(nbody: int) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """Positions within a cluster of each subsystem, smallest first, and their signs."""
    shape = [(sub, (-1) ** (nbody - k)) for k in range(1, nbody + 1) for sub in itertools.combinations(range(nbody), k)]
    return tuple(p for p, _ in shape), tuple(s for _, s in shape)


def basis_rule(bsse: str, nbody: int) -> str:
    """The basis of an increment's terms (:data:`BASIS_RULES`) for ``bsse`` at ``nbody``."""
    if bsse == "nocp" or (bsse == "cp" and nbody == 1):
        return "own"
    return "full" if bsse == "cp" else "cluster"


def supersystem_terms(core: Any) -> dict[tuple, int]:
    """The supersystem correction as (model, real, basis) -> coefficient: the full system minus its own MBE."""
    model = core.levels["supersystem"]
    full = tuple(range(1, core.nfragments + 1))
    merged: dict[tuple, int] = defaultdict(int)
    merged[(model, full, full)] += 1
    for nbody in range(1, core.max_nbody + 1):
        for cluster in itertools.combinations(full, nbody):
            for k in range(1, nbody + 1):
                for sub in itertools.combinations(cluster, k):
                    merged[(model, sub, sub)] -= (-1) ** (nbody - k)
    return merged


def nocp_increment(cluster: tuple[int, ...], energies: Mapping[tuple[int, ...], float]) -> float:
    """The cluster's n-body increment from the energies of all its sub-clusters (nocp)."""
    n = len(cluster)
    return math.fsum(
        (-1) ** (n - k) * energies[sub] for k in range(1, n + 1) for sub in itertools.combinations(cluster, k)
    )


def coefficients(
    blocks: Sequence[Any], labels: Sequence[str], upto: int | None = None
) -> dict[str, dict[int, dict[str, int]]]:
    """Per BSSE treatment and order, each calculation's signed count over that order's kept increments.

    ``blocks`` are a plan's :class:`~mbdask.planning.plan.IncrementBlock` (terms as indices into
    ``labels``, one sign per column); counted with numpy, a block at a time, so that
    600,000 kept clusters take a fraction of a second instead of an object per increment.
    """
    table: dict[str, dict[int, dict[str, int]]] = {}
    for block in blocks:
        if upto is not None and block.nbody > upto:
            continue
        counts = np.bincount(
            block.terms.ravel(),
            weights=np.tile(np.asarray(block.signs, dtype=float), len(block.terms)),
            minlength=len(labels),
        )
        present = np.flatnonzero(counts)
        row = table.setdefault(block.bsse, {}).setdefault(block.nbody, {})
        for index, count in zip(present.tolist(), counts[present].astype(np.int64).tolist()):
            row[labels[index]] = row.get(labels[index], 0) + count
    return {
        bsse: {n: {k: c for k, c in row.items() if c} for n, row in sorted(orders.items())}
        for bsse, orders in table.items()
    }


def _atoms(core: Any, basis: Sequence[int]) -> np.ndarray:
    """The atoms (0-based, in order) of the fragments ``basis`` (1-based): where a fragment result's rows go."""
    slices = core.fragment_slice_dict
    return np.concatenate([np.arange(slices[i].start, slices[i].stop) for i in basis])


def weighted_sum(core: Any, prop: str, weights: Mapping[str, int], values: Mapping[str, Mapping[str, Any]]) -> Any:
    """``sum(c * value)`` over ``weights`` (label -> coefficient), gradients and Hessians placed in the full system.

    Each fragment's rows are added where its atoms are instead of padding every fragment
    result to the full size first (QCManyBody's ``resize_gradient``): 150,000 gradients of
    3,072 atoms padded would be 11 GB. The sums per element are the same, in the same order.
    """
    if prop == "energy":
        return sum(c * values[label][prop] for label, c in weights.items())
    natom = len(core.molecule.symbols)
    total = np.zeros((natom, 3) if prop == "gradient" else (3 * natom, 3 * natom))
    for label, c in weights.items():
        atoms = _atoms(core, delabeler(label)[2])
        if prop == "gradient":
            total[atoms] += c * np.asarray(values[label][prop]).reshape(-1, 3)
        else:
            rows = (3 * atoms[:, None] + np.arange(3)).ravel()
            total[np.ix_(rows, rows)] += c * np.asarray(values[label][prop]).reshape(len(rows), len(rows))
    return total


#: A row of QCManyBody's n-body table with no number in it: labels, the order, then only N/A.
_EMPTY_ROW = re.compile(r"^\s*(?:[A-Z/]+\s+)*(\d+)(?:\s+N/A)+\s*$")


def rows_up_to(table: str, max_nbody: int) -> str:
    """QCManyBody's n-body table without its empty rows beyond ``max_nbody``: it prints one row per fragment,
    4,096 lines of N/A for a screened 3-body expansion of 4,096 waters."""
    return "".join(
        line
        for line in table.splitlines(keepends=True)
        if not ((m := _EMPTY_ROW.match(line)) and int(m.group(1)) > max_nbody)
    )


def screened_analysis(
    core: Any, values: dict[str, dict[str, Any]], table: dict[str, dict[int, dict[str, int]]], components: bool = True
) -> dict:
    """What ``ManyBodyCore.analyze`` returns, computed from the kept clusters' coefficients.

    ``values`` are the fragment results by label (energy, and gradient/Hessian in the
    fragment's own atoms). ``components``: also each fragment's result in QCManyBody's form
    (resized to the full system), for a result small enough to carry them.
    """
    properties = sorted({p for v in values.values() for p in v if p in ("energy", "gradient", "hessian")}) or ["energy"]
    resize = {"gradient": core.resize_gradient, "hessian": core.resize_hessian}
    return_bsse = core.return_bsse_type
    all_results: dict[str, Any] = {}
    component_properties: dict[str, dict] = {}
    for prop in properties:
        body: dict[str, dict[int, Any]] = {}
        for bsse, orders in table.items():
            through: Any = 0.0
            body[bsse] = {}
            # an order that kept no cluster contributes zero (and has no row in ``table``)
            for nbody in range(1, core.max_nbody + 1):
                through = through + weighted_sum(core, prop, orders.get(nbody, {}), values)
                body[bsse][nbody] = through
        ret = body[return_bsse][core.max_nbody]
        if not core.return_total_data:
            ret = ret - body[return_bsse][1]
        all_results[f"ret_{prop}"] = ret
        all_results[f"{prop}_body_dict"] = body
        if components:
            for label, v in values.items():
                if prop in v:
                    value = resize[prop](v[prop], delabeler(label)[2]) if prop in resize else v[prop]
                    component_properties.setdefault(label, {"calcinfo_natom": len(core.molecule.symbols)})[
                        f"return_{prop}"
                    ] = value
    stdout, results = "", {}
    for bt in (b for b in core.bsse_type if b.value in table):
        stdout += rows_up_to(
            print_nbody_energy(
                all_results["energy_body_dict"][bt.value],
                f"{bt.formal()} ({bt.abbr()})",
                core.nfragments,
                modelchem_labels(core.nbodies_per_mc_level, presorted=True),
                False,
                core.supersystem_ie_only,
                None,
            ),
            core.max_nbody,
        )
        for prop in properties:
            results.update(
                collect_vars(
                    bt,
                    prop,
                    all_results[f"{prop}_body_dict"][bt.value],
                    core.max_nbody,
                    False,
                    core.supersystem_ie_only,
                    False,
                )
            )
    ebd = all_results["energy_body_dict"]
    all_results["energy_body_dict"] = {f"{k}{bt}": v for bt in ebd for k, v in ebd[bt].items()}
    all_results["results"] = results
    all_results["component_properties"] = component_properties
    all_results["stdout"] = stdout
    return all_results

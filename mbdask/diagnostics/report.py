"""What a finished run says at a glance: the CLI summary table and a self-contained HTML report.

Everything here reads only the ``ManyBodyResult`` (``extras["mbdask"]``: increments, levels,
per-fragment timings), so a report can be made later from a saved result file:
``mbdask.report(mbdask.load_result("result.json"), "report.html")``.

The HTML report is one file with BokehJS inlined (it opens without a network): the n-body
table, a pair-interaction heat map (for thousands of fragments: increments against cluster
size instead), the n-body convergence, a timeline per worker, predicted
versus measured seconds per fragment, cluster utilization over time, the slowest
fragments, the cost model against measured seconds per kind of calculation and where the
tail went (:mod:`mbdask.diagnostics.costs`).
"""

from __future__ import annotations

import html
import itertools
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from qcelemental import constants

from mbdask import config
from mbdask.diagnostics.costs import costs_by_kind, tail
from mbdask.diagnostics.profile import busy_cores, column_of, lengths_of
from mbdask.errors import plural
from mbdask.planning.screening import pair_distances
from mbdask.results.outputs import write_atomic

HARTREE_TO_KCAL = constants.hartree2kcalmol


def _extras(result: Any) -> dict:
    extras = (result.extras or {}).get("mbdask")
    if not extras:
        raise ValueError("this result has no mbdask extras (was it computed by mbdask?)")
    return extras


def fragment_name(real: list[int], basis: list[int]) -> str:
    """``(1,2)`` for a calculation in its own basis, ``(1,2)@(1,2,3)`` with ghosts."""
    name = "(" + ",".join(map(str, real)) + ")"
    return name if list(basis) == list(real) else name + "@(" + ",".join(map(str, basis)) + ")"


def summary_table(result: Any, top: int = 3) -> str:
    """Per model chemistry and n-body order: calculations, the span of its fragments (first start to
    last stop), their summed time, the most expensive ones (milliseconds where seconds would read 0.00).

    Computed over columns, not a dict per fragment: at 679,120 calculations that is a fraction
    of a second instead of seconds at the end of the run.
    """
    timing = _extras(result)["timing"]
    fragments = timing["fragments"]
    if not len(fragments):
        return (
            f"(all {timing.get('from_store', 0)} fragment calculations loaded from the checkpoint store; "
            "nothing computed)"
        )
    nbodies = lengths_of(fragments, "real").tolist()
    seconds = np.asarray(column_of(fragments, "seconds"), dtype=float)
    start = np.asarray(column_of(fragments, "start"), dtype=float)
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, key in enumerate(zip(column_of(fragments, "model"), nbodies)):
        groups[key].append(i)
    width = max([16, *(len(model) for model, _ in groups)])  # columns stay aligned under a long model label
    rows = [f"{'model':<{width}} {'n-body':>6} {'calcs':>7} {'span [s]':>9} {'tasks [s]':>10}  most expensive"]
    for (model, nbody), members in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        index = np.array(members)
        span = float((start[index] + seconds[index]).max() - start[index].min())
        costly = index[np.argsort(-seconds[index], kind="stable")[:top]].tolist()
        names = ", ".join(
            f"{fragment_name(fragments[i]['real'], fragments[i]['basis'])} {short_duration(seconds[i])}" for i in costly
        )
        rows.append(
            f"{model:<{width}} {nbody:>6} {len(members):>7} {span:>9.2f} {sum(seconds[index].tolist()):>10.2f}  {names}"
        )
    if timing.get("from_store"):
        rows.append(f"({timing['from_store']} calculations loaded from the checkpoint store are not in the table)")
    return "\n".join(rows)


def short_duration(seconds: float) -> str:
    """``0.25 s``, or ``3.1 ms`` below 0.1 s: a batched xtb dimer's 3 ms read "0.00 s" with two decimals."""
    return f"{seconds:.2f} s" if seconds >= 0.1 else f"{1000 * seconds:.1f} ms"


def times_phrase(result: Any, wall_seconds: float | None = None) -> str:
    """The run's times under the names the command line prints them with, in the report's header too:
    "wall time 0.77 s, sum of task times 0.21 s, fragment span 0.17 s".

    ``wall_seconds`` is the run as its caller measured it (the command line: from the cluster's
    start to its close); a result alone knows only its fragments' times, so without it there is
    no wall time. The span runs from the first fragment's start to the last one's stop.
    """
    timing = _extras(result)["timing"]
    parts = [] if wall_seconds is None else [f"wall time {wall_seconds:.2f} s"]
    parts.append(f"sum of task times {timing['sum_task_seconds']:.2f} s")
    parts.append(f"fragment span {timing['span_seconds']:.2f} s")
    return ", ".join(parts)


def calculations_phrase(result: Any) -> str:
    """How many calculations ran where: "41 fragment calculations on 2 workers (6 more from the store)".

    Workers are counted from the fragments' own records, so a worker that died after
    finishing some still counts, and a run entirely from the store says so.
    """
    extras = _extras(result)
    timing = extras["timing"]
    stored = timing.get("from_store", 0)
    total = extras["nfragment_calculations"]
    if total and stored == total:
        return f"all {plural(total, 'fragment calculation')} loaded from the checkpoint store, none computed"
    text = f"{plural(total - stored, 'fragment calculation')} on {plural(len(timing['workers']), 'worker')}"
    return text + (f" ({stored} more loaded from the checkpoint store)" if stored else "")


def energy_phrase(result: Any) -> str:
    """The energy a chemist reads first: the return BSSE treatment's interaction energy (and total, where it exists)."""
    extras = _extras(result)
    keywords = result.input_data.specification.keywords
    bsse = getattr(keywords.bsse_type[0], "value", keywords.bsse_type[0])
    props = result.properties
    interaction = getattr(props, f"{bsse}_corrected_interaction_energy", None)
    total = getattr(props, f"{bsse}_corrected_total_energy", None)
    orders = extras["levels"].get(bsse, {})
    numeric = [int(n) for n in orders if n.isdigit()]
    through = f" through {max(numeric)}-body" if numeric else ""
    through += " + supersystem" if "supersystem" in orders else ""
    parts = []
    if interaction is not None:
        parts.append(
            f"{bsse} interaction energy{through} {interaction * HARTREE_TO_KCAL:.4f} kcal/mol ({interaction:.10f} Eh)"
        )
    if total is not None:
        parts.append(f"total energy {total:.10f} Eh")
    return "; ".join(parts) or f"return energy {props.return_energy:.10f} Eh"


def utilization(fragments: Sequence[dict], cluster_cores: int | None) -> tuple[list[float], list[float], float]:
    """Busy cores over time (step points from the first start) and the run's mean utilization.

    Mean utilization is core-seconds of fragment work over ``cluster_cores`` times the span
    from the first start to the last stop; without ``cluster_cores``, the most cores busy at once.
    Computed from the columns (a table of 150,000 fragments is not read row by row).
    """
    if not len(fragments):
        return [], [], 0.0
    seconds = np.asarray(column_of(fragments, "seconds"), dtype=float)
    ncores = np.asarray(column_of(fragments, "ncores"), dtype=float)
    when, cores_busy = busy_cores(np.asarray(column_of(fragments, "start"), dtype=float), seconds, ncores)
    times = [0.0] + when.tolist()
    busy = [0.0] + cores_busy.tolist()
    cores = cluster_cores or max(busy) or 1
    span = times[-1] or 1.0
    work = math.fsum((seconds * ncores).tolist())
    return times, busy, work / (cores * span)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='mbdask'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = (
    "<style>table.mbdask{border-collapse:collapse;font:13px sans-serif;margin:6px 0}"
    "table.mbdask td,table.mbdask th{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}"
    "h2{font:bold 16px sans-serif;margin:14px 0 4px}</style>"
)


def normalized_levels(levels: dict) -> dict[str, dict[str, dict]]:
    """``extras["mbdask"]["levels"]`` with ``interaction`` in every row, also for results saved by mbdask 0.1.0.

    Those had no ``interaction`` and, for cp without monomers in their own basis, no 1-body
    row and interaction energies under ``through``.
    """
    from mbdask.results.assemble import monomers_not_computed  # here: the rest of this module needs no QCManyBody

    out: dict[str, dict[str, dict]] = {}
    for bsse, by_nbody in levels.items():
        if all("interaction" in row for row in by_nbody.values()):
            out[bsse] = by_nbody
            continue
        first = by_nbody.get("1", {}).get("through")
        rows = {} if "1" in by_nbody else {"1": monomers_not_computed(None)}
        for nbody, row in by_nbody.items():
            if first is None:
                rows[nbody] = {**row, "through": None, "interaction": row["through"]}
            else:
                rows[nbody] = {**row, "interaction": row["through"] - first}
        out[bsse] = rows
    return out


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _kcal(value: float | None) -> str:
    return "" if value is None else f"{value * HARTREE_TO_KCAL:.4f}"


def _nbody_table(levels: dict) -> str:
    rows = []
    no_total = False
    for bsse, by_nbody in normalized_levels(levels).items():
        for nbody, row in by_nbody.items():
            no_total = no_total or row["through"] is None
            total = "n/a" if row["through"] is None else f"{row['through']:.10f}"
            # the 1-body "contribution" is the sum of monomer energies: not a number to read in kcal/mol
            contribution = _kcal(row["contribution"]) if nbody != "1" else ""
            rows.append(
                [bsse, nbody, row["model"] or "", row["nclusters"], total, _kcal(row["interaction"]), contribution]
            )
    table = _table(
        [
            "BSSE",
            "n-body",
            "model",
            "clusters",
            "total through n [Eh]",
            "interaction through n [kcal/mol]",
            "n-body contribution [kcal/mol]",
        ],
        rows,
    )
    if no_total:
        table += (
            "<p style='font:13px sans-serif'>n/a: no total energy, because the monomers were not computed in their own "
            "basis (cp without return_total_data); interaction energies are exact.</p>"
        )
    return table


def _numeric(levels: dict) -> dict[str, list[tuple[int, dict]]]:
    return {
        bsse: sorted((int(nb), row) for nb, row in by_nbody.items() if nb.isdigit())
        for bsse, by_nbody in normalized_levels(levels).items()
    }


def _figure_with_legend(legend: Literal["right", "below"] = "right", **options: Any) -> Any:
    """A Bokeh figure whose legend sits ``legend`` of the plot ("right" or "below"), never over its data,
    and hides a glyph when its entry is clicked (Bokeh's ``click_policy``).

    The glyphs' ``legend_label`` fill this legend, wherever it is: Bokeh puts their entries in
    the figure's one legend, and makes one inside the plot only where there is none.
    """
    from bokeh.models.annotations import Legend
    from bokeh.plotting import figure

    fig = figure(**options)
    fig.add_layout(Legend(click_policy="hide", orientation="horizontal" if legend == "below" else "vertical"), legend)
    return fig


def _convergence_plot(levels: dict):
    from bokeh.models import HoverTool
    from bokeh.palettes import Category10_10

    fig = _figure_with_legend(
        title="n-body convergence",
        x_axis_label="n-body order",
        y_axis_label="interaction energy through n [kcal/mol]",
        width=560,
        height=340,
    )
    numeric = _numeric(levels)
    for colour, (bsse, rows) in zip(Category10_10, numeric.items()):
        if not rows:
            continue
        xs = [nb for nb, _ in rows]
        ys = [row["interaction"] * HARTREE_TO_KCAL for _, row in rows]
        fig.line(xs, ys, color=colour, legend_label=bsse, line_width=2)
        fig.scatter(xs, ys, color=colour, size=8, legend_label=bsse)
    fig.xaxis.ticker = sorted({nb for rows in numeric.values() for nb, _ in rows}) or [1]
    fig.add_tools(HoverTool(tooltips=[("n", "@x"), ("kcal/mol", "@y{0.0000}")]))
    return fig


def _pair_heatmap(increments: dict, nfragments: int):
    """Fragment x fragment 2-body increments (kcal/mol) of the first BSSE treatment that has them."""
    from bokeh.models import ColumnDataSource, FactorRange, LinearColorMapper
    from bokeh.models.annotations import ColorBar
    from bokeh.palettes import RdBu11
    from bokeh.plotting import figure

    for bsse, rows in increments.items():  # noqa: B007 -- bsse, read after the break, titles the plot
        pairs = [r for r in rows if r["nbody"] == 2]
        if pairs:
            break
    else:
        return None
    data: dict[str, list] = {"i": [], "j": [], "kcal": []}
    for row in pairs:
        a, b = row["fragments"]
        for i, j in ((a, b), (b, a)):
            data["i"].append(str(i))
            data["j"].append(str(j))
            data["kcal"].append(row["energy"] * HARTREE_TO_KCAL)
    bound = max(abs(v) for v in data["kcal"]) or 1.0
    mapper = LinearColorMapper(palette=RdBu11, low=-bound, high=bound)
    names = [str(i) for i in range(1, nfragments + 1)]
    side = min(640, max(300, 14 * nfragments + 120))
    fig = figure(
        title=f"pair interactions ({bsse}, kcal/mol)",
        x_range=FactorRange(factors=names),
        y_range=FactorRange(factors=list(reversed(names))),
        width=side + 80,
        height=side,
        tooltips=[("pair", "(@i,@j)"), ("kcal/mol", "@kcal{0.0000}")],
        x_axis_label="fragment",
        y_axis_label="fragment",
    )
    fig.rect(
        "i",
        "j",
        1,
        1,
        source=ColumnDataSource(data),
        fill_color={"field": "kcal", "transform": mapper},
        line_color=None,
    )
    fig.add_layout(ColorBar(color_mapper=mapper, title="kcal/mol"), "right")
    fig.xaxis.major_label_orientation = math.pi / 2 if nfragments > 20 else 0
    return fig


def _increments_by_size(increments: dict, molecule: Any, cutoffs: Mapping[str, float] | None = None):
    """Each order's increments (|kcal/mol|, log scale) against the cluster's size: how fast they fall off,
    and where the distance cutoffs cut. For systems too large for a fragment x fragment map.

    At most ``mbdask.report.plotted-fragments`` clusters are drawn, an even share per order,
    chosen at random (a fixed seed) where an order has more, so that the cloud keeps its shape.
    """
    from bokeh.models import ColumnDataSource
    from bokeh.models.annotations import Span
    from bokeh.palettes import Category10_10

    bsse, rows = next(((b, r) for b, r in increments.items() if len(r)), (None, None))
    if rows is None:
        return None
    nbody = np.asarray(column_of(rows, "nbody"))
    energy = np.asarray(column_of(rows, "energy"), dtype=float) * HARTREE_TO_KCAL
    fragments = column_of(rows, "fragments")
    orders = sorted(n for n in set(nbody.tolist()) if isinstance(n, (int, np.integer)) and n >= 2)
    if not orders:
        return None
    share = max(1, config.number("mbdask.report.plotted-fragments") // len(orders))
    # every pair of a kept cluster is a kept dimer: within the 2-body cutoff, if there is one
    distances = pair_distances(molecule, float((cutoffs or {}).get("2", math.inf)))
    pick = np.random.default_rng(0)
    fig = _figure_with_legend(
        title=f"{bsse} increments against cluster size",
        x_axis_label="cluster size: largest pair distance, closest atoms [A]",
        y_axis_label="|increment| [kcal/mol]",
        y_axis_type="log",
        width=560,
        height=340,
        tooltips=[("cluster", "@name"), ("kcal/mol", "@kcal{0.000000}"), ("size [A]", "@size{0.00}")],
    )
    notes = []
    for colour, n in zip(itertools.cycle(Category10_10), orders):
        rows_n = np.flatnonzero(nbody == n)
        if len(rows_n) > share:
            notes.append(f"{n}-body: {share:,} of {len(rows_n):,}")
            rows_n = np.sort(pick.choice(rows_n, share, replace=False))
        clusters = [list(fragments[i]) for i in rows_n.tolist()]
        kcal = energy[rows_n]
        source = ColumnDataSource(
            {
                "size": distances.largest(np.array(clusters, dtype=np.int64).reshape(len(clusters), n)),
                "abs": np.maximum(np.abs(kcal), 1e-12),
                "kcal": kcal,
                "name": ["(" + ",".join(map(str, c)) + ")" for c in clusters],
            }
        )
        fig.scatter("size", "abs", source=source, color=colour, size=4, alpha=0.5, legend_label=f"{n}-body")
        cutoff = (cutoffs or {}).get(str(n))
        if cutoff is not None:
            fig.add_layout(
                Span(location=float(cutoff), dimension="height", line_color=colour, line_dash="dashed", line_width=2)
            )
    if notes:
        fig.title.text += f" (a random sample: {'; '.join(notes)})"
    return fig


def longest(fragments: Sequence[dict], count: int) -> list[dict]:
    """The ``count`` longest fragments, longest first (as ``heapq.nlargest`` by seconds), reading only
    their rows of a table."""
    seconds = np.asarray(column_of(fragments, "seconds"), dtype=float)
    return [fragments[i] for i in np.argsort(-seconds, kind="stable")[:count].tolist()]


def _drawn(fragments: Sequence[dict], limit: int | None = None) -> tuple[list[dict], str]:
    """The fragments a plot draws one by one: all, or the ``limit`` longest (and a title note saying so)."""
    # a plot draws at most mbdask.report.plotted-fragments one by one (a run of 679k
    # calculations draws its longest ones), so that the HTML stays a few MB
    limit = config.number("mbdask.report.plotted-fragments") if limit is None else limit
    if len(fragments) <= limit:
        return list(fragments), ""
    return longest(fragments, limit), f" (the {limit:,} longest of {len(fragments):,} fragments)"


def _timeline(all_fragments: Sequence[dict]):
    from bokeh.models import ColumnDataSource
    from bokeh.palettes import Category10_10

    fragments, note = _drawn(all_fragments)
    t0 = min(column_of(all_fragments, "start"))  # the run's first start, drawn or not
    workers = sorted({f["worker"] for f in fragments})
    data = {
        "worker": [f["worker"] for f in fragments],
        "left": [f["start"] - t0 for f in fragments],
        "right": [f["start"] - t0 + f["seconds"] for f in fragments],
        "name": [fragment_name(f["real"], f["basis"]) for f in fragments],
        "model": [f["model"] for f in fragments],
        "seconds": [f["seconds"] for f in fragments],
        "nbody": [len(f["real"]) for f in fragments],
    }
    fig = _figure_with_legend(
        title=f"task timeline per worker (colour: n-body order){note}",
        y_range=workers,
        x_axis_label="seconds since the first fragment started",
        width=1000,
        height=max(200, 28 * len(workers) + 90),
        tooltips=[("fragment", "@name"), ("model", "@model"), ("seconds", "@seconds{0.000}")],
    )
    for nbody in sorted(set(data["nbody"])):
        rows = [i for i, n in enumerate(data["nbody"]) if n == nbody]
        source = ColumnDataSource({key: [values[i] for i in rows] for key, values in data.items()})
        colour = Category10_10[(nbody - 1) % 10]
        fig.hbar(
            y="worker",
            left="left",
            right="right",
            height=0.8,
            source=source,
            fill_color=colour,
            line_color=None,
            legend_label=f"{nbody}-body",
        )
    return fig


def _predicted_vs_measured(fragments: Sequence[dict]):
    """Measured seconds against the prediction calibrated during the run (the cost model's own beside it, faint).

    One glyph per n-body order, so that a click on its legend entry hides that order alone.
    """
    from bokeh.models import ColumnDataSource
    from bokeh.palettes import Category10_10

    drawn, note = _drawn(fragments)
    rows = [f for f in drawn if f.get("predicted") and f["seconds"] > 0]
    if not rows:
        return None
    data = {
        "prior": [f["predicted"] for f in rows],
        "calibrated": [f.get("calibrated") or f["predicted"] for f in rows],
        "measured": [f["seconds"] for f in rows],
        "name": [fragment_name(f["real"], f["basis"]) for f in rows],
        "nbody": [len(f["real"]) for f in rows],
    }
    fig = _figure_with_legend(
        "below",
        title=f"predicted versus measured seconds per fragment{note}",
        x_axis_type="log",
        y_axis_type="log",
        width=560,
        height=440,
        x_axis_label="predicted [s] (calibrated by the fragments of its kind finished before it)",
        y_axis_label="measured [s]",
        tooltips=[
            ("fragment", "@name"),
            ("calibrated", "@calibrated{0.000}"),
            ("cost model", "@prior{0.000}"),
            ("measured", "@measured{0.000}"),
        ],
    )
    fig.scatter(
        "prior",
        "measured",
        source=ColumnDataSource(data),
        color="grey",
        size=4,
        alpha=0.25,
        legend_label="cost model before the run",
    )
    for nbody in sorted(set(data["nbody"])):
        source = ColumnDataSource(
            {key: [v for v, n in zip(values, data["nbody"]) if n == nbody] for key, values in data.items()}
        )
        fig.scatter(
            "calibrated",
            "measured",
            source=source,
            color=Category10_10[(nbody - 1) % 10],
            size=5,
            alpha=0.7,
            legend_label=f"{nbody}-body",
        )
    values = data["prior"] + data["calibrated"] + data["measured"]
    fig.line([min(values), max(values)], [min(values), max(values)], color="grey", line_dash="dashed")
    return fig


def time_averaged(
    times: Sequence[float] | np.ndarray, busy: Sequence[float] | np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """The step function ``busy`` (each value held from its time to the next) averaged over ``bins`` equal spans:
    bin starts and mean values, the same core-seconds in every bin, for a curve of a few thousand points
    instead of one per fragment start and stop (300,000 at 150,000 calculations)."""
    t, y = np.asarray(times, dtype=float), np.asarray(busy, dtype=float)
    area = np.concatenate([[0.0], np.cumsum(y[:-1] * np.diff(t))])  # core-seconds up to each time: piecewise linear
    edges = np.linspace(t[0], t[-1], bins + 1)
    return edges, np.append(np.diff(np.interp(edges, t, area)) / np.diff(edges), 0.0)


def _utilization_plot(
    times: Sequence[float] | np.ndarray, busy: Sequence[float] | np.ndarray, cores: int | None, mean: float
):
    bins = config.number("mbdask.report.plotted-fragments") // 10
    note = ""
    if len(times) > 2 * bins and times[-1] > times[0]:
        times, busy = time_averaged(times, busy, bins)
        note = f", averaged over {(times[1] - times[0]):.2g} s"
    fig = _figure_with_legend(
        title=f"busy cores over time (mean utilization {100 * mean:.0f}%{note})",
        x_axis_label="seconds since the first fragment started",
        y_axis_label="cores busy",
        width=1000,
        height=260,
    )
    fig.step(times, busy, mode="after", line_width=2, legend_label="busy cores")
    if cores:
        fig.line(
            [times[0], times[-1]],
            [cores, cores],
            color="grey",
            line_dash="dashed",
            legend_label=f"{cores} cores in the cluster",
        )
    return fig


def figures(result: Any) -> dict[str, Any]:
    """The report's Bokeh figures by name, for a notebook's ``bokeh.plotting.show``.

    ``convergence`` always, and ``pairs`` (a fragment x fragment map of the 2-body increments;
    absent without them) up to ``mbdask.report.pair-map-fragments`` fragments, ``sizes`` (each
    order's increments against the cluster's size) beyond; with timings
    also ``timeline``, ``utilization`` and ``predicted`` (absent without predictions).
    """
    extras = _extras(result)
    fragments = extras["timing"]["fragments"]
    cores = extras["timing"].get("cluster_cores")
    molecule = result.input_data.molecule
    found = {"convergence": _convergence_plot(extras["levels"])}
    if len(molecule.fragments) <= config.number("mbdask.report.pair-map-fragments"):
        found["pairs"] = _pair_heatmap(extras["increments"], len(molecule.fragments))
    else:
        cutoffs = (extras.get("screening") or {}).get("distance_cutoffs")
        found["sizes"] = _increments_by_size(extras["increments"], molecule, cutoffs)
    if fragments:
        found["timeline"] = _timeline(fragments)
        times, busy, mean = utilization(fragments, cores)
        found["utilization"] = _utilization_plot(times, busy, cores, mean)
        found["predicted"] = _predicted_vs_measured(fragments)
    return {name: fig for name, fig in found.items() if fig is not None}


def report_html(result: Any, title: str = "mbdask report", wall_seconds: float | None = None) -> str:
    """The self-contained HTML report of ``result`` (BokehJS inlined); ``wall_seconds``: see :func:`times_phrase`."""
    from bokeh.embed import file_html
    from bokeh.layouts import column, row
    from bokeh.models.widgets import Div
    from bokeh.resources import INLINE

    extras = _extras(result)
    timing = extras["timing"]
    fragments = timing["fragments"]
    head = (
        f"{_STYLE}<h2>{html.escape(title)}</h2><p style='font:13px sans-serif'>"
        f"<b>{html.escape(energy_phrase(result))}</b>.<br>{len(result.input_data.molecule.fragments)} fragments; "
        f"{html.escape(calculations_phrase(result))}; {html.escape(times_phrase(result, wall_seconds))}. "
        f"mbdask {html.escape(str(extras.get('version')))}.</p>"
    )
    if extras.get("partial"):
        head += f"<p><b>PARTIAL result</b>: complete through {extras['partial']['complete_nbody']}-body.</p>"
    screening = extras.get("screening")
    if screening:
        cutoffs = ", ".join(f"{n}-body {a:g} &#8491;" for n, a in screening["distance_cutoffs"].items()) or "none"
        rows = [
            [n, row["kept"], row["all"] - row["kept"], f"{100 * row['kept'] / row['all']:.1f}%"]
            for n, row in screening["orders"].items()
        ]
        head += (
            f"<h2>screening</h2><p style='font:13px sans-serif'>distance cutoffs: {cutoffs}; "
            "dropped clusters contribute zero.</p>"
        )
        head += _table(["n-body", "kept", "dropped", "kept of all"], rows)
    figs = figures(result)
    items: list[Any] = [Div(text=head + "<h2>n-body energies</h2>" + _nbody_table(extras["levels"]), width=1000)]
    items.append(row(*[figs[name] for name in ("convergence", "pairs", "sizes") if name in figs]))
    if fragments:
        items += [figs["timeline"], figs["utilization"]]
        slowest = longest(fragments, config.number("mbdask.report.slowest"))
        table = _table(
            ["fragment", "model", "seconds", "predicted (calibrated)", "cores", "worker"],
            [
                [
                    fragment_name(f["real"], f["basis"]),
                    f["model"],
                    f"{f['seconds']:.3f}",
                    _seconds(f.get("calibrated") or f.get("predicted")),
                    f["ncores"],
                    f["worker"],
                ]
                for f in slowest
            ],
        )
        slow = Div(text=f"{_STYLE}<h2>slowest fragments</h2>{table}", width=560)
        items.append(row(*[figs[name] for name in ("predicted",) if name in figs], slow))
        items.append(
            Div(text=f"{_STYLE}<h2>per n-body order</h2><pre>{html.escape(summary_table(result))}</pre>", width=1000)
        )
        items.append(
            Div(text=_STYLE + _costs_html(fragments) + _tail_html(fragments, timing.get("cluster_cores")), width=1000)
        )
    return file_html(column(*items), resources=INLINE, title=title)


def _costs_html(fragments: Sequence[dict]) -> str:
    """The cost model against measured seconds per kind of calculation (:func:`costs_by_kind`)."""
    kinds = costs_by_kind(fragments)
    if not any(k.over_predicted for k in kinds):
        return ""
    rows = [
        [
            k.model,
            k.name,
            k.count,
            _seconds(k.median_seconds),
            f"{k.total_seconds:.1f}",
            k.over_predicted or "",
            k.over_calibrated or "",
        ]
        for k in kinds
    ]
    return (
        "<h2>cost model against measured, per kind of calculation</h2><p style='font:13px sans-serif'>"
        "Measured seconds over the predicted ones (10th percentile, median, 90th percentile): the cost model's "
        "price before the run, and the price calibrated during it on the calculations of the same kind that had "
        "finished. 1.00 is exact; the order of work needs only the kinds priced alike, the time left needs the "
        "calibrated column near 1.</p>"
        + _table(
            ["model", "kind", "calcs", "median s", "sum s", "measured / cost model", "measured / calibrated"], rows
        )
    )


def _tail_html(fragments: Sequence[dict], cores: int | None) -> str:
    """Where the tail went (:func:`tail`): its length, its idle cores, the calculations still running in it."""
    found = tail(fragments, cores)
    if found is None:
        return ""
    text = (
        f"<h2>the tail</h2><p style='font:13px sans-serif'>From the last moment all {found.cores} cores were busy "
        f"to the last stop: {found.seconds:.2f} s, {100 * found.share:.1f}% of the fragment span; "
        f"{found.idle_core_seconds:.1f} idle core-seconds in it, {found.lost_seconds:.2f} s of wall time that a "
        "perfectly even finish would have saved. The longest calculations running in it "
        "(started: seconds from the tail's start, negative before it):</p>"
    )
    rows = [
        [
            fragment_name(fragments[f.index]["real"], fragments[f.index]["basis"]),
            fragments[f.index]["model"],
            f"{f.seconds:.3f}",
            f"{f.started:+.2f}",
        ]
        for f in found.running
    ]
    return text + _table(["fragment", "model", "seconds", "started"], rows)


def report(
    result: Any,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    wall_seconds: float | None = None,
) -> Path | str:
    """The HTML report of ``result``, written (atomically) to ``path`` when given.

    ``result``: a ``ManyBodyResult``; or the results of many structures (:func:`mbdask.compute_many`'s
    :class:`~mbdask.workflows.structures.ManyResults`), which get :func:`structures_report`'s page.
    ``wall_seconds``: the run's wall time as the caller measured it, shown beside the
    fragments' own times (:func:`times_phrase`; the command line passes the one it prints).

    Returns the path written, or the HTML when no path is given: a notebook cell ending with
    ``mbdask.report(result, "report.html")`` shows a file name, not megabytes of HTML.
    """
    if isinstance(result, Mapping):  # ManyResults: a mapping of names to results (a ManyBodyResult is no mapping)
        return structures_report(result, path, title or "mbdask report: structures")
    text = report_html(result, title or "mbdask report", wall_seconds)
    return text if path is None else _written(path, text)


def _written(path: str | os.PathLike, text: str) -> Path:
    write_atomic(path, text)
    return Path(path)


def structures_figure(results: Any):
    """Energies across structures (a trajectory's frames in order): total energy relative to the lowest
    and interaction energy, kcal/mol, one point per structure that finished."""
    from bokeh.models import ColumnDataSource, HoverTool

    numbered = [(i, row) for i, row in enumerate(results.rows(), start=1) if row["status"] != "failed"]
    if not numbered:
        return None
    index, rows = zip(*numbered)
    totals = [row.get("total_energy_Eh", row["return_energy_Eh"]) for row in rows]
    lowest = min(totals)
    source = ColumnDataSource(
        {
            "index": list(index),
            "name": [row["structure"] for row in rows],
            "relative": [(e - lowest) * HARTREE_TO_KCAL for e in totals],
            "interaction": [row.get("interaction_energy_kcal_mol", math.nan) for row in rows],
        }
    )
    fig = _figure_with_legend(
        width=900,
        height=320,
        title="energies across structures",
        x_axis_label="structure (in the order given)",
        y_axis_label="kcal/mol",
        tools="pan,box_zoom,wheel_zoom,reset,save",
    )
    relative, interaction = "total energy - lowest total", "interaction energy"
    fig.line("index", "relative", source=source, legend_label=relative, color="#1f77b4")
    fig.scatter(
        "index", "relative", source=source, color="#1f77b4", legend_label=relative
    )  # one entry: a click hides both
    fig.line("index", "interaction", source=source, legend_label=interaction, color="#d62728")
    fig.scatter("index", "interaction", source=source, color="#d62728", marker="square", legend_label=interaction)
    fig.add_tools(
        HoverTool(
            tooltips=[("structure", "@name"), ("relative", "@relative{0.000}"), ("interaction", "@interaction{0.000}")]
        )
    )
    return fig


def structures_report(
    results: Any, path: str | os.PathLike | None = None, title: str = "mbdask report: structures"
) -> Path | str:
    """The HTML report of a many-structure run (:class:`mbdask.workflows.structures.ManyResults`): the energies across
    structures as a plot and a table, the failures, and each structure's n-body table.

    Written to ``path`` when given, and the path returned (as :func:`report` does); otherwise the HTML.
    The wall time is ``results.wall_seconds``, the number the command line prints.
    """
    from bokeh.embed import file_html
    from bokeh.layouts import column
    from bokeh.models.widgets import Div
    from bokeh.resources import INLINE

    rows = results.rows()
    failed = [row for row in rows if row["status"] != "ok"]
    head = (
        f"{_STYLE}<h2>{html.escape(title)}</h2><p style='font:13px sans-serif'>{plural(len(rows), 'structure')}: "
        f"{len(rows) - len(failed)} finished, {len(failed)} failed or partial; "
        f"wall time {results.wall_seconds:.2f} s.</p>"
    )
    table = _table(
        [
            "#",
            "structure",
            "status",
            "total energy [Eh]",
            "interaction energy [kcal/mol]",
            "calculations",
            "fragment span [s]",
        ],
        [
            [
                i,
                row["structure"],
                row["status"],
                "" if "total_energy_Eh" not in row else f"{row['total_energy_Eh']:.10f}",
                "" if "interaction_energy_kcal_mol" not in row else f"{row['interaction_energy_kcal_mol']:.4f}",
                row.get("calculations", ""),
                _seconds(row.get("span_seconds")),
            ]
            for i, row in enumerate(rows, start=1)
        ],
    )
    items: list[Any] = [Div(text=head, width=1000)]
    fig = structures_figure(results)
    if fig is not None:
        items.append(fig)
    items.append(Div(text=f"{_STYLE}<h2>per structure</h2>{table}", width=1000))
    if failed:
        text = "".join(
            f"<li><b>{html.escape(row['structure'])}</b>: {html.escape(row['error'])}</li>" for row in failed
        )
        items.append(
            Div(text=f"{_STYLE}<h2>failed or partial</h2><ul style='font:13px sans-serif'>{text}</ul>", width=1000)
        )
    nbody = "".join(f"<h3>{html.escape(name)}</h3>{_nbody_table(_extras(results[name])['levels'])}" for name in results)
    items.append(Div(text=f"{_STYLE}<h2>n-body energies per structure</h2>{nbody}", width=1000))
    text = file_html(column(*items), resources=INLINE, title=title)
    return text if path is None else _written(path, text)

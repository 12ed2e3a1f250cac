"""What a finished run says at a glance: the CLI summary table and a self-contained HTML report.

Everything here reads only the ``ManyBodyResult`` (``extras["mbdask"]``: increments, levels,
per-fragment timings), so a report can be made later from a saved result file:
``mbdask.report(ManyBodyResult.model_validate_json(text), "report.html")``.

The HTML report is one file with BokehJS inlined (it opens without a network): the n-body
table, a pair-interaction heat map, the n-body convergence, a timeline per worker, predicted
versus measured seconds per fragment, cluster utilization over time, and the slowest
fragments.
"""

from __future__ import annotations

import html
import math
import os
from collections import defaultdict
from typing import Any, Optional, Union

from qcelemental import constants

HARTREE_TO_KCAL = constants.hartree2kcalmol
#: Rows in the table of slowest fragments.
SLOWEST = 10


def _extras(result: Any) -> dict:
    extras = (result.extras or {}).get("mbdask")
    if not extras:
        raise ValueError("this result has no mbdask extras (was it computed by mbdask?)")
    return extras


def fragment_name(real: list[int], basis: list[int]) -> str:
    """``(1,2)`` for a calculation in its own basis, ``(1,2)@(1,2,3)`` with ghosts."""
    name = "(" + ",".join(map(str, real)) + ")"
    return name if list(basis) == list(real) else name + "@(" + ",".join(map(str, basis)) + ")"


def _by_level(fragments: list[dict]) -> dict[tuple[str, int], list[dict]]:
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for frag in fragments:
        groups[(frag["model"], len(frag["real"]))].append(frag)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])))


def summary_table(result: Any, top: int = 3) -> str:
    """Per model chemistry and n-body order: calculations, wall span, task time, the most expensive ones."""
    timing = _extras(result)["timing"]
    rows = [f"{'model':<16} {'n-body':>6} {'calcs':>7} {'wall [s]':>9} {'tasks [s]':>10}  most expensive"]
    for (model, nbody), frags in _by_level(timing["fragments"]).items():
        wall = max(f["start"] + f["seconds"] for f in frags) - min(f["start"] for f in frags)
        costly = sorted(frags, key=lambda f: f["seconds"], reverse=True)[:top]
        names = ", ".join(f"{fragment_name(f['real'], f['basis'])} {f['seconds']:.2f} s" for f in costly)
        rows.append(f"{model:<16} {nbody:>6} {len(frags):>7} {wall:>9.2f} {sum(f['seconds'] for f in frags):>10.2f}  {names}")
    if timing.get("from_store"):
        rows.append(f"({timing['from_store']} calculations loaded from the checkpoint store are not in the table)")
    return "\n".join(rows)


def utilization(fragments: list[dict], cluster_cores: Optional[int]) -> tuple[list[float], list[float], float]:
    """Busy cores over time (step points from the first start) and the run's mean utilization.

    Mean utilization is core-seconds of fragment work over ``cluster_cores`` times the span
    from the first start to the last stop; without ``cluster_cores``, the most cores busy at once.
    """
    if not fragments:
        return [], [], 0.0
    t0 = min(f["start"] for f in fragments)
    events = sorted(
        [(f["start"] - t0, f["ncores"]) for f in fragments] + [(f["start"] + f["seconds"] - t0, -f["ncores"]) for f in fragments]
    )
    times, busy, level = [0.0], [0.0], 0.0
    for t, delta in events:
        level += delta
        times.append(t)
        busy.append(level)
    cores = cluster_cores or max(busy) or 1
    span = events[-1][0] or 1.0
    work = math.fsum(f["seconds"] * f["ncores"] for f in fragments)
    return times, busy, work / (cores * span)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='mbdask'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = (
    "<style>table.mbdask{border-collapse:collapse;font:13px sans-serif;margin:6px 0}"
    "table.mbdask td,table.mbdask th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "h2{font:bold 16px sans-serif;margin:14px 0 4px}</style>"
)


def _nbody_table(levels: dict) -> str:
    rows = []
    for bsse, by_nbody in levels.items():
        first = by_nbody.get("1", {}).get("through")
        for nbody, row in by_nbody.items():
            interaction = (row["through"] - first) * HARTREE_TO_KCAL if first is not None else float("nan")
            # the 1-body "contribution" is the sum of monomer energies: not a number to read in kcal/mol
            contribution = f"{row['contribution'] * HARTREE_TO_KCAL:.4f}" if nbody != "1" else ""
            rows.append([bsse, nbody, row["model"], row["nclusters"], f"{row['through']:.10f}", f"{interaction:.4f}", contribution])
    return _table(["BSSE", "n-body", "model", "clusters", "total through n [Eh]", "interaction through n [kcal/mol]", "n-body contribution [kcal/mol]"], rows)


def _numeric(levels: dict) -> dict[str, list[tuple[int, dict]]]:
    return {bsse: sorted((int(nb), row) for nb, row in by_nbody.items() if nb.isdigit()) for bsse, by_nbody in levels.items()}


def _convergence_plot(levels: dict):
    from bokeh.models import HoverTool
    from bokeh.palettes import Category10_10
    from bokeh.plotting import figure

    fig = figure(title="n-body convergence", x_axis_label="n-body order", y_axis_label="interaction energy through n [kcal/mol]", width=520, height=340)
    numeric = _numeric(levels)
    for colour, (bsse, rows) in zip(Category10_10, numeric.items()):
        if not rows or rows[0][0] != 1:
            continue
        xs = [nb for nb, _ in rows]
        ys = [(row["through"] - rows[0][1]["through"]) * HARTREE_TO_KCAL for _, row in rows]
        fig.line(xs, ys, color=colour, legend_label=bsse, line_width=2)
        fig.scatter(xs, ys, color=colour, size=8, legend_label=bsse)
    fig.xaxis.ticker = sorted({nb for rows in numeric.values() for nb, _ in rows}) or [1]
    fig.add_tools(HoverTool(tooltips=[("n", "@x"), ("kcal/mol", "@y{0.0000}")]))
    return fig


def _pair_heatmap(increments: dict, nfragments: int):
    """Fragment x fragment 2-body increments (kcal/mol) of the first BSSE treatment that has them."""
    from bokeh.models import ColorBar, ColumnDataSource, LinearColorMapper
    from bokeh.palettes import RdBu11
    from bokeh.plotting import figure

    for bsse, rows in increments.items():
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
        title=f"pair interactions ({bsse}, kcal/mol)", x_range=names, y_range=list(reversed(names)), width=side + 80, height=side,
        tooltips=[("pair", "(@i,@j)"), ("kcal/mol", "@kcal{0.0000}")], x_axis_label="fragment", y_axis_label="fragment",
    )
    fig.rect("i", "j", 1, 1, source=ColumnDataSource(data), fill_color={"field": "kcal", "transform": mapper}, line_color=None)
    fig.add_layout(ColorBar(color_mapper=mapper, title="kcal/mol"), "right")
    fig.xaxis.major_label_orientation = math.pi / 2 if nfragments > 20 else 0
    return fig


def _timeline(fragments: list[dict]):
    from bokeh.models import ColumnDataSource
    from bokeh.palettes import Category10_10
    from bokeh.plotting import figure

    t0 = min(f["start"] for f in fragments)
    workers = sorted({f["worker"] for f in fragments})
    data = {
        "worker": [f["worker"] for f in fragments],
        "left": [f["start"] - t0 for f in fragments],
        "right": [f["start"] - t0 + f["seconds"] for f in fragments],
        "name": [fragment_name(f["real"], f["basis"]) for f in fragments],
        "model": [f["model"] for f in fragments],
        "seconds": [f["seconds"] for f in fragments],
        "colour": [Category10_10[(len(f["real"]) - 1) % 10] for f in fragments],
    }
    fig = figure(
        title="task timeline per worker (colour: n-body order)", y_range=workers, x_axis_label="seconds since the first fragment started",
        width=1000, height=max(200, 28 * len(workers) + 90), tooltips=[("fragment", "@name"), ("model", "@model"), ("seconds", "@seconds{0.000}")],
    )
    fig.hbar(y="worker", left="left", right="right", height=0.8, source=ColumnDataSource(data), fill_color="colour", line_color=None)
    return fig


def _predicted_vs_measured(fragments: list[dict]):
    from bokeh.models import ColumnDataSource
    from bokeh.palettes import Category10_10
    from bokeh.plotting import figure

    rows = [f for f in fragments if f.get("predicted") and f["seconds"] > 0]
    if not rows:
        return None
    data = {
        "predicted": [f["predicted"] for f in rows],
        "measured": [f["seconds"] for f in rows],
        "name": [fragment_name(f["real"], f["basis"]) for f in rows],
        "colour": [Category10_10[(len(f["real"]) - 1) % 10] for f in rows],
    }
    fig = figure(
        title="predicted versus measured seconds per fragment", x_axis_type="log", y_axis_type="log", width=520, height=400,
        x_axis_label="predicted [s]", y_axis_label="measured [s]", tooltips=[("fragment", "@name"), ("predicted", "@predicted{0.000}"), ("measured", "@measured{0.000}")],
    )
    fig.scatter("predicted", "measured", source=ColumnDataSource(data), color="colour", size=5, alpha=0.6)
    low = min(min(data["predicted"]), min(data["measured"]))
    high = max(max(data["predicted"]), max(data["measured"]))
    fig.line([low, high], [low, high], color="grey", line_dash="dashed")
    return fig


def _utilization_plot(times: list[float], busy: list[float], cores: Optional[int], mean: float):
    from bokeh.plotting import figure

    fig = figure(title=f"busy cores over time (mean utilization {100 * mean:.0f}%)", x_axis_label="seconds since the first fragment started", y_axis_label="cores busy", width=1000, height=260)
    fig.step(times, busy, mode="after", line_width=2)
    if cores:
        fig.line([times[0], times[-1]], [cores, cores], color="grey", line_dash="dashed", legend_label=f"{cores} cores in the cluster")
    return fig


def figures(result: Any) -> dict[str, Any]:
    """The report's Bokeh figures by name, for a notebook's ``bokeh.plotting.show``.

    ``convergence`` and ``pairs`` (absent without 2-body increments) always; with timings
    also ``timeline``, ``utilization`` and ``predicted`` (absent without predictions).
    """
    extras = _extras(result)
    fragments = extras["timing"]["fragments"]
    cores = extras["timing"].get("cluster_cores")
    found = {
        "convergence": _convergence_plot(extras["levels"]),
        "pairs": _pair_heatmap(extras["increments"], len(result.input_data.molecule.fragments)),
    }
    if fragments:
        found["timeline"] = _timeline(fragments)
        times, busy, mean = utilization(fragments, cores)
        found["utilization"] = _utilization_plot(times, busy, cores, mean)
        found["predicted"] = _predicted_vs_measured(fragments)
    return {name: fig for name, fig in found.items() if fig is not None}


def report_html(result: Any, title: str = "mbdask report") -> str:
    """The self-contained HTML report of ``result`` (BokehJS inlined)."""
    from bokeh.embed import file_html
    from bokeh.layouts import column, row
    from bokeh.models import Div
    from bokeh.resources import INLINE

    extras = _extras(result)
    timing = extras["timing"]
    fragments = timing["fragments"]
    energy = result.properties.return_energy
    head = (
        f"{_STYLE}<h2>{html.escape(title)}</h2><p style='font:13px sans-serif'>"
        f"{len(result.input_data.molecule.fragments)} fragments, {extras['nfragment_calculations']} fragment calculations "
        f"({timing.get('from_store', 0)} from the checkpoint store) on {len(timing['workers'])} workers; "
        f"return energy {energy:.10f} Eh; sum of fragment times {timing['sum_task_seconds']:.2f} s, "
        f"span {timing['span_seconds']:.2f} s. mbdask {html.escape(str(extras.get('version')))}.</p>"
    )
    if extras.get("partial"):
        head += f"<p><b>PARTIAL result</b>: complete through {extras['partial']['complete_nbody']}-body.</p>"
    screening = extras.get("screening")
    if screening:
        cutoffs = ", ".join(f"{n}-body {a:g} &#8491;" for n, a in screening["distance_cutoffs"].items()) or "none"
        rows = [[n, row["kept"], row["all"] - row["kept"], row["candidates"], f"{100 * row['kept'] / row['all']:.1f}%"] for n, row in screening["orders"].items()]
        head += f"<h2>screening</h2><p style='font:13px sans-serif'>distance cutoffs: {cutoffs}; dropped clusters contribute zero.</p>"
        head += _table(["n-body", "kept", "dropped", "candidates", "kept of all"], rows)
    figs = figures(result)
    items: list[Any] = [Div(text=head + "<h2>n-body energies</h2>" + _nbody_table(extras["levels"]), width=1000)]
    items.append(row(*[figs[name] for name in ("convergence", "pairs") if name in figs]))
    if fragments:
        items += [figs["timeline"], figs["utilization"]]
        slowest = sorted(fragments, key=lambda f: f["seconds"], reverse=True)[:SLOWEST]
        table = _table(
            ["fragment", "model", "seconds", "predicted", "cores", "worker"],
            [[fragment_name(f["real"], f["basis"]), f["model"], f"{f['seconds']:.3f}", f"{f['predicted']:.3f}" if f.get("predicted") else "", f["ncores"], f["worker"]] for f in slowest],
        )
        slow = Div(text=f"{_STYLE}<h2>slowest fragments</h2>{table}", width=560)
        items.append(row(*[figs[name] for name in ("predicted",) if name in figs], slow))
        items.append(Div(text=f"{_STYLE}<h2>per n-body order</h2><pre>{html.escape(summary_table(result))}</pre>", width=1000))
    return file_html(column(*items), resources=INLINE, title=title)


def report(result: Any, path: Union[str, os.PathLike, None] = None, title: str = "mbdask report") -> str:
    """The HTML report of ``result``; written (atomically) to ``path`` when given. Returns the HTML."""
    text = report_html(result, title)
    if path is not None:
        from .outputs import write_atomic

        write_atomic(path, text)
    return text

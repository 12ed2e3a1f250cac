"""A result's tables as pandas DataFrames, one call each.

Chemists analyse in pandas. A result carries three tables in ``extras["mbdask"]``: the
increment of every cluster per BSSE treatment, the energies per n-body order, and the timing
of every fragment calculation. Small results hold them as lists of dicts, large ones as
:class:`~mbdask.tables.Rows`, and a result read from JSON without :func:`mbdask.load_result`
holds them as whatever the JSON says: these functions take all of them and give the same
DataFrame, so that an analysis does not depend on the size of the run.

Every frame has the plain index 0, 1, 2 ... and keeps everything in its columns (nothing is
hidden in the index); energies are in Eh as in the result, times in seconds. Index lists
(``fragments``, ``real``, ``basis``) are tuples of 1-based fragment indices, as QCManyBody
numbers fragments. pandas is optional: ``pip install "mbdask[pandas]"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mbdask.errors import BadInputError
from mbdask.results.assemble import INCREMENT_COLUMNS, TIMING_COLUMNS
from mbdask.tables import Block, Rows, import_pandas

if TYPE_CHECKING:
    import pandas

#: Columns of :func:`levels_frame`, after ``bsse`` and ``nbody``.
LEVEL_COLUMNS = ("model", "contribution", "through", "interaction", "nclusters")


def increments_frame(result: Any) -> pandas.DataFrame:
    """Every cluster's increment, one row per cluster and BSSE treatment.

    Columns ``bsse``, ``nbody`` (int), ``model``, ``fragments`` (a tuple of the cluster's
    fragments, 1-based) and ``energy`` (Eh); the rows in the order of the result (per BSSE
    treatment, by order). ``frame.groupby(["bsse", "nbody"]).energy.sum()`` gives QCManyBody's
    n-body contributions. ``result``: a ``ManyBodyResult`` (or its dict).
    """
    increments = _extras(result, "increments_frame").get("increments", {})
    blocks: list[Block] = []
    for bsse, rows in increments.items():
        table = _rows(rows, INCREMENT_COLUMNS, f"increments[{bsse!r}]")
        blocks += [(columns, {**constants, "bsse": bsse}) for columns, constants in table.blocks]
    return _frame(blocks, ("bsse", *INCREMENT_COLUMNS), "increments_frame")


def levels_frame(result: Any) -> pandas.DataFrame:
    """The energies per n-body order, one row per BSSE treatment and order (``extras["mbdask"]["levels"]``).

    Columns ``bsse``, ``nbody`` (int; the text ``"supersystem"`` on a supersystem row, where the
    input has one), ``model``, ``contribution`` (the sum of that order's increments), ``through``
    (total energy through that order; NaN where none exists), ``interaction`` (interaction energy
    through that order), ``nclusters``; energies in Eh. docs/api.md says what each means.
    """
    levels = _extras(result, "levels_frame").get("levels", {})
    rows = [
        {"bsse": bsse, "nbody": int(nbody) if str(nbody).isdigit() else nbody, **row}
        for bsse, orders in levels.items()
        for nbody, row in orders.items()
    ]
    names = ("bsse", "nbody", *LEVEL_COLUMNS)
    return _frame(Rows.from_dicts(rows, names).blocks, names, "levels_frame")


def timings_frame(result: Any) -> pandas.DataFrame:
    """Every computed fragment calculation's timing, one row each (those taken from a store are not timed).

    Columns ``model``, ``real`` and ``basis`` (tuples of fragments: the calculation's real atoms
    and its basis), ``seconds``, ``start`` (epoch seconds, the worker's clock), ``worker``,
    ``ncores``, ``predicted`` (the cost model's seconds before the run), ``own_seconds`` (the
    program's own time, without mbdask's), ``calibrated`` (the prediction corrected by the
    fragments of its kind done when it started); NaN where a value is missing.
    ``frame.groupby(frame.real.map(len)).seconds.sum()`` is the time per n-body order.
    """
    timing = _extras(result, "timings_frame").get("timing", {})
    rows = _rows(timing.get("fragments", []), TIMING_COLUMNS, 'timing["fragments"]')
    return _frame(rows.blocks, TIMING_COLUMNS, "timings_frame")


def _extras(result: Any, what: str) -> Mapping[str, Any]:
    """``result.extras["mbdask"]`` of a ``ManyBodyResult`` or of its dict; a result without them is bad input."""
    extras = result.get("extras") if isinstance(result, Mapping) else getattr(result, "extras", None)
    found = (extras or {}).get("mbdask")
    if not isinstance(found, Mapping):
        raise BadInputError(f"{what}: not an mbdask result (no extras['mbdask']): {type(result).__name__}")
    return found


def _rows(rows: Any, names: Sequence[str], where: str) -> Rows:
    """A table of the extras as :class:`Rows`, whichever form it is in."""
    if isinstance(rows, Rows):
        return rows
    if isinstance(rows, Mapping) and "table" in rows:
        raise BadInputError(
            f"{where} is in the file {rows['table']}: read the result with mbdask.load_result, which reads it back"
        )
    return Rows.from_dicts(list(rows), names)


def _frame(blocks: list[Block], names: Sequence[str], what: str) -> pandas.DataFrame:
    import_pandas(what)  # its message names the function that was called
    return Rows(blocks, names).to_pandas()

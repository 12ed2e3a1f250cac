"""Per-row data of large expansions kept as columns, and written beside the result as CSV.

An expansion of (H2O)64 at 4-body has 679,120 calculations and 679,120 cluster increments.
As Python dicts (one per row, as small results carry them in ``extras["mbdask"]``) that is
gigabytes on the worker that assembles the result and a 280 MB result JSON. :class:`Rows`
holds the same rows as a few NumPy columns (tens of MB) and still reads as a list of dicts
(``len``, indexing, iteration), so the report and the profile work on either.

A result saved with :func:`mbdask.save_result` writes each :class:`Rows` found in
``extras["mbdask"]`` to a gzipped CSV file beside the JSON (``result.json`` ->
``result.increments.nocp.csv.gz``, ``result.timing.fragments.csv.gz``...) and leaves
``{"table": "<file name>", "rows": n, "columns": [...]}`` in its place;
:func:`mbdask.load_result` reads them back. CSV because every tool a chemist uses reads it
(``pandas.read_csv`` reads the ``.gz`` as it is).

:meth:`Rows.to_pandas` makes a pandas DataFrame of the rows in one call, column by column
from the blocks (no dict per row), for chemists who analyse in pandas; pandas is an optional
extra (``pip install "mbdask[pandas]"``), imported only then.
"""

from __future__ import annotations

import bisect
import csv
import gc
import gzip
import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic_core import SchemaSerializer, core_schema

if TYPE_CHECKING:
    import pandas

#: Columns whose values are lists of fragment indices; in CSV they read "1 5 9".
INDEX_COLUMNS = frozenset({"fragments", "real", "basis"})

Block = tuple[dict[str, Any], dict[str, Any]]


def _plain(value: Any) -> Any:
    """A NumPy value as the Python value a dict row would hold."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class Ragged(Sequence):
    """Lists of integers of varying length (a fragment list per row) as one flat array and offsets.

    679,120 short lists are millions of Python objects: slow to pickle and unpickle (the
    cyclic garbage collector walks them again and again while they are made) and ~100 bytes
    each. Two arrays are neither.
    """

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]]) -> Ragged:
        lengths = np.fromiter((len(item) for item in lists), dtype=np.int64, count=len(lists))
        flat = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32, count=int(lengths.sum()))
        return cls(flat, np.concatenate([[0], np.cumsum(lengths)]))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> list[int]:  # type: ignore[override]
        index = range(len(self))[index]
        return self.flat[self.offsets[index] : self.offsets[index + 1]].tolist()

    def tolist(self) -> list[list[int]]:
        flat, bounds = self.flat.tolist(), self.offsets.tolist()
        return [flat[a:b] for a, b in zip(bounds, bounds[1:])]


class Coded(Sequence):
    """Texts from a few distinct values (model and worker names) as codes into those values."""

    def __init__(self, values: list, codes: np.ndarray):
        self.values, self.codes = values, codes

    @classmethod
    def from_list(cls, items: Sequence[str | None]) -> Coded:
        index: dict[str | None, int] = {}
        codes = np.fromiter((index.setdefault(item, len(index)) for item in items), dtype=np.int32, count=len(items))
        return cls(list(index), codes)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: int) -> str | None:  # type: ignore[override]
        return self.values[self.codes[index]]

    def tolist(self) -> list:
        return [self.values[code] for code in self.codes.tolist()]


def _compact(values: Any) -> Any:
    """A list column in its compact form: numbers as a NumPy array, index lists as :class:`Ragged`,
    texts with few distinct values as :class:`Coded`; anything else stays a list."""
    if not isinstance(values, list) or not values:
        return values
    kinds = {type(value) for value in values}
    if kinds <= {float} or kinds <= {int}:
        return np.array(values)
    if kinds <= {list, tuple} and all(isinstance(x, int) for x in values[0]):
        return Ragged.from_lists(values)
    if kinds <= {str, type(None)}:
        coded = Coded.from_list(values)
        if len(coded.values) * 4 <= len(values):
            return coded
    return values


def none_for_nan(values: np.ndarray) -> list[float | None]:
    """A float column as Python values, NaN (no value) as None, as a list of dicts holds it."""
    return [None if value != value else value for value in values.tolist()]


def _column_list(column: Any) -> list:
    return column.tolist() if hasattr(column, "tolist") else list(column)


class Rows(Sequence):
    """Rows of one table stored as blocks of columns; reads like a list of dicts.

    A block is ``(columns, constants)``: ``columns`` maps a name to a sequence (a NumPy
    array, a 2-D one for index lists, or a list), ``constants`` a name to one value for
    every row of the block (the n-body order of a level's increments, say), so that a
    column repeating one value costs nothing. Blocks are concatenated in order.
    """

    #: Pydantic (``result.model_dump_json()``, ``model_dump()``) writes the rows as a list of dicts,
    #: as a small result holds them; :func:`mbdask.save_result` writes them to CSV instead.
    __pydantic_serializer__ = SchemaSerializer(
        core_schema.any_schema(serialization=core_schema.plain_serializer_function_ser_schema(lambda rows: list(rows)))
    )

    def __init__(self, blocks: Sequence[Block] = (), names: Sequence[str] | None = None):
        self._blocks: list[Block] = []
        self._ends: list[int] = []
        total = 0
        for columns, constants in blocks:
            columns = {name: _compact(column) for name, column in columns.items()}
            lengths = {len(column) for column in columns.values()}
            if len(lengths) > 1:
                raise ValueError(f"columns of one block differ in length: {sorted(lengths)}")
            size = lengths.pop() if lengths else 0
            if size:
                total += size
                self._blocks.append((dict(columns), dict(constants)))
                self._ends.append(total)
        first = self._blocks[0] if self._blocks else ({}, {})
        self.names: list[str] = list(names) if names is not None else [*first[1], *first[0]]

    @classmethod
    def from_columns(cls, **columns: Any) -> Rows:
        return cls([(columns, {})])

    @classmethod
    def from_dicts(cls, rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> Rows:
        """The columns ``names`` of ``rows`` (missing values None), numbers as arrays."""
        return cls([({name: [row.get(name) for row in rows] for name in names}, {})], names)

    @property
    def blocks(self) -> list[Block]:
        """The ``(columns, constants)`` blocks, in order."""
        return list(self._blocks)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("Rows index out of range")
        b = bisect.bisect_right(self._ends, index)
        columns, constants = self._blocks[b]
        offset = index - (self._ends[b - 1] if b else 0)
        return {**constants, **{name: _plain(column[offset]) for name, column in columns.items()}}

    def __iter__(self) -> Iterator[dict]:
        for columns, constants in self._blocks:
            names = list(columns)
            for values in zip(*(_column_list(columns[name]) for name in names)):
                yield {**constants, **dict(zip(names, values))}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Rows, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"Rows({len(self)} rows: {', '.join(self.names)})"

    def column(self, name: str) -> list:
        """One column over all blocks, as Python values."""
        out: list = []
        for (columns, constants), size in zip(self._blocks, self._sizes()):
            out.extend(_column_list(columns[name]) if name in columns else [constants.get(name)] * size)
        return out

    def lengths(self, name: str) -> np.ndarray:
        """Per row, the length of the index list in column ``name`` (the n-body order of ``real``), without making the
        lists."""
        parts = []
        for (columns, constants), size in zip(self._blocks, self._sizes()):
            column = columns.get(name, [constants.get(name)] * size)
            if isinstance(column, Ragged):
                parts.append(np.diff(column.offsets))
            elif isinstance(column, np.ndarray) and column.ndim == 2:
                parts.append(np.full(size, column.shape[1]))
            else:
                parts.append(np.array([len(value) for value in _column_list(column)], dtype=np.int64))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def to_pandas(self) -> pandas.DataFrame:
        """The rows as a pandas DataFrame: one column per name of :attr:`names`, in order, index 0, 1, 2 ... (the
        row's position, as ``rows[i]``).

        Built column by column from the blocks, never a dict per row: (H2O)64 4-body's 679,120 increments in
        0.3 s, 4-5x faster than a DataFrame of the rows as dicts (docs/benchmarks.md, ``bench_frames.py``).
        Numbers stay NumPy numbers (``float64``, ``int64``; a float column with missing values has NaN
        there), texts are texts, and index lists (``fragments``, ``real``, ``basis``) are tuples of
        ints: hashable, so that ``groupby("real")``, ``value_counts()`` and ``isin`` work on them.
        A column a block lacks is missing (NaN or None) for its rows.
        Needs pandas (``pip install "mbdask[pandas]"``).
        """
        pd = import_pandas("Rows.to_pandas")
        sizes = self._sizes()
        data = {}
        collecting = gc.isenabled()
        gc.disable()  # a tuple per row: cyclic collections would walk them again and again (4x slower)
        try:
            for name in self.names:
                parts = [
                    _frame_part(columns, constants, name, size)
                    for (columns, constants), size in zip(self._blocks, sizes)
                ]
                data[name] = _joined(parts)
        finally:
            if collecting:
                gc.enable()
        return pd.DataFrame(data, columns=list(self.names), index=pd.RangeIndex(len(self)))

    def _sizes(self) -> list[int]:
        return [end - start for start, end in zip([0, *self._ends], self._ends)]

    def write_csv(self, path: str | os.PathLike, gzipped: bool | None = None) -> None:
        """Write the rows to ``path``, one header line first; gzipped if ``gzipped`` (default: when the name ends in
        ``.gz``)."""
        if str(path).endswith(".gz") if gzipped is None else gzipped:
            # level 1: 679k rows in seconds, not the half minute of gzip's default level 9
            handle_cm: Any = gzip.open(path, "wt", newline="", compresslevel=1)
        else:
            handle_cm = open(path, "w", newline="")
        with handle_cm as handle:
            writer = csv.writer(handle)
            writer.writerow(self.names)
            for (columns, constants), size in zip(self._blocks, self._sizes()):
                made: list[tuple[Any, list[str]]] = []  # nocp's basis equals real: its texts are made once
                texts = [
                    _csv_texts(columns[name], name, made)
                    if name in columns
                    else [_csv_text(_csv_value(constants.get(name), name))] * size
                    for name in self.names
                ]
                if len(texts) > 1 and not any(_needs_quotes(column) for column in texts):
                    # what csv.writer writes for these texts (no quoting needed), a few times faster
                    handle.write("\r\n".join(map(",".join, zip(*texts))) + "\r\n")
                else:
                    writer.writerows(zip(*texts))

    @classmethod
    def read_csv(cls, path: str | os.PathLike) -> Rows:
        """Rows written by :meth:`write_csv`: index lists back as lists, numbers as numbers, empty as None."""
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rt", newline="") as handle:
            reader = csv.reader(handle)
            names = next(reader, [])
            texts = list(zip(*reader)) or [()] * len(names)
        return cls([({name: _from_csv(list(column), name) for name, column in zip(names, texts)}, {})], names)


def import_pandas(what: str) -> Any:
    """pandas, or an ImportError of one line that names the extra to install (pandas is optional)."""
    try:
        import pandas
    except ImportError:
        raise ImportError(f'{what} needs pandas: pip install "mbdask[pandas]"', name="pandas") from None
    return pandas


def _frame_part(columns: dict[str, Any], constants: dict[str, Any], name: str, size: int) -> np.ndarray | list:
    """One block's share of a DataFrame column: a 1-D NumPy array of numbers, or a list (texts, tuples, missing)."""
    if name not in columns:
        value = constants.get(name)
        if isinstance(value, (bool, int, float, np.number)) and not isinstance(value, bool):
            return np.full(size, value)
        return [tuple(value) if isinstance(value, (list, tuple, np.ndarray)) else value] * size
    column = columns[name]
    if isinstance(column, Ragged):
        flat, bounds = column.flat.tolist(), column.offsets.tolist()
        return [tuple(flat[a:b]) for a, b in zip(bounds, bounds[1:])]
    if isinstance(column, Coded):
        return np.array(column.values, dtype=object)[column.codes].tolist()
    if isinstance(column, np.ndarray):
        if column.ndim == 2:
            return list(map(tuple, column.tolist()))
        if column.dtype.kind in "iuf":
            return column
        return column.tolist()
    return [tuple(value) if isinstance(value, list) else value for value in column]


def _joined(parts: list[np.ndarray | list]) -> np.ndarray | list:
    """The blocks' parts of one column as one sequence: an array where every part is numbers, else a list.

    A column with no value at all (``predicted`` of a run without predictions) is NaN, as ``pandas.read_csv`` reads
    an empty column of the CSV file, so that arithmetic on it gives NaN rather than a TypeError on None.
    """
    if all(isinstance(part, np.ndarray) for part in parts):
        return np.concatenate(parts) if parts else np.zeros(0)
    values = list(
        itertools.chain.from_iterable(part.tolist() if isinstance(part, np.ndarray) else part for part in parts)
    )
    if all(value is None for value in values):
        return np.full(len(values), np.nan)
    return values


def _csv_value(value: Any, name: str) -> Any:
    if value is None:
        return ""
    if name in INDEX_COLUMNS:
        return " ".join(map(str, value))
    return value


def _csv_text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


def _csv_texts(column: Any, name: str, made: list[tuple[Any, list[str]]] | None = None) -> list[str]:
    """A column as the texts its CSV cells hold (what ``csv.writer`` would write for its values);
    ``made``: index columns already written in this block, reused where equal."""
    if name in INDEX_COLUMNS:
        if isinstance(column, Ragged):
            for other, texts in made or ():
                if np.array_equal(other.offsets, column.offsets) and np.array_equal(other.flat, column.flat):
                    return texts
            texts = _index_texts(column.flat, column.offsets)
            if made is not None:
                made.append((column, texts))
            return texts
        if isinstance(column, np.ndarray) and column.ndim == 2:
            return _index_texts(column.ravel(), np.arange(len(column) + 1) * column.shape[1])
        return [_csv_value(value, name) for value in _column_list(column)]
    if isinstance(column, np.ndarray) and column.dtype.kind == "f":
        return list(map(repr, column.tolist()))  # shortest text that reads back to the same float
    if isinstance(column, np.ndarray) and column.dtype.kind in "iub":
        return list(map(str, column.tolist()))
    if isinstance(column, Coded):
        cells = np.array([_csv_text(value) for value in column.values] or [""], dtype=object)
        return cells[column.codes].tolist()
    return [_csv_text(value) for value in _column_list(column)]


def _index_texts(flat: np.ndarray, offsets: np.ndarray) -> list[str]:
    """Lists of fragment indices as "1 5 9" texts, rows of one length at a time (679,120 rows in half a second)."""
    if not len(flat) or flat.min() < 0:
        bounds = offsets.tolist()
        values = flat.tolist()
        return [" ".join(map(str, values[a:b])) for a, b in zip(bounds, bounds[1:])]
    lengths = np.diff(offsets)
    out = np.empty(len(lengths), dtype=object)
    names = np.array([str(i) for i in range(int(flat.max()) + 1)], dtype=object)
    for length in np.unique(lengths).tolist():
        rows = np.flatnonzero(lengths == length)
        cells = names[flat[offsets[rows][:, None] + np.arange(length)]]
        out[rows] = [" ".join(row) for row in cells.tolist()] if length else [""] * len(rows)
    return out.tolist()


def _needs_quotes(texts: list[str]) -> bool:
    """Whether ``csv.writer`` would quote any of ``texts`` (a delimiter, quote or line break inside)."""
    joined = "".join(texts)
    return "," in joined or '"' in joined or "\n" in joined or "\r" in joined


def _from_csv(texts: list[str], name: str) -> Any:
    """One column read back: index lists as lists, then the first of int, float, text that reads every value."""
    if name in INDEX_COLUMNS:
        return [list(map(int, text.split())) for text in texts]
    for kind in (int, float):
        try:
            values = [None if text == "" else kind(text) for text in texts]
        except ValueError:
            continue
        return values
    return [None if text == "" else text for text in texts]


def replaced(node: Any, replace: Any, prefix: tuple[str, ...] = ()) -> Any:
    """A copy of nested dicts ``node`` with every :class:`Rows` (or table reference) replaced by
    ``replace(path, value)``."""
    if isinstance(node, Rows) or (
        isinstance(node, Mapping) and "table" in node and "rows" in node and "columns" in node
    ):
        return replace(prefix, node)
    if isinstance(node, Mapping):
        return {key: replaced(value, replace, prefix + (str(key),)) for key, value in node.items()}
    return node

"""Writing results: atomic (temporary file in the same folder, then rename), never half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mbdask.errors import BadInputError
from mbdask.tables import Rows, replaced


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (before any computation) if ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise BadInputError(f"{path}: output folder {parent} does not exist")
    if path.is_dir():
        raise BadInputError(f"{path}: output path is a folder")
    if not os.access(parent, os.W_OK):
        raise BadInputError(f"{path}: output folder {parent} is not writable")
    return path


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside ``path`` to write; renamed onto ``path`` when the block succeeds, removed if not."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a result file is as readable as any other
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    with replacing(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)


def save_result(result: Any, path: str | os.PathLike) -> list[Path]:
    """Write a ``ManyBodyResult`` as JSON to ``path``, its tables (large expansions) as CSV files beside it.

    Each :class:`~mbdask.tables.Rows` in ``extras["mbdask"]`` becomes
    ``<name>.<where>.csv.gz`` (``result.increments.nocp.csv.gz``...) and the JSON names it;
    the tables are written before the JSON, so a JSON on disk never names a missing file.
    Returns the paths written, the JSON last. :func:`load_result` reads it all back.
    """
    path = Path(path)
    stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.name
    files: list[Path] = []

    def written(where: tuple[str, ...], rows: Any) -> Any:
        if not isinstance(rows, Rows):  # already a reference to a table
            return rows
        file = path.with_name(f"{stem}.{'.'.join(where)}.csv.gz")
        with replacing(file) as tmp:
            rows.write_csv(tmp, gzipped=True)
        files.append(file)
        return {"table": file.name, "rows": len(rows), "columns": list(rows.names)}

    mbdask_extras = replaced(result.extras.get("mbdask") or {}, written)
    if files:
        result = result.model_copy(update={"extras": {**result.extras, "mbdask": mbdask_extras}})
    write_atomic(path, result.model_dump_json(indent=1))
    return [*files, path]


def load_result(path: str | os.PathLike) -> Any:
    """A ``ManyBodyResult`` saved by :func:`save_result` (or any result JSON), its CSV tables read back as rows."""
    from qcmanybody.models.v2 import ManyBodyResult

    path = Path(path)
    result = ManyBodyResult.model_validate_json(path.read_text())
    mbdask_extras = result.extras.get("mbdask")
    if not mbdask_extras:
        return result
    read = lambda where, ref: ref if isinstance(ref, Rows) else Rows.read_csv(path.with_name(ref["table"]))  # noqa: E731
    return result.model_copy(update={"extras": {**result.extras, "mbdask": replaced(mbdask_extras, read)}})

"""A checkpoint store of finished fragment calculations: one SQLite file, plain JSON inside.

Why SQLite: it ships with Python, needs no server, survives a killed process mid-write
(journal), and lets several processes (workers of one run, or two runs) write the same
file at once. Entries are JSON, never pickles, so opening someone else's store cannot run
code. Each entry carries the SHA-256 of its payload; an entry whose payload no longer
matches (disk corruption, a truncated copy, a hand edit) is reported, deleted and
recomputed, never used.

The key of an entry is the SHA-256 of everything that determines the numbers: program,
the atomic specification (method, basis, keywords, driver, protocols) and the fragment
molecule (symbols, geometry rounded to ``GEOMETRY_DECIMALS`` decimals in bohr, which atoms
are ghosts, fragment charges and multiplicities). Model-chemistry names and fragment
indices are not part of it: the same dimer in another run or another cluster is found.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np

from .errors import InputError

logger = logging.getLogger(__name__)

#: Geometry precision of the key, in decimals of bohr.
GEOMETRY_DECIMALS = 6
#: Changes whenever the key or payload format changes, so old entries are simply not found.
STORE_FORMAT = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fragments (
    key TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    payload TEXT NOT NULL,
    checksum TEXT NOT NULL,
    seconds REAL,
    created REAL
)
"""


def fragment_identity(program: str, specification: dict, molecule_arrays: dict) -> str:
    """The store key: SHA-256 of the canonical JSON of program, specification and molecule."""
    content = {
        "format": STORE_FORMAT,
        "program": program,
        "specification": specification,
        "molecule": molecule_arrays,
    }
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _encode_array(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"shape": list(value.shape), "data": value.ravel().tolist()}
    return value


def _decode_array(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"shape", "data"}:
        return np.asarray(value["data"], dtype=float).reshape(value["shape"])
    return value


def encode_output(output: dict) -> str:
    """JSON text of a fragment output (numbers exact: JSON floats round-trip float64)."""
    data = {k: v for k, v in output.items() if k not in ("values", "result")}
    data["values"] = {k: _encode_array(v) for k, v in output["values"].items()}
    if "result" in output:
        data["result"] = output["result"].model_dump_json()
    return json.dumps(data, separators=(",", ":"))


def decode_output(payload: str) -> dict:
    data = json.loads(payload)
    data["values"] = {k: _decode_array(v) for k, v in data["values"].items()}
    if "result" in data:
        from qcelemental.models.v2 import AtomicResult

        data["result"] = AtomicResult.model_validate_json(data["result"])
    return data


def _checksum(payload: str) -> str:
    return hashlib.sha256(payload.encode()).hexdigest()


class FragmentStore:
    """Finished fragment outputs by key. Picklable (only the path travels); one connection per thread."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = str(Path(path).expanduser())
        self._local = threading.local()
        self.corrupted: list[str] = []

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"FragmentStore({self.path!r})"

    @classmethod
    def open(cls, path: Union[str, os.PathLike]) -> "FragmentStore":
        """Open (creating if needed) and check it is a store; ``InputError`` if it cannot be."""
        target = Path(path).expanduser()
        if not target.parent.is_dir():
            raise InputError(f"store {path}: directory {target.parent} does not exist")
        store = cls(target)
        try:
            store.count()
        except sqlite3.DatabaseError as exc:
            raise InputError(f"store {path}: not an mbdask store ({exc})") from None
        return store

    @property
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=120, isolation_level=None)
            db.execute("PRAGMA busy_timeout = 120000")
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                try:
                    db.execute("PRAGMA journal_mode = WAL")
                except sqlite3.OperationalError:  # another process switching it at the same moment
                    pass
            db.execute(_SCHEMA)
            self._local.db = db
        return db

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM fragments").fetchone()[0])

    def put(self, key: str, label: str, output: dict) -> None:
        """Store one output (replacing an entry of the same key)."""
        payload = encode_output(output)
        seconds = float(output.get("stop", 0.0) - output.get("start", 0.0))
        self._db.execute(
            "INSERT OR REPLACE INTO fragments (key, label, payload, checksum, seconds, created) VALUES (?, ?, ?, ?, ?, ?)",
            (key, label, payload, _checksum(payload), seconds, time.time()),
        )

    def get(self, key: str) -> Optional[dict]:
        return self.get_many([key]).get(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, dict]:
        """Outputs found for ``keys``; corrupted entries are reported, deleted and left out."""
        keys = list(keys)
        found: dict[str, dict] = {}
        bad: list[str] = []
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, label, payload, checksum FROM fragments WHERE key IN ({marks})", chunk)
            for key, label, payload, checksum in rows:
                try:
                    if _checksum(payload) != checksum:
                        raise ValueError("checksum mismatch")
                    found[key] = decode_output(payload)
                except Exception as exc:  # any damage: never use the entry
                    logger.warning("store %s: entry %s (%s) is corrupted (%s); it will be recomputed", self.path, key[:12], label, exc)
                    bad.append(key)
        if bad:
            self.corrupted.extend(bad)
            self._db.executemany("DELETE FROM fragments WHERE key = ?", [(k,) for k in bad])
        return found

"""A checkpoint store of finished fragment calculations: one SQLite file, plain JSON inside.

The store is a file on the machine where mbdask runs (the client), and only the client
process opens it: it looks up what the store already has before the graph is built, and
writes each fragment's output as its unit's result reaches it (:class:`StoreWriter`, one
transaction per batch). Workers never open it, so no shared file system is needed for it,
and a relative path means the client's working directory.

Why SQLite: it ships with Python, needs no server, and survives a killed process
mid-write (journal). Its WAL journal also lets the client's threads (the writer, a
look-up) and two runs on the same machine use one file at once; it is not meant for a
network file system shared across hosts, and mbdask never uses it that way. Entries are
JSON, never pickles, so opening someone else's store cannot run code. Each entry carries
the SHA-256 of its payload; an entry whose payload no longer matches (disk corruption, a
truncated copy, a hand edit) is reported, deleted and recomputed, never used.

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
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qcelemental.util.serialization import jsonext_dumps, jsonext_loads

from mbdask import config
from mbdask.errors import BadInputError, plural

if TYPE_CHECKING:
    from distributed import Client, Future

logger = logging.getLogger(__name__)

#: Geometry precision of the key, in decimals of bohr.
GEOMETRY_DECIMALS = 6
#: Changes whenever the key changes, or the payload in a way older code cannot read, so old entries are
#: simply not found.
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


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def identity_parts(program: str, specification: dict) -> tuple[str, str]:
    """The canonical JSON of a store key before and after its molecule: the same for every fragment of a
    model chemistry, so a run encodes it once instead of once per fragment (a quarter of a key's cost)."""
    return '{"format":' + _canonical(STORE_FORMAT) + ',"molecule":', ',"program":' + _canonical(
        program
    ) + ',"specification":' + _canonical(specification) + "}"


def fragment_identity(program: str, specification: dict, molecule_arrays: dict) -> str:
    """The store key: SHA-256 of the canonical JSON of ``{"format", "molecule", "program", "specification"}``
    (keys sorted, no spaces)."""
    return identity_key(identity_parts(program, specification), _canonical(molecule_arrays))


def identity_key(parts: tuple[str, str], molecule_json: str) -> str:
    """:func:`fragment_identity` from its pieces: :func:`identity_parts` of the model chemistry, made once per run,
    and the molecule's canonical JSON (``FragmentFactory.identity_json``)."""
    head, tail = parts
    return hashlib.sha256((head + molecule_json + tail).encode()).hexdigest()


def _decode_array(value: Any) -> Any:
    """An array written as ``{"shape", "data"}`` (a list of floats), a form payloads of ``STORE_FORMAT`` 1
    may hold besides ``jsonext``'s: read, so that every store of this format still resumes."""
    if isinstance(value, dict) and set(value) == {"shape", "data"}:
        return np.asarray(value["data"], dtype=float).reshape(value["shape"])
    return value


def encode_output(output: dict) -> str:
    """JSON text of a fragment output: arrays as QCElemental's ``jsonext`` writes them (exact bytes and
    dtype; 15 times faster than a list of floats for a 576 x 576 Hessian, and smaller), a kept
    ``AtomicResult`` as its own JSON."""
    data = dict(output)
    if "result" in output:
        data["result"] = output["result"].model_dump_json()
    return jsonext_dumps(data)


def decode_output(payload: str) -> dict:
    # only arrays carry jsonext's marker: without one, the plain decoder (no hook called per dict)
    data = jsonext_loads(payload) if '"_nd_"' in payload else json.loads(payload)
    data["values"] = {k: _decode_array(v) for k, v in data["values"].items()}
    if "result" in data:
        from qcelemental.models.v2 import AtomicResult

        data["result"] = AtomicResult.model_validate_json(data["result"])
    return data


def _checksum(payload: str) -> str:
    return hashlib.sha256(payload.encode()).hexdigest()


class FragmentStore:
    """Finished fragment outputs by key, in one SQLite file opened by the client process only.

    The path is made absolute when the store is made (a relative one is taken from the
    current working directory). A store is not picklable: it never travels to a worker.
    One connection per thread.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(Path(path).expanduser())
        self._local = threading.local()
        self.corrupted: list[str] = []

    def __getstate__(self) -> dict:
        raise TypeError(f"{self!r} stays in the process that opened it: workers never open the checkpoint store")

    def __repr__(self) -> str:
        return f"FragmentStore({self.path!r})"

    @classmethod
    def open(cls, path: str | os.PathLike) -> FragmentStore:
        """Open (creating if needed) and check it is a store; ``BadInputError`` if it cannot be."""
        store = cls(path)
        target = Path(store.path)
        if not target.parent.is_dir():
            raise BadInputError(f"store {path}: directory {target.parent} does not exist")
        try:
            store.count()
        except sqlite3.DatabaseError as exc:
            raise BadInputError(f"store {path}: not an mbdask store ({exc})") from None
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
        self.put_many([(key, label, output)])

    def put_many(self, entries: Iterable[tuple[str, str, dict]]) -> int:
        """Store ``(key, label, output)`` entries in one transaction; returns how many.

        The payloads are encoded before the transaction starts, so the file is locked only
        for the inserts themselves.
        """
        now = time.time()
        rows = []
        for key, label, output in entries:
            payload = encode_output(output)
            seconds = float(output.get("stop", 0.0) - output.get("start", 0.0))
            rows.append((key, label, payload, _checksum(payload), seconds, now))
        if not rows:
            return 0
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO fragments (key, label, payload, checksum, seconds, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return len(rows)

    def get(self, key: str) -> dict | None:
        return self.get_many([key]).get(key)

    def find(self, jobs: Iterable[Any], key_of: Callable[[Any], str]) -> dict[str, dict]:
        """Outputs of ``jobs`` found here, by label, marked ``stored`` (a run passes them to its units instead of
        computing them)."""
        if self._db.execute("SELECT 1 FROM fragments LIMIT 1").fetchone() is None:
            return {}  # a new store: no key to make (679,120 keys are seconds of hashing)
        keys = {key_of(job): job for job in jobs}
        return {
            keys[k].label: {**out, "label": keys[k].label, "stored": True} for k, out in self.get_many(keys).items()
        }

    def get_many(self, keys: Iterable[str]) -> dict[str, dict]:
        """Outputs found for ``keys``; corrupted entries are reported, deleted and left out."""
        keys = list(keys)
        found: dict[str, dict] = {}
        bad: list[str] = []
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, label, payload, checksum FROM fragments WHERE key IN ({marks})", chunk
            )
            for key, label, payload, checksum in rows:
                try:
                    if _checksum(payload) != checksum:
                        raise ValueError("checksum mismatch")
                    found[key] = decode_output(payload)
                except Exception as exc:  # any damage: never use the entry
                    logger.warning(
                        "store %s: entry %s (%s) is corrupted (%s); it will be recomputed",
                        self.path,
                        key[:12],
                        label,
                        exc,
                    )
                    bad.append(key)
        if bad:
            self.corrupted.extend(bad)
            self._db.executemany("DELETE FROM fragments WHERE key = ?", [(k,) for k in bad])
        return found


def kept_for_next_run(store: FragmentStore | str | os.PathLike | None) -> str:
    """What a run that stopped early leaves for the next one, in words: the calculations in its
    store, from which the same command (the same store) resumes, or that nothing was kept."""
    if store is None:
        return (
            "nothing was saved (no store): with --store PATH (store= in Python) finished calculations are kept "
            "for the next run"
        )
    path = store.path if isinstance(store, FragmentStore) else os.fspath(store)
    try:
        count = (
            (store if isinstance(store, FragmentStore) else FragmentStore(path)).count() if os.path.exists(path) else 0
        )
    except (sqlite3.Error, OSError) as exc:
        return f"the store {path} cannot be read ({exc})"
    return (
        f"{plural(count, 'calculation is', 'calculations are')} in the store {path}: "
        "run the same command (the same store) to resume from them"
    )


#: Keys of fragment outputs that are not stored (``stored``: it came from the store; ``predicted``: this run's model).
_NOT_STORED = ("stored", "predicted")

_STOP = object()

#: What the writer needs of a tracked unit: its jobs, their store key, labels not to write.
_UnitInfo = tuple[Sequence[Any], Callable[[Any], str], Collection[str] | None]


class StoreWriter:
    """Writes fragment outputs into a store, in the client process, as their units finish.

    :meth:`track` takes the future of a unit (a task of :func:`mbdask.calculation.execute.run_unit`):
    once it has finished, a thread of the client fetches its result, writes the outputs
    it computed (not those that came from the store, nor labels in ``skip``) with one
    transaction per batch, and releases the future, so that the client holds an output
    only as long as it takes to write it. Failed or cancelled units are skipped; their
    error reaches the caller through the result. :meth:`add` writes outputs already at
    hand. :meth:`close` writes whatever has finished by then and stops.

    A write that fails (a full disk, a store on a file system gone read-only) does not stop
    the run: the outputs it held are counted in :attr:`not_saved`, the first failure is
    logged once (a full disk fails every write after it), and :meth:`close` says how many
    were not saved. A later run computes them again.
    """

    def __init__(self, store: FragmentStore, client: Client):
        self.store = store
        self.client = client
        #: unit results fetched in one request and written in one transaction (bounds what the client holds at once)
        self.write_chunk = config.number("mbdask.store.write-chunk")
        #: fragment outputs written so far
        self.written = 0
        #: the last error writing met (the first one logged as it happened), if any
        self.error: BaseException | None = None
        #: fragment outputs that finished but could not be written (the store's writes failed)
        self.not_saved = 0
        self._told = False  # the first failure was logged
        self._summed_up = False  # close said how many were not saved
        self._lock = threading.Lock()
        self._pending: dict[Future, _UnitInfo] = {}
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._sealed = False
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="mbdask-store-writer", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"StoreWriter({self.store.path!r}, written={self.written}, pending={len(self._pending)})"

    @property
    def pending(self) -> int:
        """Tracked units not written (nor skipped) yet."""
        return len(self._pending)

    def track(
        self,
        future: Future,
        jobs: Sequence[Any],
        key_of: Callable[[Any], str],
        skip: Collection[str] | None = None,
    ) -> None:
        """Write ``future``'s outputs of ``jobs`` (keyed by ``key_of(job)``) once it finishes; the writer owns the
        future."""
        with self._lock:
            if self._closing:
                future.release()
                return
            self._pending[future] = (jobs, key_of, skip)
        future.add_done_callback(self._queue.put)

    def add(self, outputs: dict[str, dict], jobs: Sequence[Any], key_of: Callable[[Any], str]) -> None:
        """Write ``outputs`` (by label) of ``jobs``, already at hand (not those that came from the store)."""
        self._queue.put((outputs, jobs, key_of))

    def seal(self) -> None:
        """No more units will be tracked: the thread ends once the tracked ones are written."""
        self._sealed = True
        self._queue.put(None)

    def close(self, patience: float | None = None) -> None:
        """Write what has finished by now (in the queue, or tracked and finished), release the rest, and stop.

        Returns once the writer is done, or when it has written nothing for ``patience``
        seconds (a result that can no longer be fetched, e.g. on a worker that is gone; default
        ``mbdask.store.close-patience``).
        """
        if patience is None:
            patience = config.number("mbdask.store.close-patience")
        with self._lock:
            self._closing = True
        self._queue.put(_STOP)
        written, since = self.written, time.monotonic()
        while self._thread.is_alive():
            self._thread.join(timeout=0.2)
            if self.written != written:
                written, since = self.written, time.monotonic()
            elif time.monotonic() - since > patience:
                logger.warning(
                    "store %s: gave up writing %s after %g s",
                    self.store.path,
                    plural(len(self._pending), "finished unit"),
                    patience,
                )
                break
        self._say_not_saved()

    def _finished(self) -> bool:
        return (self._sealed and not self._pending and self._queue.empty()) or self.client.status in (
            "closing",
            "closed",
        )

    def _loop(self) -> None:
        while True:
            try:
                items = [self._queue.get(timeout=1.0)]
            except queue.Empty:
                if self._finished():
                    return
                continue
            while len(items) < self.write_chunk:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in items)
            try:
                self._write([item for item in items if item is not None and item is not _STOP])
                if stop:
                    with self._lock:
                        rest = [f for f in self._pending if f.status == "finished"]
                    self._write(rest)
            except BaseException as exc:  # cancelled, client closed or lost its scheduler: never raised in this thread
                self._failed(exc, 0)
            if stop:
                with self._lock:
                    rest = list(self._pending)
                    self._pending.clear()
                for future in rest:
                    future.release()
                return
            if self._finished():
                return

    def _write(self, items: list[Any]) -> None:
        entries: list[tuple[str, str, dict]] = []
        futures: list[Future] = []
        for item in items:
            if isinstance(item, tuple):
                entries.extend(self._entries(*item))
            else:
                futures.append(item)
        self._put(entries)
        with self._lock:
            infos = {f: self._pending.pop(f) for f in futures if f in self._pending}
        finished = [f for f in infos if f.status == "finished"]
        for future in infos:
            if future.status != "finished":
                future.release()  # failed or cancelled: the result says why
        for i in range(0, len(finished), self.write_chunk):
            chunk = finished[i : i + self.write_chunk]
            try:
                results = self.client.gather({f.key: f for f in chunk}, errors="skip")
                entries = []
                for future in chunk:
                    if future.key in results:
                        entries.extend(self._entries(results[future.key], *infos[future]))
                del results
                self._put(entries)
            finally:
                for future in chunk:
                    future.release()

    @staticmethod
    def _entries(
        outputs: dict[str, dict],
        jobs: Sequence[Any],
        key_of: Callable[[Any], str],
        skip: Collection[str] | None = None,
    ) -> list:
        entries = []
        for job in jobs:
            output = outputs.get(job.label)
            if output is None or output.get("stored") or (skip and job.label in skip):
                continue
            entries.append((key_of(job), job.label, {k: v for k, v in output.items() if k not in _NOT_STORED}))
        return entries

    def _put(self, entries: list) -> None:
        if not entries:
            return
        try:
            self.written += self.store.put_many(entries)
        except (
            OSError,
            sqlite3.Error,
        ) as exc:  # a full disk (SQLite: "database or disk is full"), a read-only file system
            self._failed(exc, len(entries))

    def _failed(self, exc: BaseException, outputs: int) -> None:
        """A write (of ``outputs`` fragment outputs) failed: count it, and say so the first time only.

        Once the client is closing or has lost its scheduler, results cannot be fetched any more:
        that is the run ending, said by whoever ends it, not a failure of the store.
        """
        self.error = exc
        self.not_saved += outputs
        if self._told or self.client.status != "running":
            logger.debug(
                "store %s: could not write finished fragments (%s: %s)", self.store.path, type(exc).__name__, exc
            )
            return
        self._told = True
        logger.warning(
            "store %s: could not write finished fragments (%s: %s); the run goes on, and what is not saved is "
            "computed again next time",
            self.store.path,
            type(exc).__name__,
            exc,
        )

    def _say_not_saved(self) -> None:
        """At the end: how many finished fragment outputs the store did not get (once)."""
        if self.not_saved and not self._summed_up:
            self._summed_up = True
            logger.warning(
                "store %s: %s not saved (%s: %s); a later run computes %s again",
                self.store.path,
                plural(self.not_saved, "finished fragment calculation was", "finished fragment calculations were"),
                type(self.error).__name__,
                self.error,
                "it" if self.not_saved == 1 else "them",
            )

"""Reach a scheduler through its scheduler file, as ``dask scheduler --scheduler-file``, dask-mpi and
dask-jobqueue users do.

A scheduler file is the JSON a Dask scheduler writes at start (``{"address": "tcp://...", ...}``);
on a batch system it is how a client finds a scheduler whose host and port nobody knows in
advance. Dask's ``Client(scheduler_file=...)`` reads it, but waits for a missing file forever
(its ``timeout`` covers only the connection that follows) and, given a file that is not one,
fails later with a traceback about an address of ``None``. So here the file is waited for up
to the same ``timeout`` the Client connects within (Dask config ``distributed.comm.timeouts.connect``,
30 s by default: dask-mpi and a scheduler started in the same batch script write it within
seconds), looked at once, and only then handed to ``Client(scheduler_file=...)``. Every way
this can go wrong is one line (:class:`~mbdask.errors.BadInputError`, exit code 2 on the
command line).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import dask
from dask.utils import parse_timedelta
from distributed import Client

from mbdask.errors import BadInputError

#: How long a file that exists but is not yet valid JSON is read again: the scheduler may be
#: writing it right now (Dask itself retries 10 times within 0.1 s).
PARTLY_WRITTEN_SECONDS = 1.0


def connect_timeout(timeout: float | str | None = None) -> float:
    """Seconds to wait for the file and then for the connection: ``timeout``, else what a Dask Client waits
    (config ``distributed.comm.timeouts.connect``)."""
    value = timeout if timeout is not None else dask.config.get("distributed.comm.timeouts.connect")
    return float(parse_timedelta(value, default="s"))


def client_from_scheduler_file(
    path: str | os.PathLike,
    *,
    security: Any = None,
    timeout: float | str | None = None,
    say: Callable[[str], None] = lambda message: None,
) -> Client:
    """A Client of the scheduler that wrote ``path`` (``~`` expanded), once the file is there.

    ``timeout``: seconds (or "30s") to wait for the file to appear and then for the scheduler to
    answer (default: :func:`connect_timeout`); ``say`` is told once if the wait begins. A file in
    a folder that does not exist is refused at once (a typo, not a scheduler yet to start).
    """
    where = os.path.expanduser(os.fspath(path))
    if not where:
        raise BadInputError("scheduler file: an empty path")
    seconds = connect_timeout(timeout)
    folder = os.path.dirname(os.path.abspath(where))
    if not os.path.isdir(folder):
        raise BadInputError(f"scheduler file {where}: no such folder {folder}")
    if os.path.isdir(where):
        raise BadInputError(f"scheduler file {where}: is a folder, not a file")
    address = _wait_for_address(where, seconds, say)
    try:
        return Client(scheduler_file=where, timeout=seconds, security=security, set_as_default=False)
    except (OSError, ValueError) as exc:
        raise BadInputError(
            f"scheduler file {where} names {address}, which did not answer ({exc}); a scheduler that stopped "
            "leaves its file behind: start it again, or remove the file"
        ) from None


def _wait_for_address(where: str, seconds: float, say: Callable[[str], None]) -> str:
    """The scheduler's address from the file at ``where``, waiting up to ``seconds`` for the file to appear."""
    deadline = time.monotonic() + seconds
    if not os.path.exists(where):
        say(
            f"mbdask: waiting for the scheduler file {where} (up to {seconds:g} s; "
            "Dask config distributed.comm.timeouts.connect)"
        )
    while not os.path.exists(where):
        if time.monotonic() >= deadline:
            raise BadInputError(
                f"scheduler file {where}: not there after {seconds:g} s; start the scheduler that writes it "
                f"(dask scheduler --scheduler-file {where}, or dask-mpi --scheduler-file {where})"
            )
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    settled = time.monotonic() + PARTLY_WRITTEN_SECONDS
    while True:
        try:
            return _address_in(where)
        except BadInputError:
            if time.monotonic() >= settled:
                raise
            time.sleep(0.05)


def _address_in(where: str) -> str:
    """The ``address`` a scheduler file holds; a file that cannot be read or is not one is a :class:`BadInputError`."""
    try:
        with open(where, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise BadInputError(f"scheduler file {where}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise BadInputError(f"scheduler file {where}: not a Dask scheduler file (not text)") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadInputError(f"scheduler file {where}: not a Dask scheduler file (not JSON: {exc})") from None
    address = data.get("address") if isinstance(data, dict) else None
    if not isinstance(address, str) or not address:
        raise BadInputError(f'scheduler file {where}: not a Dask scheduler file (no "address" in it)')
    return address

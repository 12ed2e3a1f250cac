"""Exceptions with a meaning for users: each maps to one CLI exit code.

``BadInputError`` (exit 2) is raised before anything is submitted; ``FragmentFailedError``
(exit 1) is raised on a worker when a QC program fails on one fragment. Both carry a
one-line message, because that is what a chemist sees at the terminal.

``BadInputError`` is not called ``InputError`` because QCEngine has an ``InputError`` of
its own (a program refusing its input, which mbdask reports inside a ``FragmentFailedError``),
and one name would mean two things; ``mbdask.InputError``, release 0.1's name, still works
for a release, with a ``FutureWarning``.
"""

from __future__ import annotations

import re
from typing import Any


class MbdaskError(Exception):
    """Base class of mbdask's own errors."""

    exit_code = 1


class BadInputError(MbdaskError, ValueError):
    """The input cannot be run as given (bad file, impossible option, missing program)."""

    exit_code = 2


class NoWorkersError(MbdaskError, RuntimeError):
    """No worker joined the scheduler, or none was left, for longer than the worker timeout (exit 1)."""

    exit_code = 1


class SchedulerLostError(MbdaskError, RuntimeError):
    """The connection to the scheduler was lost during the run (it stopped, or its host went away; exit 1).

    Not an error of mbdask's or of the input: the message names the scheduler and what the
    checkpoint store kept, since the same run with the same store resumes from there.
    """

    exit_code = 1


class FragmentFailedError(MbdaskError, RuntimeError):
    """A QC program failed on one fragment calculation.

    Pickles by its constructor arguments so that Dask can carry it from worker to client.
    """

    exit_code = 1

    def __init__(self, model: str, real: tuple, basis: tuple, program: str, error_type: str, message: str):
        super().__init__(model, tuple(real), tuple(basis), program, error_type, message)
        self.model = model
        self.real = tuple(real)
        self.basis = tuple(basis)
        self.program = program
        self.error_type = error_type
        self.message = message

    def __str__(self) -> str:
        ghosts = sorted(set(self.basis) - set(self.real))
        where = f"fragments {list(self.real)}" + (f" with ghosts {ghosts}" if ghosts else "")
        return f"{self.program} failed on model '{self.model}', {where}: {self.error_type}: {self.summary}"

    @property
    def summary(self) -> str:
        """The informative line of a program's message (often the last of a traceback)."""
        lines = [ln.strip() for ln in (self.message or "").splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith("For further information")]
        errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b", ln)]
        return (errors or lines or ["no message"])[-1]


def plural(count: int, word: str, words: str = "") -> str:
    """``count`` and ``word`` as a message says them: "1 fragment", "3 fragments" (``words``: an irregular plural)."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


def __getattr__(name: str) -> Any:
    from mbdask._compat import old_errors_name  # InputError, release 0.1's name of BadInputError

    return old_errors_name(name)

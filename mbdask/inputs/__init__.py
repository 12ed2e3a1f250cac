"""Inputs: a ``ManyBodyInput`` from a file, a dict or an XYZ file, validated before anything starts.

``load`` reads and validates QCManyBody inputs (one-line ``BadInputError`` for everything
that can be wrong); ``xyz`` turns XYZ files into inputs (fragments from connectivity).
Imports only the package's foundations (``config``, ``errors``).
"""


def __getattr__(name: str) -> object:
    """Release 0.1's ``mbdask.inputs`` module, whose names now live in a module of this package (mbdask._compat)."""
    from mbdask._compat import moved_attribute

    return moved_attribute(__name__, name)

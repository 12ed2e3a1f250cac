"""Inputs: a ``ManyBodyInput`` from a file, a dict or an XYZ file, validated before anything starts.

``load`` reads and validates QCManyBody inputs (one-line ``BadInputError`` for everything
that can be wrong); ``xyz`` turns XYZ files into inputs (fragments from connectivity).
Imports only the package's foundations (``config``, ``errors``).
"""

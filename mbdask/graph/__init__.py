"""The Dask graph: keys, tasks and annotations of a planned expansion.

``build`` makes the graph (one task per unit of calculations, assembly nodes that depend
only on the clusters they need); ``screening_pass`` runs energy screening's cheap graph
and sends the expensive calculations as they are kept. Imports results and below.
"""


def __getattr__(name: str) -> object:
    """Release 0.1's ``mbdask.graph`` module, whose names now live in a module of this package (mbdask._compat)."""
    from mbdask._compat import moved_attribute

    return moved_attribute(__name__, name)

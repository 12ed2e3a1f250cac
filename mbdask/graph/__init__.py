"""The Dask graph: keys, tasks and annotations of a planned expansion.

``build`` makes the graph (one task per unit of calculations, assembly nodes that depend
only on the clusters they need); ``screening_pass`` runs energy screening's cheap graph
and sends the expensive calculations as they are kept. Imports results and below.
"""

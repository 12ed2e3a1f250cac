"""Planning: which calculations an expansion needs, what each costs, and how they are grouped.

Pure bookkeeping, no program runs: ``plan`` (calculations and increments from QCManyBody's
own compute map), ``manybody`` (the many-body algebra, cluster by cluster), ``screening``
and ``energy_screening`` (which clusters a screened expansion keeps), ``cost`` (predicted
seconds per calculation) and ``batching`` (calculations grouped into Dask tasks).
Imports inputs and the foundations.
"""

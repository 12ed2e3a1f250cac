"""Where the graph runs: a LocalCluster sized from the machine, or a client or scheduler given.

``cluster`` connects or starts a cluster, ``forked_workers`` starts local workers forked from
this process, ``workers`` checks what the workers can run and what each calculation
reserves of them, ``worker_environment`` the environment workers start with (one BLAS
thread). Imports the graph and below.
"""

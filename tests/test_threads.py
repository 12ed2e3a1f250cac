"""No oversubscription: concurrent fragments each get the cores they reserved, no more.

The workers here are started the way a user's own cluster might be: without Dask's
default ``OMP_NUM_THREADS=1``, and with BLAS/OpenMP told to use every core. mbdask's
pinning must still keep two concurrent xtb calls as fast per call as one alone.
"""

from __future__ import annotations

import statistics

import dask
import pytest
from distributed import Client, LocalCluster

import mbdask
from conftest import needs_xtb, xtb_input
from mbdask.cluster import usable_cores
from mbdask.execute import pinned_threads

pytestmark = needs_xtb


def _mean_dimer_seconds(result) -> float:
    times = [f["seconds"] for f in result.extras["mbdask"]["timing"]["fragments"]]
    return statistics.median(times)


def _unpinned_cluster(n_workers: int) -> LocalCluster:
    every_core = str(usable_cores())
    return LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, resources={"cores": 1},
        host="127.0.0.1", dashboard_address=None,
        env={"OMP_NUM_THREADS": every_core, "OPENBLAS_NUM_THREADS": every_core, "MKL_NUM_THREADS": every_core},
    )


@pytest.mark.skipif(usable_cores() < 2, reason="needs two cores")
def test_two_concurrent_xtb_fragments_run_as_fast_as_one():
    # (H2O)20 as four fragments of five waters: 30-atom dimers, big enough for BLAS threads to matter
    inp = xtb_input("water20-dodecahedron.xyz", max_nbody=2)
    mol = inp["molecule"]
    mol["fragments"] = [sum(mol["fragments"][i : i + 5], []) for i in range(0, 20, 5)]
    medians = {}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
        for n_workers in (1, 2):
            with _unpinned_cluster(n_workers) as cluster, Client(cluster, set_as_default=False) as client:
                mbdask.compute(inp, client)  # warm-up: imports, first xtb call
                medians[n_workers] = _mean_dimer_seconds(mbdask.compute(inp, client))
    assert medians[2] / medians[1] < 2.0, medians


def test_pinned_threads_limits_blas_and_openmp_pools():
    from threadpoolctl import threadpool_info

    import xtb.interface  # noqa: F401  (loads xtb's OpenMP and OpenBLAS)

    with pinned_threads(1):
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())

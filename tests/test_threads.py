"""No oversubscription: a fragment's QC call runs with as many threads as cores it reserved.

The workers here are started the way a user's own cluster might be: without Dask's
default ``OMP_NUM_THREADS=1``, and with BLAS/OpenMP told to use every core (and at least
:data:`STARTED_WITH` threads, so that the start-up setting differs from every reservation
tested even on a 2-core machine). The ``threads`` test double (tests/doubles.py) reports
the pools and environment it sees inside the call; they must show the reserved cores.
What this buys in wall time is measured, not tested: ``concurrent_fragment_slowdown`` in
benchmarks/bench_executors.py.
"""

from __future__ import annotations

import dask
import doubles
import pytest
from conftest import DATA, needs_xtb
from distributed import Client, LocalCluster

import mbdask
from mbdask.calculation.execute import pinned_threads
from mbdask.deploy.cluster import usable_cores
from mbdask.inputs.xyz import molecule_from_xyz

pytestmark = needs_xtb

#: Threads the workers start with: every core, and never fewer than 4.
STARTED_WITH = max(usable_cores(), 4)
#: What a user's environment might export for every core (Dask's nanny would set them to 1).
EVERY_CORE_ENVIRONMENT = {
    name: str(STARTED_WITH) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
}
#: A library with an OpenMP and an OpenBLAS pool, loaded on the workers before the run, as a
#: worker that has already run xtb has it: its pools are sized from the start-up environment.
LIBRARIES = ("xtb.interface",)


def _threads_input() -> dict:
    """Monomers and dimers of a water hexamer through the ``threads`` double, atomic results kept."""
    return {
        "specification": {
            "driver": "energy",
            "keywords": {"bsse_type": ["nocp"], "levels": {2: "threads"}},
            "specification": {"threads": {"program": "threads", "model": {"method": "threads"}}},
            "protocols": {"cluster_results": "all"},
        },
        "molecule": molecule_from_xyz(DATA / "water6-prism.xyz"),
    }


@pytest.fixture(scope="module")
def every_core_client():
    """Two single-thread worker processes declaring 2 cores each, started with every-core thread settings."""
    doubles.register_doubles()  # planning checks the program here too
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": {}}),
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            resources={"cores": 2},
            host="127.0.0.1",
            dashboard_address=None,
            env=EVERY_CORE_ENVIRONMENT,
            preload=["doubles"],
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


ONE_CORE_MACHINE = pytest.mark.skipif(usable_cores() < 2, reason="OpenBLAS caps its threads at the machine's cores")


@pytest.mark.parametrize("cores", [1, pytest.param(2, marks=ONE_CORE_MACHINE)])
def test_qc_call_sees_the_reserved_cores_in_its_thread_pools_and_environment(every_core_client, cores):
    outside = every_core_client.run(doubles.thread_settings, load=LIBRARIES)
    for seen in outside.values():  # the setting pinning has to undo is really there
        assert {k: seen["environment"].get(k) for k in EVERY_CORE_ENVIRONMENT} == EVERY_CORE_ENVIRONMENT
        assert max(pool["num_threads"] for pool in seen["pools"]) == STARTED_WITH
    libraries = {pool["filepath"] for seen in outside.values() for pool in seen["pools"]}

    result = mbdask.compute(_threads_input(), every_core_client, cores_per_fragment=cores)

    assert len(result.cluster_results) == 21
    for label, atomic in result.cluster_results.items():
        inside = atomic.extras["threads"]
        assert inside["ncores"] == cores, label
        assert {pool["filepath"] for pool in inside["pools"]} >= libraries, label
        assert {pool["filepath"]: pool["num_threads"] for pool in inside["pools"]} == {
            pool["filepath"]: cores for pool in inside["pools"]
        }, label
        assert set(inside["environment"]) >= set(EVERY_CORE_ENVIRONMENT), label
        assert inside["environment"] == {name: str(cores) for name in inside["environment"]}, label

    after = every_core_client.run(doubles.thread_settings)
    assert after == outside  # and the worker's own settings are given back after the call


def test_pinned_threads_limits_blas_and_openmp_pools():
    import xtb.interface  # noqa: F401  (loads xtb's OpenMP and OpenBLAS)
    from threadpoolctl import threadpool_info

    with pinned_threads(1):
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())


CONCURRENT_PINNING = """
import json, os, threading
from threadpoolctl import threadpool_info
from mbdask.calculation.execute import pinned_threads

os.environ["OMP_NUM_THREADS"] = "7"
first_in, second_in, first_done = threading.Event(), threading.Event(), threading.Event()
seen = {}

def first():  # enters first, finishes first
    with pinned_threads(1):
        first_in.set()
        second_in.wait(60)
    first_done.set()

def second():  # enters second, still runs when the first has finished
    first_in.wait(60)
    with pinned_threads(1):
        second_in.set()
        first_done.wait(60)
        seen["env"] = os.environ["OMP_NUM_THREADS"]
        seen["blas"] = sorted({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"})

threads = [threading.Thread(target=first), threading.Thread(target=second)]
for t in threads:
    t.start()
for t in threads:
    t.join(60)
seen["after"] = os.environ["OMP_NUM_THREADS"]
print(json.dumps(seen))
"""


def test_concurrent_calculations_in_one_process_keep_their_pinning_until_the_last_ends():
    """A worker with two threads: the first calculation to finish must not reset the other's pools.

    In a fresh interpreter: this test process may run in-process workers' calculations.
    """
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", CONCURRENT_PINNING], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["env"] == "1" and seen["blas"] == [1]
    assert seen["after"] == "7"  # the last one out restored what the first found

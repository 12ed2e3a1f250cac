"""mbdask versus QCManyBody run sequentially and versus a plain process pool, side by side.

Each executor runs the same expansion in the same process tree, one after another, and the
ratios printed are wall-time ratios from this one run (these machines are shared and noisy).

* ``qcmanybody``: ``ManyBodyComputer.from_manybodyinput`` as a user runs it today, in the
  settings of :data:`SEQUENTIAL`.
* ``pool``: ``concurrent.futures.ProcessPoolExecutor`` over QCManyBody's fragment molecules,
  one task per fragment, then ``ManyBodyCore.analyze``.
* ``mbdask``: ``mbdask.compute`` on a LocalCluster it starts itself (start-up included).

Infrastructure overhead of mbdask = 1 - (sum of fragment compute times / cores) / wall time.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import os
import time
from unittest import mock

import dask
import qcengine
from qcelemental.models.v2 import AtomicInput
from qcmanybody.v2 import ManyBodyComputer

import mbdask
from mbdask.calculation.execute import extract_properties, pinned_threads
from mbdask.deploy.cluster import usable_cores

mbdask.register_programs()  # sequential QCManyBody runs PySCF through mbdask's harness


#: Sequential QCManyBody settings: "default" as installed; "pinned" BLAS/OpenMP pools limited to
#: 1 thread (QCEngine still tells each program every core, and PySCF's harness then sets its own
#: OpenMP threads to them); "1 thread" both, with QCENGINE_NCORES=1 (issue #4's "pinned to 1").
SEQUENTIAL = ("default", "pinned", "1 thread")


def run_qcmanybody(inp, setting: str) -> tuple[float, float]:
    model = mbdask.load_input(inp)
    with contextlib.ExitStack() as stack:
        if setting in ("pinned", "1 thread"):
            stack.enter_context(pinned_threads(1))
        if setting == "1 thread":
            stack.enter_context(mock.patch.dict(os.environ, {"QCENGINE_NCORES": "1"}))
        start = time.perf_counter()
        result = ManyBodyComputer.from_manybodyinput(model)
        wall = time.perf_counter() - start
    return wall, float(result.properties.return_energy)


def _pool_task(program: str, atomic: AtomicInput, driver: str):
    with pinned_threads(1):
        res = qcengine.compute(atomic, program, raise_error=True, task_config={"ncores": 1})
    return extract_properties(res, driver)


def run_pool(inp, workers: int) -> tuple[float, float]:
    start = time.perf_counter()
    model = mbdask.load_input(inp)
    computer = ManyBodyComputer.from_manybodyinput(model, build_tasks=False)
    specs = mbdask.plan(model).specifications
    with concurrent.futures.ProcessPoolExecutor(workers, initializer=mbdask.register_programs) as pool:
        futures = {}
        for mc, label, mol in computer.qcmb_core.iterate_molecules():
            atomic = AtomicInput(molecule=mol, specification=copy.deepcopy(specs[mc]["specification"]))
            futures[label] = pool.submit(_pool_task, specs[mc]["program"], atomic, model.specification.driver.value)
        components = {label: f.result() for label, f in futures.items()}
    analyzed = computer.qcmb_core.analyze(components)
    return time.perf_counter() - start, float(analyzed["ret_energy"])


def run_mbdask(inp, workers: int, start_method: str | None = None) -> tuple[float, float, float, float]:
    """Wall time, energy, sum of fragment compute times, and seconds until the first fragment started.

    ``start_method``: how the LocalCluster's nannies start worker processes (Dask's
    ``distributed.worker.multiprocessing-method``; Dask's default is spawn).
    """
    config = {"distributed.worker.multiprocessing-method": start_method} if start_method else {}
    called = time.time()
    start = time.perf_counter()
    with dask.config.set(config):
        result = mbdask.compute(inp, n_workers=workers)
    wall = time.perf_counter() - start
    timing = result.extras["mbdask"]["timing"]
    first = min(f["start"] for f in timing["fragments"])
    return wall, float(result.properties.return_energy), timing["sum_task_seconds"], first - called


def compare(name: str, inp, workers: int | None = None, repeats: int = 1, forked: bool = False) -> dict:
    """Every executor ``repeats`` times, interleaved; each executor's best wall time counts.

    ``forked``: also mbdask with worker processes forked (as the process pool's are) instead of spawned.
    """
    workers = workers or usable_cores()
    runs: dict[str, list] = {"mbdask": [], "forked": [], "pool": [], **{setting: [] for setting in SEQUENTIAL}}
    for _ in range(repeats):
        runs["mbdask"].append(run_mbdask(inp, workers))
        if forked:
            runs["forked"].append(run_mbdask(inp, workers, start_method="fork"))
        runs["pool"].append(run_pool(inp, workers))
        for setting in SEQUENTIAL:
            runs[setting].append(run_qcmanybody(inp, setting))
    mbdask_s, _, busy, startup = min(runs["mbdask"])
    row: dict = {"case": name, "workers": workers, "repeats": repeats, "mbdask_s": mbdask_s}
    row["overhead"] = 1 - (busy / workers) / mbdask_s
    row["startup_share"] = startup / mbdask_s
    if forked:
        row["forked_s"], _, busy_forked, startup_forked = min(runs["forked"])
        row["forked_overhead"] = 1 - (busy_forked / workers) / row["forked_s"]
        row["forked_startup_share"] = startup_forked / row["forked_s"]
    row["pool_s"], _ = min(runs["pool"])
    for setting in SEQUENTIAL:
        row[f"qcmb {setting} s"], _ = min(runs[setting])
    fastest = min(row[f"qcmb {setting} s"] for setting in SEQUENTIAL)
    row["speedup_vs_1_thread"] = row["qcmb 1 thread s"] / mbdask_s
    row["speedup_vs_issue_best"] = min(row["qcmb default s"], row["qcmb 1 thread s"]) / mbdask_s
    row["speedup_vs_fastest"] = fastest / mbdask_s
    row["speedup_vs_pool"] = row["pool_s"] / mbdask_s
    row["ceiling"] = fastest / (busy / workers)
    reference = runs["1 thread"][0][1]
    row["max_energy_diff"] = max(abs(run[1] - reference) for runs_of in runs.values() for run in runs_of)
    return row


def concurrent_fragment_slowdown(workers: int = 2, nwaters: int = 20, group: int = 5) -> dict:
    """Median seconds of one xtb dimer calculation, run alone and ``workers`` at once, on workers
    started with every-core BLAS/OpenMP settings (no Dask ``OMP_NUM_THREADS=1``).

    What mbdask's thread pinning buys: unpinned, concurrent calls share the cores their pools
    each think they own and every call slows down; pinned, ``slowdown`` stays near 1 where the
    machine has a core per worker (a loaded machine gives more). tests/test_threads.py tests
    the mechanism (pools and environment inside the call); this measures the effect, and asserts
    no bound: on a busy 2-core machine ``slowdown`` reaches 2.1 whatever the pinning.

        PYTHONPATH=benchmarks python -c "import bench_executors as b; print(b.concurrent_fragment_slowdown())"
    """
    import statistics

    from clusters import xtb_input
    from distributed import Client, LocalCluster

    inp = xtb_input(nwaters, 2)
    molecule = inp["molecule"]
    # (H2O)20 as four fragments of five waters: 30-atom dimers, big enough for BLAS threads to matter
    molecule["fragments"] = [sum(molecule["fragments"][i : i + group], []) for i in range(0, nwaters, group)]
    every_core = str(usable_cores())
    env = {"OMP_NUM_THREADS": every_core, "OPENBLAS_NUM_THREADS": every_core, "MKL_NUM_THREADS": every_core}
    medians = {}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
        for n in (1, workers):
            with (
                LocalCluster(
                    n_workers=n,
                    threads_per_worker=1,
                    processes=True,
                    resources={"cores": 1},
                    host="127.0.0.1",
                    dashboard_address=None,
                    env=env,
                ) as cluster,
                Client(cluster, set_as_default=False) as client,
            ):
                mbdask.compute(inp, client)  # warm-up: imports, each worker's first xtb call
                fragments = mbdask.compute(inp, client).extras["mbdask"]["timing"]["fragments"]
                medians[n] = statistics.median(f["seconds"] for f in fragments)
    return {
        "workers": workers,
        "alone_s": medians[1],
        "concurrent_s": medians[workers],
        "slowdown": medians[workers] / medians[1],
    }

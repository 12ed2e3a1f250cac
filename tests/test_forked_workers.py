"""Local workers forked from a single-threaded process: same numbers, safe fallback, nothing left behind.

Each case runs in a fresh interpreter (this test process runs threads, so mbdask would rightly
refuse to fork from it), with the command line's own setting: BLAS/OpenMP pools at one thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, needs_xtb

TESTS = Path(__file__).resolve().parent

SCRIPT = """
import json, os, sys, threading, time
import psutil
import mbdask
from mbdask.deploy.cluster import connect
if __name__ == "__main__":
    if sys.argv[2] == "thread":  # something else already runs a thread in this process
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
    plan = mbdask.plan(sys.argv[1])
    conn = connect(n_workers=2, worker_imports=["xtb.interface"])
    # a forked worker runs this very command line; a spawned one, multiprocessing's spawn entry point
    answers = conn.client.run(lambda: psutil.Process().cmdline() == psutil.Process(os.getppid()).cmdline())
    forked = sorted(set(answers.values()))
    method = getattr(conn.cluster, "worker_start_method", "spawn")
    energy = mbdask.compute(plan, conn.client).properties.return_energy
    conn.close()
    # closed and reaped: looked at until a deadline, not after a guessed pause (spawned: looked at once,
    # multiprocessing's resource tracker may stay)
    deadline = time.monotonic() + (30 if method == "fork" else 0)
    while True:
        children = psutil.Process().children(recursive=True)
        left = [p.pid for p in children if p.status() != psutil.STATUS_ZOMBIE]
        zombies = [p.pid for p in children if p.status() == psutil.STATUS_ZOMBIE]
        if not children or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    print(json.dumps({"method": method, "forked": forked, "energy": energy, "left": left, "zombies": zombies}))
"""


def _run(tmp_path, mode: str, workers: str = "auto") -> dict:
    script = tmp_path / "forked.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "DASK_MBDASK__LOCAL_CLUSTER__WORKERS": workers,
    }
    proc = subprocess.run(
        [sys.executable, str(script), str(EXAMPLES / "water6-gfn2.json"), mode],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_xtb
def test_single_threaded_process_forks_its_workers_and_gets_the_spawned_numbers(tmp_path):
    forked = _run(tmp_path, "plain")
    assert forked["method"] == "fork" and forked["forked"] == [True]
    assert forked["left"] == [] and forked["zombies"] == []  # closed and reaped
    spawned = _run(tmp_path, "plain", workers="spawn")
    assert spawned["method"] == "spawn" and spawned["forked"] == [False]  # Dask's nannies spawned them
    assert forked["energy"] == spawned["energy"]


DOUBLES_SCRIPT = """
import json, sys, time
import psutil
from distributed.client import FutureCancelledError
sys.path.insert(0, sys.argv[1])
from doubles import register_doubles
from helpers import sleep_input
import mbdask
from mbdask.deploy.cluster import connect
from mbdask.errors import BadInputError, NoWorkersError
if __name__ == "__main__":
    register_doubles()  # in this process only: no worker preloads the doubles
    gate = sys.argv[2]
    conn = connect(n_workers=2)
    out = {"method": getattr(conn.cluster, "worker_start_method", "spawn")}
    try:  # the client is all mbdask is given (the command line's case): the cluster behind it decides
        out["energy"] = mbdask.compute(sleep_input("water3-uud.xyz"), conn.client).properties.return_energy
    except BadInputError as exc:
        out["refused"] = str(exc)
    if out["method"] == "fork":
        inp = sleep_input("water3-uud.xyz")
        inp["specification"]["specification"]["sleepy"]["keywords"]["gate"] = {"3": gate}  # the trimer never ends
        sub = mbdask.start(inp, conn.client, batch=False)
        deadline = time.monotonic() + 60
        while not any(conn.client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.02)
        context = sub.graph.context_ref
        out["context"] = type(context).__name__
        out["context_on_every_worker"] = set(conn.client.who_has(context)[context.key]) == set(
            conn.client.scheduler_info()["workers"]
        )
        for pid in conn.client.run(lambda: __import__("os").getpid()).values():
            psutil.Process(pid).kill()  # the workers are lost (killed by the system, say)
        try:
            sub.result()
        except (NoWorkersError, FutureCancelledError) as exc:
            out["lost"] = f"{type(exc).__name__}: {exc}"
    conn.close()
    print(json.dumps(out))
"""


def _run_doubles(tmp_path, workers: str) -> dict:
    script = tmp_path / "doubles_forked.py"
    script.write_text(DOUBLES_SCRIPT)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["DASK_MBDASK__LOCAL_CLUSTER__WORKERS"] = workers
    proc = subprocess.run(
        [sys.executable, str(script), str(TESTS), str(tmp_path / "never-opened")],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_forked_workers_run_what_this_process_registered_and_are_not_waited_for_once_lost(tmp_path):
    """Workers forked from this process have its programs (here the ``sleep`` test double, registered only
    in this process): the run needs no preload and gets its energy. The expansion's context is scattered to
    every one of them. Lost, they never come back (no nanny): the run stops (the scattered context is
    lost with them, which cancels it) instead of waiting for workers to join, though mbdask was given
    only the client; the subprocess' timeout, far below the default worker timeout, would catch a wait."""
    result = _run_doubles(tmp_path, "auto")
    assert result["method"] == "fork" and "refused" not in result and "energy" in result
    assert result["context"] == "Future" and result["context_on_every_worker"]
    assert result["lost"].startswith(("NoWorkersError: no worker was left for 0 s", "FutureCancelledError")), result


def test_spawned_workers_without_this_processes_programs_are_refused_before_submission(tmp_path):
    """Workers Dask spawned are another interpreter: mbdask asks them what they can run and refuses the run
    before submitting it when they lack the program (registered only in this process)."""
    result = _run_doubles(tmp_path, "spawn")
    assert result["method"] == "spawn" and "energy" not in result
    assert "cannot run sleep (not installed in its environment)" in result["refused"]


@needs_xtb
def test_a_process_running_another_thread_lets_dask_spawn(tmp_path):
    result = _run(tmp_path, "thread")
    assert result["method"] == "spawn" and result["forked"] == [False]


def test_unknown_start_method_is_refused():
    import dask

    from mbdask.deploy.cluster import worker_start_method

    with dask.config.set({"mbdask.local-cluster.workers": "threads"}):
        with pytest.raises(ValueError, match="auto, spawn"):
            worker_start_method()


def test_dashboard_only_for_runs_long_enough_to_watch():
    import dask

    import mbdask
    from mbdask import config
    from mbdask.deploy.cluster import want_dashboard
    from mbdask.workflows.expansion import local_cluster_options

    DASHBOARD_MIN_SECONDS = config.get("mbdask.local-cluster.dashboard-min-seconds")

    assert not want_dashboard(DASHBOARD_MIN_SECONDS / 10) and want_dashboard(DASHBOARD_MIN_SECONDS)
    assert want_dashboard(0.1, True) and not want_dashboard(1e6, False)
    with dask.config.set({"mbdask.local-cluster.dashboard": "true"}):
        assert want_dashboard(0.1)
    with dask.config.set({"mbdask.local-cluster.dashboard": "sometimes"}):
        with pytest.raises(ValueError, match="auto, true or false"):
            want_dashboard(0.1)
    small = mbdask.plan(EXAMPLES / "water6-gfn2.json")  # 41 xtb calculations: a second or two
    options = local_cluster_options(small, n_workers=2)
    assert options["dashboard"] is False and "xtb.interface" in options["worker_imports"]
    assert local_cluster_options(small, n_workers=2, dashboard=True)["dashboard"] is True


def test_a_container_cpu_quota_limits_the_cores_mbdask_uses(monkeypatch):
    """psutil's affinity does not see a cgroup CPU quota; dask.system.cpu_count does (issue #18)."""
    import dask.system

    from mbdask.deploy.cluster import ClusterSize, usable_cores

    monkeypatch.setattr(dask.system, "cpu_count", lambda: 1)  # a container allowed one CPU's worth of time
    assert usable_cores() == 1
    assert ClusterSize.from_machine().n_workers == 1


LIBRARY_SCRIPT = """
import json, os, sys
import psutil
import mbdask
import mbdask.deploy.cluster

started = []
_start = mbdask.deploy.cluster.start_local_cluster


def recording(*args, **kwargs):  # the cluster mbdask.compute starts, looked at once it is up
    from distributed import Client

    cluster = _start(*args, **kwargs)
    with Client(cluster, set_as_default=False) as client:
        def look():
            from threadpoolctl import threadpool_info

            return {
                "forked": psutil.Process().cmdline() == psutil.Process(os.getppid()).cmdline(),
                "omp": os.environ.get("OMP_NUM_THREADS"),
                "pools": sorted({p["num_threads"] for p in threadpool_info()}),
            }

        workers = list(client.run(look).values())
        started.append({"method": getattr(cluster, "worker_start_method", "spawn"), "workers": workers})
    return cluster


mbdask.deploy.cluster.start_local_cluster = recording
if __name__ == "__main__":
    result = mbdask.compute(sys.argv[1], n_workers=2)
    print(json.dumps({"started": started, "energy": result.properties.return_energy}))
"""


@needs_xtb
def test_a_script_calling_compute_forks_its_workers_as_the_command_line_does(tmp_path):
    """``mbdask.compute(inp)`` without a client spawned its workers while the command line forked them
    (4.5-5.2 s against 3.4 s for (H2O)20; issue #25): a script's numpy had started OpenBLAS's threads, which
    the command line keeps from starting. Those idle pools are stopped, as OpenBLAS itself stops them before
    every fork, so the same check passes. The script runs as a user's would: no thread variables set. Its
    forked workers get what Dask gives a spawned one: OMP_NUM_THREADS=1, pools at one thread."""
    script = tmp_path / "script.py"
    script.write_text(LIBRARY_SCRIPT)
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    }
    env.pop("DASK_MBDASK__LOCAL_CLUSTER__WORKERS", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(EXAMPLES / "water6-gfn2.json")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [s["method"] for s in found["started"]] == ["fork"]
    assert found["started"][0]["workers"] == [{"forked": True, "omp": "1", "pools": [1]}] * 2
    assert found["energy"] == pytest.approx(_run(tmp_path, "plain", workers="spawn")["energy"], abs=1e-10)


CLOSING_SCRIPT = """
import time
from mbdask.deploy.cluster import connect
if __name__ == "__main__":
    conn = connect(n_workers=1)
    assert getattr(conn.cluster, "worker_start_method", None) == "fork"
    running = conn.client.submit(time.sleep, 60)
    while not conn.client.processing():  # the task runs on the worker
        time.sleep(0.05)
    while not any(conn.client.processing().values()):
        time.sleep(0.05)
    conn.close()  # as on Ctrl-C, or after a failure: the cluster closes under a running task
    print("closed")
"""


def test_forked_workers_close_under_a_running_task_without_dasks_cancelled_warnings(tmp_path):
    """Ctrl-C once printed two "Async instruction ... ended with CancelledError" warnings from the forked
    workers (issue #25): their tasks are cancelled on purpose when the cluster closes."""
    script = tmp_path / "closing.py"
    script.write_text(CLOSING_SCRIPT)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("DASK_MBDASK__LOCAL_CLUSTER__WORKERS", None)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "closed", proc.stderr[-3000:]
    assert "CancelledError" not in proc.stderr, proc.stderr


QUIET_WITHOUT_DASHBOARD = r"""
import contextlib, socket, threading, time, warnings
from mbdask.deploy.cluster import ClusterSize, start_local_cluster
taken = socket.socket()
with contextlib.suppress(OSError):  # Dask's default port, taken (by us, or by another run already)
    taken.bind(("127.0.0.1", 8787)); taken.listen()
kinds = []
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with start_local_cluster(ClusterSize(1, 1, 2**30), dashboard_address=None) as cluster:
        kinds.append(type(cluster).__name__)
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()  # a second thread: Dask spawns
    with start_local_cluster(ClusterSize(1, 1, 2**30), dashboard_address=None) as cluster:
        kinds.append(type(cluster).__name__)
print(kinds, [str(w.message) for w in caught if "8787" in str(w.message)])
"""


def test_a_cluster_without_dashboard_leaves_port_8787_alone():
    """Without a dashboard the scheduler's HTTP server (health, metrics) took Dask's default port 8787 all the
    same, so every second run on a machine warned 'Port 8787 is already in use'; forked and spawned alike."""
    out = subprocess.run([sys.executable, "-c", QUIET_WITHOUT_DASHBOARD], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "['ForkedCluster', 'LocalCluster'] []", out.stdout + out.stderr[-2000:]

"""The per-call shortcuts of mbdask.engine give what qcengine.compute gives, and the
LocalCluster's workers run without the environment that slows QC programs down."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import qcengine
from qcelemental.models.v2 import AtomicInput

import mbdask
from conftest import needs_xtb
from mbdask.engine import cpu_name, run_program, task_config

WATER = {"symbols": ["O", "H", "H"], "geometry": [0.0, 0.0, -0.124, 0.0, -1.431, 0.984, 0.0, 1.431, 0.984]}


def _input(method: str) -> AtomicInput:
    return AtomicInput(molecule=WATER, specification={"driver": "energy", "model": {"method": method}, "keywords": {"accuracy": 0.01}})


@needs_xtb
def test_run_program_matches_qcengine_compute():
    ours = run_program(_input("gfn2-xtb"), "xtb", ncores=1)
    theirs = qcengine.compute(_input("gfn2-xtb"), "xtb", task_config={"ncores": 1, "retries": 0})
    assert ours.success and theirs.success
    assert ours.properties.return_energy == theirs.properties.return_energy
    assert ours.provenance.creator == theirs.provenance.creator
    assert ours.provenance.cpu == theirs.provenance.cpu and ours.provenance.wall_time > 0


@needs_xtb
def test_run_program_returns_failures_as_qcengine_does():
    ours = run_program(_input("gfn9-xtb"), "xtb")
    theirs = qcengine.compute(_input("gfn9-xtb"), "xtb", task_config={"ncores": 1, "retries": 0})
    assert not ours.success and not theirs.success
    assert ours.error.error_type == theirs.error.error_type
    assert ours.error.error_message == theirs.error.error_message


def test_task_config_is_built_once_per_cores_and_memory(monkeypatch):
    assert task_config(1, 0.5) is task_config(1, 0.5)
    assert task_config(2, 0.5).ncores == 2 and task_config(1, 0.5).memory == 0.5
    monkeypatch.setenv("QCENGINE_SCRATCH_DIRECTORY", "/tmp")  # QCEngine reads its variables: a new config
    assert task_config(1, 0.5).scratch_directory == "/tmp"


def test_machine_information_without_py_cpuinfo():
    """QCEngine's provenance gets the CPU name, and py-cpuinfo (1.1 s a process) never runs."""
    if cpu_name() is None:
        return  # not Linux: QCEngine's own path runs, nothing to check
    code = (
        "import cpuinfo\n"
        "def refuse(): raise SystemExit('py-cpuinfo was called')\n"
        "cpuinfo.get_cpu_info = refuse\n"
        "from mbdask.engine import cpu_name, fill_machine_info\n"
        "import qcengine\n"
        "fill_machine_info()\n"
        "assert qcengine.config.get_provenance_augments()['cpu'] == cpu_name()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_local_cluster_workers_start_without_dasks_malloc_trim_threshold(monkeypatch):
    """Dask's MALLOC_TRIM_THRESHOLD_ switches off glibc's dynamic mmap threshold (xtb 1.7x slower)."""
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # as an earlier Dask cluster in this process leaves it
    conn = mbdask.connect(n_workers=1)
    try:
        environments = conn.client.run(lambda: dict(os.environ))
    finally:
        conn.close()
    (env,) = environments.values()
    assert "MALLOC_TRIM_THRESHOLD_" not in env
    assert env.get("OMP_NUM_THREADS") == "1"  # Dask's thread defaults stay
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"  # this process's environment is left as it was


def test_local_cluster_workers_profile_every_100_ms_unless_configured():
    """Dask's 10 ms stack sampling costs 16 single-thread workers a quarter more CPU (bench_makespan)."""
    import dask

    def interval() -> str:
        return dask.config.get("distributed.worker.profile.interval")

    with mbdask.cluster.connected(n_workers=1) as conn:
        assert list(conn.client.run(interval).values()) == [mbdask.cluster.PROFILE_INTERVAL]
    with dask.config.set({"distributed.worker.profile.interval": "20ms"}), mbdask.cluster.connected(n_workers=1) as conn:
        assert list(conn.client.run(interval).values()) == ["20ms"]


@needs_xtb
def test_local_cluster_with_forked_workers_gives_the_spawned_result(tmp_path):
    """Dask's ``multiprocessing-method: fork`` works with mbdask's LocalCluster where Dask starts
    the workers (here: numpy's OpenBLAS threads run, so mbdask does not fork them itself). Run
    from a fresh interpreter: forking is only safe from a parent that has not run OpenMP code,
    which this test process may have. ``distributed`` is imported before ``dask.config.set``
    touches its keys, as a script must (``import mbdask`` no longer imports it)."""
    example = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "water3-multilevel-gradient.json")
    code = (
        "import json, sys, dask, distributed, numpy, mbdask\n"
        "if __name__ == '__main__':\n"
        "    inp = json.load(open(sys.argv[1]))\n"
        "    energies = []\n"
        "    for method in ('spawn', 'fork'):\n"
        "        with dask.config.set({'distributed.worker.multiprocessing-method': method}):\n"
        "            energies.append(mbdask.compute(inp, n_workers=1).properties.return_energy)\n"
        "    print(json.dumps(energies))\n"
    )
    script = tmp_path / "forked.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script), example], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    spawned, forked = json.loads(out.stdout.strip().splitlines()[-1])
    assert forked == spawned

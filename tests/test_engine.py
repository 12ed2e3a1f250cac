"""The per-call shortcuts of mbdask.calculation.engine give what qcengine.compute gives, and the
LocalCluster's workers run without the environment that slows QC programs down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, ClassVar

import numpy as np
import pytest
import qcengine
from conftest import needs_xtb
from qcelemental.models.v2 import AtomicInput
from qcengine.programs.model import ProgramHarness

import mbdask
from mbdask.calculation.engine import ProgramRunner, run_program, task_config

WATER = {"symbols": ["O", "H", "H"], "geometry": [0.0, 0.0, -0.124, 0.0, -1.431, 0.984, 0.0, 1.431, 0.984]}


def _input(method: str, driver: str = "energy") -> AtomicInput:
    return AtomicInput(
        molecule=WATER, specification={"driver": driver, "model": {"method": method}, "keywords": {"accuracy": 0.01}}
    )


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

    with mbdask.deploy.cluster.connected(n_workers=1) as conn:
        assert list(conn.client.run(interval).values()) == ["100ms"]
    with (
        dask.config.set({"mbdask.local-cluster.profile-interval": "20ms"}),
        mbdask.deploy.cluster.connected(n_workers=1) as conn,
    ):
        assert list(conn.client.run(interval).values()) == ["20ms"]
    # null: Dask's own setting, whatever the user made it
    settings = {"mbdask.local-cluster.profile-interval": None, "distributed.worker.profile.interval": "30ms"}
    with dask.config.set(settings), mbdask.deploy.cluster.connected(n_workers=1) as conn:
        assert list(conn.client.run(interval).values()) == ["30ms"]


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


class CannedHarness(ProgramHarness):
    """Returns the result it was given (``CANNED["result"]``), every time, or fails (test double, not chemistry)."""

    _defaults: ClassVar[dict[str, Any]] = {
        "name": "canned",
        "scratch": False,
        "thread_safe": True,
        "thread_parallel": False,
        "node_parallel": False,
        "managed_memory": False,
    }

    @staticmethod
    def found(raise_error: bool = False) -> bool:
        return True

    def compute(self, input_data, config):
        if CANNED.get("result") is None:
            raise RuntimeError("canned: no result to return")
        return CANNED["result"]


CANNED: dict[str, Any] = {}


@pytest.fixture
def canned() -> dict[str, Any]:
    qcengine.register_program(CannedHarness())
    try:
        yield CANNED
    finally:
        qcengine.unregister_program("canned")
        CANNED.clear()


@needs_xtb
@pytest.mark.parametrize("driver", ["energy", "gradient"])
def test_results_without_provenance_have_qcengines_numbers(canned, driver):
    """``provenance=False`` returns the harness's result; QCEngine's provenance step changes none of its numbers."""
    from mbdask.calculation.execute import extract_properties

    inp = _input("gfn2-xtb", driver)
    canned["result"] = qcengine.get_program("xtb").compute(inp, task_config(1))
    runner = ProgramRunner(1)
    raw, fused = runner(inp, "canned", provenance=False), runner(inp, "canned")
    assert raw is canned["result"]
    assert fused is not raw and fused.provenance.wall_time > 0 and fused.provenance.cpu
    ours, theirs = extract_properties(raw, driver), extract_properties(fused, driver)
    assert ours.keys() == theirs.keys() == {"energy", *([driver] if driver != "energy" else [])}
    for key, value in ours.items():
        assert np.asarray(value).tobytes() == np.asarray(theirs[key]).tobytes(), key


@needs_xtb
def test_failures_without_provenance_are_qcengines():
    ours = ProgramRunner(1)(_input("gfn9-xtb"), "xtb", provenance=False)
    theirs = qcengine.compute(_input("gfn9-xtb"), "xtb", task_config={"ncores": 1, "retries": 0})
    assert not ours.success and (ours.error.error_type, ours.error.error_message) == (
        theirs.error.error_type,
        theirs.error.error_message,
    )


def test_program_runner_keeps_the_harness_it_first_found(canned):
    """A runner looks a program's harness up once and keeps it: a harness registered under that name
    afterwards is what a new runner (a new task) runs, not what this one runs."""
    runner = ProgramRunner(1)
    for _ in range(2):
        assert "canned: no result" in runner(_input("x"), "canned").error.error_message
    qcengine.unregister_program("canned")
    qcengine.register_program(RenamedHarness())
    assert "canned: no result" in runner(_input("x"), "canned").error.error_message  # the harness it found
    assert "renamed: replaced" in ProgramRunner(1)(_input("x"), "canned").error.error_message
    missing = runner(_input("x"), "no-such-program")  # as qcengine.compute: a FailedOperation, not an exception
    assert not missing.success and "no-such-program" in missing.error.error_message


class RenamedHarness(CannedHarness):
    """Registered as ``canned`` in place of :class:`CannedHarness` (a test double, not chemistry): always fails."""

    def compute(self, input_data, config):
        raise RuntimeError("renamed: replaced the canned harness")


@pytest.mark.parametrize("pinned", [True, False])
def test_thread_environment_leaves_the_environment_as_qcengines_environ_context(pinned, monkeypatch):
    """During and after the call, with the variables already pinned or not, and with a program that changes them."""
    from qcengine.util import environ_context

    from mbdask.calculation.engine import thread_environment

    config = task_config(2)
    seen = {}

    def run(context) -> dict:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            monkeypatch.setenv(name, "2" if pinned else "5")
        with context(config):
            seen[context] = (os.environ["OMP_NUM_THREADS"], os.environ["MKL_NUM_THREADS"])
            os.environ["OMP_NUM_THREADS"] = "7"
            os.environ.pop("MKL_NUM_THREADS")
        return {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}

    theirs = run(lambda c: environ_context(config=c))
    ours = run(thread_environment)
    assert ours == theirs == {"OMP_NUM_THREADS": "2" if pinned else "5", "MKL_NUM_THREADS": "2" if pinned else "5"}
    assert set(seen.values()) == {("2", "2")}


@needs_xtb
def test_run_unit_gives_the_same_numbers_with_and_without_kept_results():
    """Kept results go through QCEngine's provenance step, others not: the numbers are bit for bit the same."""
    from conftest import xtb_input

    from mbdask.calculation.execute import ExpansionContext, run_unit

    plan = mbdask.plan(xtb_input("water6-prism.xyz", driver="gradient"))
    jobs = plan.jobs[:8]
    plain = run_unit(ExpansionContext(plan.input, plan.specifications, False), jobs, 1, None, None, [0.1] * len(jobs))
    kept = run_unit(ExpansionContext(plan.input, plan.specifications, True), jobs, 1, None, None, [0.1] * len(jobs))
    for job in jobs:
        ours, theirs = plain[job.label], kept[job.label]
        assert "result" not in ours and theirs["result"].provenance.wall_time > 0 and ours["predicted"] == 0.1
        assert ours["values"].keys() == theirs["values"].keys() == {"energy", "gradient"}
        for key in ours["values"]:
            assert np.asarray(ours["values"][key]).tobytes() == np.asarray(theirs["values"][key]).tobytes(), job.label


@needs_xtb
def test_xtb_fragments_leak_no_file_descriptors_and_keep_the_users_keywords():
    """xtb-python's harness keeps one file open per calculation at its default verbosity
    (a worker stopped with "Too many open files" after ~20,000 (H2O)64 trimers); mbdask's
    fragment inputs ask for no output unless the user set a verbosity."""
    from mbdask.calculation.execute import ExpansionContext, run_unit

    plan = mbdask.plan(
        {
            "specification": {
                "driver": "energy",
                "keywords": {"bsse_type": ["nocp"], "levels": {2: "gfn2"}},
                "specification": {
                    "gfn2": {"program": "xtb", "model": {"method": "gfn2-xtb"}, "keywords": {"accuracy": 0.01}}
                },
            },
            "molecule": {
                "symbols": ["O", "H", "H"] * 3,
                "geometry": [c + 5.0 * (i // 9) for i, c in enumerate(WATER["geometry"] * 3)],
                "fragments": [[0, 1, 2], [3, 4, 5], [6, 7, 8]],
            },
        }
    )
    ctx = ExpansionContext(plan.input, plan.specifications, False)
    job = plan.jobs[0]
    assert ctx.atomic_input(job.model, ctx.factory.molecule(job.real, job.basis)).specification.keywords == {
        "verbosity": "muted",
        "accuracy": 0.01,
    }
    assert plan.specifications[job.model]["specification"]["keywords"] == {
        "accuracy": 0.01
    }  # the store key's and the result's
    run_unit(ctx, plan.jobs)  # warm-up: the program's own files
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        run_unit(ctx, plan.jobs)
    assert len(os.listdir("/proc/self/fd")) - before < len(plan.jobs)  # 30 calculations

"""mbdask.upstream's shims still do what QCEngine, QCElemental, QCManyBody and Dask do: one test (or more) per shim,
each failing when upstream changes what the shim relies on. The fragment factory built on the QCElemental shims is
held to ``Molecule.get_fragment`` in tests/test_fragments.py, ``ProgramRunner`` to ``qcengine.compute`` on xtb in
tests/test_engine.py."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, ClassVar

import numpy as np
import pytest
import qcengine
from helpers import replay_input
from qcelemental.exceptions import ValidationError
from qcelemental.models.v2 import AtomicInput, AtomicResult, Molecule
from qcengine.programs.model import ProgramHarness
from qcengine.util import environ_context
from qcmanybody.utils import delabeler, labeler

import mbdask
from mbdask import upstream
from mbdask.calculation.engine import task_config
from mbdask.planning.plan import FragmentJob

MODELS = ["gfn2", "(auto)", "hf/6-31g*", "mp2/cc-pvdz", 'say "hi"', "ünïcödé", "a\\b", "tab\there", "a@b"]
PAIRS = [((1,), (1,)), ((1, 2), (1, 2, 3)), ((3,), tuple(range(1, 65))), ((10, 200), (10, 200)), ((), ())]


def test_labels_are_qcmanybodys_labeler_and_delabeler():
    """One builder (one label, or a plan's labels in bulk) and one parser, QCManyBody's strings exactly."""
    for model in MODELS:
        assert upstream.label_prefix(model) == labeler(model, (1,), (1,))[: -len("[1], [1]]")]
        for real, basis in PAIRS:
            label = labeler(model, real, basis)
            assert upstream.job_label(model, real, basis) == label
            assert upstream.job_label(model, np.array(real, dtype=np.int64), list(basis)) == label
            assert FragmentJob(model, real, basis).label == label
            if "@" not in model:  # delabeler reads a label with an @ as its pretty-printed form
                got = delabeler(label)
                parsed = upstream.parse_label(label)
                assert parsed == (got[0], list(got[1]), list(got[2])) == (model, [*real], [*basis])
        reals = [real for real, _ in PAIRS]
        assert upstream.job_labels(model, reals, None) == [labeler(model, r, r) for r in reals]
        assert upstream.job_labels(model, reals, (1, 2, 3)) == [labeler(model, r, (1, 2, 3)) for r in reals]
        assert upstream.job_labels(model, reals, [b for _, b in PAIRS]) == [labeler(model, r, b) for r, b in PAIRS]


def test_dropping_the_compute_map_rebuilds_the_same_map():
    """QCManyBody caches ``compute_map`` where :func:`upstream.drop_compute_map` lets go of it (else none is freed)."""
    plan = mbdask.plan(replay_input({1: "e_scf", 2: "e_scf"}, "h2o_trimer_single_energy_1"), check_installed=False)
    core = plan.core
    first = core.compute_map
    assert core.compute_map is first  # cached
    upstream.drop_compute_map(core)
    again = core.compute_map
    assert again is not first and again == first
    upstream.drop_compute_map(core)
    upstream.drop_compute_map(core)  # nothing cached: nothing to do


def test_geometry_is_rounded_and_checked_as_the_molecule_constructor_does():
    rng = np.random.default_rng(7)
    geometry = rng.normal(scale=3.0, size=(8, 3))
    geometry[0] = [-1e-12, 1.234567891234, -0.0]  # a negative zero after rounding, digits past the 8th decimal
    molecule = Molecule(symbols=["He"] * 8, geometry=geometry)
    rounded = upstream.constructor_rounding(geometry)
    assert rounded.dtype == molecule.geometry.dtype and rounded.tobytes() == molecule.geometry.tobytes()
    assert upstream.passes_constructor_distance_check(geometry)
    for distance, accepted in [(0.0999, False), (0.1001, True)]:
        close = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, distance], [0.0, 3.0, 0.0]])
        assert upstream.passes_constructor_distance_check(close) is accepted
        if accepted:
            Molecule(symbols=["He"] * 3, geometry=close)
        else:
            with pytest.raises(ValidationError, match="too close"):
                Molecule(symbols=["He"] * 3, geometry=close)


def test_qcengine_sets_these_thread_variables():
    config = task_config(3)
    with environ_context(config=config) as variables:
        assert tuple(variables) == upstream.QCENGINE_THREAD_VARIABLES and set(variables.values()) == {"3"}
    with upstream.qcengine_environment(config) as variables:
        assert tuple(variables) == upstream.QCENGINE_THREAD_VARIABLES


class RecordingHarness(ProgramHarness):
    """Records the config it is given; returns a made-up result, or raises (a test double, not chemistry)."""

    _defaults: ClassVar[dict[str, Any]] = {
        "name": "upstream-recording",
        "scratch": False,
        "thread_safe": True,
        "thread_parallel": False,
        "node_parallel": False,
        "managed_memory": False,
    }
    seen: ClassVar[list] = []

    @staticmethod
    def found(raise_error: bool = False) -> bool:
        return True

    def compute(self, input_data, config):
        self.seen.append(config)
        if input_data.specification.model.method == "fail":
            raise RuntimeError("recording: asked to fail")
        return AtomicResult(
            input_data=input_data,
            molecule=input_data.molecule,
            properties={"return_energy": -1.25},
            return_result=-1.25,
            success=True,
            provenance={"creator": "recording", "version": "0", "routine": "tests"},
        )


@pytest.fixture
def recording():
    qcengine.register_program(RecordingHarness())
    try:
        yield RecordingHarness.seen
    finally:
        qcengine.unregister_program("upstream-recording")
        RecordingHarness.seen.clear()


def _atomic_input(method: str, extras: dict | None = None) -> AtomicInput:
    return AtomicInput(
        molecule={"symbols": ["He"], "geometry": [0.0, 0.0, 0.0]},
        specification={"driver": "energy", "model": {"method": method}, "extras": extras or {}},
    )


def _comparable(result) -> dict:
    """A result or failure as JSON, without what differs between two calls: wall times, a traceback's frames."""
    dumped = json.loads(result.model_dump_json())
    for record in (dumped, dumped.get("input_data") or {}):
        (record.get("provenance") or {}).pop("wall_time", None)
    if "error" in dumped:
        lines = dumped["error"]["error_message"].splitlines()
        dumped["error"]["error_message"] = (lines[0], lines[-1])
    return dumped


@pytest.mark.parametrize("method", ["scf", "fail"])
def test_qcengine_compute_is_qcengines(recording, method):
    """The result or failure and the task config ``qcengine.compute`` gives and builds, with QCEngine's harness
    and a config found once; with ``provenance=False``, the harness's own result (or the same failure)."""
    name, options = "upstream-recording", {"ncores": 1, "memory": 0.5, "retries": 0}

    def lookup(program):
        return qcengine.get_program(program), task_config(1, 0.5)

    theirs = qcengine.compute(_atomic_input(method), name, task_config=options)
    ours = upstream.qcengine_compute(_atomic_input(method), name, lookup, upstream.qcengine_environment)
    raw = upstream.qcengine_compute(
        _atomic_input(method), name, lookup, upstream.qcengine_environment, provenance=False
    )
    assert recording[0] == recording[1] == recording[2]  # the TaskConfig qcengine.compute builds is task_config's
    assert type(ours) is type(theirs) is type(raw)
    assert _comparable(ours) == _comparable(theirs)
    if method == "fail":
        assert _comparable(raw) == _comparable(ours) and "asked to fail" in ours.error.error_message
    else:
        assert raw.provenance.creator == "recording" and raw.return_result == ours.return_result
        assert ours.provenance.creator == "recording" and ours.provenance.wall_time > 0


def test_qcengine_compute_reads_its_local_config_from_the_inputs_extras(recording):
    """Inputs carrying :data:`upstream.QCENGINE_LOCAL_CONFIG` go to ``qcengine.compute``, which merges it."""
    qcengine.compute(_atomic_input("scf", {upstream.QCENGINE_LOCAL_CONFIG: {"ncores": 2}}), "upstream-recording")
    assert recording[0].ncores == 2


_MACHINE = """
import json, sys
import cpuinfo, qcengine
if sys.argv[1] == "shim":
    def refuse(): raise SystemExit("py-cpuinfo was called")
    cpuinfo.get_cpu_info = refuse
    from mbdask.calculation.engine import cpu_name
    from mbdask.upstream import fill_qcengine_machine_info
    fill_qcengine_machine_info(cpu_name())
    assert cpuinfo.get_cpu_info is refuse  # put back
info = qcengine.config.get_global()
print(json.dumps({"keys": sorted(info), "cpu_brand": info["cpu_brand"],
                  "provenance": sorted(qcengine.config.get_provenance_augments())}))
"""


def test_machine_information_without_py_cpuinfo():
    """QCEngine's machine information has py-cpuinfo's shape and CPU name, and py-cpuinfo (1.1 s a process) never
    runs; ``cpuinfo.get_cpu_info`` is itself again afterwards."""
    from mbdask.calculation.engine import cpu_name

    if cpu_name() is None:
        pytest.skip("no CPU name in /proc/cpuinfo: QCEngine's own path runs, nothing to check")
    found = []
    for mode in ("shim", "qcengine"):
        out = subprocess.run([sys.executable, "-c", _MACHINE, mode], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        found.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert found[0] == found[1]


def test_dasks_metrics_page_names_the_scraped_scheduler():
    """While Dask serves a scheduler's /metrics page, a collector in the global registry can tell which scheduler."""
    import urllib.request

    import prometheus_client
    from helpers import in_process_client

    seen: list[Any] = []

    class Recorder:
        def describe(self) -> list:
            return []

        def collect(self):
            seen.append(upstream.scraped_scheduler())
            return iter(())

    recorder = Recorder()
    prometheus_client.REGISTRY.register(recorder)
    try:
        with (
            in_process_client(dashboard_address="127.0.0.1:0") as first,
            in_process_client(dashboard_address="127.0.0.1:0") as second,
        ):
            for client in (first, second, first):
                scheduler = client.cluster.scheduler
                with urllib.request.urlopen(f"http://127.0.0.1:{scheduler.http_server.port}/metrics", timeout=30):
                    pass
                assert seen[-1] is scheduler
    finally:
        prometheus_client.REGISTRY.unregister(recorder)

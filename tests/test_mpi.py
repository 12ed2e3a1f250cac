"""docs/hpc.md's MPI recipes (issue #29): Dask clusters launched with ``mpirun`` and dask-mpi, real GFN2-xTB.

Both of dask-mpi's documented patterns, on this machine's OpenMPI (``--oversubscribe``: more
ranks than cores; ``--allow-run-as-root`` where the tests run as root):

* the ``dask-mpi`` command: rank 0 the scheduler writing ``--scheduler-file``, the other ranks
  workers; ``python -m mbdask run --scheduler-file`` connects through the file;
* a script calling ``dask_mpi.initialize()``: rank 0 the scheduler, rank 1 the script itself
  (the client, running ``mbdask.compute``), the other ranks workers.

Each result must equal a LocalCluster run to 1e-10. Marked ``mpi``: skipped unless asked for with
``pytest -m mpi`` (CI deselects it); skipped with the reason where mpirun, mpi4py or dask-mpi is
missing (``apt-get install openmpi-bin libopenmpi-dev``, ``pip install 'mbdask[mpi]'``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES, needs_xtb

import mbdask
from mbdask.cli import main

BIN = Path(sys.executable).parent
WATER6 = EXAMPLES / "water6-gfn2.json"
ENERGY = "nocp_corrected_interaction_energy_through_3_body"

pytestmark = [pytest.mark.mpi, needs_xtb, pytest.mark.timeout(300)]


def _mpirun() -> list[str]:
    """``mpirun`` with the options this machine needs, or a skip saying what is missing."""
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun is not installed (Debian: apt-get install openmpi-bin libopenmpi-dev)")
    for module in ("mpi4py", "dask_mpi"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install 'mbdask[mpi]')")
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout
    command = [mpirun, "--oversubscribe"] if "Open MPI" in version else [mpirun]
    if "Open MPI" in version and os.geteuid() == 0:
        command.append("--allow-run-as-root")
    return command


def _environment() -> dict[str, str]:
    """Ranks that listen on 127.0.0.1 only, and workers without the variable that makes xtb 1.7x slower."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _finish(proc: subprocess.Popen, seconds: float) -> int:
    """Wait for mpirun to end; past ``seconds``, interrupt it (it passes SIGINT/SIGTERM to the ranks), then kill."""
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            proc.send_signal(sig)
            try:
                return proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                continue
        raise


@pytest.fixture(scope="module")
def reference() -> float:
    """The same expansion on a LocalCluster mbdask starts."""
    return float(mbdask.compute(str(WATER6), n_workers=2).properties.model_dump()[ENERGY])


def test_dask_mpi_command_with_the_cli_on_its_scheduler_file(reference, tmp_path, capsys, recwarn):
    """``mpirun -n 3 dask-mpi --scheduler-file F`` (a scheduler and two workers), then the CLI with
    ``--scheduler-file F``; ``Client.shutdown()`` ends every rank, and so mpirun."""
    scheduler_file, log = tmp_path / "scheduler.json", tmp_path / "mpi.log"
    dask_mpi = [
        str(BIN / "dask-mpi"),
        "--scheduler-file",
        str(scheduler_file),
        "--scheduler-port",
        "0",
        "--interface",
        "lo",
        "--no-dashboard",
        "--nthreads",
        "1",
        "--worker-class",  # no nanny: its MALLOC_TRIM_THRESHOLD_ makes xtb 1.7x slower, and MPI restarts no rank
        "distributed.Worker",
        "--worker-options",
        json.dumps({"resources": {"cores": 1}}),
        "--local-directory",
        str(tmp_path),
    ]
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([*_mpirun(), "-n", "3", *dask_mpi], stdout=out, stderr=out, env=_environment())
    try:
        out_json = tmp_path / "result.json"
        code = main(["run", str(WATER6), "--scheduler-file", str(scheduler_file), "-o", str(out_json), "--no-progress"])
        printed = capsys.readouterr()
        assert code == 0, printed.err + log.read_text()[-3000:]
        assert "41 fragment calculations on" in printed.out
        assert not [w for w in recwarn if "MALLOC_TRIM_THRESHOLD_" in str(w.message)]
        from distributed import Client

        with Client(scheduler_file=str(scheduler_file), timeout=30) as client:
            assert len(client.nthreads()) == 2  # ranks 1 and 2
            client.shutdown()
        assert _finish(proc, 60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:  # a failure above: the cluster still runs
            _finish(proc, 0.1)
    print(f"dask-mpi + CLI: {time.monotonic() - started:.1f} s from mpirun to its end")
    energy = json.loads(out_json.read_text())["properties"][ENERGY]
    assert abs(energy - reference) < 1e-10


SCRIPT = """\
import json
import sys

from dask_mpi import initialize

# rank 0: the scheduler; rank 1: goes on below (the client); ranks 2+: workers. Only rank 1 returns.
initialize(interface="lo", nthreads=1, dashboard=False, worker_options={"resources": {"cores": 1}})

import mbdask
from distributed import Client

with Client() as client:  # the scheduler initialize() started
    result = mbdask.compute(sys.argv[1], client)
    workers = len(client.nthreads())
with open(sys.argv[2], "w") as out:
    json.dump({"energy": result.properties.model_dump()[sys.argv[3]], "workers": workers}, out)
"""


def test_dask_mpi_initialize_in_a_batch_script(reference, tmp_path):
    """``mpirun -n 4 python script.py``: the script's rank 1 runs the expansion on ranks 2 and 3; when it
    ends, dask-mpi closes the scheduler and the workers and mpirun returns."""
    script, out_json, log = tmp_path / "expansion.py", tmp_path / "result.json", tmp_path / "mpi.log"
    script.write_text(SCRIPT)
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*_mpirun(), "-n", "4", sys.executable, str(script), str(WATER6), str(out_json), ENERGY],
            stdout=out,
            stderr=out,
            env=_environment(),
            cwd=tmp_path,
        )
    assert _finish(proc, 240) == 0, log.read_text()[-3000:]
    print(f"dask_mpi.initialize(): {time.monotonic() - started:.1f} s from mpirun to its end")
    got = json.loads(out_json.read_text())
    assert got["workers"] == 2
    assert abs(got["energy"] - reference) < 1e-10

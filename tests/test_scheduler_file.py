"""A scheduler reached through its scheduler file (issue #29): ``--scheduler-file`` and ``scheduler_file=``.

A real ``dask scheduler --scheduler-file F`` and ``dask worker --scheduler-file F`` (subprocesses on
127.0.0.1, stopped at the end of the module), real GFN2-xTB on the bundled water hexamer; and the
ways a scheduler file can be wrong, each one line and exit code 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dask
import pytest
from conftest import EXAMPLES, needs_xtb

import mbdask
from mbdask.cli import main
from mbdask.deploy.scheduler_file import client_from_scheduler_file
from mbdask.errors import BadInputError

BIN = Path(sys.executable).parent
WATER6 = EXAMPLES / "water6-gfn2.json"


def _exit_code(argv: list[str]) -> int:
    """``main``'s exit code, argparse's own errors (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def scheduler_file(tmp_path_factory) -> Iterator[Path]:
    """The file a ``dask scheduler`` wrote, with one ``dask worker`` (1 thread, ``cores=1``) joined through it."""
    work = tmp_path_factory.mktemp("scheduler-file")
    path, logs = work / "scheduler.json", work / "logs"
    logs.mkdir()
    # a compute node's environment, not what earlier Dask clusters in this process left in it
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    common = ["--scheduler-file", str(path), "--host", "127.0.0.1", "--no-dashboard"]
    started: list[subprocess.Popen] = []
    try:
        with open(logs / "scheduler.log", "wb") as log:
            started.append(
                subprocess.Popen(
                    [str(BIN / "dask"), "scheduler", "--port", "0", *common], stdout=log, stderr=log, env=env
                )
            )
        # the worker starts before the file exists and waits for it, as in a batch job
        worker = [str(BIN / "dask"), "worker", *common, "--nthreads", "1", "--resources", "cores=1", "--no-nanny"]
        with open(logs / "worker.log", "wb") as log:
            started.append(subprocess.Popen([*worker, "--local-directory", str(work)], stdout=log, stderr=log, env=env))
        with client_from_scheduler_file(path, timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
        yield path
    finally:
        for proc in reversed(started):  # workers before the scheduler, or the worker waits to reconnect
            _stop(proc)


@needs_xtb
def test_cli_and_library_run_on_the_scheduler_its_file_names(scheduler_file, tmp_path, capsys):
    out = tmp_path / "result.json"
    assert main(["run", str(WATER6), "--scheduler-file", str(scheduler_file), "-o", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert "41 fragment calculations on 1 worker" in printed.out, printed.out + printed.err
    from_cli = json.loads(out.read_text())
    result = mbdask.compute(str(WATER6), scheduler_file=scheduler_file)
    assert result.extras["mbdask"]["nfragment_calculations"] == 41
    assert abs(result.return_result - from_cli["return_result"]) < 1e-10
    with client_from_scheduler_file(scheduler_file) as client:  # the worker that ran them is the file's scheduler's
        assert client.scheduler_file == str(scheduler_file) and len(client.nthreads()) == 1


def test_a_file_written_late_and_partly_is_waited_for(scheduler_file, tmp_path):
    """dask-mpi and a scheduler started beside the client write the file a moment after the client looks."""
    late, said = tmp_path / "late.json", []
    text = scheduler_file.read_text()

    def write() -> None:
        late.write_text(text[:10])  # half-written: not JSON yet
        time.sleep(0.3)
        late.write_text(text)

    writer = threading.Timer(0.5, write)
    writer.start()
    try:
        with client_from_scheduler_file(late, timeout=20, say=said.append) as client:
            assert client.scheduler.address == json.loads(text)["address"]
    finally:
        writer.join()
    assert said and "waiting for the scheduler file" in said[0] and "up to 20 s" in said[0]


def test_a_scheduler_file_and_an_address_are_refused_together(scheduler_file, tmp_path, capsys):
    argv = ["run", str(WATER6), "--scheduler", "tcp://127.0.0.1:8786", "--scheduler-file", str(scheduler_file)]
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert "argument --scheduler-file: not allowed with argument --scheduler" in err and len(err.splitlines()) == 1
    with pytest.raises(BadInputError, match="give a scheduler file or a client/scheduler address, not both"):
        mbdask.compute(str(WATER6), "tcp://127.0.0.1:8786", scheduler_file=scheduler_file)


def _stale(tmp_path: Path) -> Path:
    """A file a stopped scheduler left: its port answers no more."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = tmp_path / "stale.json"
    path.write_text(json.dumps({"type": "Scheduler", "address": f"tcp://127.0.0.1:{port}"}))
    return path


BAD_FILES = {
    "missing": (lambda tmp: tmp / "nothere.json", "not there after 0.5 s; start the scheduler that writes it"),
    "no folder": (lambda tmp: tmp / "no" / "scheduler.json", "no such folder"),
    "a folder": (lambda tmp: tmp, "is a folder, not a file"),
    "not json": (
        lambda tmp: (tmp / "s.json").write_text('{"address": ') and tmp / "s.json",
        "not a Dask scheduler file (not JSON",
    ),
    "no address": (lambda tmp: (tmp / "s.json").write_text("{}") and tmp / "s.json", 'no "address" in it'),
    "not text": (lambda tmp: (tmp / "s.json").write_bytes(b"\xff\xfe\x00") and tmp / "s.json", "not text"),
    "stale": (_stale, "which did not answer"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_scheduler_file_is_one_line_and_exit_2(case, tmp_path, capsys):
    make, message = BAD_FILES[case]
    path = make(tmp_path)
    with dask.config.set({"distributed.comm.timeouts.connect": "0.5s"}):
        code = _exit_code(["run", str(WATER6), "--scheduler-file", str(path), "--no-progress"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mbdask: error:")]
    assert code == 2, err
    assert len(errors) == 1 and message in errors[0] and str(path) in errors[0], err
    assert "Traceback" not in err


def test_an_address_where_no_scheduler_answers_is_one_line_and_exit_2(tmp_path, capsys):
    """As a stale scheduler file is: a wrong --scheduler address was an "internal error", exit 1."""
    out = tmp_path / "result.json"
    with dask.config.set({"distributed.comm.timeouts.connect": "0.5s"}):
        code = _exit_code(["run", str(WATER6), "--scheduler", "tcp://127.0.0.1:1", "--no-progress", "-o", str(out)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mbdask: error:")]
    assert code == 2, err
    assert len(errors) == 1 and "no Dask scheduler answered at tcp://127.0.0.1:1" in errors[0], err
    assert "Traceback" not in err and not out.exists()


def test_tls_options_take_a_scheduler_file_as_a_scheduler(tmp_path, capsys):
    """--tls-* needs a scheduler to reach; a scheduler file names one (here one never written)."""
    pem = tmp_path / "x.pem"
    pem.write_text("not checked before connecting")
    tls = ["--tls-ca-file", str(pem), "--tls-cert", str(pem), "--tls-key", str(pem)]
    with dask.config.set({"distributed.comm.timeouts.connect": "0.2s"}):
        code = _exit_code(["run", str(WATER6), *tls, "--scheduler-file", str(tmp_path / "s.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--tls-* options need" not in err and "scheduler file" in err, err


def test_no_client_goes_where_dask_config_scheduler_address_says(scheduler_file):
    """Dask's own convention, which ``Client()`` follows (DASK_SCHEDULER_ADDRESS; dask_mpi.initialize() sets it on
    the client rank): mbdask connects there instead of starting a LocalCluster."""
    address = json.loads(scheduler_file.read_text())["address"]
    # in a process of its own: in this one, a test's in-process worker may have left its client as Dask's default
    # client (a worker's get_client() sets it), which connect() rightly prefers
    code = (
        "from mbdask.deploy.cluster import connected\n"
        "with connected() as conn:\n"
        "    print(conn.cluster is None, conn.client.scheduler.address)\n"
    )
    env = {**os.environ, "DASK_SCHEDULER_ADDRESS": address}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", address]

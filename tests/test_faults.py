"""Failures during a run: killed workers, a killed CLI resumed from its store, failing
fragments (retries, keep-going), and safe defaults (loopback only, TLS)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from conftest import write_json
from distributed import Client, LocalCluster
from doubles import register_doubles
from helpers import sleep_input

import mbdask
from mbdask.calculation.store import FragmentStore

TESTS = Path(__file__).resolve().parent


def _slow_input(log: Path, **keywords) -> dict:
    inp = sleep_input(seconds={"1": 0.05, "2": 0.1, "3": 0.2})
    inp["specification"]["specification"]["sleepy"]["keywords"].update(log=str(log), **keywords)
    return inp


def _calls(log: Path) -> Counter:
    return Counter(log.read_text().split("\n")[:-1]) if log.exists() else Counter()


def _trimer_calls(log: Path) -> int:
    """Trimer calls started (the sleep double logs ``[i, j, k]@[...]`` before its gate)."""
    return sum(n for label, n in _calls(log).items() if label.split("@")[0].count(",") == 2)


def _wait_for(condition, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while not condition():
        if time.time() > end:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


def test_killed_worker_reruns_only_its_own_work_and_the_store_keeps_everything(inprocess_client, tmp_path):
    """A worker killed mid-run: Dask reruns what it was running and the finished results it held that
    are still needed; the client's store has every calculation once the run is done."""
    reference = mbdask.compute(sleep_input(), inprocess_client)
    log, store, gate = tmp_path / "calls.log", tmp_path / "store.sqlite", tmp_path / "trimers may finish"
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            preload=["doubles"],
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        sub = mbdask.start(_slow_input(log, gate={"3": str(gate)}), client, store=store, batch=False)
        try:
            # each single-thread worker is held in a trimer at the gate: monomers and dimers are
            # done (held in worker memory and written to the client's store), no trimer has finished
            _wait_for(lambda: _trimer_calls(log) == 2, timeout=120)
            pids = client.run(os.getpid)
            victim = sorted(pids)[0]
            os.kill(pids[victim], signal.SIGKILL)
        finally:
            gate.touch()
        result = sub.result(timeout=120)
    assert result.properties.return_energy == reference.properties.return_energy
    calls = _calls(log)
    assert len(calls) == 41
    rerun = [label for label, n in calls.items() if n > 1]
    assert any(label.split("@")[0].count(",") == 2 for label in rerun)  # the trimer running on the killed worker
    assert len(rerun) <= 1 + 21  # and at most what one of the two workers held (6 monomers, 15 dimers between them)
    assert FragmentStore(store).count() == 41


def _cli_script(args: list[str]) -> list[str]:
    code = "import sys, doubles; doubles.register_doubles(); from mbdask.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args]


def test_killed_cli_resumes_from_its_store(inprocess_client, tmp_path):
    reference = mbdask.compute(sleep_input(), inprocess_client)
    log, store, out = tmp_path / "calls.log", tmp_path / "store.sqlite", tmp_path / "result.json"
    gate = tmp_path / "trimers may finish"  # closed for the first run, which is killed while trimers wait at it
    inp = write_json(tmp_path / "input.json", _slow_input(log, gate={"3": str(gate)}))
    env = {**os.environ, "PYTHONPATH": str(TESTS), "DASK_DISTRIBUTED__WORKER__PRELOAD": '["doubles"]'}
    args = _cli_script(
        ["run", str(inp), "--store", str(store), "-o", str(out), "--workers", "2", "--no-progress", "--no-batch"]
    )
    first = subprocess.Popen(
        args, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for(lambda: _trimer_calls(log) == 2, timeout=120)  # both workers in a trimer, held at the gate
        # the client writes each finished unit as it arrives: the kill comes once it has written
        # what finished before the two trimers (otherwise a fragment finished a moment before
        # the kill is lost too, and the count below is off by one, as happened once)
        _wait_for(lambda: FragmentStore(store).count() >= sum(_calls(log).values()) - 2, timeout=60)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the whole process group, as a crashed terminal would
        first.wait()
    gate.touch()
    assert not out.exists()
    stored_at_kill = FragmentStore(store).count()
    calls_at_kill = sum(_calls(log).values())
    assert stored_at_kill < 41
    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"{stored_at_kill} of 41 fragment calculations found" in second.stderr
    result = json.loads(out.read_text())
    assert result["properties"]["return_energy"] == reference.properties.return_energy
    recomputed = sum(_calls(log).values()) - calls_at_kill
    assert recomputed == 41 - stored_at_kill  # only what was not finished (running at the kill included)
    assert calls_at_kill - stored_at_kill <= 2  # at most one running fragment per worker was lost


def test_flaky_fragment_is_retried(inprocess_client, tmp_path):
    inp = sleep_input()
    inp["specification"]["specification"]["sleepy"]["keywords"]["flaky"] = str(tmp_path)
    with pytest.raises(mbdask.FragmentFailedError, match="first attempt at"):
        mbdask.compute(inp, inprocess_client, batch=False)
    for marker in tmp_path.iterdir():
        marker.unlink()
    result = mbdask.compute(inp, inprocess_client, retries=1, batch=False)
    assert result.extras["mbdask"]["nfragment_calculations"] == 41


def test_keep_going_returns_the_highest_complete_order_marked_partial(inprocess_client):
    inp = sleep_input()
    inp["specification"]["specification"]["sleepy"]["keywords"]["fail"] = ["3"]
    with pytest.raises(mbdask.FragmentFailedError, match=r"model 'sleepy', fragments \[\d, \d, \d\]"):
        mbdask.compute(inp, inprocess_client)
    partial = mbdask.compute(inp, inprocess_client, keep_going=True)
    marker = partial.extras["mbdask"]["partial"]
    assert marker["complete_nbody"] == 2 and marker["requested_nbody"] == 3
    assert "told to fail on 3-body" in marker["error"]
    started = mbdask.start(inp, inprocess_client, keep_going=True)  # Submission.result() as compute
    assert started.result().extras["mbdask"]["partial"]["complete_nbody"] == 2
    with pytest.raises(mbdask.FragmentFailedError):
        mbdask.start(inp, inprocess_client).result()
    two_body = sleep_input()
    two_body["specification"]["keywords"]["levels"] = {2: "sleepy"}
    expected = mbdask.compute(two_body, inprocess_client)
    assert partial.properties.return_energy == expected.properties.return_energy
    assert partial.properties.calcinfo_nmbe == expected.properties.calcinfo_nmbe


def test_cli_keep_going_writes_a_partial_result_and_exits_1(tmp_path):
    inp = sleep_input()
    inp["specification"]["specification"]["sleepy"]["keywords"]["fail"] = ["3"]
    path, out = write_json(tmp_path / "in.json", inp), tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "DASK_DISTRIBUTED__WORKER__PRELOAD": '["doubles"]'}
    proc = subprocess.run(
        _cli_script(["run", str(path), "-o", str(out), "--keep-going", "--workers", "1", "--no-progress"]),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "PARTIAL result, complete through 2-body of 3" in proc.stderr
    assert json.loads(out.read_text())["extras"]["mbdask"]["partial"]["complete_nbody"] == 2


def _listening(process: psutil.Process) -> list[str]:
    addresses = []
    for proc in [process, *process.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        addresses += [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN]
    return addresses


def test_local_cluster_listens_on_loopback_only():
    conn = mbdask.connect(n_workers=2)
    try:
        conn.client.run(lambda: None)  # workers up
        addresses = _listening(psutil.Process())
    finally:
        conn.close()
    assert addresses, "found no listening sockets"
    assert set(addresses) <= {"127.0.0.1"}, addresses


def test_tls_scheduler_with_self_signed_certificates(tmp_path):
    pytest.importorskip("cryptography")
    from distributed.security import Security

    register_doubles()  # the in-process worker runs the sleep double
    security = Security.temporary()  # a fresh self-signed CA and certificate, made here
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tls://",
        host="127.0.0.1",
        security=security,
        dashboard_address=None,
        resources={"cores": 1},
    ) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        result = mbdask.compute(sleep_input(), cluster.scheduler_address, security=security, check_installed=False)
        assert result.extras["mbdask"]["nfragment_calculations"] == 41
        with pytest.raises(TypeError, match="TLS expects a `ssl_context`"):  # no certificate, no connection
            Client(cluster.scheduler_address, timeout="2s", set_as_default=False)


def test_program_missing_on_a_worker_is_refused_before_submission(inprocess_client, monkeypatch):
    from mbdask import workers

    monkeypatch.setattr(
        workers, "worker_setup", lambda: {"programs": ["psi4"], "malloc_trim": None}
    )  # in-process workers see it
    with pytest.raises(mbdask.BadInputError, match=r"worker tcp://127\.0\.0\.1:\d+ cannot run sleep"):
        mbdask.start(sleep_input(), inprocess_client)


def test_workers_with_dasks_malloc_trim_threshold_get_a_warning(inprocess_client, monkeypatch):
    from mbdask import workers

    monkeypatch.setattr(workers, "worker_setup", lambda: {"programs": ["sleep"], "malloc_trim": "65536"})
    with pytest.warns(UserWarning, match="MALLOC_TRIM_THRESHOLD_=65536"):
        mbdask.compute(sleep_input(), inprocess_client)


def test_scheduler_gone_mid_run_names_it_and_what_the_store_kept(tmp_path, capfd):
    """A scheduler that went away mid-run ended in "mbdask: internal error: FutureCancelledError ...
    scheduler-connection-lost", a Dask traceback and a store message (issue #25): it is no internal
    error. One line names the scheduler, the calculations in the store and that the same command resumes; exit 1."""
    import threading

    import dask

    register_doubles()  # the in-process worker runs the sleep double
    log, store, gate = tmp_path / "calls.log", tmp_path / "store.sqlite", tmp_path / "trimers may finish"
    inp = write_json(tmp_path / "input.json", _slow_input(log, gate={"3": str(gate)}))
    # the test's own cluster, once its scheduler is gone, closes after trying to reach it for the connect timeout
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "2s"}),
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            protocol="tcp",
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
    ):
        address = cluster.scheduler_address

        def scheduler_goes_away() -> None:
            _wait_for(
                lambda: _trimer_calls(log) == 1, timeout=120
            )  # monomers and dimers done, a trimer held at the gate
            _wait_for(lambda: FragmentStore(store).count() == 21, timeout=60)  # and written
            cluster.sync(cluster.scheduler.close)

        away = threading.Thread(target=scheduler_goes_away)
        away.start()
        try:
            from mbdask.cli import main

            code = main(["run", str(inp), "--scheduler", address, "--store", str(store), "--no-progress", "--no-batch"])
            err = capfd.readouterr().err
        finally:
            gate.touch()
            away.join()
    assert code == 1, err
    assert err.strip().splitlines()[-1] == (
        f"mbdask: error: lost the connection to the scheduler at {address} (it stopped, or its host went away); the "
        f"run stopped; 21 calculations are in the store {store}: run the same command (the same store) to resume from "
        "them"
    ), err
    assert "internal error" not in err and "Traceback" not in err, (
        err
    )  # nor Dask's own ERROR line of the cancelled reconnection

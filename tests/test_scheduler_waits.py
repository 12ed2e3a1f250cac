"""A scheduler without workers, or one that loses them all: mbdask waits, says so, and gives up.

In-process workers on a real scheduler (LocalCluster, processes=False), so that the test
doubles are registered. The sleep double's gate holds fragments "running" while a test
takes the workers away, instead of guessing how long a calculation lasts.
"""

from __future__ import annotations

import logging
import threading

import pytest
from distributed import Client, LocalCluster
from doubles import register_doubles
from helpers import sleep_input

import mbdask
from mbdask.cli import main
from mbdask.deploy.cluster import dashboard_link
from mbdask.errors import BadInputError, NoWorkersError


def _cluster(n_workers: int, dashboard_address=None) -> LocalCluster:
    register_doubles()
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=dashboard_address,
    )


def test_no_worker_joins_within_the_timeout(caplog):
    with _cluster(0) as cluster, Client(cluster, set_as_default=False) as client:
        with caplog.at_level(logging.WARNING, logger="mbdask"):
            with pytest.raises(
                NoWorkersError, match="no worker joined the scheduler at tcp://127.0.0.1:.* within 0.5 s"
            ):
                mbdask.start(sleep_input(), client, worker_timeout=0.5)
    assert "waiting for workers to join the scheduler" in caplog.text


def test_a_run_waits_for_workers_that_join_late(caplog):
    """As batch jobs do: the client connects first, the workers come when the queue starts them."""
    with _cluster(0) as cluster, Client(cluster, set_as_default=False) as client:
        joining = threading.Timer(0.5, cluster.scale, args=(2,))
        joining.start()
        with caplog.at_level(logging.WARNING, logger="mbdask"):
            result = mbdask.compute(sleep_input(), client, worker_timeout=60)
        joining.join()
    assert result.extras["mbdask"]["nfragment_calculations"] == 41
    assert "waiting for workers to join" in caplog.text


def test_all_workers_gone_mid_run_is_said_at_once_and_ends_the_run(tmp_path, caplog):
    gate = tmp_path / "never"
    inp = sleep_input()
    inp["specification"]["specification"]["sleepy"]["keywords"]["gate"] = {"3": str(gate)}
    with _cluster(1) as cluster, Client(cluster, set_as_default=False) as client:
        sub = mbdask.start(inp, client, worker_timeout=1.0, store=tmp_path / "store.sqlite", batch=False)
        client.wait_for_workers(1)
        cluster.scale(0)  # the worker leaves (a batch job at its wall time), trimers unfinished
        with caplog.at_level(logging.WARNING, logger="mbdask"):
            with pytest.raises(NoWorkersError, match=r"no worker was left for 1 s .* rerun with the same store"):
                sub.result()
        gate.touch()
    assert "no worker is left on the scheduler (finished fragments are in the store)" in caplog.text


def test_several_cores_per_fragment_need_declared_cores():
    with _cluster(1) as cluster, Client(cluster, set_as_default=False) as client:
        for cores in (2, "auto"):
            with pytest.raises(
                BadInputError, match="need workers that declare a 'cores' resource.*--resources cores=8"
            ):
                mbdask.start(sleep_input(), client, cores_per_fragment=cores)


def test_dashboard_link_is_the_schedulers_own_or_none():
    with _cluster(1) as cluster, Client(cluster, set_as_default=False) as client:
        assert dashboard_link(client) is None  # Client.dashboard_link would name 127.0.0.1:8787 here
    with _cluster(1, dashboard_address="127.0.0.1:0") as cluster, Client(cluster, set_as_default=False) as client:
        port = client.scheduler_info()["services"]["dashboard"]
        assert dashboard_link(client) == f"http://127.0.0.1:{port}/status"


def test_cli_stops_with_exit_1_when_no_worker_joins(capsys):
    with _cluster(0) as cluster:
        code = main(
            [
                "run",
                str(__import__("conftest").EXAMPLES / "water6-gfn2.json"),
                "--scheduler",
                cluster.scheduler_address,
                "--worker-timeout",
                "0.5",
                "--no-progress",
            ]
        )
    err = capsys.readouterr().err
    assert code == 1
    assert "mbdask: error: no worker joined the scheduler" in err and "Traceback" not in err

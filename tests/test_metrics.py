"""mbdask's Prometheus metrics on the scheduler's ``/metrics`` page (mbdask.diagnostics.metrics).

Real schedulers and workers: the page is scraped over HTTP while a run of the ``sleep`` double
waits at a gate (a file the test creates) before its 3-body calculations, and again after the
run, and parsed with ``prometheus_client``'s own parser. The scheduler is in this process
(mbdask's usual LocalCluster) or a ``dask scheduler`` process of its own, with and without
mbdask importable there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import in_process_client, sleep_input

import mbdask

prometheus_parser = pytest.importorskip("prometheus_client.parser")

#: mbdask's metric families (as the parser names them: a counter without its ``_total``)
FAMILIES = {
    "mbdask_calculations",
    "mbdask_time_left_seconds",
    "mbdask_elapsed_seconds",
    "mbdask_run_finished",
    "mbdask_last_update_timestamp_seconds",
    "mbdask_store_writes",
    "mbdask_store_write_failures",
}
WAIT = 60.0


def scrape(port: int) -> dict[str, list[Any]]:
    """The page's samples by family name (``prometheus_client``'s parser)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {family.name: family.samples for family in prometheus_parser.text_string_to_metric_families(text)}


def calculations(page: dict[str, list[Any]], run: str) -> dict[tuple[str, str], dict[str, float]]:
    """``mbdask_calculations`` of ``run``: (model, nbody) -> state -> count."""
    counts: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for sample in page.get("mbdask_calculations", []):
        if sample.labels["run"] == run:
            counts[(sample.labels["model"], sample.labels["nbody"])][sample.labels["state"]] = sample.value
    return dict(counts)


def value(page: dict[str, list[Any]], family: str, run: str) -> float | None:
    return next((s.value for s in page.get(family, []) if s.labels.get("run") == run), None)


def scrape_until(port: int, ready: Callable[[dict[str, list[Any]]], bool]) -> dict[str, list[Any]]:
    """Scrape every 0.2 s until ``ready(page)``; fail after :data:`WAIT` seconds, showing the last page."""
    end = time.monotonic() + WAIT
    while True:
        page = scrape(port)
        if ready(page):
            return page
        assert time.monotonic() < end, f"the metrics never got there: {page.get('mbdask_calculations')}"
        time.sleep(0.2)


def gated_input(gate: Path, **keywords: Any) -> dict:
    """Water hexamer through 3-body (6 + 15 + 20 calculations) of the ``sleep`` double; its trimers wait for
    ``gate``."""
    inp = sleep_input()
    inp["specification"]["specification"]["sleepy"]["keywords"].update(gate={"3": str(gate)}, **keywords)
    return inp


def check_during_and_after(port: int, sub: mbdask.Submission, gate: Path) -> dict[str, list[Any]]:
    """While the trimers wait: 1- and 2-body done, 3-body to go; after: everything done. Returns the last page."""
    assert sub.metrics is not None
    run = sub.metrics.name
    totals = {("sleepy", "1"): 6, ("sleepy", "2"): 15, ("sleepy", "3"): 20}

    def lower_orders_done(page: dict[str, list[Any]]) -> bool:
        counts = calculations(page, run)
        return all(counts.get(level, {}).get("done") == totals[level] for level in [("sleepy", "1"), ("sleepy", "2")])

    page = scrape_until(port, lower_orders_done)
    assert FAMILIES - {"mbdask_store_writes", "mbdask_store_write_failures"} <= set(page)
    counts = calculations(page, run)
    assert set(counts) == set(totals)
    for level, total in totals.items():
        assert set(counts[level]) == {"done", "failed", "to_go"}
        assert sum(counts[level].values()) == total, (level, counts[level])
    assert counts[("sleepy", "3")] == {"done": 0, "failed": 0, "to_go": 20}
    assert value(page, "mbdask_run_finished", run) == 0
    assert value(page, "mbdask_elapsed_seconds", run) > 0
    time_left = value(page, "mbdask_time_left_seconds", run)
    assert time_left is None or time_left >= 0

    gate.touch()
    sub.result(timeout=WAIT)
    page = scrape(port)  # the final figures are pushed before result() returns
    counts = calculations(page, run)
    assert counts == {level: {"done": total, "failed": 0, "to_go": 0} for level, total in totals.items()}
    assert value(page, "mbdask_run_finished", run) == 1
    assert value(page, "mbdask_time_left_seconds", run) == 0
    return page


def test_metrics_on_the_page_of_a_scheduler_in_this_process(tmp_path):
    """mbdask's own kind of cluster: scheduler, dashboard and client in one process; the store's writes counted."""
    gate = tmp_path / "gate"
    with in_process_client(n_workers=2, dashboard_address="127.0.0.1:0") as client:
        port = client.cluster.scheduler.http_server.port
        sub = mbdask.start(gated_input(gate), client, progress=True, store=tmp_path / "store.sqlite")
        page = check_during_and_after(port, sub, gate)
        run = sub.metrics.name
        assert value(page, "mbdask_store_writes", run) == 41  # every calculation, once
        assert value(page, "mbdask_store_write_failures", run) == 0
        assert page["mbdask_store_writes"][0].name == "mbdask_store_writes_total"

        # the next run on this scheduler replaces the finished one; a failed order counts as failed
        failing = mbdask.start(gated_input(gate, fail=["3"]), client, progress=True, retries=0)
        with pytest.raises(mbdask.FragmentFailedError):
            failing.result(timeout=WAIT)
        page = scrape(port)
        assert not calculations(page, run)  # replaced
        counts = calculations(page, failing.metrics.name)
        assert counts[("sleepy", "3")]["failed"] > 0
        assert counts[("sleepy", "3")]["done"] == 0
        assert all(sum(c.values()) == total for c, total in zip(counts.values(), (6, 15, 20)))
        assert value(page, "mbdask_run_finished", failing.metrics.name) == 1
        assert value(page, "mbdask_store_writes", failing.metrics.name) is None  # no store: no store figures


def test_two_clusters_in_one_process_each_show_their_own_runs(tmp_path):
    """A notebook's two LocalClusters: a run on one is not on the other's page."""
    gate = tmp_path / "gate"
    gate.touch()
    with (
        in_process_client(dashboard_address="127.0.0.1:0") as busy,
        in_process_client(dashboard_address="127.0.0.1:0") as idle,
    ):
        sub = mbdask.start(gated_input(gate), busy, progress=True)
        sub.result(timeout=WAIT)
        mbdask.start(gated_input(gate), idle, progress=True).result(timeout=WAIT)  # installed there too
        idle_page = scrape(idle.cluster.scheduler.http_server.port)
        assert calculations(idle_page, sub.metrics.name) == {}
        assert calculations(scrape(busy.cluster.scheduler.http_server.port), sub.metrics.name)


@contextmanager
def scheduler_process(tmp_path: Path, hidden: str | None = None) -> Iterator[tuple[str, int]]:
    """A plain ``dask scheduler`` on 127.0.0.1 in a process of its own, unable to import module ``hidden``;
    yields its address and dashboard port."""
    info = tmp_path / "scheduler.json"
    args = ["--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(info)]
    hide = f"sys.modules[{hidden!r}] = None; " if hidden else ""  # an import of it fails there
    code = f"import sys; {hide}from distributed.cli.dask_scheduler import main; sys.argv[1:] = {args!r}; main()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + WAIT
        while not info.exists() or not info.read_text().strip():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "the scheduler stopped"
            assert time.monotonic() < end, "the scheduler never wrote its file"
            time.sleep(0.1)
        written = json.loads(info.read_text())
        yield written["address"], written["services"]["dashboard"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def worker_here(address: str) -> Iterator[Any]:
    """A client of ``address`` and a worker of it in this process (which sees the test doubles)."""
    from distributed import Client, Worker
    from doubles import register_doubles

    register_doubles()
    with Client(address, set_as_default=False) as client:
        worker = client.sync(Worker, address, nthreads=2, resources={"cores": 2})
        try:
            yield client
        finally:
            client.sync(worker.close)


def test_metrics_on_the_page_of_a_scheduler_in_another_process(tmp_path):
    """``--scheduler ADDRESS``: the client pushes its figures to a plain ``dask scheduler`` elsewhere, which shows
    them (nothing to preload there: the client installs the collector)."""
    gate = tmp_path / "gate"
    with scheduler_process(tmp_path) as (address, port), worker_here(address) as client:
        assert not FAMILIES & set(scrape(port))  # nothing before a run
        sub = mbdask.start(gated_input(gate), client, progress=True)
        check_during_and_after(port, sub, gate)


def test_a_scheduler_without_prometheus_client_runs_without_metrics(tmp_path, caplog):
    """No ``prometheus_client`` where the scheduler runs: Dask's page says metrics are not available, and the run
    goes on without them (said once in the ``mbdask`` logger)."""
    gate = tmp_path / "gate"
    gate.touch()
    with scheduler_process(tmp_path, hidden="prometheus_client") as (address, port), worker_here(address) as client:
        with caplog.at_level("INFO", logger="mbdask"):
            sub = mbdask.start(gated_input(gate), client, progress=True)
        assert sub.metrics is None
        assert "prometheus_client is not installed there" in caplog.text
        assert sub.result(timeout=WAIT).extras["mbdask"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert "Prometheus metrics are not available" in response.read().decode()


def test_a_scheduler_that_cannot_import_mbdask_gives_no_feed(tmp_path):
    """Asking a scheduler that cannot import mbdask for metrics is no error: no feed, nothing on its page.
    (Such a scheduler cannot run an expansion either: it unpickles the graph.)"""
    from mbdask.diagnostics.metrics import feed_for

    with scheduler_process(tmp_path, hidden="mbdask") as (address, port):
        from distributed import Client

        with Client(address, set_as_default=False) as client:
            assert feed_for(client) is None
            assert feed_for(client) is None  # asked once per client
        page = scrape(port)
        assert "dask_scheduler_workers" in page
        assert not FAMILIES & set(page)


def test_importing_the_metrics_module_imports_no_prometheus_client():
    """The client needs no ``prometheus_client``: only the scheduler's collector imports it."""
    code = (
        "import sys, mbdask.diagnostics.metrics, mbdask.workflows.expansion\nprint('prometheus_client' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_disconnected_clients_figures_stay_until_newer_ones_arrive():
    """prune: connected clients' snapshots stay; of the others only the newest (a finished run's last look)."""
    from mbdask.diagnostics.metrics import prune

    entries = {"gone-old": {"updated": 1.0}, "gone-new": {"updated": 3.0}, "here": {"updated": 2.0}}
    assert set(prune(entries, {"here"})) == {"gone-new", "here"}
    entries["here"]["updated"] = 4.0
    assert set(prune(entries, {"here"})) == {"here"}
    assert prune(None, set()) == {}

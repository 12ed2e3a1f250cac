"""The checkpoint store is the client's file: workers never open it, the client writes what they finish.

Real xtb on real Dask workers (process workers, so that they can stand in another working
directory than the client's, as the nodes of a cluster do).
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import time

import cloudpickle
import pytest
from conftest import EXAMPLES, needs_xtb, xtb_input
from distributed import Client, get_task_stream
from helpers import sleep_input

import mbdask
from mbdask.calculation.store import FragmentStore, StoreWriter


@needs_xtb
def test_relative_store_is_the_clients_file_and_workers_never_open_it(tmp_path, monkeypatch):
    """Workers in another directory than the client; ``store="run.sqlite"`` is the client's file (issue #17)."""
    from mbdask.deploy.cluster import ClusterSize, start_local_cluster

    here, there = tmp_path / "client", tmp_path / "workers"
    here.mkdir()
    there.mkdir()
    monkeypatch.chdir(here)
    inp = xtb_input("water3-uud.xyz", levels={2: "gfn2"}, max_nbody=2)  # 3 monomers, 3 dimers
    with (
        start_local_cluster(ClusterSize(2, 1, 2 * 2**30), dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        client.run(os.chdir, str(there))
        assert set(client.run(os.getcwd).values()) == {str(there)}
        first = mbdask.compute(inp, client, store="run.sqlite")
        computed = first.extras["mbdask"]["nfragment_calculations"]
        assert computed == 6 and len(first.extras["mbdask"]["timing"]["fragments"]) == 6
        # every fragment is in the client's file as compute() returns, nothing in the workers' directory
        assert FragmentStore(here / "run.sqlite").count() == 6
        assert sorted(os.listdir(there)) == []
        sub = mbdask.start(inp, client, store="run.sqlite")
        second = sub.result()
        assert sub.store.path == str(here / "run.sqlite")
        assert sub.from_store == 6
        assert second.extras["mbdask"]["timing"]["fragments"] == []  # a rerun computes nothing
        assert second.properties.return_energy == first.properties.return_energy
        assert sorted(os.listdir(there)) == []


def test_nothing_sent_to_workers_holds_the_store(inprocess_client, tmp_path):
    store = FragmentStore.open(tmp_path / "store.sqlite")
    with pytest.raises(TypeError, match="workers never open the checkpoint store"):
        pickle.dumps(store)
    sub = mbdask.start(sleep_input(), inprocess_client, store=store)
    sub.result()
    tasks = dict(sub.graph.graph)
    ctx = sub.graph.context  # on every worker, scattered
    assert not hasattr(ctx, "store")
    assert b"store.sqlite" not in cloudpickle.dumps(ctx)
    assert b"store.sqlite" not in cloudpickle.dumps(tasks)  # no task of the graph names it
    assert store.count() == 41


def test_keep_going_failure_leaves_every_finished_fragment_in_the_store(inprocess_client, tmp_path):
    path = tmp_path / "store.sqlite"
    inp = sleep_input()
    inp["specification"]["specification"]["sleepy"]["keywords"]["fail"] = ["3"]
    partial = mbdask.compute(inp, inprocess_client, keep_going=True, store=path)
    computed = partial.extras["mbdask"]["timing"]["fragments"]
    assert partial.extras["mbdask"]["partial"]["complete_nbody"] == 2
    assert len(computed) >= 21  # 6 monomers and 15 dimers
    assert FragmentStore(path).count() == len(computed)  # written before compute() returned
    with pytest.raises(mbdask.FragmentFailedError):
        mbdask.compute(inp, inprocess_client, store=path)
    assert FragmentStore(path).count() == len(computed)  # the rerun found them all and wrote nothing new


def test_writer_writes_new_outputs_only_and_releases_each_future(inprocess_client, tmp_path):
    from mbdask.calculation.execute import ExpansionContext, run_unit

    plan = mbdask.plan(sleep_input(), check_installed=False)
    ctx = ExpansionContext(plan.input, plan.specifications, False)
    store = FragmentStore(tmp_path / "store.sqlite")
    writer = StoreWriter(store, inprocess_client)
    jobs, extra = list(plan.jobs[:4]), plan.jobs[5]
    known = {
        jobs[0].label: {"label": jobs[0].label, "values": {"energy": -1.0}, "start": 0.0, "stop": 1.0, "stored": True}
    }
    future = inprocess_client.submit(run_unit, ctx, jobs, 1, None, known, [0.5] * 4, pure=False)
    key = future.key
    writer.track(future, jobs, ctx.store_key, skip={jobs[1].label})
    del future
    writer.add(
        {extra.label: {"label": extra.label, "values": {"energy": -2.0}, "start": 0.0, "stop": 0.5}},
        [extra],
        ctx.store_key,
    )
    writer.seal()
    deadline = time.monotonic() + 30
    while writer.pending and time.monotonic() < deadline:  # the sealed writer ends once the unit is written
        time.sleep(0.01)
    writer.close()
    found = store.get_many(ctx.store_key(job) for job in plan.jobs[:6])
    # jobs[0] came from the store, jobs[1] was to be skipped, jobs[4] was never asked for
    assert set(found) == {ctx.store_key(job) for job in (jobs[2], jobs[3], extra)}
    assert writer.written == 3 and writer.pending == 0
    assert "predicted" not in found[ctx.store_key(jobs[2])]  # this run's prediction is not stored
    deadline = time.monotonic() + 10
    while key in inprocess_client.refcount and time.monotonic() < deadline:  # the release reaches the client's loop
        time.sleep(0.01)
    assert key not in inprocess_client.refcount  # released once written


@needs_xtb
def test_energy_screening_reads_and_writes_the_store_on_the_client(process_client, tmp_path):
    inp = xtb_input(EXAMPLES / "water6-prism.xyz", levels={3: "gfn1"})
    screening = {"energy_thresholds": {2: 1.0, 3: 0.1}}
    path = tmp_path / "store.sqlite"
    first = mbdask.compute(inp, process_client, screening=screening, store=path)
    expensive = len(first.extras["mbdask"]["timing"]["fragments"])
    stored = FragmentStore(path).count()
    assert stored > expensive > 0  # the cheap model's calculations are stored too
    with get_task_stream(process_client) as stream:
        sub = mbdask.start(inp, process_client, screening=screening, store=path)
        second = sub.result()
    assert second.extras["mbdask"]["timing"]["fragments"] == []
    assert sub.from_store == expensive
    assert not [t for t in stream.data if str(t["key"]).startswith("('cheap")]  # no cheap calculation submitted
    assert second.return_result == first.return_result
    assert second.extras["mbdask"]["screening"]["orders"] == first.extras["mbdask"]["screening"]["orders"]
    assert FragmentStore(path).count() == stored


class _FullDisk(FragmentStore):
    """A store on a disk that is full: every write fails as SQLite's would, after the look-ups worked."""

    def put_many(self, entries):
        list(entries)
        raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_is_said_once_and_at_the_end_how_many_were_not_saved(inprocess_client, tmp_path, caplog):
    """A full disk under --store printed one warning per failed write (16 lines for 175 calculations) and
    nothing at the end (issue #25); the run itself goes on and returns its result."""
    store = _FullDisk(tmp_path / "store.sqlite")
    with caplog.at_level(logging.WARNING, logger="mbdask"):
        sub = mbdask.start(sleep_input(), inprocess_client, store=store, batch=False)  # 41 units: many writes
        result = sub.result()
    said = [r.getMessage() for r in caplog.records if r.name.startswith("mbdask.calculation.store")]
    assert result.extras["mbdask"]["nfragment_calculations"] == 41
    assert len(said) == 2, said
    assert said[0] == (
        f"store {store.path}: could not write finished fragments (OSError: [Errno 28] No space left on device); "
        "the run goes on, and what is not saved is computed again next time"
    )
    assert said[1] == (
        f"store {store.path}: 41 finished fragment calculations were not saved (OSError: [Errno 28] No space left on "
        "device); a later run computes them again"
    )
    assert sub.writer is not None and sub.writer.not_saved == 41 and sub.writer.written == 0


def test_close_gives_up_after_its_patience_when_nothing_gets_written(inprocess_client, tmp_path, caplog, monkeypatch):
    """A store whose writes hang (a file system that stopped answering): ``close`` waits while nothing is
    written for ``patience`` seconds, then returns, saying how many finished units it gave up on."""
    import threading

    from mbdask.calculation.execute import ExpansionContext, run_unit

    plan = mbdask.plan(sleep_input(), check_installed=False)
    ctx = ExpansionContext(plan.input, plan.specifications, False)
    store = FragmentStore(tmp_path / "store.sqlite")
    entered, release = threading.Event(), threading.Event()

    def hanging(entries):
        entered.set()
        release.wait(60)
        return 0

    monkeypatch.setattr(store, "put_many", hanging)
    writer = StoreWriter(store, inprocess_client)
    first, second = plan.jobs[0], plan.jobs[1]
    writer.add(
        {first.label: {"label": first.label, "values": {"energy": -1.0}, "start": 0.0, "stop": 0.5}},
        [first],
        ctx.store_key,
    )
    assert entered.wait(30)  # the writer's thread hangs in the store
    future = inprocess_client.submit(run_unit, ctx, [second], 1, None, {}, [0.5], pure=False)
    future.result()
    writer.track(future, [second], ctx.store_key)
    try:
        with caplog.at_level(logging.WARNING, logger="mbdask"):
            writer.close(patience=0.3)  # returns although the write never ends
    finally:
        release.set()
    assert f"store {store.path}: gave up writing 1 finished unit after 0.3 s" in caplog.text
    assert writer.written == 0

"""A run across hosts that loses one (#17): scheduler, two workers and the client each on a
host of its own, made of network namespaces on a private bridge (tests/namespaces.py).

The workers are started as docs/hpc.md says (``dask worker`` with a nanny, ``cores`` and
``memory`` resources, the docs' worker configuration) from the same environment, each in a
mount namespace whose working directory is a private tmpfs mounted over the client's working
directory: the same path, another file system, as on a compute node without a shared disk.
Midway through the run one worker host is lost (SIGKILL to its nanny and worker, everything
in its namespace). The run must still finish with the local run's energy; the checkpoint
store given by a relative path must fill up in the client's directory only; and a rerun must
find every calculation there.

Skipped where namespaces cannot be made (not root, no ``ip``/``unshare``, an unprivileged
container). Everything it starts is killed, and every namespace deleted, even on failure.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import needs_xtb, write_json, xtb_input
from namespaces import Hosts, Unavailable, in_mount_namespace

TESTS = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
PORT = 8786
#: The docs' worker configuration (docs/hpc.md, "Worker configuration").
WORKER_CONFIG = """\
distributed:
  nanny:
    pre-spawn-environ:
      MALLOC_TRIM_THRESHOLD_: null
  worker:
    profile:
      interval: 100ms
"""
#: Share of the fragment units finished when a worker host is lost.
KILL_AT = 0.3

pytestmark = needs_xtb


@pytest.fixture
def hosts(tmp_path):
    """Four hosts on a bridge: ``sched``, ``w1``, ``w2``, ``cli`` (skips where namespaces cannot be made)."""
    try:
        made = Hosts()
    except Unavailable as exc:
        pytest.skip(f"no network namespaces here: {exc}")
    try:
        try:
            for name, number in (("sched", 1), ("w1", 11), ("w2", 12), ("cli", 100)):
                made.add(name, number)
            probe = made.run(made.hosts["w1"], ["true"], cwd=tmp_path, private_dir=tmp_path / "probe", timeout=30)
        except RuntimeError as exc:
            pytest.skip(f"cannot link network namespaces here: {exc}")
        if probe.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs in a mount namespace here: {probe.stderr.strip()}")
        yield made
    finally:
        made.close()


def _wait_for(condition, timeout: float, what: str, logs=()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what} did not happen within {timeout} s\n"
                + "\n".join(f"--- {p.name}:\n{p.read_text()[-3000:]}" for p in logs)
            )
        time.sleep(0.05)


def _stored(store: Path, scratch: Path) -> int:
    """Rows in the store's ``fragments`` table, read from a copy (SQLite resolves /proc/PID/root to this host's /)."""
    scratch.mkdir(exist_ok=True)
    copy = scratch / store.name
    for suffix in ("", "-wal"):
        if Path(f"{store}{suffix}").exists():
            Path(f"{copy}{suffix}").write_bytes(Path(f"{store}{suffix}").read_bytes())
    with sqlite3.connect(copy) as db:
        return db.execute("SELECT COUNT(*) FROM fragments").fetchone()[0]


def test_run_across_hosts_survives_a_lost_worker_host_and_keeps_its_store_on_the_client(hosts, tmp_path):
    inp = write_json(tmp_path / "water20-gfn2.json", xtb_input("water20-dodecahedron.xyz", max_nbody=3))
    logs, config, client_dir, local_dir = (tmp_path / d for d in ("logs", "dask-config", "client", "local"))
    for d in (logs, config, client_dir, local_dir):
        d.mkdir()
    (config / "mbdask.yaml").write_text(WORKER_CONFIG)

    # the reference: the same input on a LocalCluster, no store
    t0 = time.monotonic()
    local = subprocess.run(
        [
            sys.executable,
            "-m",
            "mbdask",
            "run",
            str(inp),
            "-o",
            "ref.json",
            "--workers",
            "2",
            "--no-progress",
            "--no-dashboard",
        ],
        cwd=local_dir,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert local.returncode == 0, local.stderr
    reference = json.loads((local_dir / "ref.json").read_text())
    print(f"{time.monotonic() - t0:5.1f} s: reference")

    sched, w1, w2, cli = (hosts.hosts[name] for name in ("sched", "w1", "w2", "cli"))
    address = f"tcp://{sched.address}:{PORT}"
    hosts.start(
        sched,
        [str(BIN / "dask"), "scheduler", "--host", sched.address, "--port", str(PORT), "--no-dashboard"],
        log=logs / "sched.log",
        cwd=tmp_path,
    )
    workers = {}
    for host in (w1, w2):
        argv = [
            str(BIN / "dask"),
            "worker",
            address,
            "--name",
            host.name,
            "--host",
            host.address,
            "--nthreads",
            "1",
            "--memory-limit",
            "2GiB",
            "--resources",
            f"cores=1,memory={2 * 2**30}",
            "--no-dashboard",
            "--local-directory",
            str(client_dir),
        ]
        # a compute node's environment: not what earlier Dask clusters in this test process left
        # in it (a spawning nanny sets MALLOC_TRIM_THRESHOLD_ in its parent's os.environ)
        env = {**{k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}, "DASK_CONFIG": str(config)}
        workers[host.name] = hosts.start(
            host, argv, log=logs / f"{host.name}.log", cwd=tmp_path, private_dir=client_dir, env=env
        )
    all_logs = sorted(logs.iterdir())
    _wait_for(
        lambda: (logs / "sched.log").read_text().count("Register worker") >= 2, 60, "both workers joining", all_logs
    )
    print(f"{time.monotonic() - t0:5.1f} s: workers joined")

    # the run, from the client host, a fresh working directory and a relative store path; and a watcher there
    command = [
        sys.executable,
        "-m",
        "mbdask",
        "run",
        str(inp),
        "--scheduler",
        address,
        "--store",
        "run.sqlite",
        "-o",
        "result.json",
        "--no-progress",
    ]
    watcher_log = logs / "watcher.log"
    watcher = hosts.start(
        cli, [sys.executable, str(TESTS / "namespaces.py"), address, "w1", str(KILL_AT)], log=watcher_log, cwd=tmp_path
    )
    run_log = logs / "run.log"
    run = hosts.start(cli, command, log=run_log, cwd=client_dir)
    _wait_for(
        lambda: watcher.poll() is not None or run.poll() is not None,
        60,
        "the watcher's verdict",
        [watcher_log, run_log],
    )
    assert watcher.poll() is not None, f"the run ended before the watcher's verdict:\n{run_log.read_text()}"
    seen = json.loads(watcher_log.read_text().strip().splitlines()[-1])
    w1_store_at_kill = in_mount_namespace(workers["w1"].pid, client_dir) / "run.sqlite"
    w1_had_store = w1_store_at_kill.exists()  # looked at just before the host goes, with its file system
    print(f"{time.monotonic() - t0:5.1f} s: kill {seen}")
    if seen["triggered"]:
        hosts.kill(w1)
    assert seen["triggered"], f"worker host w1 was never lost mid-run: {seen}\n{run_log.read_text()}"
    assert workers["w1"].poll() is not None and not hosts.pids(w1)
    try:
        run.wait(timeout=120)
    except subprocess.TimeoutExpired:
        hosts.kill(cli)
    out = run_log.read_text()
    print(f"{time.monotonic() - t0:5.1f} s: run done")

    # 1. the run finishes, with the local run's numbers
    assert run.returncode == 0, out
    result = json.loads((client_dir / "result.json").read_text())
    assert result["return_result"] == pytest.approx(reference["return_result"], abs=1e-10, rel=0)
    assert result["properties"]["return_energy"] == pytest.approx(
        reference["properties"]["return_energy"], abs=1e-10, rel=0
    )
    ncalc = result["extras"]["mbdask"]["nfragment_calculations"]
    assert ncalc == reference["extras"]["mbdask"]["nfragment_calculations"]
    assert "MALLOC_TRIM_THRESHOLD_" not in out, "the docs' worker configuration did not take effect"

    # 2. the store is the client's: every calculation in its run.sqlite, none on the worker hosts
    problems = []
    stored = _stored(client_dir / "run.sqlite", tmp_path / "client-store")
    if stored != ncalc:
        problems.append(f"the client's run.sqlite holds {stored} of {ncalc} fragment calculations")
    w2_dir = in_mount_namespace(workers["w2"].pid, client_dir)
    assert (client_dir / "result.json").exists() and not (
        w2_dir / "result.json"
    ).exists()  # the set-up: separate file systems
    if w1_had_store:
        problems.append("worker host w1 had a run.sqlite of its own in its working directory")
    if (w2_dir / "run.sqlite").exists():
        problems.append(
            f"worker host w2 has a run.sqlite of its own, with {_stored(w2_dir / 'run.sqlite', tmp_path / 'w2-store')} "
            "calculations"
        )

    # 3. a rerun finds everything there and computes nothing
    rerun = hosts.run(cli, command, cwd=client_dir, timeout=90)
    if rerun.returncode != 0:
        problems.append(f"the rerun failed:\n{rerun.stderr}")
    else:
        again = json.loads((client_dir / "result.json").read_text())
        from_store = again["extras"]["mbdask"]["timing"]["from_store"]
        if from_store != ncalc:
            problems.append(f"the rerun found {from_store} of {ncalc} calculations in the store")
        if f"{ncalc} of {ncalc} fragment calculations found in run.sqlite" not in rerun.stderr:
            problems.append(f"the rerun does not say it found all {ncalc} calculations:\n{rerun.stderr}")
        assert again["return_result"] == pytest.approx(reference["return_result"], abs=1e-10, rel=0)
    print(f"{time.monotonic() - t0:5.1f} s: rerun done")
    assert not problems, "\n".join(problems)

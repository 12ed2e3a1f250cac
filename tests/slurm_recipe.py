"""docs/hpc.md's SLURM recipe on a real (one-node) SLURM, and issue #17's points 1-3 checked on it.

An integration test, not a benchmark: tests/test_slurm.py runs it (``pytest -m slurm``);
it can also be run by hand.

Brings up a one-node SLURM on this machine (Debian's ``slurm-wlm`` and ``munge``, installed
with apt-get where missing; no accounting), then runs the recipe of docs/hpc.md scaled down
(SLURMCluster, 2 jobs of 1 core, ``interface="lo"``, the workers' ``--resources cores=1,memory=...``)
on a GFN2-xTB nocp 3-body expansion of a water cluster from tests/data, and checks:

1. ``mbdask.compute`` called right after ``cluster.scale(jobs=2)`` and ``Client(cluster)``
   waits for the batch jobs' workers ("waiting for workers ..." on stderr) instead of failing;
   the energy equals a local run's (LocalCluster, same input) to 1e-10. Times from job
   submission to the first fragment in the store and to the result.
2. One job cancelled (scancel) mid-run: the run finishes on the other with the same energy.
3. The same with ``cluster.adapt(minimum_jobs=2, maximum_jobs=2)`` instead of ``scale``
   (unless ``--no-adapt``): the run finishes, and the lost job is replaced (after
   ``distributed.deploy.lost-worker-timeout``, 15 s, so often after this short run: it
   watches on until the new job's worker is there).
   Optional, ``--lifetime T,STAGGER``: workers started with ``--lifetime T --lifetime-stagger
   STAGGER`` and ``adapt``: they leave during the run, new jobs replace them, and the energy is
   still the local run's.
4. Every job cancelled mid-run, through the command line (``python -m mbdask run ...
   --scheduler ADDR --worker-timeout 20 --store ...``): mbdask says at once on stderr that no
   worker is left, waits the worker timeout, stops with exit code 1 and a message; what
   finished is in the store (rows of its SQLite ``fragments`` table), and a rerun with the
   same store (locally) reuses it and gives the local run's energy.

Everything it started is stopped at the end, also on failure or Ctrl-C: the jobs (scancel),
slurmd, slurmctld and munged (only those it started itself, by their process ids), and
slurm.conf is put back as it was.

Needs root (munged, slurmctld and slurmd run here) and Debian's packages (apt-get);
dask-jobqueue in this environment (``pip install mbdask[hpc]``) and xtb. Where one of these
is missing it prints ``SKIP: <reason>`` and exits with code 77 (what tests/test_slurm.py
turns into a skip). Exit code 0: every check passed; 1: some did not.

Usage: python tests/slurm_recipe.py [--xyz water16-4444a.xyz] [--max-nbody 3]
       [--worker-timeout 20] [--cancel-at 0.3] [--no-adapt] [--lifetime 4s,2s]
       [--workdir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
SKIP_CODE = 77

SLURM_CONF = Path("/etc/slurm/slurm.conf")
STATE_DIRS = (Path("/var/lib/slurm/slurmctld"), Path("/var/lib/slurm/slurmd"))
MUNGE_SOCKET_DIR = Path("/run/munge")


class Skip(Exception):
    """This machine cannot run the recipe (not root, no packages, munge does not start)."""


# --------------------------------------------------------------------------------------------
# small helpers


def sh(*cmd: str, timeout: float = 60, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check, **kwargs)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def store_rows(path: Path) -> int:
    """Rows of the store's ``fragments`` table, read-only (0 while it does not exist yet)."""
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)) as db:
            return int(db.execute("SELECT COUNT(*) FROM fragments").fetchone()[0])
    except sqlite3.Error:
        return 0


def job_ids(user: str) -> list[str]:
    """The user's SLURM job ids (any state), oldest first."""
    out = sh("squeue", "-h", "-u", user, "-o", "%i", check=False).stdout.split()
    return sorted(out, key=int)


def running_job_ids(user: str) -> list[str]:
    out = sh("squeue", "-h", "-u", user, "-t", "RUNNING", "-o", "%i", check=False).stdout.split()
    return sorted(out, key=int)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def stop_process(proc: subprocess.Popen, name: str, patience: float = 15) -> None:
    """SIGTERM the process we started (by its id), SIGKILL after ``patience`` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(patience)
    except subprocess.TimeoutExpired:
        log(f"{name} (pid {proc.pid}) did not stop on SIGTERM; SIGKILL")
        proc.kill()
        proc.wait(5)


# --------------------------------------------------------------------------------------------
# preconditions and the one-node SLURM


def preflight() -> None:
    """Raise Skip where this machine cannot run the recipe; install slurm-wlm where missing (apt-get)."""
    if os.geteuid() != 0:
        raise Skip("needs root (munged, slurmctld and slurmd are started here)")
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        raise Skip("dask-jobqueue is not installed in this environment (pip install mbdask[hpc])") from None
    try:
        import xtb.interface  # noqa: F401
    except Exception:
        raise Skip("xtb-python is not installed (pip install xtb)") from None
    missing = [
        name
        for name in ("slurmctld", "slurmd", "sbatch", "munged")
        if not (shutil.which(name) or Path(f"/usr/sbin/{name}").exists())
    ]
    if missing:
        if not shutil.which("apt-get"):
            raise Skip(
                f"SLURM is not installed ({', '.join(missing)} missing) and there is no apt-get to install Debian's "
                "slurm-wlm"
            )
        log("installing Debian's slurm-wlm (and munge) with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        done = sh("apt-get", "install", "-y", "-q", "slurm-wlm", timeout=900, check=False, env=env)
        if done.returncode != 0:
            sh("apt-get", "update", "-q", timeout=600, check=False, env=env)
            done = sh("apt-get", "install", "-y", "-q", "slurm-wlm", timeout=900, check=False, env=env)
        if done.returncode != 0:
            raise Skip(f"apt-get install slurm-wlm failed: {done.stderr.strip()[-300:]}")
    if (
        sh("pgrep", "-x", "slurmctld", check=False).returncode == 0
        or sh("pgrep", "-x", "slurmd", check=False).returncode == 0
    ):
        raise Skip("a slurmctld or slurmd is already running on this machine; not touching it")


def slurm_conf(cpus: int, memory_mb: int) -> str:
    return f"""\
# written by mbdask's tests/slurm_recipe.py (removed again when it ends)
ClusterName=mbdask-recipe
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation={STATE_DIRS[0]}
SlurmdSpoolDir={STATE_DIRS[1]}
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
KillWait=10
NodeName=localhost CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class OneNodeSlurm:
    """munged (unless one answers already), slurmctld and slurmd on localhost; ``close`` stops what it started."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.conf_backup: str | None = None
        self.wrote_conf = False
        self.clean_state = False
        self.made_socket_dir = False
        self.user = os.environ.get("USER") or "root"

    def __enter__(self) -> OneNodeSlurm:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def munge_works() -> bool:
        try:
            cred = sh("munge", "-n", timeout=10, check=False)
            return cred.returncode == 0 and sh("unmunge", input=cred.stdout, timeout=10, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def start(self) -> None:
        logs = self.workdir / "slurm-daemons"
        logs.mkdir(parents=True, exist_ok=True)
        # munge: the package makes the key (/etc/munge/munge.key); the socket directory is made at boot
        # by systemd-tmpfiles, which a container never runs
        if self.munge_works():
            log("munged already answers; using it")
        else:
            if not Path("/etc/munge/munge.key").exists():
                raise Skip("munge has no key (/etc/munge/munge.key); reinstall munge or run mungekey")
            self.made_socket_dir = not MUNGE_SOCKET_DIR.exists()
            MUNGE_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
            shutil.chown(MUNGE_SOCKET_DIR, "munge", "munge")
            munged = subprocess.Popen(
                ["/usr/sbin/munged", "-F"],
                user="munge",
                group="munge",
                stdout=open(logs / "munged.log", "w"),
                stderr=subprocess.STDOUT,
            )
            self.procs.append(("munged", munged))
            if not wait_until(self.munge_works, 10):
                raise Skip(
                    f"munged does not start (see {logs / 'munged.log'}): "
                    + (logs / "munged.log").read_text(errors="replace").strip()[-300:]
                )
        cpus = os.cpu_count() or 1
        with open("/proc/meminfo") as f:
            total_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        memory_mb = int(total_kb / 1024 * 0.8)  # slurmd drains a node that has less than RealMemory
        if SLURM_CONF.exists():
            self.conf_backup = SLURM_CONF.read_text()
        self.clean_state = not any(any(d.iterdir()) for d in STATE_DIRS if d.exists())
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SLURM_CONF.write_text(slurm_conf(cpus, memory_mb))
        self.wrote_conf = True
        for d in STATE_DIRS:
            d.mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "slurm", "slurm")
        Path("/var/log/slurm").mkdir(parents=True, exist_ok=True)
        shutil.chown("/var/log/slurm", "slurm", "slurm")
        ctld = subprocess.Popen(
            ["/usr/sbin/slurmctld", "-D"], stdout=open(logs / "slurmctld.out", "w"), stderr=subprocess.STDOUT
        )
        self.procs.append(("slurmctld", ctld))
        if not wait_until(lambda: sh("scontrol", "ping", check=False).stdout.count("UP") > 0, 20):
            raise RuntimeError(
                f"slurmctld does not answer (see {logs / 'slurmctld.out'} and /var/log/slurm/slurmctld.log)"
            )
        slurmd = subprocess.Popen(
            ["/usr/sbin/slurmd", "-D", "-N", "localhost"],
            stdout=open(logs / "slurmd.out", "w"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(("slurmd", slurmd))
        if not wait_until(lambda: sh("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip() == "idle", 30):
            state = sh("sinfo", "-h", "-N", "-o", "%T %E", check=False).stdout.strip()
            raise RuntimeError(f"the node does not become idle ({state}); see /var/log/slurm/slurmd.log")
        check = sh("srun", "-N1", "-n1", "-t", "1", "hostname", timeout=60, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"srun hostname failed: {check.stderr.strip()}")
        log(f"one-node SLURM up: {cpus} CPUs, {memory_mb} MB; srun hostname -> {check.stdout.strip()}")

    def cancel_all(self) -> None:
        sh("scancel", "-u", self.user, check=False)

    def close(self) -> None:
        if any(name == "slurmctld" and p.poll() is None for name, p in self.procs):
            self.cancel_all()
            if not wait_until(lambda: not job_ids(self.user), 30):
                log(f"jobs still listed at teardown: {job_ids(self.user)}")
        for name, proc in reversed(self.procs):
            stop_process(proc, name)
        self.procs.clear()
        if self.made_socket_dir:
            shutil.rmtree(MUNGE_SOCKET_DIR, ignore_errors=True)
            self.made_socket_dir = False
        # job steps (slurmstepd) outlive slurmd; after scancel none should be left
        left = [
            line.split()[0]
            for line in sh("ps", "-o", "pid=,stat=", "-C", "slurmstepd", check=False).stdout.splitlines()
            if "Z" not in line.split()[1]
        ]  # zombies go with this process
        if left:
            log(f"slurmstepd still running after teardown: {left}")
        if self.wrote_conf:
            if self.conf_backup is None:
                SLURM_CONF.unlink(missing_ok=True)
            else:
                SLURM_CONF.write_text(self.conf_backup)
            self.wrote_conf = False
            if self.clean_state:
                for d in STATE_DIRS:
                    for entry in d.iterdir():
                        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        log("SLURM torn down")


# --------------------------------------------------------------------------------------------
# watching a run: store rows, workers, jobs; cancelling jobs at a point of the run


class Watcher(threading.Thread):
    """Every 0.2 s: rows in the store, workers on the scheduler, the user's jobs.

    Records when the first fragment reached the store and, once ``cancel_at`` rows are
    there, calls ``action`` once (the scancel), recording when and how many rows were in.
    """

    def __init__(
        self,
        t0: float,
        store: Path,
        user: str,
        workers: Callable[[], int],
        cancel_at: int | None = None,
        action: Callable[[], list[str]] | None = None,
    ):
        super().__init__(daemon=True)
        self.t0, self.store, self.user, self.workers = t0, store, user, workers
        self.cancel_at, self.action = cancel_at, action
        self.first_fragment: float | None = None
        self.first_worker: float | None = None
        self.cancelled: float | None = None
        self.cancelled_jobs: list[str] = []
        self.rows_at_cancel: int | None = None
        self.jobs_seen: dict[str, float] = {}
        self.worker_counts: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        last_jobs = 0.0
        while not self.halt.is_set():
            now = time.monotonic() - self.t0
            rows = store_rows(self.store)
            if rows and self.first_fragment is None:
                self.first_fragment = now
            try:
                n = self.workers()
            except Exception:
                n = -1
            if not self.worker_counts or self.worker_counts[-1][1] != n:
                self.worker_counts.append((round(now, 2), n))
            if n > 0 and self.first_worker is None:
                self.first_worker = now
            if now - last_jobs >= 1.0:
                last_jobs = now
                for job in job_ids(self.user):
                    self.jobs_seen.setdefault(job, round(now, 2))
            if (
                self.action is not None
                and self.cancelled is None
                and self.cancel_at is not None
                and rows >= self.cancel_at
            ):
                self.cancelled_jobs = self.action()
                self.cancelled = time.monotonic() - self.t0
                self.rows_at_cancel = rows
                log(f"cancelled job(s) {', '.join(self.cancelled_jobs)} with {rows} fragments in the store")
            self.halt.wait(0.2)

    def stop(self) -> None:
        self.halt.set()
        self.join(5)

    def replaced(self) -> bool:
        """A job submitted after the first ones has a worker on the scheduler (what ``adapt`` should do after a
        loss)."""
        if not self.jobs_seen:
            return False
        first = min(self.jobs_seen.values())
        later = [t for t in self.jobs_seen.values() if t > first + 2]
        if not later:
            return False
        counts = self.worker_counts
        return any(t >= min(later) and n >= 1 and n > counts[i - 1][1] for i, (t, n) in enumerate(counts) if i)


class Notices(logging.Handler):
    """mbdask's notices (its logger; what it prints on stderr), echoed to stderr and kept with their times."""

    def __init__(self, t0: float):
        super().__init__(logging.INFO)
        self.t0 = t0
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.lines.append((round(time.monotonic() - self.t0, 2), message))
        print(message, file=sys.stderr, flush=True)

    def first(self, text: str) -> tuple[float, str] | None:
        return next(((t, m) for t, m in self.lines if text in m), None)


@contextlib.contextmanager
def mbdask_notices(t0: float):
    logger = logging.getLogger("mbdask")
    handler = Notices(t0)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


# --------------------------------------------------------------------------------------------
# the recipe


def write_input(path: Path, xyz: str, max_nbody: int) -> dict:
    """cluster.json: a ManyBodyInput for GFN2-xTB nocp up to ``max_nbody`` of tests/data/``xyz``."""
    from mbdask.inputs.xyz import molecule_from_xyz

    inp = {
        "specification": {
            "driver": "energy",
            "keywords": {"bsse_type": ["nocp"], "levels": {max_nbody: "gfn2"}},
            "specification": {"gfn2": {"program": "xtb", "model": {"method": "gfn2-xtb"}, "keywords": {}}},
        },
        "molecule": molecule_from_xyz(DATA / xyz),
    }
    path.write_text(json.dumps(inp))
    return inp


def dask_config_dir(workdir: Path) -> Path:
    """The workers' Dask configuration of docs/hpc.md (no MALLOC_TRIM_THRESHOLD_, profile every 100 ms).

    On a real cluster this goes into ~/.config/dask/ on the compute nodes; here the jobs run on
    this machine as this user, so it goes into a folder of its own that the job script points
    DASK_CONFIG to (the client's configuration stays as it is).
    """
    folder = workdir / "worker-dask-config"
    folder.mkdir(exist_ok=True)
    (folder / "mbdask.yaml").write_text(
        "distributed:\n  nanny:\n    pre-spawn-environ:\n      MALLOC_TRIM_THRESHOLD_: null\n"
        "  worker:\n    profile:\n      interval: 100ms\n"
    )
    return folder


def make_cluster(workdir: Path, *, memory_gib: float = 2.0, lifetime: tuple[str, str] = ("25m", "2m")):
    """docs/hpc.md's SLURMCluster, scaled to this machine: 1 core and ``memory_gib`` GiB per job.

    ``lifetime``: the workers' ``--lifetime`` and ``--lifetime-stagger`` (below the 30 min wall time).
    """
    from dask_jobqueue import SLURMCluster

    memory_bytes = int(memory_gib * 2**30)
    return SLURMCluster(
        queue="debug",
        account="myproject",  # accepted without accounting (AccountingStorageType=none)
        cores=1,  # threads per worker: one per core
        processes=1,  # one worker process per job
        memory=f"{memory_gib:g}GiB",
        walltime="00:30:00",
        interface="lo",  # scheduler and workers on this machine's loopback
        worker_extra_args=[
            "--resources",
            f"cores=1,memory={memory_bytes}",
            # leave before the wall time, cleanly (the scheduler moves their work elsewhere)
            "--lifetime",
            lifetime[0],
            "--lifetime-stagger",
            lifetime[1],
        ],
        job_script_prologue=[
            f"source {Path(sys.prefix) / 'bin' / 'activate'}",
            f"export DASK_CONFIG={dask_config_dir(workdir)}",
        ],
        log_directory=str(workdir / "job-logs"),
        local_directory=str(workdir / "dask-scratch"),
    )


def worker_settings(client) -> dict:
    """What the workers run with: MALLOC_TRIM_THRESHOLD_ and the profile interval (docs/hpc.md's yaml)."""

    def probe():
        import os

        import dask

        return {
            "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            "profile_interval": dask.config.get("distributed.worker.profile.interval"),
        }

    return client.run(probe)


def local_reference(cluster_json: Path) -> tuple[float, float]:
    import mbdask

    t = time.monotonic()
    result = mbdask.compute(str(cluster_json), n_workers=2, threads_per_worker=1, dashboard=False)
    return float(result.return_result), time.monotonic() - t


def slurm_library_run(
    name: str,
    workdir: Path,
    cluster_json: Path,
    user: str,
    reference: float,
    *,
    total: int,
    cancel_at: int | None,
    adapt: bool,
    worker_timeout: float,
    lifetime: tuple[str, str] = ("25m", "2m"),
) -> dict:
    """The recipe through the library: SLURMCluster, scale (or adapt), Client, mbdask.compute at once."""
    import dask
    from dask.utils import parse_timedelta
    from distributed import Client

    import mbdask

    store = workdir / f"{name}.sqlite"
    out: dict = {
        "run": name,
        "scaling": "adapt(minimum_jobs=2, maximum_jobs=2)" if adapt else "scale(jobs=2)",
        "lifetime": lifetime,
    }
    cluster = make_cluster(workdir, lifetime=lifetime)
    client = None
    watcher = None
    try:

        def cancel_one() -> list[str]:
            running = running_job_ids(user) or job_ids(user)
            victim = running[:1]
            if victim:
                sh("scancel", victim[0], check=False)
            return victim

        t0 = time.monotonic()
        with mbdask_notices(t0) as notices:
            if adapt:
                cluster.adapt(minimum_jobs=2, maximum_jobs=2)
            else:
                cluster.scale(jobs=2)
            client = Client(cluster)
            watcher = Watcher(
                t0,
                store,
                user,
                lambda: len(cluster.scheduler_info.get("workers", {})),
                cancel_at=cancel_at,
                action=cancel_one if cancel_at is not None else None,
            )
            watcher.start()
            t_compute = time.monotonic() - t0
            error = None
            try:
                result = mbdask.compute(
                    str(cluster_json),
                    client,
                    cores_per_fragment=1,
                    memory_per_fragment=0.5,
                    store=str(store),
                    worker_timeout=worker_timeout,
                )
                energy = float(result.return_result)
            except Exception as exc:  # reported, not raised: the other checks still run
                error, energy = f"{type(exc).__name__}: {exc}", None
            t_result = time.monotonic() - t0
            if adapt:
                # adapt replaces a lost job once SpecCluster forgets it (distributed.deploy.lost-worker-timeout,
                # 15 s): often after this short run has ended; watch on until a replacement's worker is there
                lag = parse_timedelta(dask.config.get("distributed.deploy.lost-worker-timeout")) + 20
                wait_until(watcher.replaced, lag)
            watcher.stop()
            try:
                settings = worker_settings(client) if client.nthreads() else {}
            except Exception:
                settings = {}
        waiting = notices.first("waiting for workers")
        logs = [workdir / "job-logs" / f"dask-worker-{job}.err" for job in watcher.jobs_seen]
        left_gracefully = sum(
            f.read_text(errors="replace").count("Closing worker gracefully") for f in logs if f.exists()
        )
        out.update(
            {
                "workers_left_gracefully": left_gracefully,
                "compute_called_s": round(t_compute, 2),
                "waiting_notice": waiting[1] if waiting else None,
                "first_worker_s": watcher.first_worker,
                "first_fragment_s": watcher.first_fragment,
                "result_s": round(t_result, 2),
                "energy": energy,
                "error": error,
                "abs_diff_vs_local": abs(energy - reference) if energy is not None else None,
                "fragments_total": total,
                "store_rows": store_rows(store),
                "cancelled_at_s": watcher.cancelled,
                "cancelled_jobs": watcher.cancelled_jobs,
                "rows_at_cancel": watcher.rows_at_cancel,
                "jobs_seen": watcher.jobs_seen,
                "worker_counts": watcher.worker_counts,
                "notices": notices.lines,
                "worker_settings": settings,
            }
        )
        return out
    finally:
        if watcher is not None and watcher.is_alive():
            watcher.stop()
        if client is not None:
            client.close()
        cluster.close()
        wait_until(lambda: not job_ids(user), 30)


def slurm_cli_all_cancelled(
    workdir: Path, cluster_json: Path, user: str, *, total: int, cancel_at: int, worker_timeout: float
) -> dict:
    """The command line against the SLURMCluster's scheduler; every job cancelled mid-run."""
    store = workdir / "all-cancelled.sqlite"
    out: dict = {"run": "all-cancelled (CLI)"}
    cluster = make_cluster(workdir)
    proc = None
    watcher = None
    try:
        t0 = time.monotonic()
        cluster.scale(jobs=2)
        cmd = [
            sys.executable,
            "-m",
            "mbdask",
            "run",
            str(cluster_json),
            "--scheduler",
            cluster.scheduler_address,
            "--worker-timeout",
            f"{worker_timeout:g}",
            "--cores-per-fragment",
            "1",
            "--memory-per-fragment",
            "0.5",
            "--store",
            str(store),
            "-o",
            str(workdir / "all-cancelled.json"),
            "--no-progress",
        ]
        out["command"] = " ".join(cmd)
        lines: list[tuple[float, str]] = []
        stdout_file = workdir / "all-cancelled.stdout"
        with open(stdout_file, "w") as stdout_handle:  # stderr is read line by line below, stdout only at the end
            proc = subprocess.Popen(cmd, cwd=workdir, stdout=stdout_handle, stderr=subprocess.PIPE, text=True)

        def read_stderr():
            for line in proc.stderr:
                lines.append((round(time.monotonic() - t0, 2), line.rstrip()))
                print(line.rstrip(), file=sys.stderr, flush=True)

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()

        def cancel_all() -> list[str]:
            jobs = job_ids(user)
            sh("scancel", "-u", user, check=False)
            return jobs

        watcher = Watcher(
            t0,
            store,
            user,
            lambda: len(cluster.scheduler_info.get("workers", {})),
            cancel_at=cancel_at,
            action=cancel_all,
        )
        watcher.start()
        proc.wait(timeout=worker_timeout + 300)
        t_exit = time.monotonic() - t0
        reader.join(5)
        stdout = stdout_file.read_text()
        watcher.stop()

        def first(text):
            return next(((t, m) for t, m in lines if text in m), None)

        gone = first("no worker is left")
        stopped = first("no worker was left for")
        out.update(
            {
                "exit_code": proc.returncode,
                "exit_s": round(t_exit, 2),
                "first_worker_s": watcher.first_worker,
                "first_fragment_s": watcher.first_fragment,
                "waiting_notice": (first("waiting for workers") or (None, None))[1],
                "cancelled_at_s": watcher.cancelled,
                "cancelled_jobs": watcher.cancelled_jobs,
                "rows_at_cancel": watcher.rows_at_cancel,
                "no_worker_notice": gone,
                "stop_message": stopped,
                "notice_after_cancel_s": round(gone[0] - watcher.cancelled, 2)
                if gone and watcher.cancelled is not None
                else None,
                "exit_after_notice_s": round(t_exit - gone[0], 2) if gone else None,
                "store_rows": store_rows(store),
                "fragments_total": total,
                "stderr": [m for _, m in lines][-15:],
                "stdout_tail": stdout[-500:],
                "worker_counts": watcher.worker_counts,
            }
        )
        return out
    finally:
        if watcher is not None and watcher.is_alive():
            watcher.stop()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        cluster.close()
        wait_until(lambda: not job_ids(user), 30)


def resume_locally(cluster_json: Path, store: Path) -> dict:
    """Submit again with the same store (on a LocalCluster): what finished is reused."""
    import mbdask

    before = store_rows(store)
    t = time.monotonic()
    sub = mbdask.start(str(cluster_json), n_workers=2, threads_per_worker=1, dashboard=False, store=str(store))
    try:
        energy = float(sub.result().return_result)
    finally:
        sub.connection.close()
    return {
        "rows_before": before,
        "from_store": sub.from_store,
        "energy": energy,
        "seconds": round(time.monotonic() - t, 2),
    }


# --------------------------------------------------------------------------------------------


def checks(report: dict, worker_timeout: float) -> dict:
    """Each check's verdict and the numbers behind it."""
    ref = report["local"]["energy"]
    verdicts: dict[str, dict] = {}

    def verdict(name, ok, **why):
        verdicts[name] = {"pass": bool(ok), **why}

    clean = report.get("point1")
    if clean:
        verdict(
            "point 1: compute right after scale(jobs=2) waits for the workers and gives the local energy",
            clean["error"] is None
            and clean["waiting_notice"] is not None
            and clean["abs_diff_vs_local"] is not None
            and clean["abs_diff_vs_local"] <= 1e-10,
            waiting_notice=clean["waiting_notice"],
            abs_diff=clean["abs_diff_vs_local"],
            error=clean["error"],
            submit_to_first_worker_s=clean["first_worker_s"],
            submit_to_first_fragment_s=clean["first_fragment_s"],
            submit_to_result_s=clean["result_s"],
        )
        settings = clean["worker_settings"]
        verdict(
            "docs/hpc.md's worker yaml (here through DASK_CONFIG in the job script): no MALLOC_TRIM_THRESHOLD_, "
            "profile every 100ms",
            bool(settings)
            and all(w["malloc_trim"] is None and w["profile_interval"] == "100ms" for w in settings.values()),
            workers=settings,
        )
    one = report.get("cancel_one")
    if one:
        mid = (
            one["cancelled_at_s"] is not None
            and one["cancelled_at_s"] < one["result_s"]
            and (one["rows_at_cancel"] or 0) < one["fragments_total"]
        )
        verdict(
            "one job cancelled mid-run: the run finishes with the local energy",
            mid and one["error"] is None and one["abs_diff_vs_local"] is not None and one["abs_diff_vs_local"] <= 1e-10,
            mid_run=mid,
            abs_diff=one["abs_diff_vs_local"],
            error=one["error"],
            rows_at_cancel=one["rows_at_cancel"],
            submit_to_first_fragment_s=one["first_fragment_s"],
            submit_to_result_s=one["result_s"],
        )
    adapt = report.get("cancel_one_adapt")
    if adapt:
        cancelled = adapt["cancelled_at_s"]
        new_jobs = {j: t for j, t in adapt["jobs_seen"].items() if cancelled is not None and t > cancelled}
        counts_after = [(t, n) for t, n in adapt["worker_counts"] if cancelled is not None and t > cancelled]
        back = next((t for t, n in counts_after if n >= 2), None)
        verdict(
            "adapt(minimum_jobs=2, maximum_jobs=2), one job cancelled mid-run: finishes with the local energy, the "
            "job is replaced",
            cancelled is not None
            and cancelled < adapt["result_s"]
            and adapt["error"] is None
            and adapt["abs_diff_vs_local"] is not None
            and adapt["abs_diff_vs_local"] <= 1e-10
            and bool(new_jobs)
            and back is not None,
            abs_diff=adapt["abs_diff_vs_local"],
            error=adapt["error"],
            cancelled_at_s=cancelled,
            result_s=adapt["result_s"],
            replacement_jobs_seen_at_s=new_jobs,
            two_workers_again_at_s=back,
            workers_after_cancel=counts_after,
        )
    life = report.get("lifetime")
    if life:
        verdict(
            f"workers with --lifetime {life['lifetime'][0]} --lifetime-stagger {life['lifetime'][1]} and adapt: they "
            "leave, are replaced, and the run gives the local energy",
            life["error"] is None
            and life["abs_diff_vs_local"] is not None
            and life["abs_diff_vs_local"] <= 1e-10
            and life["workers_left_gracefully"] > 0
            and len(life["jobs_seen"]) > 2,
            abs_diff=life["abs_diff_vs_local"],
            error=life["error"],
            left_gracefully=life["workers_left_gracefully"],
            jobs_first_seen_s=life["jobs_seen"],
            worker_counts=life["worker_counts"],
            no_worker_notices=sum("no worker is left" in m for _, m in life["notices"]),
            submit_to_result_s=life["result_s"],
        )
    gone = report.get("all_cancelled")
    if gone:
        msg = gone["stop_message"]
        mid = gone["cancelled_at_s"] is not None and (gone["rows_at_cancel"] or 0) < gone["fragments_total"]
        verdict(
            "all jobs cancelled mid-run: notice at once, exit code 1 after the worker timeout, finished fragments in "
            "the store",
            mid
            and gone["exit_code"] == 1
            and gone["no_worker_notice"] is not None
            and msg is not None
            and gone["notice_after_cancel_s"] is not None
            and gone["notice_after_cancel_s"] <= 15
            and gone["exit_after_notice_s"] is not None
            and worker_timeout - 1 <= gone["exit_after_notice_s"] <= worker_timeout + 10
            and 0 < gone["store_rows"] < gone["fragments_total"],
            exit_code=gone["exit_code"],
            notice_after_cancel_s=gone["notice_after_cancel_s"],
            exit_after_notice_s=gone["exit_after_notice_s"],
            store_rows=gone["store_rows"],
            fragments_total=gone["fragments_total"],
            message=msg[1] if msg else None,
            submit_to_first_fragment_s=gone["first_fragment_s"],
        )
    resumed = report.get("resume")
    if resumed:
        verdict(
            "rerun with the same store (locally): reuses the finished fragments, local energy",
            resumed["from_store"] == resumed["rows_before"] > 0 and abs(resumed["energy"] - ref) <= 1e-10,
            from_store=resumed["from_store"],
            rows_before=resumed["rows_before"],
            abs_diff=abs(resumed["energy"] - ref),
        )
    return verdicts


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--xyz",
        default="water16-4444a.xyz",
        help="water cluster in tests/data (default water16-4444a.xyz: 696 calculations, ~5 s on one core)",
    )
    parser.add_argument("--max-nbody", type=int, default=3)
    parser.add_argument(
        "--worker-timeout", type=float, default=20.0, help="mbdask's worker timeout for the SLURM runs (s)"
    )
    parser.add_argument(
        "--cancel-at", type=float, default=0.3, help="cancel when this fraction of the fragments is in the store"
    )
    parser.add_argument(
        "--no-adapt", action="store_true", help="leave out the cluster.adapt(minimum_jobs=2, maximum_jobs=2) variant"
    )
    parser.add_argument(
        "--lifetime",
        metavar="T,STAGGER",
        help="also a run with adapt(minimum_jobs=2, maximum_jobs=2) and workers started with --lifetime T "
        "--lifetime-stagger STAGGER (e.g. 8s,2s): they leave during the run and are replaced",
    )
    parser.add_argument(
        "--workdir", type=Path, help="scratch folder (default: a new temporary one, removed at the end)"
    )
    parser.add_argument("--json", type=Path, help="write the measurements and verdicts here")
    args = parser.parse_args(argv)

    try:
        preflight()
    except Skip as exc:
        print(f"SKIP: {exc}", flush=True)
        return SKIP_CODE
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mbdask-slurm-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    os.chdir(workdir)  # the store is a file where mbdask runs: here, on the "login node"
    report: dict = {
        "xyz": args.xyz,
        "max_nbody": args.max_nbody,
        "worker_timeout": args.worker_timeout,
        "workdir": str(workdir),
    }

    import mbdask

    cluster_json = workdir / "cluster.json"
    write_input(cluster_json, args.xyz, args.max_nbody)
    total = len(mbdask.plan(str(cluster_json)).jobs)
    report["fragments_total"] = total
    cancel_at = max(1, int(args.cancel_at * total))
    log(
        f"{args.xyz} GFN2-xTB nocp {args.max_nbody}-body: {total} fragment calculations; cancelling at {cancel_at} in "
        "the store"
    )

    # stop the SLURM daemons also on SIGTERM (a test's time-out, kill): the context managers run
    signal.signal(signal.SIGTERM, _interrupted)
    status = 1
    try:
        with OneNodeSlurm(workdir) as slurm:
            user = slurm.user
            energy, seconds = local_reference(cluster_json)
            report["local"] = {"energy": energy, "seconds": round(seconds, 2)}
            log(f"local run (LocalCluster, 2 workers): {energy:.10f} Eh in {seconds:.1f} s")
            common = {"total": total, "worker_timeout": args.worker_timeout}
            log("point 1: compute right after scale(jobs=2)")
            report["point1"] = slurm_library_run(
                "point1", workdir, cluster_json, user, energy, cancel_at=None, adapt=False, **common
            )
            log("one job cancelled mid-run")
            report["cancel_one"] = slurm_library_run(
                "cancel-one", workdir, cluster_json, user, energy, cancel_at=cancel_at, adapt=False, **common
            )
            if not args.no_adapt:
                log("one job cancelled mid-run, cluster.adapt(minimum_jobs=2, maximum_jobs=2)")
                report["cancel_one_adapt"] = slurm_library_run(
                    "cancel-one-adapt", workdir, cluster_json, user, energy, cancel_at=cancel_at, adapt=True, **common
                )
            if args.lifetime:
                life = tuple(args.lifetime.split(","))
                log(
                    f"workers with --lifetime {life[0]} --lifetime-stagger {life[1]}, cluster.adapt(minimum_jobs=2, "
                    "maximum_jobs=2)"
                )
                report["lifetime"] = slurm_library_run(
                    "lifetime", workdir, cluster_json, user, energy, cancel_at=None, adapt=True, lifetime=life, **common
                )
            log("every job cancelled mid-run (command line)")
            report["all_cancelled"] = slurm_cli_all_cancelled(
                workdir, cluster_json, user, cancel_at=cancel_at, **common
            )
        report["resume"] = resume_locally(cluster_json, workdir / "all-cancelled.sqlite")
        report["checks"] = checks(report, args.worker_timeout)
        status = 0 if all(c["pass"] for c in report["checks"].values()) else 1
    except Skip as exc:
        print(f"SKIP: {exc}", flush=True)
        status = SKIP_CODE
    finally:
        if args.json:
            args.json.write_text(json.dumps(report, indent=1, default=str))
        for name, c in report.get("checks", {}).items():
            print(
                f"{'PASS' if c['pass'] else 'FAIL'}  {name}\n      "
                f"{json.dumps({k: v for k, v in c.items() if k != 'pass'}, default=str)}"
            )
        if args.workdir is None and status != 1:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

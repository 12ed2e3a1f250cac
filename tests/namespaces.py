"""Hosts for tests, made of Linux namespaces: one network namespace per host on a private bridge.

:class:`Hosts` builds the network entirely inside namespaces it creates itself: the bridge
lives in a namespace of its own, and each host's veth pair is created between the host's
namespace and the bridge's, so the root namespace (the machine's own interfaces, routes and
addresses) is never touched. Names start with a prefix unique to the test process
(``mbd<pid>``), so two runs side by side do not clash; addresses (``10.231.0.x/24``) exist
only inside those namespaces.

Processes start with ``ip netns exec`` in a process group of their own. A host may also get
a mount namespace (``unshare --mount``) with a private tmpfs mounted over a directory and
used as its working directory: that host sees its own empty file system there, whatever the
same path holds for the others (a compute node's local disk, not a shared one).

Run as a script (inside a host that reaches the scheduler), it watches a run: see
:func:`watch`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Subnet of the test network (a /24, only inside the namespaces).
SUBNET = "10.231.0"


class Unavailable(Exception):
    """Namespaces cannot be made here (not root, tools missing, unprivileged container): skip."""


def unavailable() -> str | None:
    """Why namespaces surely cannot be made here, or None (creating them may still fail)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network and mount namespaces need root"
    missing = [tool for tool in ("ip", "unshare", "mount") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    return None


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    processes: list = field(default_factory=list)


class Hosts:
    """Network namespaces on one bridge; processes in them; everything removed by :meth:`close`.

    ``Hosts(prefix)`` creates the bridge namespace (raising :class:`Unavailable` where that
    is refused); :meth:`add` adds a host, :meth:`start` a process on it.
    """

    def __init__(self, prefix: str | None = None):
        reason = unavailable()
        if reason:
            raise Unavailable(reason)
        self.prefix = prefix or f"mbd{os.getpid()}"
        self.bridge = f"{self.prefix}-br"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        try:
            self._add_namespace(self.bridge)
        except RuntimeError as exc:
            self.close()
            raise Unavailable(f"cannot create a network namespace ({exc})") from None
        try:
            _ip("-n", self.bridge, "link", "set", "lo", "up")
            _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge, "link", "set", "br0", "up")
        except RuntimeError as exc:
            self.close()
            raise Unavailable(f"cannot create a bridge in a network namespace ({exc})") from None

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_namespace(self, name: str) -> None:
        self._namespaces.append(name)  # first: a failed add may still leave its file in /run/netns
        _ip("netns", "add", name)

    def add(self, name: str, number: int) -> Host:
        """Host ``name`` at ``10.231.0.<number>``, linked to the bridge."""
        namespace = f"{self.prefix}-{name}"
        self._add_namespace(namespace)
        port = f"p{number}"
        # both ends created inside namespaces: the root namespace never sees either
        _ip("-n", namespace, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.bridge)
        _ip("-n", namespace, "addr", "add", f"{SUBNET}.{number}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", self.bridge, "link", "set", port, "master", "br0")
        _ip("-n", self.bridge, "link", "set", port, "up")
        host = Host(name, namespace, f"{SUBNET}.{number}")
        self.hosts[name] = host
        return host

    def command(self, host: Host, argv: Sequence[str], *, private_dir: Path | None = None) -> list[str]:
        """``argv`` run on ``host``; with ``private_dir``, in a mount namespace with a fresh tmpfs there as cwd."""
        prefix = ["ip", "netns", "exec", host.namespace]
        if private_dir is None:
            return prefix + list(argv)
        script = 'mount -t tmpfs -o size=128m,mode=0700 mbdask-private "$1" && cd "$1" && shift && exec "$@"'
        return prefix + [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            str(private_dir),
            *argv,
        ]

    def start(
        self, host: Host, argv: Sequence[str], *, log: Path, cwd: Path, private_dir: Path | None = None, env=None
    ) -> subprocess.Popen:
        """Start ``argv`` on ``host`` in a process group of its own, output to ``log``."""
        if private_dir is not None:
            private_dir.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                self.command(host, argv, private_dir=private_dir),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        host.processes.append(proc)
        return proc

    def run(
        self,
        host: Host,
        argv: Sequence[str],
        *,
        cwd: Path,
        timeout: float,
        private_dir: Path | None = None,
        env=None,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` on ``host`` to the end (its process group killed on time-out)."""
        if private_dir is not None:
            private_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            self.command(host, argv, private_dir=private_dir),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        host.processes.append(proc)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill_group(proc)
            stdout, stderr = proc.communicate()
            raise AssertionError(f"{' '.join(argv)} on {host.name} ran past {timeout} s:\n{stdout}\n{stderr}") from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    def pids(self, host: Host) -> list[int]:
        """Every process in the host's network namespace."""
        proc = subprocess.run(["ip", "netns", "pids", host.namespace], capture_output=True, text=True, timeout=30)
        return [int(p) for p in proc.stdout.split()]

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def kill(self, host: Host) -> None:
        """Lose ``host`` at once: SIGKILL its processes' groups, then whatever else runs in its namespace."""
        for proc in host.processes:
            self._kill_group(proc)
        for pid in self.pids(host):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in host.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        # SIGKILL is delivered at once but a process leaves its namespace only when its exit
        # finishes (a worker freeing a large heap, reparented to init, can take a moment):
        # the host is gone only once its namespace is empty.
        deadline = time.monotonic() + 30
        while (left := self.pids(host)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def close(self) -> None:
        """Kill every process on every host, then delete the namespaces (bridge and veths go with them)."""
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                self.kill(host)
        for namespace in reversed(self._namespaces):
            with contextlib.suppress(Exception):
                _ip("netns", "del", namespace)
        self._namespaces.clear()


def in_mount_namespace(pid: int, path: Path) -> Path:
    """``path`` as process ``pid`` sees it (through its mount namespace), from outside."""
    return Path(f"/proc/{pid}/root") / Path(path).relative_to("/")


def watch(address: str, victim: str, fraction: float, timeout: float = 120.0) -> dict:
    """Wait until ``fraction`` of a run's fragment units have finished while worker ``victim`` is busy with one.

    Returns what it saw then (``{"triggered": True, "done": ..., "units": ..., ...}``), or
    ``{"triggered": False, ...}`` if the run ended (or ``timeout`` passed) first.
    """
    from distributed import Client

    def probe(dask_scheduler, victim=victim):
        # a finished unit does not stay in memory: once the client has stored its outputs and the
        # nodes that need it have run, it is released and forgotten; so count what is still to run
        units = [
            ts
            for ts in dask_scheduler.tasks.values()
            if isinstance(ts.key, tuple) and str(ts.key[0]).split(" ")[1:2] == ["frag"]
        ]
        pending = sum(ts.state in ("released", "waiting", "queued", "processing", "no-worker") for ts in units)
        ws = next((w for w in dask_scheduler.workers.values() if w.name == victim), None)
        busy = ws is not None and any(
            str(ts.key[0]).split(" ")[1:2] == ["frag"] for ts in ws.processing if isinstance(ts.key, tuple)
        )
        return {"units": len(units), "pending": pending, "victim_busy": busy}

    seen_units = 0  # the most unit tasks seen at once: the run's units (none is forgotten before the first look)
    with Client(address, timeout=30) as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = client.run_on_scheduler(probe)
            if state["units"]:
                seen_units = max(seen_units, state["units"])
                state["done"] = seen_units - state["pending"]
                if state["done"] >= fraction * seen_units and state["victim_busy"]:
                    return {"triggered": True, **state}
            elif seen_units:
                return {"triggered": False, "why": "the run ended first", **state}
            time.sleep(0.02)
    return {"triggered": False, "why": f"timeout {timeout} s"}


if __name__ == "__main__":  # python namespaces.py ADDRESS VICTIM FRACTION: one JSON line when it is time
    print(json.dumps(watch(sys.argv[1], sys.argv[2], float(sys.argv[3]))), flush=True)

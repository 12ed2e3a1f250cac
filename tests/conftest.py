"""Shared fixtures: real Dask schedulers and workers (LocalCluster), and test inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from distributed import Client
from helpers import in_process_client

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DATA = ROOT / "tests" / "data"  # the fixtures tests read (copies of benchmarks/data files)

HAVE_XTB = True
try:
    import xtb.interface  # noqa: F401
except Exception:  # pragma: no cover - depends on the machine
    HAVE_XTB = False

needs_xtb = pytest.mark.skipif(not HAVE_XTB, reason="xtb-python is not installed (pip install xtb)")


@pytest.fixture(scope="session")
def inprocess_client():
    """A real scheduler with two single-thread workers in this process (sees test doubles)."""
    with in_process_client(n_workers=2) as client:
        yield client


@pytest.fixture(scope="session")
def process_client():
    """A real scheduler with two worker processes, as mbdask would start them (2 GiB each)."""
    from mbdask.deploy.cluster import ClusterSize, start_local_cluster

    with (
        start_local_cluster(ClusterSize(2, 1, 2 * 2**30), dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def xtb_input(xyz: str, *, driver: str = "energy", bsse=("nocp",), levels=None, max_nbody: int = 3) -> dict:
    """A ManyBodyInput dict for a water cluster from tests/data with GFN2-xTB (and GFN1)."""
    from mbdask.inputs.xyz import molecule_from_xyz

    specs = {
        "gfn2": {"program": "xtb", "model": {"method": "gfn2-xtb"}, "keywords": {"accuracy": 0.01}},
        "gfn1": {"program": "xtb", "model": {"method": "gfn1-xtb"}, "keywords": {"accuracy": 0.01}},
    }
    levels = levels or {max_nbody: "gfn2"}
    used = set(levels.values())
    return {
        "specification": {
            "driver": driver,
            "keywords": {"bsse_type": list(bsse), "levels": levels},
            "specification": {k: v for k, v in specs.items() if k in used},
        },
        "molecule": molecule_from_xyz(DATA / xyz),
    }


@pytest.fixture
def water6_example(tmp_path) -> Path:
    dest = tmp_path / "water6-gfn2.json"
    shutil.copy(EXAMPLES / "water6-gfn2.json", dest)
    return dest


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def assert_close(a, b, atol=1e-10):
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=0, atol=atol)


def _selects_explicitly(markexpr: str, marker: str) -> bool:
    """Whether ``-m markexpr`` asks for ``marker`` itself: true for a test with only that marker, false for one
    without."""
    if not markexpr:
        return False
    try:
        from _pytest.mark.expression import Expression

        expr = Expression.compile(markexpr)
        return expr.evaluate(lambda name, **_: name == marker) and not expr.evaluate(lambda name, **_: False)
    except Exception:  # pytest's expression module moved: fall back to the word
        return marker in markexpr.replace(f"not {marker}", "").split()


#: Markers of tests that run only when asked for with ``-m MARKER``, and why they are skipped otherwise.
ASKED_FOR_ONLY = {
    "slurm": "brings up a one-node SLURM (root, apt-get): run with -m slurm",
    "mpi": "launches Dask clusters with mpirun (OpenMPI, mpi4py, dask-mpi): run with -m mpi",
}


def pytest_collection_modifyitems(config, items):
    """``slurm`` tests bring up SLURM on this machine (root, apt-get) and ``mpi`` tests launch clusters with
    mpirun: they run only when asked for with ``-m slurm`` or ``-m mpi``."""
    for marker, reason in ASKED_FOR_ONLY.items():
        if _selects_explicitly(config.getoption("markexpr", ""), marker):
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Never skip quietly: name every test skipped because a package is missing, and how to get it.

    ``pytest -q`` shows only a count of skipped tests; a missing optional package (xtb, PySCF,
    mkdocs, zstandard...) would otherwise hide whole modules behind that count.
    """
    missing: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "could not import" in reason or "not installed" in reason:
            missing[reason.removeprefix("Skipped: ")] = missing.get(reason.removeprefix("Skipped: "), 0) + 1
    if missing:
        terminalreporter.section("skipped: packages missing (pip install -e '.[test,docs]' installs them)")
        for reason, count in sorted(missing.items()):
            terminalreporter.line(f"{count:4d} test(s): {reason}")


@pytest.fixture
def cluster_starts(monkeypatch):
    """Every LocalCluster mbdask starts, counted (and closed at the end)."""
    import mbdask.deploy.cluster

    started = []
    original = mbdask.deploy.cluster.start_local_cluster

    def counting(*args, **kwargs):
        started.append(original(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(mbdask.deploy.cluster, "start_local_cluster", counting)
    yield started
    for cluster in started:
        cluster.close()

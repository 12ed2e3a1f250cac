"""What mbdask checks on a cluster it did not start before submitting: workers that cannot
import mbdask are named, and Dask's malloc setting is warned about once per client, in one line.

These need real worker processes (in-process workers share this process's modules and
environment), so each test starts a one-worker LocalCluster: about a second.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from distributed import Client, LocalCluster
from doubles import register_doubles
from helpers import sleep_input

import mbdask


def _cluster(**options) -> LocalCluster:
    """A LocalCluster as a user makes it: worker processes, Dask's default configuration."""
    return LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None, **options
    )


def test_worker_without_mbdask_is_named_before_submission(tmp_path: Path):
    """A worker whose Python cannot import mbdask is refused with its address and the import error.

    Mechanism: a Dask preload script puts ``None`` into the worker's ``sys.modules["mbdask"]``,
    Python's documented way to make ``import mbdask`` raise ``ModuleNotFoundError`` there,
    as on a worker whose environment lacks the package (mbdask stays installed here; the
    worker's own Dask and QCEngine are untouched). Without the check the user got Dask's
    ``Exception: ModuleNotFoundError`` from unpickling and no worker named.
    """
    register_doubles()  # the plan is checked here, where the "sleep" program must exist
    hide = tmp_path / "hide_mbdask.py"
    hide.write_text('import sys\n\nsys.modules["mbdask"] = None  # "import mbdask" now raises ModuleNotFoundError\n')
    with _cluster(preload=[str(hide)], silence_logs=50) as cluster, Client(cluster, set_as_default=False) as client:
        with pytest.raises(
            mbdask.BadInputError,
            match=r"^worker tcp://127\.0\.0\.1:\d+ cannot import mbdask \(ModuleNotFoundError: .*mbdask",
        ) as info:
            mbdask.start(sleep_input("water3-uud.xyz"), client)
        assert "\n" not in str(info.value)
        assert "install mbdask" in str(info.value)


def test_malloc_trim_warning_comes_once_per_client_in_one_line():
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_ (xtb 1.7x slower): say so once, in one line, with
    the fix."""
    register_doubles()
    with _cluster(preload=["doubles"]) as cluster, Client(cluster, set_as_default=False) as client:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                mbdask.compute(sleep_input("water3-uud.xyz"), client)
    malloc = [w for w in caught if "MALLOC_TRIM_THRESHOLD_" in str(w.message)]
    assert len(malloc) == 1, [str(w.message) for w in malloc]
    shown = warnings.formatwarning(
        malloc[0].message, malloc[0].category, malloc[0].filename, malloc[0].lineno, malloc[0].line
    )
    assert len(shown.strip().splitlines()) == 1, shown  # what Python prints on stderr
    assert "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_ to null" in shown


def test_your_own_local_cluster_the_documented_way_has_no_malloc_warning():
    """README's way in with your own cluster, ``Client(mbdask.local_cluster())``: workers without Dask's
    MALLOC_TRIM_THRESHOLD_, so no warning (a plain LocalCluster printed it; issue #25). Its workers are
    spawned here (this test process runs threads), the case where Dask's nanny would set it; ``preload``
    gives them the test doubles, as any LocalCluster option passes through."""
    register_doubles()
    with (
        mbdask.local_cluster(n_workers=1, dashboard_address=None, preload=["doubles"]) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = mbdask.compute(sleep_input("water3-uud.xyz"), client)
        from mbdask.deploy.workers import worker_setup

        trims = {setup["malloc_trim"] for setup in client.run(worker_setup).values()}
        resources = [w["resources"] for w in client.scheduler_info()["workers"].values()]
    assert [str(w.message) for w in caught if "MALLOC_TRIM_THRESHOLD_" in str(w.message)] == []
    assert trims == {None}
    assert resources and all(
        {"cores", "memory"} <= set(r) for r in resources
    )  # what fragments reserve, as on mbdask's own
    assert result.extras["mbdask"]["nfragment_calculations"] == 7

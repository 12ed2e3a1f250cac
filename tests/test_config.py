"""mbdask's settings come from mbdask/mbdask.yaml through Dask's configuration, and users override them there."""

from __future__ import annotations

import os
import subprocess
import sys

import dask
import pytest
import yaml

from mbdask import config
from mbdask.deploy.cluster import want_dashboard, worker_start_method, worker_timeout
from mbdask.results.assemble import inline_limit


def test_defaults_come_from_the_packaged_yaml():
    defaults = yaml.safe_load(config.DEFAULTS.read_text())["mbdask"]
    assert worker_timeout() == defaults["worker-timeout"] == 600
    assert worker_start_method() == defaults["local-cluster"]["workers"] == "auto"
    assert inline_limit() == defaults["result"]["inline-limit"]
    assert config.get("mbdask.progress.log-interval") == defaults["progress"]["log-interval"]
    assert want_dashboard(25.0) and not want_dashboard(1.0)  # "auto"


def test_dask_config_and_environment_override_the_defaults():
    with dask.config.set(
        {"mbdask.worker-timeout": "10m", "mbdask.result.inline-limit": 7, "mbdask.local-cluster.dashboard": False}
    ):
        assert worker_timeout() == 600.0 and inline_limit() == 7 and not want_dashboard(1e6)
    with dask.config.set({"mbdask.worker-timeout": 30}):
        assert worker_timeout() == 30.0
    code = (
        "from mbdask.results.assemble import inline_limit; from mbdask.deploy.cluster import worker_timeout; "
        "print(inline_limit(), worker_timeout())"
    )
    env = {"DASK_MBDASK__RESULT__INLINE_LIMIT": "123", "DASK_MBDASK__WORKER_TIMEOUT": "45", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    assert out == ["123", "45.0"]


def test_a_dask_config_block_before_the_first_run_leaves_the_defaults_in_place():
    """``with dask.config.set({"mbdask...": ...})`` opened before mbdask read its settings deletes the
    whole ``mbdask`` section on exit (Dask removes what did not exist when the block opened); the
    next run must still find its defaults, not fail with KeyError: 'mbdask'. A fresh process, so
    that nothing has read the settings yet."""
    code = (
        "import dask; from mbdask import config; from mbdask.deploy.cluster import worker_timeout\n"
        "with dask.config.set({'mbdask.worker-timeout': 5}):\n"
        "    assert worker_timeout() == 5.0\n"
        "print(worker_timeout(), config.number('mbdask.graph.collect-nodes'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    defaults = yaml.safe_load(config.DEFAULTS.read_text())["mbdask"]
    assert out == [str(float(defaults["worker-timeout"])), str(defaults["graph"]["collect-nodes"])]


def _leaf_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        keys += _leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


def test_every_setting_is_documented_with_its_default():
    from pathlib import Path

    defaults = yaml.safe_load(config.DEFAULTS.read_text())
    page = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[2].strip()
        for line in page.splitlines()
        if line.startswith("| `mbdask.")
    }
    keys = _leaf_keys(defaults)
    assert sorted(rows) == sorted(keys)
    for key in keys:
        assert rows[key] == str(config.packaged_default(key)).replace("None", "null"), key


def test_a_setting_from_the_environment_changes_how_a_run_is_batched():
    """DASK_MBDASK__BATCHING__...: batches of cheap calculations get longer, so there are fewer tasks."""
    code = (
        "import mbdask, sys; sys.path.insert(0, 'tests'); from conftest import xtb_input, EXAMPLES\n"
        "from mbdask.planning.batching import make_units; from mbdask.planning.cost import CostModel\n"
        "plan = mbdask.plan(xtb_input(EXAMPLES / 'water6-prism.xyz'), check_installed=False)\n"
        "print(len(make_units(plan.jobs, CostModel.for_plan(plan), workers=1)))"
    )
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    counts = []
    for env in ({}, {"DASK_MBDASK__BATCHING__MIN_SECONDS": "10", "DASK_MBDASK__BATCHING__MAX_SECONDS": "100"}):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            cwd=root,
            check=True,
        )
        counts.append(int(out.stdout.split()[-1]))
    assert counts[1] < counts[0], counts


def test_every_numeric_setting_is_checked():
    defaults = yaml.safe_load(config.DEFAULTS.read_text())
    numeric = {
        key
        for key in _leaf_keys(defaults)
        if isinstance(config.packaged_default(key), (int, float)) and key != "mbdask.worker-timeout"
    }
    assert numeric == set(config.NUMBERS)  # worker-timeout has its own parser ("10m")
    config.check_numbers()  # the packaged defaults pass


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("mbdask.batching.min-seconds", "abc", "'abc' is not a number"),
        ("mbdask.batching.min-seconds", -1, "-1 must be at least 0"),
        ("mbdask.store.write-chunk", 8.5, "8.5 is not a whole number"),
        ("mbdask.graph.collect-nodes", 0, "0 must be above 0"),
    ],
)
def test_a_bad_numeric_setting_is_refused_naming_it(key, value, message):
    from mbdask.errors import BadInputError

    with dask.config.set({key: value}), pytest.raises(BadInputError, match=f"^Dask config {key}: {message}$"):
        config.number(key)


def test_a_bad_setting_on_the_command_line_is_one_line_exit_2_and_nothing_written(tmp_path):
    from conftest import EXAMPLES

    out = tmp_path / "result.json"
    env = {**os.environ, "DASK_MBDASK__BATCHING__MIN_SECONDS": "abc"}
    proc = subprocess.run(
        [sys.executable, "-m", "mbdask", "run", str(EXAMPLES / "water6-gfn2.json"), "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip().splitlines() == [
        "mbdask: error: Dask config mbdask.batching.min-seconds: 'abc' is not a number"
    ]

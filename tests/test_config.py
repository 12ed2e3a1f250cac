"""mbdask's settings come from mbdask/mbdask.yaml through Dask's configuration, and users override them there."""

from __future__ import annotations

import subprocess
import sys

import dask
import yaml

from mbdask import config
from mbdask.assemble import inline_limit
from mbdask.cluster import want_dashboard, worker_start_method, worker_timeout


def test_defaults_come_from_the_packaged_yaml():
    defaults = yaml.safe_load(config.DEFAULTS.read_text())["mbdask"]
    assert worker_timeout() == defaults["worker-timeout"] == 600
    assert worker_start_method() == defaults["local-cluster"]["workers"] == "auto"
    assert inline_limit() == defaults["result"]["inline-limit"]
    assert config.get("mbdask.progress.log-interval") == defaults["progress"]["log-interval"]
    assert want_dashboard(25.0) and not want_dashboard(1.0)  # "auto"


def test_dask_config_and_environment_override_the_defaults():
    with dask.config.set({"mbdask.worker-timeout": "10m", "mbdask.result.inline-limit": 7, "mbdask.local-cluster.dashboard": False}):
        assert worker_timeout() == 600.0 and inline_limit() == 7 and not want_dashboard(1e6)
    with dask.config.set({"mbdask.worker-timeout": 30}):
        assert worker_timeout() == 30.0
    code = "from mbdask.assemble import inline_limit; from mbdask.cluster import worker_timeout; print(inline_limit(), worker_timeout())"
    env = {"DASK_MBDASK__RESULT__INLINE_LIMIT": "123", "DASK_MBDASK__WORKER_TIMEOUT": "45", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out == ["123", "45.0"]


"""The package itself: a light import, and the public names where users look for them."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("distributed", "dask", "bokeh", "qcmanybody", "qcelemental", "qcengine", "numpy", "pyscf", "xtb")


def test_import_mbdask_imports_nothing_heavy():
    """What makes ``import mbdask`` and ``python -m mbdask --help`` cost milliseconds (timings: benchmarks)."""
    code = f"import sys, mbdask; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = "import sys, mbdask.cli; mbdask.cli.build_parser(); print(sorted(m for m in %r if m in sys.modules))" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_names_resolve_and_plan_and_report_stay_functions():
    code = (
        "import mbdask.plan, mbdask.report, mbdask\n"
        "from mbdask.plan import make_plan\n"
        "assert callable(mbdask.plan) and callable(mbdask.report), (mbdask.plan, mbdask.report)\n"
        "from mbdask import plan, report\n"
        "assert plan is mbdask.plan and report.__module__ == 'mbdask.report'\n"
        "missing = [name for name in mbdask.__all__ if getattr(mbdask, name, None) is None]\n"
        "assert not missing, missing\n"
        "assert set(mbdask.__all__) <= set(dir(mbdask))\n"
        "assert set(mbdask.__all__) == {*mbdask._EXPORTS, '__version__'}\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

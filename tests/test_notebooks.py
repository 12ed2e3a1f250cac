"""The notebooks run top to bottom (executed with nbclient, as a user would run them)."""

from __future__ import annotations

import pytest
from conftest import ROOT, needs_xtb

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install 'mbdask[test]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install 'mbdask[test]')")


def execute(name: str):
    """Run ``notebooks/NAME`` top to bottom; returns the notebook and its printed text."""
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
    )
    client.execute()
    outputs = "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    return nb, outputs


@needs_xtb
def test_quickstart_notebook_executes():
    _, outputs = execute("quickstart.ipynb")
    assert "Dashboard: http://127.0.0.1:" in outputs
    assert "nocp 2-body" in outputs
    assert "interaction energy through 3-body" in outputs


@needs_xtb
def test_analysis_notebook_executes():
    nb, outputs = execute("analysis.ipynb")
    rich = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", []) if "data" in out]
    assert "41 fragment calculations" in outputs
    assert "3-body: 20 clusters" in outputs
    assert "sum of 3-body increments equals the 3-body contribution: True" in outputs
    assert "figures: convergence, pairs, predicted, timeline, utilization" in outputs
    assert "report written: water6-report.html" in outputs
    # the Bokeh figures were sent to the notebook as rich (HTML/JavaScript) outputs
    assert sum("application/vnd.bokehjs_exec.v0+json" in out["data"] for out in rich) >= 3

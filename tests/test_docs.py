"""The documentation site builds with warnings as errors, and its CLI reference is the parser's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install 'mbdask[docs]')")
pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is not installed (pip install 'mbdask[docs]')")


def test_docs_build_strict_with_generated_cli_reference(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    for option in ("--cores-per-fragment", "--report", "--store", "--keep-going", "--fragment-charges"):
        assert option in cli
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("submit", "compute", "start", "Submission", "report", "figures", "FragmentStore"):
        assert name in api
    inputs = (tmp_path / "site" / "inputs" / "index.html").read_text()
    assert "bsse_type: [cp, nocp]" in inputs  # the YAML example, included from examples/

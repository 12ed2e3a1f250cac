"""The package itself: a light import, the public names where users look for them, stages in one direction."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = (
    "distributed",
    "dask",
    "bokeh",
    "qcmanybody",
    "qcelemental",
    "qcengine",
    "numpy",
    "pyscf",
    "xtb",
    "prometheus_client",
    "pandas",
)


def test_import_mbdask_imports_nothing_heavy():
    """What makes ``import mbdask`` and ``python -m mbdask --help`` cost milliseconds (timings: benchmarks)."""
    code = f"import sys, mbdask; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = f"import sys, mbdask.cli; mbdask.cli.build_parser(); print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_names_resolve_and_plan_report_optimize_are_functions():
    code = (
        "import mbdask\n"
        "missing = [name for name in mbdask.__all__ if getattr(mbdask, name, None) is None]\n"
        "assert not missing, missing\n"
        "assert set(mbdask.__all__) <= set(dir(mbdask))\n"
        "assert set(mbdask.__all__) == {*mbdask._EXPORTS, '__version__'}\n"
        "assert all(callable(getattr(mbdask, name)) for name in ('plan', 'report', 'optimize'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_docs_api_lists_exactly_the_public_names():
    """docs/api.md's table of the public API holds what ``__all__`` holds and nothing else."""
    import mbdask

    text = (ROOT / "docs" / "api.md").read_text()
    listed = re.findall(r"^\| `mbdask\.(\w+)` \|", text, re.M)
    assert sorted(listed) == sorted(set(mbdask.__all__) - {"__version__"})


def test_old_module_paths_and_names_still_work_and_warn():
    """Release 0.1's module paths (``mbdask.plan`` the module, ``mbdask.store``...) and the root names that left
    ``__all__`` keep working for a release, each with a FutureWarning naming the new place; importing an old
    path named like a function (``from mbdask.plan import make_plan``) leaves ``mbdask.plan`` the function."""
    code = (
        "import sys, warnings\n"
        "warnings.simplefilter('error', FutureWarning)\n"
        "import mbdask, mbdask.planning.plan, mbdask.calculation.store\n"
        "for stmt in ('from mbdask.plan import make_plan', 'import mbdask.store', "
        "'from mbdask.optimize import optimize',\n"
        "             'mbdask.FragmentJob', 'mbdask.start_local_cluster', 'mbdask.InputError',\n"
        "             'from mbdask.inputs import load_input', 'from mbdask.graph import build_graph'):\n"
        "    try:\n"
        "        exec(stmt)\n"
        "    except FutureWarning as warning:\n"
        "        assert 'mbdask.' in str(warning), warning\n"
        "    else:\n"
        "        raise AssertionError(stmt + ' did not warn')\n"
        "warnings.simplefilter('ignore', FutureWarning)\n"
        "from mbdask.plan import make_plan\n"
        "from mbdask.optimize import optimize\n"
        "import mbdask.report, mbdask.store\n"
        "assert make_plan is mbdask.planning.plan.make_plan\n"
        "assert mbdask.planning.plan.__spec__.name == 'mbdask.planning.plan'\n"
        "assert sys.modules['mbdask.store'] is mbdask.calculation.store\n"
        "assert optimize is mbdask.optimize and callable(mbdask.plan) and callable(mbdask.report)\n"
        "assert mbdask.FragmentJob is mbdask.planning.plan.FragmentJob\n"
        "assert mbdask.InputError is mbdask.errors.InputError is mbdask.BadInputError\n"
        "from mbdask.inputs import load_input\n"
        "assert load_input is mbdask.inputs.load.load_input\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_input_error_is_not_qcengines_input_error():
    """``BadInputError`` was called ``InputError``, QCEngine's name for a program refusing its input (#18)."""
    import qcengine.exceptions

    import mbdask

    assert "InputError" not in mbdask.__all__
    assert not issubclass(mbdask.BadInputError, qcengine.exceptions.InputError)


#: The package's stages, lowest first (docs/design.md argues the order): a module imports its own stage and
#: the ones before it, never one after. Foundations are the modules at the top level of the package.
STAGES = (
    "foundations",
    "inputs",
    "programs",
    "planning",
    "calculation",
    "results",
    "graph",
    "deploy",
    "diagnostics",
    "workflows",
    "interfaces",
    "cli",
)


def _stage(module: str) -> str:
    if module in ("mbdask", "mbdask.cli", "mbdask.__main__"):
        return "cli"  # the package root re-exports every stage's public names: it sits above them all
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (ROOT / "mbdask" / parts[1]).is_dir() else "foundations"


def _module_imports() -> dict[str, set[str]]:
    """Per module of the package, the package's modules it imports (at the top or inside functions)."""
    root = ROOT / "mbdask"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.with_suffix("").relative_to(root.parent).parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in modules]
                found = submodules if len(submodules) == len(node.names) else [target, *submodules]
                edges[name].update(t for t in found if t in modules and t != name)
            elif isinstance(node, ast.Import):
                edges[name].update(alias.name for alias in node.names if alias.name in modules and alias.name != name)
    return edges


def test_stages_import_only_earlier_stages():
    """Each stage (:data:`STAGES`) imports only itself and the stages before it, also through imports inside
    functions, so the package reads from the foundations up and a stage can be understood without the later ones."""
    edges = _module_imports()
    assert "mbdask.graph.build" in edges["mbdask.workflows.expansion"]  # the scan sees absolute imports
    unknown = {_stage(module) for module in edges} - set(STAGES)
    assert not unknown, f"stages missing from STAGES (and docs/design.md): {sorted(unknown)}"
    backwards = sorted(
        f"{module} ({_stage(module)}) imports {target} ({_stage(target)})"
        for module, targets in edges.items()
        for target in targets
        if STAGES.index(_stage(target)) > STAGES.index(_stage(module))
    )
    assert not backwards, backwards


def test_modules_import_one_another_in_one_direction():
    """No import cycle inside a stage either, also through imports inside functions (issue #18)."""
    edges = _module_imports()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target) :] + [target]))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("stage", [s for s in STAGES if s not in ("foundations", "cli")])
def test_design_md_lists_every_module_of_each_stage(stage: str):
    """docs/design.md's module map names each module of the tree (`stage/module.py`), so it cannot drift from it."""
    text = (ROOT / "docs" / "design.md").read_text()
    modules = sorted(
        p.relative_to(ROOT / "mbdask").as_posix()
        for p in (ROOT / "mbdask" / stage).rglob("*.py")
        if p.name != "__init__.py"
    )
    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, f"docs/design.md does not name {missing}"

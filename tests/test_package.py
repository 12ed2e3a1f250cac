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


def _module_imports() -> dict[str, set[str]]:
    """Per module of the package, the package's modules it imports (at the top or inside functions)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "mbdask"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.with_suffix("").relative_to(root.parent).parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in modules]
                found = submodules if len(submodules) == len(node.names) else [target, *submodules]
                edges[name].update(t for t in found if t in modules and t != name)
            elif isinstance(node, ast.Import):
                edges[name].update(alias.name for alias in node.names if alias.name in modules and alias.name != name)
    return edges


def test_modules_import_one_another_in_one_direction():
    """No import cycle, also through imports inside functions (issue #18): each stage of the pipeline
    (input -> plan -> graph -> execute -> assemble -> outputs) only reaches forward to what it uses."""
    edges = _module_imports()
    assert "mbdask.graph" in edges["mbdask.api"]  # the scan sees the imports
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_the_old_name_of_bad_input_error_still_works_and_says_so():
    """``mbdask.InputError`` (QCEngine's name for something else, #18) is ``BadInputError`` now, with a warning."""
    import warnings

    import qcengine.exceptions

    import mbdask
    import mbdask.errors

    for module in (mbdask, mbdask.errors):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert module.InputError is mbdask.BadInputError
        assert [w.category for w in caught] == [DeprecationWarning] and "BadInputError" in str(caught[0].message)
    assert "InputError" not in mbdask.__all__
    assert not issubclass(mbdask.BadInputError, qcengine.exceptions.InputError)

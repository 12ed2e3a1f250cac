"""Old names kept working for one release, each with a warning that says the new one.

Two kinds: module paths from before the package was grouped into subpackages
(``mbdask.plan`` the module is now ``mbdask.planning.plan``), and names that left the
package root's public list (``mbdask.FragmentJob``). Both are removed in the release after
0.1; nothing in mbdask itself uses them (``tests/test_package.py`` checks).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

#: Module paths of release 0.1 -> where those modules are now.
MOVED_MODULES = {
    "xyz": "inputs.xyz",
    "plan": "planning.plan",
    "manybody": "planning.manybody",
    "screening": "planning.screening",
    "energy_screening": "planning.energy_screening",
    "cost": "planning.cost",
    "batching": "planning.batching",
    "execute": "calculation.execute",
    "engine": "calculation.engine",
    "fragments": "calculation.fragments",
    "store": "calculation.store",
    "assemble": "results.assemble",
    "outputs": "results.outputs",
    "screening_pass": "graph.screening_pass",
    "cluster": "deploy.cluster",
    "forked_workers": "deploy.forked_workers",
    "workers": "deploy.workers",
    "worker_environment": "deploy.worker_environment",
    "progress": "diagnostics.progress",
    "profile": "diagnostics.profile",
    "report": "diagnostics.report",
    "api": "workflows.expansion",
    "structures": "workflows.structures",
    "optimize": "workflows.optimize",
}
#: Release 0.1's modules whose path is a subpackage now -> the module of it that holds their names: the
#: subpackage's ``__getattr__`` hands them out (``from mbdask.inputs import load_input``).
MOVED_INTO_PACKAGES = {"mbdask.inputs": "mbdask.inputs.load", "mbdask.graph": "mbdask.graph.build"}
#: Names the package root exported in release 0.1 and no longer lists -> their module.
OLD_ROOT_NAMES = {
    "ClusterSize": "deploy.cluster",
    "connect": "deploy.cluster",
    "start_local_cluster": "deploy.cluster",
    "FragmentJob": "planning.plan",
    "Increment": "planning.plan",
    "InputError": "errors",
}
#: Old module names that are functions of the package root now: importing the old module must not hide the function.
FUNCTIONS_NAMED_LIKE_OLD_MODULES = ("plan", "report", "optimize")


def old_package_name(name: str) -> Any:
    """``mbdask.<name>`` for a name the root no longer exports, with a ``FutureWarning``; else AttributeError."""
    if name not in OLD_ROOT_NAMES:
        raise AttributeError(f"module 'mbdask' has no attribute {name!r}")
    where = f"mbdask.{OLD_ROOT_NAMES[name]}"
    if name == "InputError":
        return old_errors_name(name, "mbdask", stacklevel=4)
    warnings.warn(f"mbdask.{name} is no longer public API; import it from {where}", FutureWarning, stacklevel=3)
    return getattr(importlib.import_module(where), name)


def moved_attribute(package: str, name: str) -> Any:
    """A name of release 0.1's module ``package`` (now a subpackage), from the module that holds it, with a warning."""
    module = importlib.import_module(MOVED_INTO_PACKAGES[package])
    if name.startswith("__") or not hasattr(module, name):
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    warnings.warn(
        f"{package}.{name} is now {module.__name__}.{name}; the old path goes in the next release",
        FutureWarning,
        stacklevel=3,
    )
    return getattr(module, name)


def old_errors_name(name: str, where: str = "mbdask.errors", stacklevel: int = 3) -> Any:
    """``InputError`` (QCEngine's name for a program refusing its input) is ``BadInputError`` now."""
    if name != "InputError":
        raise AttributeError(f"module {where!r} has no attribute {name!r}")
    warnings.warn(
        f"{where}.InputError is now {where}.BadInputError (QCEngine has an InputError of its own)",
        FutureWarning,
        stacklevel=stacklevel,
    )
    return importlib.import_module("mbdask.errors").BadInputError


class _KeepFunctions(types.ModuleType):
    """The package root once an old module path named like one of its functions was imported.

    The import system sets ``mbdask.<name>`` to the module it just imported; for ``plan``,
    ``report`` and ``optimize`` that would hide the functions, so this class ignores it.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in FUNCTIONS_NAMED_LIKE_OLD_MODULES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


class _AliasLoader(importlib.abc.Loader):
    """Loads an old module path as the module it moved to (the same module object, not a copy)."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(self.new)
        self.spec = module.__spec__  # the import system overwrites it with the alias's spec
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__ = self.spec
        if module.__name__.rpartition(".")[2] in FUNCTIONS_NAMED_LIKE_OLD_MODULES:
            sys.modules["mbdask"].__class__ = _KeepFunctions


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds ``mbdask.plan`` (the module) and the other old paths, warning that they moved."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        old = fullname.partition(".")[2] if fullname.startswith("mbdask.") else ""
        if old not in MOVED_MODULES:
            return None
        new = f"mbdask.{MOVED_MODULES[old]}"
        warnings.warn(
            f"the module {fullname} is now {new}; the old path goes in the next release", FutureWarning, stacklevel=2
        )
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once per process."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())


install()

"""mbdask: quantum-chemistry many-body expansions as a Dask task graph.

``submit`` / ``compute`` run a QCManyBody ``ManyBodyInput`` with one Dask task per fragment
calculation and return QCManyBody's ``ManyBodyResult``; ``plan`` counts what would run.

The names below are imported on first use (PEP 562): ``import mbdask`` costs milliseconds,
not the second that Dask, QCElemental, QCManyBody and Bokeh take together, so that the
command line answers ``--help`` at once and a worker imports only what its tasks use.
mbdask's QCEngine harnesses (PySCF) are registered by every mbdask entry point and on
every worker; call :func:`register_programs` before using them in a plain
``qcengine.compute`` or ``ManyBodyComputer`` run.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from .errors import RENAMED as _RENAMED, renamed as _renamed  # light: re and warnings

if TYPE_CHECKING:  # what the names below are, for type checkers and the API docs
    from .api import Submission, compute, plan, start, submit
    from .cluster import ClusterSize, connect, local_cluster, start_local_cluster
    from .errors import BadInputError, FragmentFailedError, MbdaskError, NoWorkersError, SchedulerLostError
    from .inputs import load_input
    from .optimize import OptimizationResult, optimize
    from .outputs import load_result, save_result
    from .plan import FragmentJob, Increment, Plan
    from .programs import register_programs
    from .report import figures, report, summary_table
    from .screening import Screening
    from .store import FragmentStore
    from .structures import ManyResults, compute_many, read_structures, start_many, submit_many
    from .tables import Rows
    from .xyz import xyz_input

#: Public name -> the module of the package that defines it.
_EXPORTS = {
    "Submission": "api",
    "compute": "api",
    "plan": "api",
    "start": "api",
    "submit": "api",
    "ClusterSize": "cluster",
    "connect": "cluster",
    "local_cluster": "cluster",
    "start_local_cluster": "cluster",
    "FragmentFailedError": "errors",
    "BadInputError": "errors",
    "MbdaskError": "errors",
    "NoWorkersError": "errors",
    "SchedulerLostError": "errors",
    "load_input": "inputs",
    "OptimizationResult": "optimize",
    "optimize": "optimize",
    "load_result": "outputs",
    "save_result": "outputs",
    "FragmentJob": "plan",
    "Increment": "plan",
    "Plan": "plan",
    "figures": "report",
    "report": "report",
    "summary_table": "report",
    "Screening": "screening",
    "FragmentStore": "store",
    "ManyResults": "structures",
    "compute_many": "structures",
    "read_structures": "structures",
    "start_many": "structures",
    "submit_many": "structures",
    "Rows": "tables",
    "register_programs": "programs",
    "xyz_input": "xyz",
}
#: Functions named like a module of the package (``mbdask.plan`` is the function, the module
#: is ``sys.modules["mbdask.plan"]``, as before these names were lazy).
_SHADOWED = ("plan", "report", "optimize")


class _Package(types.ModuleType):
    """The package module, keeping :data:`_SHADOWED` names for the functions.

    Importing a submodule sets the package's attribute of that name to the submodule;
    for ``plan``, ``report`` and ``optimize`` that would hide the functions (``mbdask.plan(inp)``).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from .version import package_version

        value = package_version()
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _RENAMED:  # an old name: warns each time, never cached
        return _renamed(name, __name__)
    else:
        raise AttributeError(f"module 'mbdask' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, "__version__"})


__all__ = [
    "BadInputError",
    "ClusterSize",
    "FragmentFailedError",
    "FragmentJob",
    "FragmentStore",
    "Increment",
    "ManyResults",
    "MbdaskError",
    "NoWorkersError",
    "OptimizationResult",
    "Plan",
    "Rows",
    "SchedulerLostError",
    "Screening",
    "Submission",
    "__version__",
    "compute",
    "compute_many",
    "connect",
    "figures",
    "load_input",
    "load_result",
    "local_cluster",
    "optimize",
    "plan",
    "read_structures",
    "register_programs",
    "report",
    "save_result",
    "start",
    "start_local_cluster",
    "start_many",
    "submit",
    "submit_many",
    "summary_table",
    "xyz_input",
]

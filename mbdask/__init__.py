"""mbdask: quantum-chemistry many-body expansions as a Dask task graph.

``compute`` / ``submit`` / ``start`` run a QCManyBody ``ManyBodyInput`` with one Dask task per
fragment calculation and return QCManyBody's ``ManyBodyResult``; ``plan`` counts what would
run. docs/api.md lists what is public: the names in ``__all__``. Everything else stays
importable from the module that defines it (docs/design.md maps the package), with no
promise that it keeps its name.

The names below are imported on first use (PEP 562): ``import mbdask`` costs milliseconds,
not the second that Dask, QCElemental, QCManyBody and Bokeh take together, so that the
command line answers ``--help`` at once and a worker imports only what its tasks use.
mbdask's QCEngine harnesses (PySCF) are registered by every mbdask entry point and on
every worker; call :func:`register_programs` before using them in a plain
``qcengine.compute`` or ``ManyBodyComputer`` run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mbdask import _compat

if TYPE_CHECKING:  # what the names below are, for type checkers and the API docs
    from mbdask.calculation.store import FragmentStore
    from mbdask.deploy.cluster import local_cluster
    from mbdask.diagnostics.report import figures, report, summary_table
    from mbdask.errors import BadInputError, FragmentFailedError, MbdaskError, NoWorkersError, SchedulerLostError
    from mbdask.inputs.load import load_input
    from mbdask.inputs.xyz import xyz_input
    from mbdask.interfaces.ase import ManyBodyCalculator
    from mbdask.planning.plan import Plan
    from mbdask.planning.screening import Screening
    from mbdask.programs import register_programs
    from mbdask.results.frames import increments_frame, levels_frame, timings_frame
    from mbdask.results.outputs import load_result, save_result
    from mbdask.tables import Rows
    from mbdask.workflows.expansion import Submission, compute, plan, start, submit
    from mbdask.workflows.optimize import OptimizationResult, optimize
    from mbdask.workflows.options import RunOptions
    from mbdask.workflows.structures import (
        ManyResults,
        ManySubmission,
        compute_many,
        read_structures,
        start_many,
        submit_many,
    )

#: Public name -> the module that defines it.
_EXPORTS = {
    # one expansion
    "plan": "workflows.expansion",
    "start": "workflows.expansion",
    "submit": "workflows.expansion",
    "compute": "workflows.expansion",
    "Submission": "workflows.expansion",
    "Plan": "planning.plan",
    "RunOptions": "workflows.options",
    # its input
    "load_input": "inputs.load",
    "xyz_input": "inputs.xyz",
    "Screening": "planning.screening",
    # many structures, geometry optimisation
    "compute_many": "workflows.structures",
    "start_many": "workflows.structures",
    "submit_many": "workflows.structures",
    "read_structures": "workflows.structures",
    "ManySubmission": "workflows.structures",
    "ManyResults": "workflows.structures",
    "optimize": "workflows.optimize",
    "OptimizationResult": "workflows.optimize",
    "ManyBodyCalculator": "interfaces.ase",
    # where it runs, what it keeps
    "local_cluster": "deploy.cluster",
    "FragmentStore": "calculation.store",
    "register_programs": "programs",
    # results and reports
    "load_result": "results.outputs",
    "save_result": "results.outputs",
    "Rows": "tables",
    "increments_frame": "results.frames",
    "levels_frame": "results.frames",
    "timings_frame": "results.frames",
    "report": "diagnostics.report",
    "figures": "diagnostics.report",
    "summary_table": "diagnostics.report",
    # errors
    "MbdaskError": "errors",
    "BadInputError": "errors",
    "FragmentFailedError": "errors",
    "NoWorkersError": "errors",
    "SchedulerLostError": "errors",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from mbdask.version import package_version

        value = package_version()
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(f"mbdask.{_EXPORTS[name]}"), name)
    else:
        return _compat.old_package_name(name)  # warns each time (never cached), or AttributeError
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, "__version__"})


__all__ = [
    "__version__",
    "plan",
    "start",
    "submit",
    "compute",
    "Submission",
    "Plan",
    "RunOptions",
    "load_input",
    "xyz_input",
    "Screening",
    "compute_many",
    "start_many",
    "submit_many",
    "read_structures",
    "ManySubmission",
    "ManyResults",
    "optimize",
    "OptimizationResult",
    "ManyBodyCalculator",
    "local_cluster",
    "FragmentStore",
    "register_programs",
    "load_result",
    "save_result",
    "Rows",
    "increments_frame",
    "levels_frame",
    "timings_frame",
    "report",
    "figures",
    "summary_table",
    "MbdaskError",
    "BadInputError",
    "FragmentFailedError",
    "NoWorkersError",
    "SchedulerLostError",
]

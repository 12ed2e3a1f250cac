"""mbdask: quantum-chemistry many-body expansions as a Dask task graph.

``submit`` / ``compute`` run a QCManyBody ``ManyBodyInput`` with one Dask task per fragment
calculation and return QCManyBody's ``ManyBodyResult``; ``plan`` counts what would run.
Importing mbdask registers its QCEngine harnesses (PySCF).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mbdask")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"

from .api import Submission, compute, plan, start, submit
from .cluster import ClusterSize, connect, start_local_cluster
from .errors import FragmentFailedError, InputError, MbdaskError
from .inputs import load_input
from .plan import FragmentJob, Increment, Plan
from .report import figures, report, summary_table
from .screening import Screening
from .store import FragmentStore
from .programs import register_programs

register_programs()

__all__ = [
    "ClusterSize",
    "FragmentFailedError",
    "FragmentJob",
    "FragmentStore",
    "Increment",
    "InputError",
    "MbdaskError",
    "Plan",
    "Screening",
    "Submission",
    "__version__",
    "compute",
    "connect",
    "figures",
    "load_input",
    "plan",
    "register_programs",
    "report",
    "start",
    "start_local_cluster",
    "submit",
    "summary_table",
]

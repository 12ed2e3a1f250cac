"""Every place mbdask relies on more of QCEngine, QCElemental, QCManyBody or Dask than their public API promises.

Each shim below is small and named for what it does; each says which upstream version it
was checked against, why it is worth it, and which test in ``tests/test_upstream.py`` fails
when upstream changes what it relies on (so an upgrade fails a test instead of changing a
number). Production code calls these and touches no upstream internal itself; where a
public API does the job (``qcengine.list_all_programs``, ``qcengine.register_program``,
``qcengine.get_program``, ``qcengine.get_config``, ``BaseModel.model_copy``), mbdask uses it.

Checked against: qcengine 0.52.0, qcelemental 0.51.4, qcmanybody 0.8.0 (pydantic 2.14), distributed 2026.8.0.

A foundation module: it imports upstream packages inside the functions that need them
(``import mbdask`` stays light) and no mbdask stage.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

# --- QCManyBody's labels ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def label_prefix(model: str) -> str:
    """The start of every label of ``model``: ``'["<model as JSON>", '`` (see :func:`job_label`)."""
    return "[" + json.dumps(str(model)) + ", "


def job_label(model: str, real: Sequence[int], basis: Sequence[int]) -> str:
    """``qcmanybody.utils.labeler(model, real, basis)``: the same string, several times faster.

    QCManyBody (0.8.0) labels a calculation ``json.dumps([str(model), real, basis])``, the key of
    ``cluster_properties`` and of every mbdask graph node; for a list of Python ints ``str`` is
    its JSON, and so is ``", ".join(map(str, ...))`` of Python or numpy ints. mbdask makes one
    per calculation (679,120 for (H2O)64 at 4-body) and the result's assembly one again: about
    1 us each here against 2.5 us through the JSON encoder. Guarded by
    ``test_upstream.py::test_labels_are_qcmanybodys_labeler_and_delabeler``.
    """
    return f"{label_prefix(model)}[{', '.join(map(str, real))}], [{', '.join(map(str, basis))}]]"


def job_labels(
    model: str, reals: Iterable[Sequence[int]], bases: Iterable[Sequence[int]] | tuple[int, ...] | None
) -> list[str]:
    """``[job_label(model, real, basis) for real, basis in zip(reals, bases)]`` for tuples of Python ints.

    ``bases`` None: each calculation in the basis of its own fragments (nocp, cp's monomers),
    one text serving both halves (a plan's 679,120 labels in 0.3 s); a tuple of ints: one
    basis for all (cp), written once.
    """
    prefix = label_prefix(model)
    if bases is None:
        return [f"{prefix}{text}, {text}]" for text in map(str, map(list, reals))]
    if isinstance(bases, tuple) and (not bases or not isinstance(bases[0], tuple)):
        tail = f", {list(bases)}]"
        return [f"{prefix}{text}{tail}" for text in map(str, map(list, reals))]
    return [f"{prefix}{list(real)}, {list(basis)}]" for real, basis in zip(reals, bases)]


def parse_label(label: str) -> tuple[str, list[int], list[int]]:
    """``qcmanybody.utils.delabeler(label)`` for the labels :func:`job_label` writes, without a JSON parser per label.

    ``'["mc", [1, 2], [1, 2, 3]]'`` -> ``("mc", [1, 2], [1, 2, 3])``; anything else (a model
    name JSON escapes) goes through ``delabeler``. At 679k calculations, twice per
    calculation, this saves about 15 s of a result's assembly. Guarded by
    ``test_upstream.py::test_labels_are_qcmanybodys_labeler_and_delabeler``.
    """
    head, sep, rest = label.partition('", [')
    if sep and head.startswith('["') and "\\" not in head and rest.endswith("]]"):
        real_text, sep2, basis_text = rest[:-2].partition("], [")
        if sep2:
            real = list(map(int, real_text.split(", "))) if real_text else []
            return (
                head[2:],
                real,
                real[:] if basis_text == real_text else list(map(int, basis_text.split(", "))) if basis_text else [],
            )
    from qcmanybody.utils import delabeler

    model, real_t, basis_t = delabeler(label)
    return model, list(real_t), list(basis_t)


# --- QCManyBody's ManyBodyCore --------------------------------------------------------------------------------


def drop_compute_map(core: Any) -> None:
    """Let go of ``ManyBodyCore``'s cached ``compute_map``; asked for again, the core builds it again.

    QCManyBody (0.8.0) keeps the map in ``core.mc_compute_dict`` once built (``None`` until
    then): sets of every calculation per model chemistry and order, 100+ MB at (H2O)64 4-body,
    which a plan no longer needs once its jobs are listed. Guarded by
    ``test_upstream.py::test_dropping_the_compute_map_rebuilds_the_same_map``.
    """
    if getattr(core, "mc_compute_dict", None) is not None:
        core.mc_compute_dict = None


# --- QCElemental's Molecule constructor -----------------------------------------------------------------------


def constructor_rounding(geometry: Any) -> Any:
    """What QCElemental's ``Molecule.__init__`` does to a geometry: ``float_prep(geometry, GEOMETRY_NOISE)``.

    Rounded to 8 decimals (bohr) and negative zeros made positive (qcelemental 0.51.4,
    ``models/v2/molecule.py``). The fragment factory (``mbdask.calculation.fragments``) builds
    a fragment as a copy of a validated template with its own geometry (15 us instead of
    0.4 ms per fragment) and must round it as the constructor would. Guarded by
    ``test_upstream.py::test_geometry_is_rounded_and_checked_as_the_molecule_constructor_does``.
    """
    from qcelemental.models.v2.molecule import GEOMETRY_NOISE, float_prep

    return float_prep(geometry, GEOMETRY_NOISE)


def passes_constructor_distance_check(geometry: Any) -> bool:
    """Whether QCElemental's validating ``Molecule`` constructor accepts these atoms' distances (none under 0.1 bohr).

    ``molparse.from_arrays.validate_and_fill_geometry`` (qcelemental 0.51.4) is the check
    the constructor runs; the fragment factory runs it once per parent instead of once per
    fragment (a fragment's atoms are a subset of its parent's). Guarded by
    ``test_upstream.py::test_geometry_is_rounded_and_checked_as_the_molecule_constructor_does``.
    """
    from qcelemental.exceptions import ValidationError
    from qcelemental.molparse.from_arrays import validate_and_fill_geometry

    try:
        validate_and_fill_geometry(geom=geometry)
    except ValidationError:
        return False
    return True


# --- QCEngine's compute -----------------------------------------------------------------------------------------

#: The variables QCEngine's ``environ_context(config=...)`` sets to the config's cores (qcengine 0.52.0).
#: Guarded by ``test_upstream.py::test_qcengine_sets_these_thread_variables``.
QCENGINE_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

#: The key of an input's ``specification.extras`` that ``qcengine.compute`` (0.52.0) pops and merges into its task
#: config; mbdask hands such inputs to ``qcengine.compute`` itself.
QCENGINE_LOCAL_CONFIG = "_qcengine_local_config"


def qcengine_environment(config: Any) -> AbstractContextManager:
    """QCEngine's ``util.environ_context(config=config)``: :data:`QCENGINE_THREAD_VARIABLES` set for the call."""
    from qcengine.util import environ_context

    return environ_context(config=config)


def qcengine_compute(
    atomic_input: Any,
    program: str,
    lookup: Callable[[str], tuple[Any, Any]],
    environment: Callable[[Any], AbstractContextManager],
    *,
    provenance: bool = True,
) -> Any:
    """``qcengine.compute(atomic_input, program, raise_error=False)`` for a QCSchema v2 ``AtomicInput``, with the
    harness and ``TaskConfig`` from ``lookup(program)`` (found once by the caller) instead of made per call.

    QCEngine's ``compute`` rebuilds its ``TaskConfig`` (a pydantic-settings model reading the
    environment and ``.env`` files) on every call: about 2 ms, a third of an xtb fragment.
    This is its body (qcengine 0.52.0 ``compute.py``) for what mbdask sends: the same
    ``util.compute_wrapper`` around the harness (``lookup`` runs inside it, so a missing
    program comes back as the same ``FailedOperation``), ``environment(config)`` around the
    harness's ``compute`` (QCEngine's ``environ_context`` or its equal), on failure the input
    as the output, and ``util.handle_output_metadata`` for provenance and failures. Left out:
    ``build_input_model`` (the input is already a v2 ``AtomicInput``), retries (mbdask's task
    config has none; Dask retries) and :data:`QCENGINE_LOCAL_CONFIG` (callers send such
    inputs to ``qcengine.compute``).

    ``provenance=False``: a successful ``AtomicResult`` comes back as the harness made it,
    without ``handle_output_metadata`` (which dumps and validates the whole result again to
    add machine, user and wall time: about 0.1 ms per xtb fragment); its numbers are the
    same objects either way. Guarded by ``test_upstream.py::test_qcengine_compute_is_qcengines``
    and ``test_engine.py``'s comparisons with ``qcengine.compute`` on xtb.
    """
    from qcelemental.models.v2 import AtomicResult
    from qcengine.util import compute_wrapper, handle_output_metadata

    output: Any = atomic_input
    with compute_wrapper(capture_output=False, raise_error=False) as metadata:
        harness, config = lookup(program)
        with environment(config):
            output = harness.compute(atomic_input, config)
    if not provenance and metadata["success"] is True and isinstance(output, AtomicResult) and output.success is True:
        return output
    if not metadata["success"]:
        output = atomic_input  # as qcengine.compute does for QCSchema v2 inputs
    return handle_output_metadata(output, metadata, raise_error=False, return_dict=False, convert_version=2)


_machine_lock = threading.Lock()


def fill_qcengine_machine_info(cpu_brand: str | None) -> None:
    """Fill QCEngine's per-process machine information (``config.get_global``), naming the CPU ``cpu_brand``
    without starting py-cpuinfo; with ``cpu_brand`` None, QCEngine's own path (py-cpuinfo) runs.

    QCEngine (0.52.0) fills it on the first ``compute`` of a process and calls
    ``cpuinfo.get_cpu_info()`` (about 1.1 s, a subprocess that mostly measures the clock)
    only to write ``brand_raw`` into every result's provenance: every worker paid it. Here
    ``cpuinfo.get_cpu_info`` is replaced for the duration of that one call by a function
    returning ``{"brand_raw": cpu_brand}`` and put back after it (under a lock: no other
    caller sees it outside the call). What QCEngine keeps is then the same as py-cpuinfo's
    except the full ``cpuinfo`` dict (only its brand is read upstream). Guarded by
    ``test_upstream.py::test_machine_information_without_py_cpuinfo``.
    """
    import qcengine.config

    if cpu_brand is None:
        qcengine.config.get_global()
        return
    import cpuinfo

    with _machine_lock:
        original = cpuinfo.get_cpu_info
        cpuinfo.get_cpu_info = lambda: {"brand_raw": cpu_brand}
        try:
            qcengine.config.get_global()
        finally:
            cpuinfo.get_cpu_info = original


# --- Dask's /metrics page ------------------------------------------------------------------------------------


def scraped_scheduler() -> Any:
    """The scheduler whose ``/metrics`` page is being served right now, or None where that is not known.

    Dask (distributed 2026.8.0) serves every scheduler's page from ``prometheus_client``'s one
    global registry, and its page handler points its own collectors at the scraped scheduler
    before each scrape (``PrometheusHandler._collectors[i].server``, a private attribute). mbdask's
    collector reads it so that two clusters in one process (a notebook's) each show their own
    runs; any change there gives None, and the page then shows the runs of every scheduler of the
    process. Guarded by ``test_upstream.py::test_dasks_metrics_page_names_the_scraped_scheduler``.
    """
    try:
        from distributed.http.scheduler.prometheus.core import PrometheusHandler

        return PrometheusHandler._collectors[0].server if PrometheusHandler._collectors else None
    except Exception:  # a Dask without that attribute: every scheduler's runs
        return None


__all__ = [
    "QCENGINE_LOCAL_CONFIG",
    "QCENGINE_THREAD_VARIABLES",
    "constructor_rounding",
    "drop_compute_map",
    "fill_qcengine_machine_info",
    "job_label",
    "job_labels",
    "label_prefix",
    "parse_label",
    "passes_constructor_distance_check",
    "qcengine_compute",
    "qcengine_environment",
    "scraped_scheduler",
]

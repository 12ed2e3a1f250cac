"""Many structures in one run: the same expansion over a set of structures, on one cluster.

Chemists run one expansion over many structures (isomers, a benchmark set, the frames of a
trajectory). A loop over single runs pays start-up each time and ends each run with idle
cores while its last fragments finish. Here every structure is planned first, then all of
their graphs go to one cluster at once, structure k's fragments with a higher Dask priority
than structure k+1's (:data:`mbdask.graph.build.PRIORITY_SPAN` apart): the structures finish in
order, and the tail of each is filled with the next one's work.

A structure that cannot be planned (a bad geometry, an input QCManyBody refuses) or whose
calculation fails does not stop the others: :class:`ManyResults` holds the results of
those that finished and the one-line error of those that did not. One store serves all
structures, so a calculation found in it (the same fragment geometry and model chemistry,
from another structure or an earlier run) is not computed again.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributed import Future

from mbdask.calculation.execute import ExpansionContext
from mbdask.calculation.store import StoreWriter
from mbdask.deploy.cluster import worker_resources
from mbdask.diagnostics.progress import bar, duration
from mbdask.errors import BadInputError, FragmentFailedError, MbdaskError, plural
from mbdask.graph.build import PRIORITY_SPAN, graph_size
from mbdask.inputs.xyz import ModelOptions, molecules_from_xyz
from mbdask.planning.plan import make_plan
from mbdask.results.outputs import save_result, write_atomic
from mbdask.tables import import_pandas
from mbdask.workflows.expansion import _open_store, connect_for, result_of, submit_plan, workers_ready
from mbdask.workflows.options import ClusterOptions, RunOptions, split_keywords

if TYPE_CHECKING:
    import pandas

#: File suffixes a directory of structures is read for.
STRUCTURE_SUFFIXES = (".json", ".yaml", ".yml", ".xyz")
StructuresLike = Mapping[str, Any] | Sequence[Any]


def read_structures(paths: Sequence[str | os.PathLike], model: Any | None = None, **xyz: Any) -> dict[str, Any]:
    """Structures by name from files, directories and multi-frame XYZ files, in the order given.

    * a ``.json``/``.yaml`` file: a ManyBodyInput, named by its stem (read when it is planned,
      so that a bad one fails alone);
    * an ``.xyz`` file: one structure per frame, named by the file's stem and the frame's number
      from 1, as wide as the last one (``traj-1`` ... ``traj-5`` for five frames, ``traj-01`` ...
      ``traj-12`` for twelve; a single frame keeps the stem), not by the frames' comment lines,
      which in trajectories repeat or hold energies, with the model chemistry of ``model``
      (:class:`mbdask.inputs.xyz.ModelOptions`) and the fragments found in the first frame; ``xyz`` are
      :func:`mbdask.inputs.xyz.molecules_from_xyz`'s options (``fragment_charges``, ``fragments``);
    * a directory: its files with the suffixes above, sorted by name (not its subdirectories).

    A path that does not exist, or a directory with no structure, is an :class:`BadInputError`
    (a typo, not a failed structure). Names that repeat get ``-2``, ``-3`` ...
    """
    model = model or ModelOptions()
    found: dict[str, Any] = {}

    def add(name: str, value: Any) -> None:
        unique, number = name, 1
        while unique in found:
            number += 1
            unique = f"{name}-{number}"
        found[unique] = value

    for given in paths:
        path = Path(given)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in STRUCTURE_SUFFIXES)
            if not files:
                raise BadInputError(f"{path}: no structure files ({', '.join(STRUCTURE_SUFFIXES)}) in this directory")
        elif path.is_file():
            files = [path]
        else:
            raise BadInputError(f"{path}: no such file or directory")
        for file in files:
            if file.suffix.lower() == ".xyz":
                for molecule in molecules_from_xyz(file, guess_ions=True, **xyz):
                    add(molecule["name"], model.input_for(molecule))
            else:
                add(file.stem, str(file))
    return found


def _named(structures: StructuresLike) -> dict[str, Any]:
    """``structures`` by name: a mapping as it is; a sequence named by file stem or ``structure-K``."""
    if isinstance(structures, Mapping):
        return dict(structures)
    if isinstance(structures, (str, os.PathLike)):
        raise TypeError(
            "structures must be a mapping of names to inputs or a list of inputs; for files use read_structures"
        )
    named: dict[str, Any] = {}
    width = len(str(len(structures)))
    for number, inp in enumerate(structures, start=1):
        name = Path(inp).stem if isinstance(inp, (str, os.PathLike)) else f"structure-{number:0{width}d}"
        if name in named:
            name = f"{name}-{number}"
        named[name] = inp
    return named


@dataclass
class ManySubmission:
    """Expansions of many structures running on one cluster.

    ``submissions``: those that were sent, by name; ``errors``: the one-line reason for each
    structure that could not be planned. :meth:`results` waits for all.
    """

    submissions: dict[str, Any]
    errors: dict[str, str]
    connection: Any = field(repr=False)
    order: list[str] = field(default_factory=list)
    writer: Any = field(default=None, repr=False)
    #: futures of units whose outputs later structures take (released when the results are in)
    held: list = field(default_factory=list, repr=False)
    #: calculations taken from another structure of this run instead of computed again
    shared: int = 0
    #: when :func:`start_many` was called (``time.monotonic``): the wall time counts planning and the cluster's start
    started: float = field(default_factory=time.monotonic)

    @property
    def futures(self) -> dict[str, Any]:
        """The Dask future of each sent structure's ``ManyBodyResult``."""
        return {name: sub.future for name, sub in self.submissions.items()}

    def progress(self) -> ManyProgress:
        """Counts per structure and overall (needs ``start_many(..., progress=True)``)."""
        if any(sub.progress is None for sub in self.submissions.values()):
            raise ValueError("progress needs start_many(..., progress=True)")
        return ManyProgress({name: sub.progress for name, sub in self.submissions.items()}, self.errors, self.started)

    def results(self, keep_going: bool = False) -> ManyResults:
        """Wait for every structure; a failed one is recorded in :attr:`ManyResults.errors`, not raised.

        ``keep_going``: a failed structure's result through its highest complete n-body order
        where there is one (marked partial), as :func:`mbdask.compute` gives it.
        """
        results: dict[str, Any] = {}
        errors = dict(self.errors)
        try:
            for name, sub in self.submissions.items():
                try:
                    results[name] = result_of(sub, keep_going=keep_going)
                except FragmentFailedError as exc:
                    errors[name] = str(exc)
                partial = results[name].extras["mbdask"].get("partial") if name in results else None
                if partial:
                    errors[name] = f"partial, complete through {partial['complete_nbody']}-body: {partial['error']}"
        finally:
            self.close_store()
            for future in self.held:
                future.release()
            self.held.clear()
        return ManyResults(results, errors, self.order, time.monotonic() - self.started, self.shared)

    def close_store(self) -> None:
        """Write every finished fragment into the store, and stop writing."""
        if self.writer is not None:
            self.writer.close()


def start_many(
    structures: StructuresLike, client: Any = None, *, options: RunOptions | None = None, **keywords: Any
) -> ManySubmission:
    """Plan every structure, then send all their graphs to one cluster; returns at once.

    ``structures``: inputs by name (a mapping), or a list of inputs (named by file stem, else
    ``structure-1`` ...); :func:`read_structures` reads files, directories and trajectories.
    ``options`` and the keywords are :func:`mbdask.start`'s (``store`` one store for all;
    ``screening`` for all), not its XYZ model options (:func:`read_structures` takes those).
    A structure whose planning fails is left out and named in ``errors``; if every one
    fails, :class:`BadInputError` says why the first did.
    """
    started = time.monotonic()
    run, cluster, _ = split_keywords("start_many", keywords, options)
    return _start_many(structures, client, run, cluster, started)


def _start_many(
    structures: StructuresLike, client: Any, run: RunOptions, cluster: ClusterOptions, started: float
) -> ManySubmission:
    """:func:`start_many` with its keywords sorted; ``started``: when it was called (``time.monotonic``)."""
    named = _named(structures)
    if not named:
        raise BadInputError("no structures given")
    plans, errors = {}, {}
    for name, inp in named.items():
        try:
            plans[name] = make_plan(inp, check_installed=run.check_installed, screening=run.screening)
        except MbdaskError as exc:
            errors[name] = str(exc)
    if not plans:
        first = next(iter(errors))
        raise BadInputError(f"no structure could be planned; {first}: {errors[first]}")
    store = _open_store(run.store)
    largest = max(plans.values(), key=lambda p: len(p.jobs))
    conn = connect_for(largest, client, **cluster.keywords())
    writer = None
    shared = _shared_calculations(plans)
    held: list[Future] = []
    try:
        waiting = workers_ready(conn, run.worker_timeout)
        run = run.replace(store=store, worker_timeout=waiting)
        worker_info = worker_resources(conn.client)
        writer = StoreWriter(store, conn.client) if store is not None else None
        submissions = {}
        sources: dict[tuple[str, str], tuple[Future, str]] = {}  # (structure, label) -> its unit's future, label
        for number, (name, plan) in enumerate(plans.items()):
            borrowed = {label: sources[origin] for label, origin in shared.borrowed.get(name, {}).items()}
            sub = submit_plan(
                plan,
                conn,
                run if number == 0 or not run.check_installed else run.replace(check_installed=False),
                writer=writer,
                priority_offset=(len(plans) - number) * PRIORITY_SPAN,
                borrowed=borrowed,
                worker_info=worker_info,
            )
            submissions[name] = sub
            lent = shared.lent.get(name)
            if lent:
                for key, unit in sub.graph.units.items():
                    labels = [job.label for job in unit.jobs if job.label in lent]
                    if labels:
                        held.append(Future(key, conn.client))  # alive until every borrower ran
                        sources.update({(name, label): (held[-1], label) for label in labels})
        if writer is not None:
            writer.seal()
    except BaseException:
        if writer is not None:
            writer.close()
        conn.close()
        raise
    return ManySubmission(
        submissions, errors, conn, list(named), writer, held=held, shared=shared.count, started=started
    )


@dataclass
class SharedCalculations:
    """Calculations that more than one structure needs (the same fragment geometry and model chemistry).

    ``borrowed[name][label]``: the (structure, label) that computes structure ``name``'s
    calculation ``label``; ``lent[name]``: the labels of ``name`` that later structures take.
    """

    borrowed: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    lent: dict[str, set[str]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Calculations run once for several structures (each borrower counted)."""
        return sum(len(labels) for labels in self.borrowed.values())


def _shared_calculations(plans: Mapping[str, Any]) -> SharedCalculations:
    """Which structures' calculations are the same as an earlier structure's, by their store keys.

    Store keys identify a calculation by program, model, keywords and the fragment's
    geometry with its ghost atoms (:func:`mbdask.calculation.store.fragment_identity`), wherever it sits
    in its structure. Expansions screened by energy decide their calculations later, on the
    cluster: they share nothing here (the store still serves them).
    """
    shared = SharedCalculations()
    if len(plans) < 2:
        return shared
    first: dict[str, tuple[str, str]] = {}
    for name, plan in plans.items():
        settings = plan.screened.settings if plan.screened is not None else None
        if settings is not None and settings.energy_thresholds:
            continue
        ctx = ExpansionContext(plan.input, plan.specifications, False)
        for job in plan.jobs:
            origin = first.setdefault(ctx.store_key(job), (name, job.label))
            if origin[0] != name:
                shared.borrowed.setdefault(name, {})[job.label] = origin
                shared.lent.setdefault(origin[0], set()).add(origin[1])
    return shared


def plan_total(plans: Mapping[str, Any]) -> str:
    """The lines ``python -m mbdask plan`` prints under the plans of several structures: their sum.

    Calculations per n-body order over all structures and models, those that several structures
    share (computed once by ``run``: :func:`_shared_calculations`) and what is left to run, and
    the unbatched graphs' size summed (:func:`mbdask.graph.build.graph_size`).
    """
    per_order: dict[Any, int] = {}
    for plan in plans.values():
        for counts in plan.counts.values():
            for nbody, count in counts.items():
                per_order[nbody] = per_order.get(nbody, 0) + count
    orders = ", ".join(
        f"{nbody}-body {per_order[nbody]}" for nbody in sorted(per_order, key=lambda n: (isinstance(n, str), n))
    )
    calculations = sum(len(plan.jobs) for plan in plans.values())
    shared = _shared_calculations(plans).count
    sizes = [graph_size(plan) for plan in plans.values()]
    lines = [
        f"total: {plural(len(plans), 'structure')}, {plural(calculations, 'calculation')} ({orders})"
        + (f"; {shared} shared between structures, computed once: {calculations - shared} to run" if shared else ""),
        f"  unbatched graphs: {sum(size['nodes'] for size in sizes)} nodes, {sum(size['edges'] for size in sizes)} "
        "edges",
    ]
    return "\n".join(lines)


def submit_many(
    structures: StructuresLike, client: Any = None, *, options: RunOptions | None = None, **keywords: Any
) -> dict[str, Any]:
    """Start every structure (:func:`start_many`) and return the future of each one's ``ManyBodyResult`` by name.

    Structures that could not be planned are left out (start_many's ``errors`` has them).
    With ``client=None`` and no default client, the LocalCluster mbdask starts stays up
    until the last of the futures is released. Outputs that structures share stay in the
    workers' memory while the client lives; :func:`start_many` and
    :meth:`ManySubmission.results` release them when the last result is in.
    """
    started = time.monotonic()
    run, cluster, _ = split_keywords("submit_many", keywords, options)
    many = _start_many(structures, client, run, cluster, started)
    futures = many.futures
    for future in futures.values():
        many.connection.keep_alive_with(future)
    return futures


def compute_many(
    structures: StructuresLike, client: Any = None, *, options: RunOptions | None = None, **keywords: Any
) -> ManyResults:
    """Run the expansion of every structure on one cluster and wait; failed structures do not stop the others.

    ``options`` and the keywords are :func:`start_many`'s. Returns :class:`ManyResults`: a
    mapping of name to ``ManyBodyResult`` for those that finished, with
    :attr:`ManyResults.errors` for those that did not.
    """
    started = time.monotonic()
    run, cluster, _ = split_keywords("compute_many", keywords, options)
    many = _start_many(structures, client, run, cluster, started)
    try:
        return many.results(keep_going=run.keep_going)
    finally:
        many.connection.close()


@dataclass
class ManyResults(Mapping):
    """Results by structure name (those that finished), and the error of each that did not."""

    results: dict[str, Any]
    errors: dict[str, str]
    #: every structure's name, in the order given
    order: list[str]
    #: the run's wall time, from :func:`start_many`'s call (planning, the cluster's start) to the last result in hand
    wall_seconds: float = 0.0
    #: calculations taken from another structure of the run instead of computed again
    shared: int = 0

    def __getitem__(self, name: str) -> Any:
        return self.results[name]

    def __iter__(self):
        return iter(name for name in self.order if name in self.results)

    def __len__(self) -> int:
        return len(self.results)

    def rows(self) -> list[dict]:
        """One row per structure (in the order given): energies per n-body order, interaction energy, counts, times."""
        return [self._row(name) for name in self.order]

    def _row(self, name: str) -> dict:
        row: dict[str, Any] = {"structure": name}
        result = self.results.get(name)
        error = self.errors.get(name)
        row["status"] = "failed" if result is None else ("partial" if error else "ok")
        if result is not None:
            row.update(structure_row(result))
        row["error"] = error or ""
        return row

    def to_csv(self) -> str:
        """:meth:`rows` as CSV text; the columns are the union of the rows' keys."""
        rows = self.rows()
        columns = _row_columns(rows)
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()

    def to_pandas(self) -> pandas.DataFrame:
        """:meth:`rows` as a pandas DataFrame, indexed by structure name (index ``structure``, in the order given).

        The columns are :meth:`to_csv`'s (``status``, the energies with their unit in the name,
        ``calculations``, ``from_store``, ``span_seconds``, ``task_seconds``, ``error`` last);
        a structure that failed has NaN where it has no number (its counts are pandas' nullable
        ``Int64``, so that they stay whole numbers). ``frame.loc["traj-2"]`` is one structure,
        as ``results["traj-2"]`` is its result. Needs pandas (``pip install "mbdask[pandas]"``).
        """
        pd = import_pandas("ManyResults.to_pandas")
        rows = self.rows()
        frame = pd.DataFrame.from_records(rows, columns=_row_columns(rows)) if rows else pd.DataFrame()
        for name in COUNT_COLUMNS:
            if name in frame and frame[name].isna().any():
                frame[name] = frame[name].astype("Int64")
        return frame.set_index("structure") if "structure" in frame else frame

    def summary(self) -> str:
        """A plain-text table: a line per structure (total energy, interaction energy, calculations), then failures."""
        lines = [
            f"{'structure':<24} {'status':<8} {'energy [Eh]':>20} {'interaction [kcal/mol]':>24} {'calculations':>12}"
        ]
        for row in self.rows():
            energy = row.get("total_energy_Eh", row.get("return_energy_Eh"))
            inter = row.get("interaction_energy_kcal_mol")
            lines.append(
                f"{row['structure']:<24} {row['status']:<8} {'' if energy is None else f'{energy:.10f}':>20} "
                f"{'' if inter is None else f'{inter:.4f}':>24} {row.get('calculations', ''):>12}"
            )
        return "\n".join(lines)


#: Columns of :meth:`ManyResults.rows` that count (whole numbers, missing for a failed structure).
COUNT_COLUMNS = ("calculations", "from_store")


def _row_columns(rows: list[dict]) -> list[str]:
    """The union of the rows' keys in the order met, ``error`` last (the table's columns)."""
    columns = list(dict.fromkeys(key for row in rows for key in row if key != "error"))
    return columns + ["error"]


def structure_row(result: Any) -> dict:
    """One structure's numbers from its ``ManyBodyResult``, every energy's unit in its name: QCManyBody's
    ``return_energy`` (the interaction energy unless the input asks for total data), the total energy,
    the interaction energy in kcal/mol, totals and interaction energies through each n-body order per
    BSSE treatment (QCManyBody's property names), counts and times."""
    from qcelemental import constants

    extras = result.extras["mbdask"]
    timing = extras["timing"]
    props = result.properties.model_dump()
    row: dict[str, Any] = {"return_energy_Eh": float(result.properties.return_energy)}
    for bsse in ("nocp", "cp", "vmfc"):
        total, inter = props.get(f"{bsse}_corrected_total_energy"), props.get(f"{bsse}_corrected_interaction_energy")
        if total is not None and "total_energy_Eh" not in row:
            row["total_energy_Eh"] = float(total)
        if inter is not None and "interaction_energy_kcal_mol" not in row:
            row["interaction_energy_kcal_mol"] = float(inter) * constants.conversion_factor("hartree", "kcal/mol")
    for key, value in props.items():
        if isinstance(value, float) and "_corrected_" in key and "_through_" in key and "contribution" not in key:
            row[f"{key}_Eh"] = value
    row.update(
        calculations=extras.get("nfragment_calculations"),
        from_store=timing.get("from_store", 0),
        span_seconds=timing.get("span_seconds"),
        task_seconds=timing.get("sum_task_seconds"),
    )
    return row


class ManyProgress:
    """Fragment calculations done per structure and overall, for :func:`mbdask.diagnostics.progress.show`."""

    #: at most this many structures get a line of their own while running (the rest are counted)
    SHOWN = 8

    def __init__(self, progress: dict[str, Any], errors: dict[str, str], started: float):
        self.structures = progress
        self.errors = errors
        self.started = started
        self._finished: dict[str, bool] = {}

    def poll(self) -> bool:
        """Update every structure; True once each has finished or failed (a failure does not end the others)."""
        for name, progress in self.structures.items():
            if not self._finished.get(name):
                self._finished[name] = progress.poll()
        return all(self._finished.values())

    def lines(self) -> list[str]:
        done = sum(p.done for p in self.structures.values())
        total = sum(p.total for p in self.structures.values())
        failed = sum(1 for p in self.structures.values() if p.failed) + len(self.errors)
        finished = sum(1 for name, p in self.structures.items() if self._finished.get(name) and not p.failed)
        running = [name for name, p in self.structures.items() if not self._finished.get(name)]
        width = max((len(name) for name in self.structures), default=0)
        rows = []
        for name in running[: self.SHOWN]:
            rows.append(f"  {name:<{width}}  {bar(self.structures[name].done, self.structures[name].total)}")
        if len(running) > self.SHOWN:
            rows.append(f"  ... {plural(len(running) - self.SHOWN, 'more structure')} to run")
        elapsed = time.monotonic() - self.started
        tail = (
            f"  structures: {finished} done, {failed} failed, {len(running)} to go of "
            f"{len(self.structures) + len(self.errors)}; "
            f"{done}/{total} fragment calculations, {duration(elapsed)} elapsed"
        )
        return rows + [tail]


def write_structure_results(results: ManyResults, directory: str | os.PathLike) -> list[Path]:
    """Each structure's result as ``DIRECTORY/NAME.json`` (tables beside it for large ones) and the table of all
    as ``structures.csv``."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in results:
        written += save_result(results[name], target / f"{name}.json")
    table = target / "structures.csv"
    write_atomic(table, results.to_csv())
    return written + [table]

"""Command line: ``python -m mbdask run|optimize|plan INPUT``.

Exit codes: 0 success, 1 a fragment calculation failed (the message names it), 2 bad
input (one line on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mbdask.errors import BadInputError, FragmentFailedError, MbdaskError, plural

if TYPE_CHECKING:
    from mbdask.workflows.options import ClusterOptions, RunOptions

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, ``mbdask: error: ...`` like every other bad input, and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"mbdask: error: {message} (see {self.prog} --help)\n")


SCREENING_TARGET_HELP = (
    "screening: distance cutoffs measured to keep a 3-body expansion within KCAL kcal/mol per monomer "
    "(0.1, 0.05 or 0.02; GFN2-xTB liquid water, docs/screening.md); says which it picked"
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m mbdask",
        description="Run QCManyBody many-body expansions as a Dask task graph.",
        epilog="Exit codes: 0 success, 1 a fragment calculation failed, 2 bad input.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="run an expansion and print QCManyBody's n-body table",
        description="Run the expansion in INPUT (ManyBodyInput as JSON or YAML) on Dask. Several INPUTs, a directory "
        "or a multi-frame XYZ file (a trajectory) run one expansion per structure, all on one cluster.",
    )
    run.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="ManyBodyInput file (.json, .yaml), or an XYZ file with the options below; several, a directory of them, "
        "or a multi-frame XYZ file: one expansion per structure",
    )
    _add_xyz_options(run)
    run.add_argument("-o", "--output", metavar="FILE", help="write the ManyBodyResult JSON here (atomically)")
    run.add_argument(
        "--output-dir",
        metavar="DIR",
        help="several structures: write each one's result as DIR/NAME.json and the table of all as DIR/structures.csv",
    )
    run.add_argument(
        "--report",
        metavar="FILE",
        help="write a self-contained HTML report (n-body table, plots, timeline; for several structures their "
        "energies) here",
    )
    _add_run_options(run)
    run.add_argument(
        "--keep-going",
        action="store_true",
        help="if a fragment fails, still write the result through the highest complete n-body order, marked partial "
        "(exit code 1)",
    )
    run.add_argument(
        "--distance-cutoffs",
        metavar="N:A,...",
        help="screening: keep an N-body cluster only if each pair of its fragments is within A Angstrom (closest "
        "atoms), e.g. 2:9,3:5,4:4 (nocp/vmfc)",
    )
    run.add_argument(
        "--energy-thresholds",
        metavar="N:KCAL,...",
        help="screening: keep an N-body cluster only if its GFN2-xTB increment exceeds KCAL kcal/mol in magnitude, "
        "e.g. 2:0.05,3:0.01",
    )
    run.add_argument("--screening-target", metavar="KCAL", type=float, help=SCREENING_TARGET_HELP)
    run.add_argument(
        "--profile",
        metavar="FILE",
        help="write where the run's time went (phases, QC programs, mbdask, Dask) as JSON here, and print it",
    )
    run.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress (on a terminal: bars redrawn in place; otherwise a line every 60 s, Dask config "
        "mbdask.progress.log-interval)",
    )

    opt = sub.add_parser(
        "optimize",
        help="optimise the geometry on MBE gradients (geomeTRIC), every step an expansion on one cluster",
        description="Minimise the MBE energy of INPUT's molecule with geomeTRIC; each geometry's MBE gradient is one "
        "expansion on a cluster started once. Needs geomeTRIC: pip install 'mbdask[optimize]'.",
    )
    opt.add_argument(
        "input", metavar="INPUT", help="ManyBodyInput file (.json, .yaml), or an XYZ file with the options below"
    )
    _add_xyz_options(opt, drivers=("gradient",))
    opt.add_argument(
        "--max-steps",
        type=int,
        default=100,
        metavar="N",
        help="geomeTRIC steps at most (default 100); reaching them is exit code 1",
    )
    opt.add_argument(
        "--convergence",
        metavar="SET",
        help="geomeTRIC convergence set: GAU (default), GAU_LOOSE, GAU_TIGHT, GAU_VERYTIGHT, NWCHEM_LOOSE, "
        "TURBOMOLE, INTERFRAG_TIGHT",
    )
    opt.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the final geometry here: XYZ (.xyz) or the QCSchema molecule as JSON (.json)",
    )
    opt.add_argument(
        "--trajectory",
        metavar="FILE",
        help="write every geometry here as a multi-frame XYZ, the energy in each comment line (rewritten after every "
        "step)",
    )
    opt.add_argument("--result", metavar="FILE", help="write the last step's ManyBodyResult JSON here")
    _add_run_options(opt)
    opt.add_argument("--distance-cutoffs", metavar="N:A,...", help="screening as for run")
    opt.add_argument(
        "--freeze-screening",
        action="store_true",
        help="keep the clusters screening kept at the start geometry for every step",
    )

    plan = sub.add_parser(
        "plan",
        help="count the fragment calculations and graph size, compute nothing",
        description="Validate INPUT and print, per model chemistry and n-body order, how many calculations would run. "
        "Several INPUTs, a directory or a multi-frame XYZ file (what run takes): a plan per structure, then the total.",
    )
    plan.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="ManyBodyInput file (.json, .yaml), or an XYZ file with the options below; several, a directory of them, "
        "or a multi-frame XYZ file: a plan per structure",
    )
    _add_xyz_options(plan)
    plan.add_argument("--distance-cutoffs", metavar="N:A,...", help="screening as for run: count what it keeps")
    plan.add_argument(
        "--screening-target", metavar="KCAL", type=float, help="as for run: count what the cutoffs it picks keep"
    )
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """Where and how the fragments run (run and optimize): the cluster (started or reached) and each calculation's
    resources.

    Defaults that are settings are shown as mbdask.yaml has them (read without importing Dask).
    """
    from mbdask.config import packaged_default

    def default(key: str) -> Any:
        return packaged_default(f"mbdask.{key}")

    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler",
        type=_scheduler_address,
        metavar="ADDR",
        help="address of a running Dask scheduler (default: start a LocalCluster)",
    )
    where.add_argument(
        "--scheduler-file",
        metavar="PATH",
        help="or the JSON file a Dask scheduler wrote (dask scheduler --scheduler-file, dask-mpi, dask-jobqueue); "
        "waited for up to Dask config distributed.comm.timeouts.connect (30 s)",
    )
    parser.add_argument(
        "--tls-ca-file",
        metavar="PEM",
        help="with --scheduler tls://... (or a --scheduler-file naming one): CA certificate that signed the "
        "scheduler's",
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="client certificate for TLS (with --tls-key)")
    parser.add_argument("--tls-key", metavar="PEM", help="client private key for TLS")
    parser.add_argument(
        "--worker-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="with --scheduler(-file): wait this long for workers to join (batch jobs start late) and, during the run, "
        "for workers to come back when none is left, then stop with exit code 1 "
        f"(default {default('worker-timeout')}, Dask config mbdask.worker-timeout)",
    )
    parser.add_argument("--workers", type=int, metavar="N", help="LocalCluster workers (default: one per core)")
    parser.add_argument(
        "--threads-per-worker", type=int, metavar="N", help="LocalCluster threads (cores) per worker (default 1)"
    )
    parser.add_argument(
        "--memory-limit",
        type=_byte_size,
        metavar="SIZE",
        help="LocalCluster memory per worker, e.g. 4GiB (default: "
        f"{100 * float(default('local-cluster.memory-fraction')):g}%% of RAM / workers, "
        "Dask config mbdask.local-cluster.memory-fraction)",
    )
    parser.add_argument(
        "--cores-per-fragment",
        type=_cores,
        default=1,
        metavar="N|auto",
        help="cores each QC calculation uses and reserves (default 1); 'auto': more cores for fragments predicted to "
        "finish the run alone",
    )
    parser.add_argument(
        "--memory-per-fragment",
        type=float,
        metavar="GIB",
        help="memory in GiB per QC calculation (default: worker share)",
    )
    parser.add_argument(
        "--retries", type=int, default=0, metavar="N", help="retries of a failed fragment before giving up (default 0)"
    )
    parser.add_argument(
        "--store",
        metavar="PATH",
        help="checkpoint store (SQLite file, created if missing): reuse fragments found there, save each finished one",
    )
    parser.add_argument(
        "--order",
        choices=("levels", "cost"),
        default="levels",
        help="levels: n-body orders finish one after another (default); cost: longest first overall",
    )
    parser.add_argument("--no-batch", action="store_true", help="one Dask task per fragment even for cheap fragments")
    parser.add_argument(
        "--dashboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve Dask's dashboard from the LocalCluster (default: only for runs predicted to take "
        f"{default('local-cluster.dashboard-min-seconds')} s "
        "per core or more, Dask config mbdask.local-cluster.dashboard)",
    )


def _add_xyz_options(
    parser: argparse.ArgumentParser, drivers: Sequence[str] = ("energy", "gradient", "hessian")
) -> None:
    """The model-chemistry options that turn an XYZ file into a ManyBodyInput (run, plan and optimize).

    Their defaults are :class:`mbdask.inputs.xyz.ModelOptions`'s, applied there: here they stay None, so
    that an option given with a ManyBodyInput file is seen and refused (:func:`_refuse_model_options`),
    even when its value is the default.
    """
    xyz = parser.add_argument_group(
        "XYZ input",
        "fragments found from connectivity (covalent radii); the model chemistry from these options "
        "(for XYZ files only: a ManyBodyInput file holds its own, and they are refused with one)",
    )
    xyz.add_argument("--program", help="QCEngine program (default xtb)")
    xyz.add_argument("--method", help="e.g. gfn2-xtb, hf, b3lyp, mp2 (default gfn2-xtb for xtb)")
    xyz.add_argument("--basis", help="basis set (not for xtb)")
    xyz.add_argument("--bsse", type=_bsse_types, help="comma-separated: nocp, cp, vmfc (default nocp)")
    xyz.add_argument("--max-nbody", type=int, metavar="N", help="highest n-body order (default 2)")
    if len(drivers) > 1:
        xyz.add_argument("--driver", choices=drivers, help=f"{', '.join(drivers)} (default {drivers[0]})")
    else:
        xyz.add_argument(
            "--driver", choices=drivers, help=f"an optimisation runs MBE gradients: {drivers[0]} is the only choice"
        )
    xyz.add_argument(
        "--fragment-charges",
        metavar="Q,Q,...",
        help="charge of each fragment (default: 0, or the charge of common ions such as H3O+ and OH-)",
    )
    xyz.add_argument(
        "--fragments", metavar="GROUPS", help="override the fragments: 0-based atoms, e.g. '0-2;3-5;6,7,8'"
    )


def _cores(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got {text!r}") from None


def _byte_size(text: str) -> int:
    """--memory-limit: a positive size as Dask reads it (``4GiB``, ``500MB``, a number of bytes)."""
    from dask.utils import parse_bytes

    try:
        size = parse_bytes(text)
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"expected a size such as 4GiB or 500MB, got {text!r}") from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size such as 4GiB, got {text!r}")
    return size


def _scheduler_address(text: str) -> str:
    """--scheduler: ``[PROTOCOL://]HOST:PORT`` with a protocol Dask knows, checked before connecting.

    Dask's Client reports a malformed address only once it tries to connect, as a traceback.
    """
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import backends

    try:
        scheme, location = parse_address(text, strict=False)
        if scheme not in backends:
            raise ValueError(f"unknown protocol {scheme!r} (Dask knows {', '.join(sorted(backends))})")
        if scheme != "inproc":
            parse_host_port(location)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected [PROTOCOL://]HOST:PORT such as tcp://node1:8786, got {text!r}: {exc}"
        ) from None
    return text


def _bsse_types(text: str) -> tuple[str, ...]:
    """--bsse: comma-separated BSSE treatments, each one QCManyBody knows (aliases such as ssfc included)."""
    from mbdask.inputs.xyz import bsse_types

    try:
        return bsse_types(text)
    except BadInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    """--worker-timeout: read as the library reads it (:func:`mbdask.deploy.cluster.worker_timeout`)."""
    from mbdask.deploy.cluster import worker_timeout

    try:
        return worker_timeout(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _per_order(option: str, text: str) -> dict[str, str]:
    """``2:9,3:5`` as {"2": "9", "3": "5"} (the library checks the numbers)."""
    pairs = {}
    for item in text.split(","):
        order, sep, value = item.partition(":")
        if not sep:
            raise BadInputError(f"{option} {text!r}: expected ORDER:VALUE pairs separated by commas, e.g. 2:9,3:5")
        pairs[order.strip()] = value.strip()
    return pairs


def _screening(args: argparse.Namespace) -> dict | None:
    """The library's screening option from --distance-cutoffs, --screening-target and --energy-thresholds."""
    options = {}
    if args.distance_cutoffs:
        options["distance_cutoffs"] = _per_order("--distance-cutoffs", args.distance_cutoffs)
    target = getattr(args, "screening_target", None)
    if target is not None:
        from mbdask.planning.screening import cutoffs_for_target

        if args.distance_cutoffs:
            raise BadInputError(
                "--screening-target picks the distance cutoffs: give it or --distance-cutoffs, not both"
            )
        measured, cutoffs = cutoffs_for_target(target)
        text = ", ".join(f"{n}-body {r:g} A" for n, r in sorted(cutoffs.items()))
        print(
            f"mbdask: --screening-target {target:g}: distance cutoffs {text}, measured to keep GFN2-xTB 3-body "
            f"of a 128-water liquid droplet within {measured:g} kcal/mol per monomer (docs/screening.md)",
            file=sys.stderr,
        )
        options["target"] = target
    if getattr(args, "energy_thresholds", None):
        options["energy_thresholds"] = _per_order("--energy-thresholds", args.energy_thresholds)
    return options or None


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise BadInputError(f"{name} must be at least 1, got {value}")


def _security(args: argparse.Namespace):
    """A Dask ``Security`` from the --tls-* options (None without them: Dask's config applies)."""
    files = {"--tls-ca-file": args.tls_ca_file, "--tls-cert": args.tls_cert, "--tls-key": args.tls_key}
    if not any(files.values()):
        return None
    missing = [name for name, value in files.items() if not value]
    if missing:
        raise BadInputError(f"TLS needs --tls-ca-file, --tls-cert and --tls-key; missing {', '.join(missing)}")
    for name, value in files.items():
        if not os.path.isfile(value):
            raise BadInputError(f"{name} {value}: no such file")
    if not args.scheduler and not args.scheduler_file:
        raise BadInputError(
            "--tls-* options need --scheduler tls://HOST:PORT or --scheduler-file "
            "(a LocalCluster started here listens on 127.0.0.1 only)"
        )
    from distributed.security import Security

    return Security(
        tls_ca_file=args.tls_ca_file,
        tls_client_cert=args.tls_cert,
        tls_client_key=args.tls_key,
        require_encryption=True,
    )


def _given_model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The XYZ options given on the command line (--program, --method, ...), by their library names."""
    from mbdask.inputs.xyz import XYZ_OPTIONS

    return {name: getattr(args, name) for name in XYZ_OPTIONS if getattr(args, name, None) is not None}


def _refuse_model_options(args: argparse.Namespace, holders: Sequence[str], structures: int = 1) -> None:
    """Refuse XYZ options given with ManyBodyInput files (``holders``, among ``structures`` inputs): such a file holds
    its own model chemistry and expansion, and running it while ignoring them would run another expansion than the
    one asked for."""
    from mbdask.inputs.xyz import refused_model_options

    given = _given_model_options(args)
    if given and holders:
        flags = [f"--{name.replace('_', '-')}" for name in given]
        raise BadInputError(refused_model_options(flags, holders, mixed=len(holders) < structures))


def _model_options(args: argparse.Namespace):
    """The XYZ options (--program, --method, ...) as :class:`mbdask.inputs.xyz.ModelOptions`, its defaults for those
    not given."""
    from mbdask.inputs.xyz import ModelOptions

    given = _given_model_options(args)
    return ModelOptions(
        **{name: value for name, value in given.items() if name not in ("fragment_charges", "fragments")}
    )


def _xyz_charges_and_fragments(args: argparse.Namespace) -> tuple[list[float] | None, list[list[int]] | None]:
    """--fragment-charges and --fragments, read."""
    from mbdask.inputs.xyz import parse_fragments

    charges = None
    if args.fragment_charges:
        try:
            charges = [float(q) for q in args.fragment_charges.split(",")]
        except ValueError:
            raise BadInputError(
                f"--fragment-charges {args.fragment_charges!r}: expected numbers separated by commas"
            ) from None
    return charges, parse_fragments(args.fragments) if args.fragments else None


def _input(args: argparse.Namespace) -> Any:
    """What to run for ``args.input``: the file itself (a ManyBodyInput; XYZ options refused), or for an
    XYZ file the ManyBodyInput dict the --program/--method/... options make of it (its fragments printed)."""
    from mbdask.inputs.xyz import describe_fragments, is_xyz, xyz_input

    if not is_xyz(args.input):
        _refuse_model_options(args, [args.input])
        return args.input
    charges, fragments = _xyz_charges_and_fragments(args)
    inp = xyz_input(args.input, **{**_given_model_options(args), "fragment_charges": charges, "fragments": fragments})
    molecule = inp["molecule"]
    print(f"mbdask: {plural(len(molecule['fragments']), 'fragment')} in {args.input}:", file=sys.stderr)
    for line in describe_fragments(molecule):
        print(f"  {line}", file=sys.stderr)
    return inp


def _several_structures(paths: list[str]) -> bool:
    """Several inputs, a directory, or an XYZ file of more than one frame."""
    from mbdask.inputs.xyz import is_xyz, read_xyz_frames

    if len(paths) > 1 or os.path.isdir(paths[0]):
        return True
    if is_xyz(paths[0]) and os.path.isfile(paths[0]):
        return len(read_xyz_frames(paths[0])) > 1
    return False


def _run(args: argparse.Namespace) -> int:
    if args.output_dir or _several_structures(args.inputs):
        return _run_many(args)
    args.input = args.inputs[0]
    return _run_one(args)


def _run_many(args: argparse.Namespace) -> int:
    """One expansion per structure, all on one cluster (:mod:`mbdask.workflows.structures`); exit 1 if any failed."""
    from mbdask.results.outputs import check_writable
    from mbdask.workflows.structures import read_structures, start_many, write_structure_results

    if args.output:
        raise BadInputError(
            "several structures: write their results with --output-dir DIR (one JSON each and structures.csv), not -o"
        )
    if args.profile:
        raise BadInputError(
            "--profile is for one structure; several structures report their times in --output-dir's structures.csv"
        )
    _positive("--workers", args.workers)
    _positive("--threads-per-worker", args.threads_per_worker)
    options = _run_options(args, keep_going=args.keep_going, progress=not args.no_progress)
    if args.report:
        check_writable(args.report)
    if args.output_dir and os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise BadInputError(f"--output-dir {args.output_dir}: exists and is not a directory")
    charges, fragments = _xyz_charges_and_fragments(args)
    structures = read_structures(args.inputs, _model_options(args), fragment_charges=charges, fragments=fragments)
    _refuse_model_options(
        args, [p for p in structures.values() if isinstance(p, str)], len(structures)
    )  # read_structures gives their paths
    print(f"mbdask: {plural(len(structures), 'structure')}: {_names(list(structures))}", file=sys.stderr)
    many = start_many(
        structures,
        args.scheduler,
        options=options.replace(screening=_screening(args)),
        **_cluster_options(args, _security(args)).keywords(),
    )
    try:
        for name, error in many.errors.items():
            print(f"mbdask: {name}: not run: {error}", file=sys.stderr)
        from mbdask.deploy.cluster import dashboard_link

        link = dashboard_link(many.connection.client)
        if link:
            print(f"mbdask: dashboard at {link}", file=sys.stderr)
        gc.freeze()
        if not args.no_progress:
            from mbdask.diagnostics.progress import show

            show(many.progress())
        results = many.results(keep_going=args.keep_going)
    finally:
        many.close_store()
        many.connection.close()
    print(results.summary())
    shared = (
        f"; {plural(results.shared, 'calculation')} shared between structures, computed once" if results.shared else ""
    )
    print(
        f"mbdask: {len(results)} of {plural(len(results.order), 'structure')} finished{shared}; wall time "
        f"{results.wall_seconds:.2f} s"
    )
    if args.output_dir:
        write_structure_results(results, args.output_dir)
        print(f"mbdask: results written to {args.output_dir} (one JSON per structure, structures.csv)")
    if args.report:
        from mbdask.diagnostics.report import structures_report

        structures_report(results, args.report)
        print(f"mbdask: report written to {args.report}")
    if results.errors:
        print(
            f"mbdask: {plural(len(results.errors), 'structure')} failed: "
            + "; ".join(f"{n}: {e}" for n, e in results.errors.items()),
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def _cluster_options(args: argparse.Namespace, security: Any) -> ClusterOptions:
    """Where the cluster comes from: the options that start (--workers, ...) or reach (--scheduler-file, TLS) it."""
    from mbdask.workflows.options import ClusterOptions

    return ClusterOptions(
        n_workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
        security=security,
        dashboard=args.dashboard,
        scheduler_file=args.scheduler_file,
    )


def _run_options(args: argparse.Namespace, **more: Any) -> RunOptions:
    """What each expansion runs with (--cores-per-fragment, --retries, --store, --worker-timeout, ...), checked.

    ``more``: the options only some commands have (``keep_going``, ``progress``, ``screening``).
    Made before anything is planned, so that an impossible value is one line at once.
    """
    from mbdask.workflows.options import RunOptions

    return RunOptions(
        cores_per_fragment=args.cores_per_fragment,
        memory_per_fragment=args.memory_per_fragment,
        retries=args.retries,
        order=args.order,
        batch=not args.no_batch,
        store=args.store,
        worker_timeout=args.worker_timeout,
        **more,
    )


def _names(names: list[str], shown: int = 6) -> str:
    """The first and last few names of a long list."""
    if len(names) <= shown:
        return ", ".join(names)
    return ", ".join(names[: shown // 2]) + f", ... ({len(names) - shown} more), " + ", ".join(names[-(shown // 2) :])


def _run_one(args: argparse.Namespace) -> int:
    from mbdask.calculation.store import FragmentStore
    from mbdask.deploy.cluster import dashboard_link
    from mbdask.diagnostics.profile import RunProfile
    from mbdask.results.outputs import check_writable, save_result
    from mbdask.workflows import expansion as api

    profile = RunProfile()
    profile.mark("imported")

    _positive("--workers", args.workers)
    _positive("--threads-per-worker", args.threads_per_worker)
    options = _run_options(args, keep_going=args.keep_going, progress=not args.no_progress)
    for path in (args.output, args.report, args.profile):
        if path:
            check_writable(path)
    security = _security(args)
    inp = _input(args)
    plan = api.plan(inp, screening=_screening(args))  # all input errors surface before a cluster starts
    store = FragmentStore.open(args.store) if args.store else None
    profile.mark("planned")

    wall_start = time.perf_counter()
    conn = api.connect_for(plan, args.scheduler, **_cluster_options(args, security).keywords())
    profile.mark("cluster")
    sub = None
    try:
        link = dashboard_link(conn.client)
        if link:
            print(f"mbdask: dashboard at {link}", file=sys.stderr)
        sub = api.start(plan, conn.client, options=options.replace(store=store))  # the plan has the screening
        profile.mark("submitted")
        # The plan and graph are millions of objects that live until the process ends: out of the
        # garbage collector's sight, its full collections stop walking them again and again while
        # results arrive (unpickling a 679k-calculation result took minutes with them in view).
        gc.freeze()
        if sub.from_store:
            print(
                f"mbdask: {sub.from_store} of {len(plan.jobs)} fragment calculations found in {args.store}",
                file=sys.stderr,
            )
        if store is not None and store.corrupted:
            they = "it is" if len(store.corrupted) == 1 else "they are"
            print(
                f"mbdask: {plural(len(store.corrupted), 'corrupted store entry', 'corrupted store entries')} "
                f"ignored; {they} recomputed",
                file=sys.stderr,
            )
        if sub.progress is not None:
            from mbdask.diagnostics.progress import show

            show(sub.progress)
        result = api.result_of(sub, keep_going=args.keep_going)
        profile.mark("result")
    finally:
        if sub is not None:
            sub.close_store()  # also on Ctrl-C during the progress display: what finished is in the store
        conn.close()
    profile.mark("closed")
    wall = time.perf_counter() - wall_start

    from mbdask.diagnostics.report import calculations_phrase, energy_phrase, report, summary_table, times_phrase

    print(result.stdout)
    print(summary_table(result))
    print(f"mbdask: {calculations_phrase(result)}; {times_phrase(result, wall)}")
    print(f"mbdask: {energy_phrase(result)}")
    if args.output:
        written = save_result(result, args.output)
        tables = f" (tables beside it: {', '.join(p.name for p in written[:-1])})" if len(written) > 1 else ""
        print(f"mbdask: result written to {args.output}{tables}")
    if args.report:
        report(result, args.report, title=f"mbdask report: {os.path.basename(str(args.input))}", wall_seconds=wall)
        print(f"mbdask: report written to {args.report}")
    if args.profile:
        from mbdask.diagnostics.profile import format_summary, write_profile

        profile.mark("written")
        profile.with_result(result)
        summary = profile.summary(result)
        write_profile(args.profile, summary)
        print(format_summary(summary), file=sys.stderr)
        print(f"mbdask: profile written to {args.profile}")
    partial = result.extras["mbdask"].get("partial")
    if partial:
        print(
            f"mbdask: PARTIAL result, complete through {partial['complete_nbody']}-body of "
            f"{partial['requested_nbody']}: {partial['error']}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def _optimize(args: argparse.Namespace) -> int:
    """Geometry optimisation (:func:`mbdask.workflows.optimize.optimize`); exit 1 if it stopped at --max-steps."""
    from mbdask.results.outputs import check_writable, save_result, write_atomic
    from mbdask.workflows.optimize import optimize

    _positive("--workers", args.workers)
    _positive("--threads-per-worker", args.threads_per_worker)
    options = _run_options(args)
    for path in (args.output, args.trajectory, args.result):
        if path:
            check_writable(path)
    if args.output and not args.output.lower().endswith((".xyz", ".json")):
        raise BadInputError(f"-o {args.output}: the final geometry is written as .xyz or .json")
    inp = _input(args)
    opt = optimize(
        inp,
        args.scheduler,
        max_steps=args.max_steps,
        convergence=args.convergence,
        freeze_screening=args.freeze_screening,
        trajectory=args.trajectory,
        options=options.replace(screening=_screening(args)),
        **_cluster_options(args, _security(args)).keywords(),
    )
    print(f"{'step':>5}  {'MBE energy / Eh':>20}  {'change / Eh':>12}  {'RMS gradient':>12}  {'max gradient':>12}")
    for step, (energy, rms, largest) in enumerate(zip(opt.energies, opt.gradient_rms, opt.gradient_max)):
        change = "" if step == 0 else f"{energy - opt.energies[step - 1]:+.3e}"
        print(f"{step:>5}  {energy:>20.10f}  {change:>12}  {rms:>12.3e}  {largest:>12.3e}")
    state = "converged" if opt.converged else f"NOT converged after {plural(opt.steps, 'step')} (--max-steps)"
    print(
        f"mbdask: optimisation {state}: {plural(opt.steps, 'step')}, {plural(opt.evaluations, 'expansion')}, final "
        f"MBE energy {opt.energy:.10f} Eh"
    )
    if args.output:
        if args.output.lower().endswith(".xyz"):
            opt.to_xyz(args.output)
        else:
            write_atomic(args.output, opt.molecule.model_dump_json(indent=1))
        print(f"mbdask: final geometry written to {args.output}")
    if args.trajectory:
        print(f"mbdask: trajectory written to {args.trajectory}")
    if args.result:
        save_result(opt.final_result, args.result)
        print(f"mbdask: last step's result written to {args.result}")
    return EXIT_OK if opt.converged else EXIT_FAILED


def _plan(args: argparse.Namespace) -> int:
    from mbdask.graph.build import graph_summary
    from mbdask.workflows import expansion as api

    if _several_structures(args.inputs):
        return _plan_many(args)
    args.input = args.inputs[0]
    inp = _input(args)
    planned = api.plan(inp, screening=_screening(args))
    print(planned.summary())
    print(graph_summary(planned))
    return EXIT_OK


def _plan_many(args: argparse.Namespace) -> int:
    """A plan per structure (what ``run`` would run for the same inputs), then the total over all.

    A structure that cannot be planned is one line on stderr and the others are still planned, so that one
    command finds every bad structure of a set; the exit code is then 2 (bad input), as for one structure.
    """
    from mbdask.graph.build import graph_summary
    from mbdask.workflows import expansion as api
    from mbdask.workflows.structures import plan_total, read_structures

    charges, fragments = _xyz_charges_and_fragments(args)
    structures = read_structures(args.inputs, _model_options(args), fragment_charges=charges, fragments=fragments)
    _refuse_model_options(args, [p for p in structures.values() if isinstance(p, str)], len(structures))
    print(f"mbdask: {plural(len(structures), 'structure')}: {_names(list(structures))}", file=sys.stderr)
    screening = _screening(args)
    plans, errors = {}, {}
    for name, inp in structures.items():
        try:
            plans[name] = api.plan(inp, screening=screening)
        except MbdaskError as exc:
            errors[name] = str(exc)
            print(f"mbdask: {name}: error: {exc}", file=sys.stderr)
            continue
        print(f"{name}: {plans[name].summary()}")
        print(graph_summary(plans[name]))
    if plans:
        print(plan_total(plans))
    if errors:
        print(
            f"mbdask: {plural(len(errors), 'structure')} of {len(structures)} could not be planned: "
            f"{_names(list(errors))}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    return EXIT_OK


def _kept(args: argparse.Namespace) -> str:
    """After an interrupt of ``run`` or ``optimize``: what the store kept for the same command to resume from, or
    that nothing was kept."""
    if args.command not in ("run", "optimize"):
        return ""
    from mbdask.calculation.store import kept_for_next_run

    return f"; {kept_for_next_run(args.store)}"


#: BLAS/OpenMP thread variables the command line sets to 1 for itself (unless the user set them).
CLIENT_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _single_threaded_client() -> None:
    """Keep this process's own BLAS/OpenMP pools at one thread, so that it can fork its workers.

    The command line computes no fragment itself. numpy's OpenBLAS starts its threads as soon
    as numpy is imported, and a process with threads must not fork
    (:mod:`mbdask.deploy.forked_workers`); so this runs before anything imports numpy. Each
    fragment on a worker raises the pools to its own cores while it runs.
    """
    if "numpy" not in sys.modules:
        for name in CLIENT_THREAD_VARIABLES:
            os.environ.setdefault(name, "1")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code instead of raising for anything expected."""
    args = build_parser().parse_args(argv)
    try:
        from mbdask.config import check_numbers

        check_numbers()  # a bad setting (Dask YAML, DASK_MBDASK__...) stops here, before anything is read or written
        return {"run": _run, "optimize": _optimize, "plan": _plan}[args.command](args)
    except BadInputError as exc:
        print(f"mbdask: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except FragmentFailedError as exc:
        print(f"mbdask: calculation failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except MbdaskError as exc:
        print(f"mbdask: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"mbdask: interrupted{_kept(args)}", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: one line unless asked for the traceback
        if os.environ.get("MBDASK_DEBUG"):
            raise
        print(
            f"mbdask: internal error: {type(exc).__name__}: {exc} (set MBDASK_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED


def entry() -> None:
    """``python -m mbdask`` and the ``mbdask`` command: :func:`main`, then leave at once.

    Everything the run opened is closed by then (cluster, workers, store) and every output
    written atomically. What remains of a normal interpreter exit is tearing down the
    modules of Dask, QCElemental and the QC programs, 0.3-0.37 s measured on the 2-core
    machine, a few percent of a short run, for nothing: so the streams and logging are
    flushed and the process ends with ``os._exit``. Before anything, the process's own
    BLAS/OpenMP pools are kept at one thread (:func:`_single_threaded_client`), which only the
    command itself may decide. Library calls of :func:`main` (tests) do neither.
    """
    _single_threaded_client()
    code = main()
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

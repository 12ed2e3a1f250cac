"""Command line: ``python -m mbdask run|plan INPUT``.

Exit codes: 0 success, 1 a fragment calculation failed (the message names it), 2 bad
input (one line on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

from .errors import FragmentFailedError, InputError, MbdaskError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


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
        description="Run the expansion in INPUT (ManyBodyInput as JSON or YAML) on Dask.",
    )
    run.add_argument("input", metavar="INPUT", help="ManyBodyInput file (.json, .yaml)")
    run.add_argument("-o", "--output", metavar="FILE", help="write the ManyBodyResult JSON here (atomically)")
    run.add_argument("--scheduler", metavar="ADDR", help="address of a running Dask scheduler (default: start a LocalCluster)")
    run.add_argument("--workers", type=int, metavar="N", help="LocalCluster workers (default: one per core)")
    run.add_argument("--threads-per-worker", type=int, metavar="N", help="LocalCluster threads (cores) per worker (default 1)")
    run.add_argument("--memory-limit", metavar="SIZE", help="LocalCluster memory per worker, e.g. 4GiB (default: 90%% of RAM / workers)")
    run.add_argument("--cores-per-fragment", type=int, default=1, metavar="N", help="cores each QC calculation uses and reserves (default 1)")
    run.add_argument("--memory-per-fragment", type=float, metavar="GIB", help="memory in GiB per QC calculation (default: worker share)")
    run.add_argument("--retries", type=int, default=0, metavar="N", help="retries of a failed fragment before giving up (default 0)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (also off when stderr is not a terminal)")

    plan = sub.add_parser(
        "plan",
        help="count the fragment calculations and graph size, compute nothing",
        description="Validate INPUT and print, per model chemistry and n-body order, how many calculations would run.",
    )
    plan.add_argument("input", metavar="INPUT", help="ManyBodyInput file (.json, .yaml)")
    return parser


def _positive(name: str, value: Optional[int]) -> None:
    if value is not None and value < 1:
        raise InputError(f"{name} must be at least 1, got {value}")


def _run(args: argparse.Namespace) -> int:
    from . import api
    from .cluster import connect
    from .outputs import check_writable, write_atomic

    _positive("--workers", args.workers)
    _positive("--threads-per-worker", args.threads_per_worker)
    _positive("--cores-per-fragment", args.cores_per_fragment)
    if args.retries < 0:
        raise InputError(f"--retries must be 0 or more, got {args.retries}")
    if args.output:
        check_writable(args.output)
    plan = api.plan(args.input)  # all input errors surface before a cluster starts

    wall_start = time.perf_counter()
    conn = connect(
        args.scheduler,
        n_workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
    )
    try:
        link = getattr(conn.client, "dashboard_link", None)
        if link:
            print(f"mbdask: dashboard at {link}", file=sys.stderr)
        sub = api.start(
            plan,
            conn.client,
            cores_per_fragment=args.cores_per_fragment,
            memory_per_fragment=args.memory_per_fragment,
            retries=args.retries,
        )
        if not args.no_progress and sys.stderr.isatty():
            from distributed import progress

            progress(sub.result)
            print(file=sys.stderr)
        result = sub.result.result()
        nworkers = len(conn.client.scheduler_info().get("workers", {}))
    finally:
        conn.close()
    wall = time.perf_counter() - wall_start

    print(result.stdout)
    timing = result.extras["mbdask"]["timing"]
    print(
        f"mbdask: {result.extras['mbdask']['nfragment_calculations']} fragment calculations on {nworkers} workers; "
        f"wall time {wall:.2f} s, sum of task times {timing['sum_task_seconds']:.2f} s; "
        f"return_energy {result.properties.return_energy:.12f} Eh"
    )
    if args.output:
        write_atomic(args.output, result.model_dump_json(indent=1))
        print(f"mbdask: result written to {args.output}")
    return EXIT_OK


def _plan(args: argparse.Namespace) -> int:
    from . import api

    print(api.plan(args.input).summary())
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit code instead of raising for anything expected."""
    args = build_parser().parse_args(argv)
    try:
        return {"run": _run, "plan": _plan}[args.command](args)
    except InputError as exc:
        print(f"mbdask: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except FragmentFailedError as exc:
        print(f"mbdask: calculation failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except MbdaskError as exc:
        print(f"mbdask: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mbdask: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: one line unless asked for the traceback
        if os.environ.get("MBDASK_DEBUG"):
            raise
        print(f"mbdask: internal error: {type(exc).__name__}: {exc} (set MBDASK_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_FAILED

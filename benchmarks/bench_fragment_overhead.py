"""mbdask's own time per fragment around the QC program call (issue #15: <= 0.2 ms).

Everything runs in this one process, on one core, with the plan of the GFN2-xTB 3-body
nocp expansion of ``data/water20-dodecahedron.xyz``; ``--fragments`` of its dimers and
trimers run in units of ``--batch`` fragments (``mbdask.batching.min-seconds`` gives about ten
xtb fragments per unit), as a worker runs them:

* (a) ``run_unit(ctx, jobs, 1, None, None, predicted)``, per fragment;
* (b) the program harness's ``compute`` alone (QCEngine's ``executor.compute``, timed by
  wrapping the registered harness instance), per fragment;
* mbdask's own time = (a) - (b): building the fragment molecule and the ``AtomicInput``,
  thread pinning, QCEngine's wrapper around the harness, result extraction, bookkeeping.

Steps: "unit set-up" is what a unit pays once (thread pinning, harness and ``TaskConfig``
look-up, worker name, the ``predicted`` entries), divided over its fragments.

Then the same loop once more, step by step (``time.perf_counter_ns`` around each step of
``mbdask.calculation.execute._run_pinned``, copied here), and cProfile's top entries.

Each is measured for xtb and for ``bench-constant``, a TEST DOUBLE (not chemistry)
registered here: a harness that returns a made-up energy without computing, so that the
overhead is seen without xtb's noise. Times are the best of ``--repeats`` runs.

Usage: python benchmarks/bench_fragment_overhead.py [--fragments 300] [--batch 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import qcengine
from qcelemental.models.v2 import AtomicResult
from qcengine.programs.base import programs
from qcengine.programs.model import ProgramHarness

import mbdask
from mbdask import execute
from mbdask.calculation.execute import ExpansionContext, run_unit, warm_up
from mbdask.inputs.xyz import molecule_from_xyz
from mbdask.planning.plan import FragmentJob

DATA = Path(__file__).resolve().parent / "data"
CONSTANT = "bench-constant"


class ConstantHarness(ProgramHarness):
    """TEST DOUBLE, not chemistry: returns energy -1.0 per real atom without computing."""

    _defaults: ClassVar[dict[str, Any]] = {
        "name": CONSTANT,
        "scratch": False,
        "thread_safe": True,
        "thread_parallel": False,
        "node_parallel": False,
        "managed_memory": False,
    }

    @staticmethod
    def found(raise_error: bool = False) -> bool:
        return True

    def get_version(self) -> str:
        return "0"

    def compute(self, input_data, config):
        energy = -1.0 * sum(input_data.molecule.real)
        return AtomicResult(
            input_data=input_data,
            molecule=input_data.molecule,
            properties={"return_energy": energy},
            return_result=energy,
            success=True,
            provenance={"creator": CONSTANT, "version": "0", "routine": "benchmarks.bench_fragment_overhead"},
        )


def water20_input() -> dict:
    """GFN2-xTB 3-body nocp expansion of the water 20-mer (as tests/conftest.py's ``xtb_input``)."""
    return {
        "specification": {
            "driver": "energy",
            "keywords": {"bsse_type": ["nocp"], "levels": {3: "gfn2"}},
            "specification": {
                "gfn2": {"program": "xtb", "model": {"method": "gfn2-xtb"}, "keywords": {"accuracy": 0.01}}
            },
        },
        "molecule": molecule_from_xyz(DATA / "water20-dodecahedron.xyz"),
    }


def contexts(nfragments: int) -> tuple[dict[str, ExpansionContext], list[FragmentJob]]:
    """The xtb context, the same context running the constant double, and ``nfragments`` dimers/trimers."""
    plan = mbdask.plan(water20_input())
    dimers = [j for j in plan.jobs if j.nbody == 2]
    trimers = [j for j in plan.jobs if j.nbody == 3]
    jobs = (dimers[: nfragments // 2] + trimers)[:nfragments]
    double = {name: {**spec, "program": CONSTANT} for name, spec in plan.specifications.items()}
    return {
        "xtb": ExpansionContext(plan.input, plan.specifications, False),
        CONSTANT: ExpansionContext(plan.input, double, False),
    }, jobs


def units(jobs: Sequence[FragmentJob], batch: int) -> list[list[FragmentJob]]:
    return [list(jobs[i : i + batch]) for i in range(0, len(jobs), batch)]


@contextmanager
def timed_harness(program: str) -> Iterator[list[int]]:
    """Accumulate (into the yielded one-item list) the ns spent in the harness's ``compute``."""
    harness = programs[program]
    inner = harness.compute
    spent = [0]

    def compute(input_data, config):
        start = time.perf_counter_ns()
        try:
            return inner(input_data, config)
        finally:
            spent[0] += time.perf_counter_ns() - start

    object.__setattr__(harness, "compute", compute)  # an instance attribute shadows the method
    try:
        yield spent
    finally:
        object.__delattr__(harness, "compute")


def total_and_program(ctx: ExpansionContext, jobs: Sequence[FragmentJob], batch: int) -> tuple[float, float]:
    """(a) and (b): ms per fragment in ``run_unit`` and in the harness's ``compute``."""
    program = next(iter(ctx.specifications.values()))["program"]
    with timed_harness(program) as spent:
        start = time.perf_counter_ns()
        for unit in units(jobs, batch):
            run_unit(ctx, unit, 1, None, None, [0.01] * len(unit))
        total = time.perf_counter_ns() - start
    return total / len(jobs) / 1e6, spent[0] / len(jobs) / 1e6


STEPS = ("unit set-up", "molecule", "AtomicInput", "run_program wrapper", "extraction", "bookkeeping")


def step_times(ctx: ExpansionContext, jobs: Sequence[FragmentJob], batch: int) -> dict[str, float]:
    """ms per fragment of each step of ``_run_unit_pinned``/``_run_pinned`` (a copy of their loop)."""
    ns = dict.fromkeys(STEPS, 0)
    clock = time.perf_counter_ns
    program = next(iter(ctx.specifications.values()))["program"]
    with timed_harness(program) as spent:
        for unit in units(jobs, batch):
            t0 = clock()
            with execute.pinned_threads(1):
                unit_state = execute.UnitState.start(ctx, 1, None)
                ns["unit set-up"] += clock() - t0
                outputs = {}
                for job in unit:
                    t1 = clock()
                    execute.warm_up()
                    spec = ctx.specifications[job.model]
                    molecule = ctx.factory.molecule(job.real, job.basis)
                    t2 = clock()
                    atomic_input = ctx.atomic_input(job.model, molecule)
                    t3 = clock()
                    before = spent[0]
                    start = time.time()
                    result = unit_state.runner(atomic_input, spec["program"], provenance=unit_state.keep_results)
                    stop = time.time()
                    t4 = clock()
                    ns["run_program wrapper"] += t4 - t3 - (spent[0] - before)
                    execute.check_success(result, job, spec["program"])
                    values = execute.extract_properties(result, ctx.driver)
                    t5 = clock()
                    outputs[job.label] = unit_state.output(job, values, result, start, stop)
                    t6 = clock()
                    ns["molecule"] += t2 - t1
                    ns["AtomicInput"] += t3 - t2
                    ns["extraction"] += t5 - t4
                    ns["bookkeeping"] += t6 - t5
                t7 = clock()
            for job in unit:
                outputs[job.label]["predicted"] = 0.01
            ns["unit set-up"] += clock() - t7
    return {step: value / len(jobs) / 1e6 for step, value in ns.items()}


def profile_top(ctx: ExpansionContext, jobs: Sequence[FragmentJob], batch: int, top: int = 15) -> str:
    """cProfile's ``top`` entries by own time (tottime) over the ``run_unit`` calls."""
    profiler = cProfile.Profile()
    profiler.enable()
    for unit in units(jobs, batch):
        run_unit(ctx, unit, 1, None, None, [0.01] * len(unit))
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def best(measure: Callable[[], Any], repeats: int, key: Callable[[Any], float]) -> Any:
    return min((measure() for _ in range(repeats)), key=key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fragments", type=int, default=300)
    parser.add_argument("--batch", type=int, default=10, help="fragments per run_unit call (default 10)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top entries")
    args = parser.parse_args()

    if CONSTANT not in programs:
        qcengine.register_program(ConstantHarness())
    ctxs, jobs = contexts(args.fragments)
    warm_up()
    for ctx in ctxs.values():  # first calls load xtb, fill caches
        total_and_program(ctx, jobs[: args.batch], args.batch)

    print(
        f"{len(jobs)} fragments (water20 GFN2-xTB dimers/trimers), units of {args.batch}, best of {args.repeats}, ms "
        "per fragment\n"
    )
    print("| program | (a) run_unit | (b) harness compute | mbdask's own (a)-(b) |")
    print("|---|---:|---:|---:|")
    for name, ctx in ctxs.items():
        # best() calls the lambdas before the loop moves on: each sees this iteration's ctx
        total, program = best(
            lambda: total_and_program(ctx, jobs, args.batch),  # noqa: B023
            args.repeats,
            key=lambda tp: tp[0] - tp[1],
        )
        print(f"| {name} | {total:.3f} | {program:.3f} | **{total - program:.3f}** |")

    print("\nStep by step (a copy of the loop with perf_counter_ns around each step):\n")
    print("| step | " + " | ".join(ctxs) + " |")
    print("|---|" + "---:|" * len(ctxs))
    steps = {
        name: best(lambda: step_times(ctx, jobs, args.batch), args.repeats, key=lambda s: sum(s.values()))  # noqa: B023
        for name, ctx in ctxs.items()  # (best() calls the lambda within the iteration)
    }
    for step in STEPS:
        print(f"| {step} | " + " | ".join(f"{steps[name][step]:.3f}" for name in ctxs) + " |")
    print("| **sum** | " + " | ".join(f"**{sum(steps[name].values()):.3f}**" for name in ctxs) + " |")

    if args.profile:
        for name, ctx in ctxs.items():
            print(f"\ncProfile, {name} (harness compute included):\n")
            print(profile_top(ctx, jobs, args.batch))


if __name__ == "__main__":
    sys.exit(main())

"""The end of a 679,120-calculation run, piece by piece (issue #16): what follows the last fragment.

``bench_large.py`` leaves a store holding every calculation of (H2O)64 at 4-body. This
script rebuilds, in one process, what the result node and the command line do with those
outputs after the last fragment, and times each piece:

* the collect nodes (``mbdask.graph.build.collect_size`` units each): their outputs made into what
  they hand on (columns), pickled and unpickled as Dask moves them to the assembling worker;
* the result node's assembly (QCManyBody's ``analyze`` and ``get_results``, mbdask's tables);
* the result pickled and unpickled (worker to client);
* the command's outputs: the n-body summary table and ``save_result`` (JSON plus CSV tables).

The outputs are the stored ones with their recorded start/stop times, marked as computed
(not as found in the store), so that the per-fragment timing tables are built as in a real
run. No cluster runs: each piece is a single-core cost on the critical path of a real run's
end. Run it with another checkout first on ``PYTHONPATH`` (``--tree``) to measure that code
side by side; the energies it prints must agree to the last digit.

Usage: python benchmarks/bench_end_phase.py --store /tmp/large4drop2/run.sqlite
       [--geometry droplet] [--tree DIR] [--out DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _timed(results: dict, name: str, call):
    start = time.perf_counter()
    value = call()
    results[name] = time.perf_counter() - start
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="run.sqlite of a finished bench_large.py run")
    parser.add_argument("--geometry", default="droplet", choices=["droplet", "liquid-box"])
    parser.add_argument("--nbody", type=int, default=4)
    parser.add_argument("--tree", type=Path, default=HERE.parent, help="checkout whose mbdask is measured")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mbdask-end-phase"), help="where save_result writes")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree))

    from mbdask import api, graph
    from mbdask.calculation.execute import ExpansionContext
    from mbdask.calculation.store import FragmentStore
    from mbdask.diagnostics.report import summary_table
    from mbdask.inputs.xyz import ModelOptions, molecule_from_xyz
    from mbdask.results.outputs import save_result

    times: dict = {}
    molecule = molecule_from_xyz(HERE / "data" / f"water64-{args.geometry}.xyz", None, None, guess_ions=True)
    plan = api.plan(ModelOptions("xtb", "gfn2-xtb", None, ("nocp",), args.nbody, "energy").input_for(molecule))
    known = _timed(times, "store read", lambda: api._from_store(plan, FragmentStore.open(args.store)))
    if len(known) != len(plan.jobs):
        raise SystemExit(f"the store holds {len(known)} of the plan's {len(plan.jobs)} calculations")
    for out in known.values():
        out.pop("stored", None)  # as computed in this run: the timing tables are built
    labels = [job.label for job in plan.jobs]
    size = -(-len(labels) // 128)
    units = [{label: known[label] for label in labels[i : i + size]} for i in range(0, len(labels), size)]
    collect = getattr(graph, "collect_outputs", None)  # older checkouts merged dicts
    collected = _timed(times, "collect nodes", lambda: [collect(unit) for unit in units] if collect else units)
    blob = _timed(times, "collects pickled", lambda: pickle.dumps(collected, protocol=5))
    times["collects MB"] = len(blob) / 1e6
    collected = _timed(times, "collects unpickled", lambda: pickle.loads(blob))
    del blob
    ctx = ExpansionContext(plan.input, plan.specifications, False, 2)
    result = _timed(times, "assembly", lambda: graph.result_function(plan)(ctx, [], *collected))
    blob = _timed(times, "result pickled", lambda: pickle.dumps(result, protocol=5))
    result = _timed(times, "result unpickled", lambda: pickle.loads(blob))
    _timed(times, "summary table", lambda: summary_table(result))
    args.out.mkdir(parents=True, exist_ok=True)
    _timed(times, "save_result", lambda: save_result(result, args.out / "result.json"))
    row = {
        "tree": str(args.tree),
        "calculations": len(known),
        "seconds": times,
        "return_energy": result.properties.return_energy,
    }
    text = json.dumps(row, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

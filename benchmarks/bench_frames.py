"""A large result's tables as pandas DataFrames: ``Rows.to_pandas`` against a DataFrame of the rows as dicts (#29).

    python benchmarks/bench_frames.py [--docs]

The tables have the shape of the (H2O)64 4-body expansion's (679,120 clusters and
calculations) and are kept as such a result keeps them (:class:`mbdask.Rows`): the increments
in one block per order (fragments as a 2-D array, ``nbody`` and ``model`` constants), the
timings in one block (``real`` and ``basis`` as flat arrays with offsets, model and worker
names as codes). Compared with what a user would write without ``to_pandas``:
``pandas.DataFrame(list(rows))``, which makes a dict per row first. Both frames must hold the
same values. Best of three, one process; nothing else runs. ``--docs`` writes the section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from mbdask.tables import Ragged, Rows  # noqa: E402

SECTION = "## DataFrames of a large result's tables"


def tables(fragments: int = 64, max_nbody: int = 4, workers: int = 2) -> dict[str, Rows]:
    """Increments and timings of a ``fragments``-fragment expansion through ``max_nbody``, as a large result keeps
    them (random numbers)."""
    rng = np.random.default_rng(29)
    blocks = []
    for nbody in range(1, max_nbody + 1):
        clusters = np.array(list(itertools.combinations(range(1, fragments + 1), nbody)), dtype=np.int64)
        blocks.append(
            ({"fragments": clusters, "energy": rng.normal(size=len(clusters))}, {"nbody": nbody, "model": "gfn2"})
        )
    increments = Rows(blocks, ("nbody", "model", "fragments", "energy"))
    lists = [cluster for columns, _ in blocks for cluster in columns["fragments"].tolist()]
    n = len(lists)
    timings = Rows(
        [
            (
                {
                    "model": ["gfn2"] * n,
                    "real": Ragged.from_lists(lists),
                    "basis": Ragged.from_lists(lists),
                    "seconds": rng.random(n),
                    "start": rng.random(n),
                    "worker": [f"tcp://127.0.0.1:{40000 + i % workers}" for i in range(n)],
                    "ncores": np.ones(n, dtype=np.int64),
                    "predicted": rng.random(n),
                    "own_seconds": rng.random(n),
                    "calibrated": rng.random(n),
                },
                {},
            )
        ]
    )
    return {"increments": increments, "timings": timings}


def best(call, repeats: int = 3) -> tuple[float, pd.DataFrame]:
    times, frame = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        frame = call()
        times.append(time.perf_counter() - start)
    return min(times), frame


def measure() -> list[dict]:
    rows = []
    for name, table in tables().items():
        direct, frame = best(table.to_pandas)
        via_dicts, other = best(lambda table=table: pd.DataFrame(list(table)))
        for column in frame.columns:  # the same values (index lists: tuples against lists)
            left, right = frame[column].tolist(), other[column].tolist()
            assert left == [tuple(v) if isinstance(v, list) else v for v in right], column
        rows.append({"table": name, "rows": len(table), "to_pandas": direct, "dicts": via_dicts})
    return rows


def section(rows: list[dict]) -> str:
    from run_all import machine

    lines = [
        SECTION,
        "",
        f"Measured {datetime.date.today().isoformat()} on {machine()}, pandas {pd.__version__}, with "
        "`python benchmarks/bench_frames.py`: best of three, one process. The tables have the (H2O)64 4-body "
        "expansion's shape and are kept as its result keeps them (`mbdask.Rows`); the frames hold the same values.",
        "",
        "| table | rows | `rows.to_pandas()` (s) | `pandas.DataFrame(list(rows))` (s) | ratio |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['table']} | {row['rows']:,} | {row['to_pandas']:.2f} | {row['dicts']:.2f} | "
            f"{row['dicts'] / row['to_pandas']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", action="store_true", help="write the section of docs/benchmarks.md")
    args = parser.parse_args()
    text = section(measure())
    print(text)
    if args.docs:
        from bench_overhead import write_section

        write_section(text, section=SECTION)


if __name__ == "__main__":
    main()

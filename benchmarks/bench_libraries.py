"""QCElemental's helpers against the hand-written code they replaced (#18), side by side in one process.

    python benchmarks/bench_libraries.py

1. Fragments of an XYZ structure: ``mbdask.inputs.xyz.find_fragments`` (QCElemental's
   ``guess_connectivity``, a row at a time) against the N x N distance matrix it replaced
   (kept below as the reference), on the (H2O)64 droplet and on 5 copies of it side by side
   (960 atoms). The fragments must be identical.
2. A fragment output in the checkpoint store: ``mbdask.calculation.store.encode_output``/``decode_output``
   (QCElemental's ``jsonext``) against the list-of-floats JSON they replaced, for an xtb
   trimer gradient (9 x 3) and a (H2O)64 Hessian (576 x 576). Round trips must be exact.

Prints a markdown section for docs/benchmarks.md; best of several repeats each.
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import qcelemental

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from mbdask.calculation.store import decode_output, encode_output  # noqa: E402
from mbdask.inputs.xyz import find_fragments, read_xyz  # noqa: E402


def dense_fragments(symbols: list[str], geometry: np.ndarray, tolerance: float = 1.2) -> list[list[int]]:
    """The replaced code: every distance at once, then a union-find."""
    radii = np.array([qcelemental.covalentradii.get(s, units="angstrom") for s in symbols])
    dist = np.linalg.norm(geometry[:, None, :] - geometry[None, :, :], axis=-1)
    bonded = dist < tolerance * (radii[:, None] + radii[None, :])
    parent = list(range(len(symbols)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(bonded, 1))):
        parent[root(int(i))] = root(int(j))
    groups: dict[int, list[int]] = {}
    for i in range(len(symbols)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def list_encode(output: dict) -> str:
    """The replaced store payload: arrays as shape and a list of floats."""
    values = {
        k: {"shape": list(v.shape), "data": v.ravel().tolist()} if isinstance(v, np.ndarray) else v
        for k, v in output["values"].items()
    }
    return json.dumps({**{k: v for k, v in output.items() if k != "values"}, "values": values}, separators=(",", ":"))


def list_decode(payload: str) -> dict:
    data = json.loads(payload)
    data["values"] = {
        k: np.asarray(v["data"], dtype=float).reshape(v["shape"]) if isinstance(v, dict) else v
        for k, v in data["values"].items()
    }
    return data


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    symbols, geometry, _, _ = read_xyz(HERE / "data" / "water64-droplet.xyz")
    rows = []
    for copies in (1, 5):
        syms = symbols * copies
        geom = np.concatenate([geometry + 40.0 * i for i in range(copies)])
        assert find_fragments(syms, geom) == dense_fragments(syms, geom), "fragments differ"
        # best() calls each lambda at once, within this iteration: the loop variables are the ones meant
        new = best(lambda: find_fragments(syms, geom), 5)  # noqa: B023
        old = best(lambda: dense_fragments(syms, geom), 5)  # noqa: B023
        rows.append((f"fragments of {len(syms)} atoms", old, new))
    rng = np.random.default_rng(0)
    for name, shape, repeats in (
        ("store payload, 9 x 3 gradient", (9, 3), 2000),
        ("store payload, 576 x 576 Hessian", (576, 576), 5),
    ):
        output = {
            "label": "l",
            "values": {"energy": -76.1, "gradient" if shape[1] == 3 else "hessian": rng.standard_normal(shape)},
            "start": 0.0,
            "stop": 1.0,
        }
        key = next(k for k in output["values"] if k != "energy")
        assert np.array_equal(decode_output(encode_output(output))["values"][key], output["values"][key])
        assert np.array_equal(list_decode(list_encode(output))["values"][key], output["values"][key])
        # called at once, within this iteration (as above)
        new = best(lambda: [decode_output(encode_output(output)) for _ in range(repeats)], 3) / repeats  # noqa: B023
        old = best(lambda: [list_decode(list_encode(output)) for _ in range(repeats)], 3) / repeats  # noqa: B023
        rows.append((f"{name} (encode + decode)", old, new))
    print("\n## QCElemental's helpers against the code they replaced\n")
    print(
        f"Measured {datetime.date.today()} on {platform.machine()}, {psutil.cpu_count()} logical cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, qcelemental "
        f"{qcelemental.__version__}, with `python benchmarks/bench_libraries.py`: best of several repeats, one "
        "process. Fragments identical and round trips exact in every case.\n"
    )
    print("| what | replaced code (ms) | QCElemental (ms) | old / new |")
    print("|---|---|---|---|")
    for what, old, new in rows:
        print(f"| {what} | {old * 1e3:.3f} | {new * 1e3:.3f} | {old / new:.1f} |")


if __name__ == "__main__":
    main()

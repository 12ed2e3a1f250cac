"""What mbdask's Prometheus metrics cost a run: the same run with and without them, and each step's time.

(H2O)64 3-body through the zero-duration program (43,744 calculations, priced as GFN2-xTB so
that they travel in batches), on mbdask's own LocalCluster (scheduler in this process, its
dashboard serving ``/metrics``), with ``progress=True`` and its display polling as the command
line's batch-log mode does (to a string). Three ways: no metrics (``watch_metrics`` gives no
feed), metrics pushed but never scraped, and metrics with the page scraped every second while
the run goes on (Prometheus's default is every 15 s; a scrape includes Dask's own metrics).
Runs interleaved; the best of each counts.

python benchmarks/bench_metrics.py [--repeats 2] [--docs]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_makespan import sleep_input  # noqa: E402
from bench_overhead import write_section  # noqa: E402

SECTION = "## Prometheus metrics: what they cost a run"


def scraper(port: int, stop: threading.Event, seconds: list[float], sizes: list[int]) -> None:
    """Fetch ``/metrics`` every second until ``stop``, noting how long each took and its size."""
    while not stop.wait(1.0):
        start = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            sizes.append(len(response.read()))
        seconds.append(time.perf_counter() - start)


#: the three ways: (name, metrics pushed, page scraped every second)
WAYS = (("none", False, False), ("metrics", True, False), ("metrics, scraped every second", True, True))


def one_run(client, inp: dict, way: tuple[str, bool, bool], port: int) -> dict:
    import io

    import mbdask
    import mbdask.workflows.expansion as expansion
    from mbdask.diagnostics.metrics import MetricsFeed, watch
    from mbdask.diagnostics.progress import show

    name, metrics, scraped = way

    pushes = []
    push = MetricsFeed._push

    def counted(self):
        start = time.perf_counter()
        push(self)
        pushes.append(time.perf_counter() - start)

    MetricsFeed._push = counted  # type: ignore[method-assign]
    expansion.watch_metrics = watch if metrics else (lambda *args, **kwargs: None)  # type: ignore[assignment]
    stop, scrapes, sizes = threading.Event(), [], []
    thread = threading.Thread(target=scraper, args=(port, stop, scrapes, sizes), daemon=True)
    try:
        start = time.perf_counter()
        if scraped:
            thread.start()
        sub = mbdask.start(inp, client, progress=True)
        assert sub.progress is not None
        show(sub.progress, io.StringIO(), live=False)
        result = sub.result()
        wall = time.perf_counter() - start
    finally:
        stop.set()
        MetricsFeed._push = push  # type: ignore[method-assign]
        expansion.watch_metrics = watch
    if scraped:
        thread.join()
    return {
        "way": name,
        "wall": wall,
        "calculations": result.extras["mbdask"]["nfragment_calculations"],
        "pushes": len(pushes),
        "push_ms": 1000 * statistics.median(pushes) if pushes else None,
        "scrapes": len(scrapes),
        "scrape_ms": 1000 * statistics.median(scrapes) if scrapes else None,
        "page_bytes": max(sizes) if sizes else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--nwaters", type=int, default=64)
    parser.add_argument("--docs", action="store_true", help="write the section of docs/benchmarks.md")
    args = parser.parse_args()
    from distributed import Client
    from doubles import register_doubles
    from run_all import machine

    from mbdask.deploy.cluster import ClusterSize, start_local_cluster

    register_doubles()
    inp = sleep_input(args.nwaters, 3, "nocp", 0.0)
    inp["specification"]["specification"]["sleep"]["model"]["method"] = "gfn2-xtb"
    rows = []
    size = ClusterSize.from_machine(None, None)
    with (
        start_local_cluster(size, dashboard_address="127.0.0.1:0", preload=["doubles"]) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        port = cluster.scheduler.http_server.port
        one_run(client, sleep_input(6, 2, "nocp", 0.0), WAYS[-1], port)  # warm-up
        for _ in range(args.repeats):
            for way in WAYS:
                rows.append(one_run(client, inp, way, port))
                print(rows[-1], flush=True)
    best = {name: min((r for r in rows if r["way"] == name), key=lambda r: r["wall"]) for name, _, _ in WAYS}
    none = best["none"]["wall"]

    def share(r: dict) -> float:
        return r["pushes"] * (r["push_ms"] or 0.0) / 1000 / r["wall"]

    def row(r: dict) -> str:
        def cell(key: str, form: str) -> str:
            return "–" if r[key] is None else format(r[key], form)

        walls = ", ".join(f"{x['wall']:.1f}" for x in rows if x["way"] == r["way"])
        return (
            f"| {r['way']} | {r['wall']:.2f} | {walls} | {r['wall'] / none:.3f} | {r['pushes'] or '–'} "
            f"| {cell('push_ms', '.1f')} | {r['scrapes'] or '–'} | {cell('scrape_ms', '.1f')} "
            f"| {cell('page_bytes', ',')} |"
        )

    text = "\n".join(
        [
            SECTION,
            "",
            f"Measured {datetime.date.today().isoformat()} on {machine()} with `python benchmarks/bench_metrics.py "
            f"--docs`: (H2O){args.nwaters} 3-body, {rows[0]['calculations']:,} calculations of the zero-duration "
            "program (priced as GFN2-xTB: batched), mbdask's LocalCluster (the scheduler in the client's process), "
            "`progress=True` with the display polling as a batch job's log does. Interleaved, best of "
            f"{args.repeats} each; push: the client's snapshot into the scheduler's metadata, about once a second; "
            "scrape: `/metrics` fetched over HTTP (Dask's metrics and mbdask's).",
            "",
            "| metrics | wall s | every run s | x none | pushes | push ms (median) | scrapes | scrape ms (median) "
            "| page bytes |",
            "|---|---|---|---|---|---|---|---|---|",
            *(row(best[name]) for name, _, _ in WAYS),
            "",
            f"The feed's pushes took {share(best['metrics']):.2%} of the run's wall time on the client's side "
            "(pushes x median push / wall); a scrape costs the scheduler's process its milliseconds each time "
            "Prometheus comes (every 15 s by default). Where the walls of one way differ more than the ways do, the "
            "machine's other load decided them.",
        ]
    )
    print(text)
    if args.docs:
        write_section(text, section=SECTION)


if __name__ == "__main__":
    main()

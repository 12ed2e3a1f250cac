"""Run options (issue #27): one checked RunOptions, what every entry point takes, as an object or as keywords."""

from __future__ import annotations

import inspect

import pytest
from helpers import sleep_input

import mbdask
from mbdask.cli import _cluster_options, _run_options, build_parser
from mbdask.errors import BadInputError
from mbdask.workflows import expansion, structures
from mbdask.workflows.options import CLUSTER_OPTIONS, RUN_OPTIONS, ClusterOptions, RunOptions, split_keywords

optimize_module = __import__("mbdask.workflows.optimize", fromlist=["optimize"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"order": "random"}, "order must be one of levels, cost, not 'random'"),
        ({"cores_per_fragment": 0}, "cores_per_fragment must be a whole number of at least 1 or 'auto', got 0"),
        (
            {"cores_per_fragment": "many"},
            "cores_per_fragment must be a whole number of at least 1 or 'auto', got 'many'",
        ),
        ({"cores_per_fragment": 1.5}, "cores_per_fragment must be a whole number of at least 1 or 'auto', got 1.5"),
        ({"memory_per_fragment": 0}, "memory_per_fragment must be positive (GiB), got 0"),
        ({"memory_per_fragment": -2.0}, "memory_per_fragment must be positive (GiB), got -2.0"),
        ({"memory_per_fragment": "4GiB"}, "memory_per_fragment must be positive (GiB), got '4GiB'"),
        ({"retries": -1}, "retries must be 0 or more, got -1"),
        ({"retries": "2"}, "retries must be a whole number, 0 or more, got '2'"),
        ({"worker_timeout": "soon"}, "worker timeout must be a number of seconds (e.g. 600 or 10m), got 'soon'"),
        ({"worker_timeout": -5}, "worker timeout must be a number of seconds (e.g. 600 or 10m), got -5"),
        ({"worker_timeout": 0}, "worker timeout must be positive, got 0.0"),
    ],
)
def test_impossible_values_are_one_line_bad_input(changes, message):
    with pytest.raises(BadInputError) as caught:
        RunOptions(**changes)
    assert str(caught.value) == message and "\n" not in message
    with pytest.raises(BadInputError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        RunOptions().replace(**changes)  # checked again on every change
    with pytest.raises(BadInputError):  # as keywords of an entry point: refused before anything is planned
        mbdask.start("no-such-file.json", **changes)


def test_good_values_and_defaults():
    assert RunOptions() == RunOptions(1, None, 0, "levels", True, None, False, False, None, True, None)
    made = RunOptions(cores_per_fragment="auto", memory_per_fragment=2, retries=3, order="cost", worker_timeout="10m")
    assert made.cores_per_fragment == "auto" and made.worker_timeout == "10m"  # kept as given
    assert made.replace(retries=0) == RunOptions(
        cores_per_fragment="auto", memory_per_fragment=2, order="cost", worker_timeout="10m"
    )
    assert made.retries == 3  # frozen: replace makes a new one
    with pytest.raises(AttributeError):
        made.retries = 1  # type: ignore[misc]
    with pytest.raises(TypeError, match="RunOptions has no option 'n_workers'"):
        made.replace(n_workers=2)
    assert made.keywords() == {name: getattr(made, name) for name in RUN_OPTIONS}


def test_keywords_make_the_same_options_as_the_object():
    keywords = {"retries": 2, "batch": False, "order": "cost", "store": "s.sqlite", "keep_going": True}
    run, cluster, rest = split_keywords("start", {**keywords, "n_workers": 2, "method": "hf"}, extra=("method",))
    assert run == RunOptions(**keywords)
    assert cluster == ClusterOptions(n_workers=2) and cluster.keywords()["n_workers"] == 2
    assert rest == {"method": "hf"}
    # keywords beside an options object change its fields; the object alone is used as it is
    base = RunOptions(retries=1, progress=True)
    assert split_keywords("start", {"retries": 4}, base)[0] == RunOptions(retries=4, progress=True)
    assert split_keywords("start", {}, base)[0] is base
    with pytest.raises(TypeError, match=r"^start\(\) options must be a mbdask.RunOptions, not dict$"):
        split_keywords("start", {}, {"retries": 2})  # type: ignore[arg-type]


def test_the_names_are_listed_once_and_documented_on_start():
    assert set(RUN_OPTIONS).isdisjoint(CLUSTER_OPTIONS)
    assert CLUSTER_OPTIONS == (
        "n_workers",
        "threads_per_worker",
        "memory_limit",
        "security",
        "dashboard",
        "scheduler_file",
    )
    for name in (*RUN_OPTIONS, *CLUSTER_OPTIONS):
        assert f"``{name}``" in mbdask.start.__doc__, name
    assert mbdask.RunOptions is RunOptions


def _entry_points() -> list:
    return [
        (mbdask.start, sleep_input()),
        (mbdask.submit, sleep_input()),
        (mbdask.compute, sleep_input()),
        (mbdask.start_many, [sleep_input()]),
        (mbdask.submit_many, [sleep_input()]),
        (mbdask.compute_many, [sleep_input()]),
        (mbdask.optimize, sleep_input()),
    ]


@pytest.mark.parametrize("number", range(7))
def test_unknown_keyword_is_refused_as_today_by_every_entry_point(number, monkeypatch):
    """An unknown keyword is the TypeError Python gives (what ``start`` said before RunOptions), naming the function,
    before anything is planned or started; every entry point takes ``options=`` and every option name."""
    function, inp = _entry_points()[number]

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was asked for")

    for module in (expansion, structures, optimize_module):
        monkeypatch.setattr(module, "connect_for", no_cluster)
    with pytest.raises(TypeError) as caught:
        function(inp, None, max_body=3)
    assert str(caught.value) == f"{function.__name__}() got an unexpected keyword argument 'max_body'"
    assert "options" in inspect.signature(function).parameters
    with pytest.raises(BadInputError, match="^retries must be 0 or more, got -1$"):
        function(inp, None, options=RunOptions(), retries=-1)
    with pytest.raises(AssertionError, match="a cluster was asked for"):  # every name is known, the values good
        kwargs = {name: getattr(RunOptions(), name) for name in RUN_OPTIONS}
        kwargs["check_installed"] = False
        function(inp, None, **kwargs, **ClusterOptions().keywords())


def test_optimize_takes_the_names_from_run_options_not_starts_signature():
    source = inspect.getsource(optimize_module)
    assert "inspect.signature" not in source
    with pytest.raises(BadInputError, match="keep_going cannot be used in an optimisation"):
        mbdask.optimize(sleep_input(), None, options=RunOptions(keep_going=True))


def test_optimize_steps_run_with_the_options_given(monkeypatch):
    """Each step's expansion gets the run options (screening and the program check as the optimisation decides)."""
    seen = []

    class Stop(Exception):
        pass

    class Conn:
        client = None

        def close(self) -> None:
            seen.append("closed")

    def start(step, client, *, options):
        seen.append(options)
        raise Stop

    monkeypatch.setattr(optimize_module, "connect_for", lambda plan, client, **cluster: seen.append(cluster) or Conn())
    monkeypatch.setattr(optimize_module, "start", start)
    given = RunOptions(retries=2, batch=False, check_installed=False)
    with pytest.raises(Stop):
        mbdask.optimize(sleep_input(driver="gradient"), None, options=given, cores_per_fragment=1, n_workers=3)
    assert seen[0] == ClusterOptions(n_workers=3).keywords()
    assert seen[1] == given and seen[2] == "closed"


def test_command_line_builds_run_options():
    args = build_parser().parse_args(
        ["run", "x.json", "--retries", "2", "--no-batch", "--store", "s.sqlite", "--worker-timeout", "30"]
        + ["--order", "cost", "--cores-per-fragment", "auto", "--memory-per-fragment", "1.5", "--workers", "2"]
    )
    assert _run_options(args, keep_going=True) == RunOptions(
        cores_per_fragment="auto",
        memory_per_fragment=1.5,
        retries=2,
        order="cost",
        batch=False,
        store="s.sqlite",
        keep_going=True,
        worker_timeout=30.0,
    )
    assert _cluster_options(args, None) == ClusterOptions(n_workers=2)
    args = build_parser().parse_args(["optimize", "x.json", "--retries", "-1"])
    with pytest.raises(BadInputError, match="^retries must be 0 or more, got -1$"):
        _run_options(args)


def test_worker_start_method_is_the_cluster_class():
    """Workers forked from this process are a cluster class of their own, not an attribute set on a SpecCluster."""
    from distributed import SpecCluster

    from mbdask.deploy.cluster import ForkedCluster, workers_forked_here

    assert issubclass(ForkedCluster, SpecCluster) and ForkedCluster.worker_start_method == "fork"
    assert not workers_forked_here(None) and not workers_forked_here(object())

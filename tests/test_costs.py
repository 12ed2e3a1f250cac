"""The report's cost model check per kind of calculation and its tail analysis (mbdask.diagnostics.costs)."""

from __future__ import annotations

import pytest
from conftest import EXAMPLES, needs_xtb, xtb_input

import mbdask
from mbdask.diagnostics.costs import costs_by_kind, tail


def fragment(real, basis, start, seconds, predicted=None, calibrated=None, ncores=1, model="hf/6-31g*"):
    return {
        "real": real,
        "basis": basis,
        "start": start,
        "seconds": seconds,
        "predicted": predicted,
        "calibrated": calibrated,
        "ncores": ncores,
        "model": model,
    }


def test_kinds_are_model_order_and_ghosts_with_measured_over_predicted():
    frags = [
        fragment([1], [1], 0, 1.0, predicted=0.5, calibrated=1.0),
        fragment([2], [2], 0, 1.0, predicted=0.5, calibrated=1.25),
        fragment([1], [1, 2], 1, 2.0, predicted=2.0),  # ghosts: a kind of its own; not calibrated: the model's price
        fragment([1, 2], [1, 2], 1, 4.0, predicted=1.0, calibrated=4.0),
        fragment([1, 2], [1, 2], 1, 3.0, predicted=None, model="mp2/cc-pvdz"),  # no prediction recorded
    ]
    kinds = {(k.model, k.name): k for k in costs_by_kind(frags)}
    assert sorted(kinds) == [
        ("hf/6-31g*", "1-body"),
        ("hf/6-31g*", "1-body with ghosts"),
        ("hf/6-31g*", "2-body"),
        ("mp2/cc-pvdz", "2-body"),
    ]
    monomers = kinds[("hf/6-31g*", "1-body")]
    assert (monomers.count, monomers.total_seconds, monomers.median_seconds) == (2, 2.0, 1.0)
    assert monomers.over_predicted.median == pytest.approx(2.0)  # measured twice the cost model's price
    assert monomers.over_calibrated.median == pytest.approx(0.9)  # the median of 1.0 and 0.8
    assert kinds[("hf/6-31g*", "1-body with ghosts")].over_calibrated.median == pytest.approx(1.0)
    assert kinds[("hf/6-31g*", "2-body")].over_predicted.p90 == pytest.approx(4.0)
    assert kinds[("mp2/cc-pvdz", "2-body")].over_predicted is None


def test_tail_runs_from_the_last_moment_all_cores_were_busy():
    """Two cores: busy together until t=3, then one 4 s calculation (started at 1) runs alone until t=5."""
    frags = [
        fragment([1], [1], 10.0, 1.0),
        fragment([2], [2], 10.0, 1.0),
        fragment([3], [3], 11.0, 4.0),
        fragment([4], [4], 11.0, 2.0),
    ]
    found = tail(frags, cores=2)
    assert found.seconds == pytest.approx(2.0)  # from t=3 (the 2 s calculation stops) to t=5
    assert found.share == pytest.approx(2.0 / 5.0)
    assert found.idle_core_seconds == pytest.approx(2.0)  # one core idle for 2 s
    assert found.lost_seconds == pytest.approx(1.0)
    assert [(r.index, r.seconds, r.started) for r in found.running] == [(2, 4.0, -2.0)]
    assert tail(frags, cores=None) is None  # unknown cluster size: no tail


def test_tail_with_more_cores_than_ever_busy_is_the_whole_span():
    frags = [fragment([1], [1], 0.0, 1.0), fragment([2], [2], 0.0, 3.0)]
    found = tail(frags, cores=4)
    assert found.seconds == pytest.approx(3.0) and found.share == pytest.approx(1.0)
    assert found.idle_core_seconds == pytest.approx(4 * 3.0 - 4.0)


@needs_xtb
def test_report_shows_the_cost_model_per_kind_and_the_tail(process_client):
    result = mbdask.compute(xtb_input(EXAMPLES / "water6-prism.xyz", max_nbody=2), process_client)
    text = mbdask.report(result)
    assert "cost model against measured, per kind of calculation" in text
    assert "the tail" in text and "idle core-seconds" in text

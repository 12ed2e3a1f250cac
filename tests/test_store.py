"""The checkpoint store: exact round trip, keys, resume, corruption, concurrent writers."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import sleep_input

import mbdask
from mbdask.calculation.execute import ExpansionContext
from mbdask.calculation.store import FragmentStore, decode_output, encode_output
from mbdask.diagnostics.report import calculations_phrase, summary_table


def _energy_gradient_input():
    return sleep_input(driver="gradient")


def test_round_trip_is_exact():
    rng = np.random.default_rng(1)
    output = {
        "label": '["m", [1, 2], [1, 2]]',
        "values": {
            "energy": -76.123456789012345,
            "gradient": rng.normal(size=(6, 3)),
            "hessian": rng.normal(size=(18, 18)),
        },
        "start": 1.5,
        "stop": 2.25,
        "worker": "tcp://127.0.0.1:1",
        "ncores": 1,
    }
    back = decode_output(encode_output(output))
    assert back["values"]["energy"] == output["values"]["energy"]
    for name in ("gradient", "hessian"):
        assert back["values"][name].shape == output["values"][name].shape
        assert back["values"][name].dtype == output["values"][name].dtype
        assert np.array_equal(back["values"][name], output["values"][name])


def test_payloads_written_before_jsonext_still_read():
    """Stores written before arrays were QCElemental's ``jsonext`` (a list of floats and a shape) keep working."""
    gradient = np.arange(6.0).reshape(2, 3) / 7
    old = json.dumps(
        {
            "label": "l",
            "values": {"energy": -1.5, "gradient": {"shape": [2, 3], "data": gradient.ravel().tolist()}},
            "start": 0.0,
        }
    )
    back = decode_output(old)
    assert back["values"]["energy"] == -1.5 and np.array_equal(back["values"]["gradient"], gradient)


def test_key_changes_with_what_determines_the_numbers_and_not_with_names():
    plan = mbdask.plan(sleep_input(), check_installed=False)
    ctx = ExpansionContext(plan.input, plan.specifications, False)
    job = plan.jobs[7]
    key = ctx.store_key(job)
    assert key == ExpansionContext(plan.input, plan.specifications, False).store_key(job)

    renamed = {"renamed": plan.specifications["sleepy"]}
    other_name = ExpansionContext(plan.input, renamed, False)
    assert other_name.store_key(type(job)("renamed", job.real, job.basis)) == key

    other_kw = json.loads(json.dumps(plan.specifications))
    other_kw["sleepy"]["specification"]["keywords"]["seconds"] = {"1": 0.1}
    assert ExpansionContext(plan.input, other_kw, False).store_key(job) != key

    moved = plan.input.molecule.model_copy(update={"geometry": plan.input.molecule.geometry + 1e-4})
    moved_input = plan.input.model_copy(update={"molecule": moved})
    assert ExpansionContext(moved_input, plan.specifications, False).store_key(job) != key
    ghosted = type(job)(job.model, job.real, tuple(sorted(set(job.basis) | {6})))
    assert ctx.store_key(ghosted) != key


def test_keys_are_the_canonical_json_hash_stores_were_written_with():
    """Keys are made from pieces (the model chemistry's encoded once): the same SHA-256 of the sorted, spaceless JSON
    of format, molecule, program and specification that existing stores hold."""
    import hashlib

    from conftest import DATA

    from mbdask.calculation.execute import GEOMETRY_DECIMALS
    from mbdask.calculation.store import STORE_FORMAT
    from mbdask.inputs.xyz import ModelOptions, molecule_from_xyz

    # ghost atoms (vmfc, cp) and a charged fragment (hydronium) too
    ions = ModelOptions(program="pyscf", method="hf", basis="sto-3g", bsse=("vmfc", "cp"), max_nbody=2)
    hydronium = ions.input_for(molecule_from_xyz(DATA / "hydronium-water6.xyz", guess_ions=True))
    for inp, ghosts in ((sleep_input(), False), (hydronium, True)):
        plan = mbdask.plan(inp, check_installed=False)
        ctx = ExpansionContext(plan.input, plan.specifications, False)
        assert any(job.basis != job.real for job in plan.jobs) == ghosts
        for job in plan.jobs:
            spec = plan.specifications[job.model]
            content = {
                "format": STORE_FORMAT,
                "program": spec["program"],
                "specification": spec["specification"],
                "molecule": ctx.factory.identity(job.real, job.basis, GEOMETRY_DECIMALS),
            }
            text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
            assert ctx.store_key(job) == hashlib.sha256(text.encode()).hexdigest()


def test_rerun_with_store_computes_nothing_and_gives_the_same_result(inprocess_client, tmp_path):
    path = tmp_path / "store.sqlite"
    inp = _energy_gradient_input()
    first = mbdask.compute(inp, inprocess_client, store=path)
    assert FragmentStore(path).count() == first.extras["mbdask"]["nfragment_calculations"] == 41
    sub = mbdask.start(inp, inprocess_client, store=path)
    second = sub.result()
    assert sub.from_store == 41
    assert second.extras["mbdask"]["timing"]["fragments"] == []
    assert second.extras["mbdask"]["timing"]["from_store"] == 41
    # what the CLI and the report say: computed where, loaded from where
    workers = len(first.extras["mbdask"]["timing"]["workers"])
    assert calculations_phrase(first) == f"41 fragment calculations on {workers} worker{'s' if workers > 1 else ''}"
    assert calculations_phrase(second) == "all 41 fragment calculations loaded from the checkpoint store, none computed"
    assert summary_table(second) == "(all 41 fragment calculations loaded from the checkpoint store; nothing computed)"
    # workers are counted from the fragments' records (a worker gone by the end still ran its share)
    timing = first.extras["mbdask"]["timing"]
    one_left = {
        **first.extras["mbdask"],
        "timing": {**timing, "fragments": timing["fragments"][:3], "workers": timing["workers"][:1], "from_store": 38},
    }
    assert calculations_phrase(first.model_copy(update={"extras": {"mbdask": one_left}})) == (
        "3 fragment calculations on 1 worker (38 more loaded from the checkpoint store)"
    )
    assert second.properties.return_energy == first.properties.return_energy
    assert np.array_equal(second.return_result, first.return_result)


def test_corrupted_entry_is_reported_and_recomputed_never_used(inprocess_client, tmp_path):
    path = tmp_path / "store.sqlite"
    inp = sleep_input()
    first = mbdask.compute(inp, inprocess_client, store=path)
    with sqlite3.connect(path) as db:
        key, payload = db.execute("SELECT key, payload FROM fragments LIMIT 1").fetchone()
        data = json.loads(payload)
        data["values"]["energy"] += 1.0  # a plausible, wrong number
        db.execute("UPDATE fragments SET payload = ? WHERE key = ?", (json.dumps(data), key))
        key2 = db.execute("SELECT key FROM fragments WHERE key != ? LIMIT 1", (key,)).fetchone()[0]
        db.execute("UPDATE fragments SET payload = substr(payload, 1, 20) WHERE key = ?", (key2,))  # truncated
    store = FragmentStore(path)
    sub = mbdask.start(inp, inprocess_client, store=store)
    second = sub.result()
    assert sorted(store.corrupted) == sorted([key, key2])
    assert len(second.extras["mbdask"]["timing"]["fragments"]) == 2  # only those two recomputed
    assert second.properties.return_energy == first.properties.return_energy
    assert FragmentStore(path).count() == 41


def test_two_processes_writing_one_store_at_once(tmp_path):
    path = tmp_path / "shared.sqlite"
    writer = textwrap.dedent(
        f"""
        import sys
        from mbdask.calculation.store import FragmentStore
        store = FragmentStore({str(path)!r})
        tag = sys.argv[1]
        for i in range(300):
            value = {{"values": {{"energy": -float(i)}}, "start": 0.0, "stop": 0.01}}
            store.put(f"{{tag}}-{{i}}", f"label {{i}}", value)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", writer, tag]) for tag in ("a", "b", "c")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    store = FragmentStore(path)
    keys = [f"{tag}-{i}" for tag in "abc" for i in range(300)]
    found = store.get_many(keys)
    assert len(found) == 900 and store.corrupted == []
    assert found["b-17"]["values"]["energy"] == -17.0


def test_store_holds_plain_json_and_refuses_other_files(tmp_path):
    path = tmp_path / "store.sqlite"
    FragmentStore(path).put("k", "l", {"values": {"energy": -1.0}, "start": 0.0, "stop": 1.0})
    with sqlite3.connect(path) as db:
        (payload,) = db.execute("SELECT payload FROM fragments").fetchone()
    assert json.loads(payload)["values"] == {"energy": -1.0}
    not_a_store = tmp_path / "notes.txt"
    not_a_store.write_text("hello " * 1000)
    with pytest.raises(mbdask.BadInputError, match="not an mbdask store"):
        FragmentStore.open(not_a_store)
    with pytest.raises(mbdask.BadInputError, match="does not exist"):
        FragmentStore.open(tmp_path / "missing" / "store.sqlite")

"""Fragment molecules built by mbdask are the ones QCManyBody's iterate_molecules builds."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pydantic
import pytest
from conftest import xtb_input
from helpers import replay_input
from qcelemental.exceptions import ValidationError
from qcelemental.models.v2 import AtomicInput, DriverEnum, Molecule

import mbdask
from mbdask.calculation.fragments import FragmentFactory, deepcopy_plain


@pytest.mark.parametrize("bsse", [("nocp",), ("cp",), ("vmfc",), ("cp", "nocp", "vmfc")])
@pytest.mark.parametrize("fix_c1", [False, True])
def test_fragment_molecules_identical_to_qcmanybody(bsse, fix_c1):
    inp = replay_input({1: "e_scf", 2: "e_scf", 3: "e_scf"}, "h2o_trimer_single_energy_1", bsse=bsse)
    inp["molecule"]["name"] = "trimer"
    if fix_c1:
        inp["molecule"]["fix_symmetry"] = "c1"
    plan = mbdask.plan(inp, check_installed=False)
    factory = FragmentFactory(plan.core.molecule)
    ours = {job.label: factory.molecule(job.real, job.basis) for job in plan.jobs}
    reference = {label: mol for _, label, mol in plan.core.iterate_molecules()}
    assert ours.keys() == reference.keys()
    for label, mol in reference.items():
        assert json.dumps(ours[label].model_dump(), default=str, sort_keys=True) == json.dumps(
            mol.model_dump(), default=str, sort_keys=True
        ), label


def assert_identical(ours, theirs, path: str = "molecule") -> None:
    """Field by field, bit for bit: same types, set fields, array dtypes, shapes and bytes, values."""
    assert type(ours) is type(theirs), path
    if isinstance(ours, pydantic.BaseModel):
        assert ours.model_fields_set == theirs.model_fields_set, path
        assert list(ours.__dict__) == list(theirs.__dict__), path
        assert (ours.__pydantic_extra__ or {}).keys() == (theirs.__pydantic_extra__ or {}).keys(), path
        for name in ours.__dict__:
            assert_identical(ours.__dict__[name], theirs.__dict__[name], f"{path}.{name}")
        for name in ours.__pydantic_extra__ or {}:
            assert_identical(ours.__pydantic_extra__[name], theirs.__pydantic_extra__[name], f"{path}.{name}")
    elif isinstance(ours, np.ndarray):
        assert (ours.dtype, ours.shape, ours.flags.c_contiguous) == (
            theirs.dtype,
            theirs.shape,
            theirs.flags.c_contiguous,
        ), path
        assert ours.tobytes() == theirs.tobytes(), path
    elif isinstance(ours, dict):
        assert list(ours) == list(theirs), path
        for key in ours:
            assert_identical(ours[key], theirs[key], f"{path}[{key!r}]")
    elif isinstance(ours, (list, tuple)):
        assert len(ours) == len(theirs), path
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_identical(a, b, f"{path}[{i}]")
    else:
        assert ours == theirs or (ours != ours and theirs != theirs), path


def _plan(xyz: str, bsse) -> mbdask.Plan:
    inp = xtb_input(xyz, bsse=bsse)
    inp["specification"]["specification"]["gfn2"]["program"] = "replay"  # ghosts allowed; nothing runs
    return mbdask.plan(inp, check_installed=False)


@pytest.mark.parametrize(
    "xyz, bsse, templates",
    [
        ("water10-pp1.xyz", ("nocp",), 3),
        ("hydronium-water6.xyz", ("cp", "vmfc"), 85),
        ("hydroxide-water6.xyz", ("cp", "nocp"), 69),
    ],
)
def test_fragment_molecules_from_templates_identical_to_validated_constructor(xyz, bsse, templates):
    """A copy of a composition's template is bit for bit what QCElemental's validating constructor builds
    (charged fragments, ghosts, vmfc's ghost patterns), and the constructor runs once per composition."""
    plan = _plan(xyz, bsse)
    factory, reference = FragmentFactory(plan.core.molecule), FragmentFactory(plan.core.molecule)
    assert factory.layout().contiguous and factory.layout().geometry_checked and factory.layout().geometry_rounded
    for job in plan.jobs:
        assert_identical(
            factory.molecule(job.real, job.basis), reference.validated_molecule(job.real, job.basis), job.label
        )
    assert len(factory._templates) == templates < len(plan.jobs)


def test_fragment_molecules_own_their_arrays():
    """Two fragments of one composition (and their template) share no array, list or dict."""
    plan = _plan("water6-prism.xyz", ("nocp",))
    factory = FragmentFactory(plan.core.molecule)
    first, second = factory.molecule((1, 2), (1, 2)), factory.molecule((3, 4), (3, 4))
    ((template, _),) = factory._templates.values()
    for name, value in first.__dict__.items():
        for other in (second.__dict__[name], template.__dict__[name]):
            if isinstance(value, np.ndarray):
                assert not np.shares_memory(value, other), name
            elif isinstance(value, (list, dict)):
                assert value is not other, name
    first.extras["touched"] = True
    first.fragment_charges_.append(9.0)
    assert factory.molecule((1, 2), (1, 2)) == factory.validated_molecule((1, 2), (1, 2))
    assert "touched" not in factory.molecule((1, 2), (1, 2)).extras


def _parent(geometry, fragments, **extra) -> Molecule:
    """A parent taken as already validated, so QCElemental checks and rounds nothing."""
    n = len(geometry) // 3
    return Molecule(
        symbols=["O", "H", "H"] * (n // 3),
        geometry=geometry,
        fragments=fragments,
        validated=True,
        masses=[15.99491462, 1.00782503223, 1.00782503223] * (n // 3),
        real=[True] * n,
        fragment_charges=[0.0] * len(fragments),
        fragment_multiplicities=[1] * len(fragments),
        name="parent",
        **extra,
    )


WATERS = [0.0, 0.0, 0.0, 0.0, 1.43, 1.1, 0.0, -1.43, 1.1]


def _waters(n: int, noise: float = 0.0) -> list[float]:
    return [x + 5.0 * i * (k % 3 == 0) + noise * (k + 1) for i in range(n) for k, x in enumerate(WATERS)]


def test_unrounded_parent_geometry_is_rounded_as_the_constructor_rounds_it():
    factory = FragmentFactory(_parent(_waters(3, noise=1.234e-9), [[0, 1, 2], [3, 4, 5], [6, 7, 8]]))
    assert not factory.layout().geometry_rounded
    for real, basis in [((1, 2), (1, 2)), ((1, 3), (1, 3)), ((2,), (1, 2, 3))]:
        assert_identical(factory.molecule(real, basis), factory.validated_molecule(real, basis))


def test_parents_without_templates_take_the_validating_constructor():
    """Fragments not contiguous, or atoms closer than 0.1 bohr: every fragment is validated, errors as before."""
    interleaved = FragmentFactory(_parent(_waters(2), [[0, 1, 5], [3, 4, 2]]))
    assert not interleaved.layout().contiguous
    with pytest.raises(ValidationError, match="non-contiguous"):  # as QCManyBody's get_fragment
        interleaved.molecule((1, 2), (1, 2))
    assert_identical(interleaved.molecule((1,), (1,)), interleaved.validated_molecule((1,), (1,)))
    assert not interleaved._templates

    geometry = _waters(3)
    geometry[9:12] = [0.0, 0.0, 0.05]  # second water's O 0.05 bohr from the first's
    close = FragmentFactory(_parent(geometry, [[0, 1, 2], [3, 4, 5], [6, 7, 8]]))
    assert not close.layout().geometry_checked
    with pytest.raises(ValidationError, match="too close"):
        close.molecule((1, 2), (1, 2))
    assert_identical(close.molecule((1, 3), (1, 3)), close.validated_molecule((1, 3), (1, 3)))


def test_fragment_factory_pickles_without_its_caches():
    plan = _plan("water6-prism.xyz", ("nocp",))
    factory = FragmentFactory(plan.core.molecule)
    factory.molecule((1, 2), (1, 2))
    copy = pickle.loads(pickle.dumps(factory))
    assert not copy._templates and copy._layout is None
    assert_identical(copy.molecule((1, 2), (1, 2)), factory.molecule((1, 2), (1, 2)))


def test_deepcopy_plain_is_deepcopy():
    import copy

    from mbdask.calculation.execute import ExpansionContext

    value = {
        "a": [1, 2.5, {"b": None, "e": DriverEnum.gradient}],
        "arr": np.arange(3.0),
        "t": (1, [2]),
        "s": {1, 2},
        "o": np.array([None]),
    }
    ours, theirs = deepcopy_plain(value), copy.deepcopy(value)
    assert_identical(ours, theirs, "value")
    assert (
        ours["a"] is not value["a"]
        and ours["a"][2] is not value["a"][2]
        and not np.shares_memory(ours["arr"], value["arr"])
    )
    assert ours["t"][1] is not value["t"][1] and ours["s"] is not value["s"]

    plan = _plan("water6-prism.xyz", ("nocp",))
    ctx = ExpansionContext(plan.input, plan.specifications, False)
    molecule = ctx.factory.molecule((1, 2), (1, 2))
    spec = plan.specifications["gfn2"]["specification"]
    assert_identical(
        ctx.atomic_input("gfn2", molecule), AtomicInput(molecule=molecule, specification=copy.deepcopy(spec)), "input"
    )
    ctx.atomic_input("gfn2", molecule).specification.keywords["changed"] = 1  # as QCManyBody's computer does
    assert (
        "changed" not in ctx.atomic_input("gfn2", molecule).specification.keywords and "changed" not in spec["keywords"]
    )

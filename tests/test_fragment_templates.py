"""The fragment factory's template cache: bounded, and evicting a template changes no fragment molecule."""

from __future__ import annotations

import json

from helpers import sleep_input

import mbdask
from mbdask.calculation import fragments
from mbdask.calculation.fragments import FragmentFactory


def _dumped(molecule) -> str:
    return json.dumps(molecule.model_dump(), default=str, sort_keys=True)


def test_template_cache_evicts_beyond_its_size_and_every_molecule_stays_the_validated_one(monkeypatch):
    """The (H2O)6 cp 3-body expansion has 41 fragment compositions (which fragments are real, which ghosts);
    with room for 4 templates the factory evicts the oldest again and again, keeps at most 4, and every
    fragment molecule is still the one QCElemental validation builds, also for compositions met again."""
    monkeypatch.setattr(fragments, "TEMPLATE_CACHE_SIZE", 4)
    plan = mbdask.plan(sleep_input("water6-prism.xyz", bsse=("cp",)), check_installed=False)
    factory = FragmentFactory(plan.core.molecule)
    reference = FragmentFactory(plan.core.molecule)
    jobs = list(plan.jobs)
    sizes = []
    for job in jobs + jobs[::-1]:  # the second pass meets evicted compositions again
        assert _dumped(factory.molecule(job.real, job.basis)) == _dumped(
            reference.validated_molecule(job.real, job.basis)
        ), job.label
        sizes.append(len(factory._templates))
    assert max(sizes) == 4  # filled, and never beyond

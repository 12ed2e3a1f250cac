"""Reading and validating a many-body input: file, dict or ``ManyBodyInput``.

Everything that can be wrong with an input is reported here as an ``BadInputError`` with
one line that says what and where, before any worker is started. The one thing done
differently from building a ``ManyBodyInput`` directly is filling in fragment charges
and multiplicities: QCElemental searches all combinations of them, which grows
exponentially with the number of fragments (22 waters: 1 GB, 32 waters: >24 GB). For
the cases where that search has exactly one answer we write the answer down first.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pydantic
import qcelemental
from qcmanybody.models.v2 import ManyBodyInput

from mbdask.errors import BadInputError
from mbdask.inputs.xyz import is_xyz

InputLike: TypeAlias = ManyBodyInput | Mapping | str | os.PathLike

#: Up to this many fragments QCElemental's own charge/multiplicity search is cheap enough
#: (2**n candidates) to leave ambiguous inputs to it.
QCEL_SEARCH_MAX_FRAGMENTS = 8


def read_input_file(path: str | os.PathLike) -> dict:
    """Parse a JSON or YAML file into a dict; the suffix decides, JSON is tried first otherwise."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or exc
        raise BadInputError(f"{path}: cannot read input file ({reason})") from None
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        data = _parse_yaml(text, path)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if suffix == ".json":
                raise BadInputError(
                    f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
                ) from None
            data = _parse_yaml(text, path)
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: expected a ManyBodyInput object at the top level, found {type(data).__name__}")
    return data


def _parse_yaml(text: str, path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInputError(f"{path}: not valid YAML: {problem}{where}") from None


def _atomic_numbers(molecule: Mapping) -> list[float] | None:
    """Electron counts of the neutral atoms (0 for ghosts), or None if symbols are unreadable."""
    symbols = molecule.get("symbols")
    if symbols is None:
        return None
    try:
        zs = molecule.get("atomic_numbers") or [qcelemental.periodictable.to_Z(s) for s in symbols]
    except Exception:
        return None  # QCElemental reports bad symbols itself, with its own message
    real = molecule.get("real") or [True] * len(zs)
    return [z if r else 0 for z, r in zip(zs, real)]


def fill_charges_and_multiplicities(molecule: Mapping) -> dict:
    """Return a copy of a molecule dict with fragment charges/multiplicities written out.

    Only cases with a unique answer are filled, and the answer is the one QCElemental's
    ``validate_and_fill_chgmult`` would return (tested against it):

    * no fragment charges and a neutral (or unset) total charge: every fragment neutral;
    * no fragment multiplicities and a total multiplicity that is unset or equal to the
      high-spin sum: each fragment a singlet or doublet by its electron count.

    Anything else with more than ``QCEL_SEARCH_MAX_FRAGMENTS`` fragments is refused, since
    QCElemental's search would run for hours; give the fragment values explicitly then.
    """
    mol = dict(molecule)
    fragments = mol.get("fragments")
    if not fragments or len(fragments) < 2:
        return mol
    nfr = len(fragments)
    fcharges = mol.get("fragment_charges")
    fmults = mol.get("fragment_multiplicities")
    charge = mol.get("molecular_charge")
    mult = mol.get("molecular_multiplicity")
    zeff = _atomic_numbers(mol)
    if zeff is None or any(not isinstance(i, int) or i < 0 or i >= len(zeff) for f in fragments for i in f):
        return mol  # malformed: let QCElemental say what is wrong

    if fcharges is None or all(c is None for c in fcharges):
        if charge is None or float(charge) == 0.0:
            fcharges = [0.0] * nfr
    if fcharges is not None and len(fcharges) == nfr and all(c is not None for c in fcharges):
        mol["fragment_charges"] = [float(c) for c in fcharges]
        if fmults is None or all(m is None for m in fmults):
            electrons = [sum(zeff[i] for i in frag) - c for frag, c in zip(fragments, fcharges)]
            defaults = [1 if int(round(e)) % 2 == 0 else 2 for e in electrons]
            high_spin = 1 + sum(m - 1 for m in defaults)
            if mult is None or mult == high_spin:
                fmults = defaults
    if fmults is not None and len(fmults) == nfr and all(m is not None for m in fmults):
        mol["fragment_multiplicities"] = list(fmults)

    complete = all(mol.get(k) is not None for k in ("fragment_charges", "fragment_multiplicities"))
    if not complete and nfr > QCEL_SEARCH_MAX_FRAGMENTS:
        raise BadInputError(
            f"molecule has {nfr} fragments but incomplete fragment_charges/fragment_multiplicities: "
            "give both explicitly (QCElemental's search over them grows exponentially with fragments)"
        )
    return mol


def describe_validation_error(exc: Exception) -> str:
    """One line for a pydantic or QCElemental validation error: location and message."""
    if isinstance(exc, pydantic.ValidationError):
        errors = exc.errors()
        first = errors[0]
        loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("function-after[set_specification()]",))
        msg = _enum_message(first) or str(first.get("msg", "invalid")).splitlines()[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"
    text = str(getattr(exc, "message", None) or exc).strip()
    text = re.sub(r"np\.\w+\(([^()]*)\)", r"\1", text)  # "np.int64(1)" -> "1"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _enum_message(error: Mapping) -> str | None:
    """An enum error's message with each valid value once.

    Pydantic lists an Enum's aliases too, so QCManyBody's ``BsseEnum`` (``ssfc`` = cp,
    ``mbe`` = ``none`` = nocp) reads "'nocp', 'cp', 'vmfc', 'cp', 'nocp' or 'nocp'".
    """
    expected = (error.get("ctx") or {}).get("expected")
    if error.get("type") != "enum" or not isinstance(expected, str):
        return None
    values = list(dict.fromkeys(re.findall(r"'[^']*'", expected)))
    if not values:
        return None
    listed = values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"
    return f"Input should be {listed}, got {error.get('input')!r}"


def _default_atomic_drivers(data: dict) -> None:
    """Let atomic specifications omit ``driver``: QCManyBody replaces it by the MBE driver anyway."""
    spec = data.get("specification")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("specification"), Mapping):
        return
    spec = data["specification"] = dict(spec)
    atomic = dict(spec["specification"])
    if "model" in atomic:  # a single specification, which QCManyBody files under "(auto)"
        atomic = {"(auto)": atomic}
    for name, one in atomic.items():
        if isinstance(one, Mapping) and "driver" not in one and "driver" in spec:
            atomic[name] = {**one, "driver": spec["driver"]}
    spec["specification"] = atomic


#: Per-atom fields of a molecule dict that QCElemental indexes once per fragment.
PER_ATOM_FIELDS = ("symbols", "masses", "real", "atom_labels", "atomic_numbers", "mass_numbers")


def per_atom_arrays(molecule: dict) -> dict:
    """The molecule dict with its per-atom lists as numpy arrays (the same values).

    QCElemental's validation converts each per-atom list to an array once per fragment
    (``contiguize_from_fragment_pattern``): 3 s for 4,096 waters from lists, 0.1 s from arrays.
    """
    return {
        key: np.asarray(value) if key in PER_ATOM_FIELDS and isinstance(value, list) else value
        for key, value in molecule.items()
    }


def load_input(inp: InputLike) -> ManyBodyInput:
    """Turn any accepted input form into a validated ``ManyBodyInput``.

    Raises ``BadInputError`` with a one-line message for anything that cannot be read.
    """
    source = ""
    if isinstance(inp, ManyBodyInput):
        return inp
    if isinstance(inp, (str, os.PathLike)):
        source = f"{inp}: "
        if is_xyz(inp):
            raise BadInputError(
                f"{inp}: an XYZ file holds no model chemistry: give it to mbdask.plan, start, submit, compute "
                "or optimize with the model options as keywords (method=..., max_nbody=...), or make the input "
                "with mbdask.xyz_input (several frames: mbdask.read_structures)"
            )
        data = read_input_file(inp)
    elif isinstance(inp, Mapping):
        data = dict(inp)
    else:
        raise BadInputError(f"cannot use a {type(inp).__name__} as input: give a ManyBodyInput, a dict or a file path")

    _default_atomic_drivers(data)
    molecule = data.get("molecule")
    if isinstance(molecule, Mapping):
        data["molecule"] = per_atom_arrays(fill_charges_and_multiplicities(molecule))
    try:
        return ManyBodyInput(**data)
    except (
        pydantic.ValidationError,
        qcelemental.ValidationError,
        qcelemental.NotAnElementError,
        ValueError,
        TypeError,
    ) as exc:
        raise BadInputError(f"{source}{describe_validation_error(exc)}") from None

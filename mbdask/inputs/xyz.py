"""XYZ files to QCSchema molecules, fragments found from connectivity.

Published cluster geometries do not always list each molecule's atoms together (some
list all oxygens first), so fragments are found by bonding (covalent radii) and the
atoms reordered fragment by fragment, as QCManyBody needs contiguous fragments.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import qcelemental
from qcmanybody.models.v2 import BsseEnum

from mbdask import config
from mbdask.errors import BadInputError, plural

#: Element symbols by lower case (QCElemental's periodic table, without its dummy atom "X").
_ELEMENTS = {symbol.lower(): symbol for symbol in qcelemental.periodictable.E[1:]}


@dataclass
class XYZFrame:
    """One structure of an XYZ file: symbols, geometry in Angstrom, and its line 2's charge and multiplicity."""

    symbols: list[str]
    geometry: np.ndarray
    charge: float | None
    multiplicity: int | None
    #: 1-based line number of its atom-count line (1 for the first frame)
    line: int = 1


def read_xyz(path: str | os.PathLike) -> tuple[list[str], np.ndarray, float | None, int | None]:
    """Symbols, geometry in Angstrom, and line 2's charge and multiplicity (None where line 2 has none).

    Line 2 counts as ``charge multiplicity`` when it starts with two numbers; anything else
    is a comment. Everything else must agree with itself: exactly as many atom lines as
    line 1 says (trailing blank lines are fine), each an element symbol (or atomic number)
    and three finite coordinates (further columns, as in extended XYZ, are ignored). A
    file that disagrees is refused with its file and line, since guessing which part is
    wrong (a dropped atom, a stray line) silently changes the chemistry. A file of several
    frames (a trajectory) is refused here; :func:`read_xyz_frames` reads those.
    """
    frames = read_xyz_frames(path)
    if len(frames) > 1:
        raise BadInputError(
            f"{path}:{frames[1].line}: a second structure starts here ({len(frames)} frames); give one structure, "
            "or run one expansion per frame "
            "(python -m mbdask run FILE; in Python mbdask.compute_many(mbdask.read_structures([FILE])))"
        )
    frame = frames[0]
    return frame.symbols, frame.geometry, frame.charge, frame.multiplicity


def read_xyz_frames(path: str | os.PathLike) -> list[XYZFrame]:
    """Every frame of an XYZ file (a trajectory: one block after another), each checked as :func:`read_xyz` says.

    A frame ends after the atom lines its count line announces; the next frame starts with a
    line holding only a whole number (blank lines before it are skipped). Anything else
    after a frame is refused, as in a single structure with too many atom lines.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: cannot read XYZ file ({getattr(exc, 'strerror', None) or exc})") from None
    frames: list[XYZFrame] = []
    start = 0
    while True:
        frame = _frame(path, lines, start)
        frames.append(frame)
        end = start + 2 + len(frame.symbols)
        following = next((i for i in range(end, len(lines)) if lines[i].strip()), None)
        if following is None:
            return frames
        if not _is_count_line(lines[following]):  # blank lines between frames are fine, stray atom lines are not
            atom_lines = _atom_lines(lines, start + 2)
            where = atom_lines[len(frame.symbols)][0]
            raise BadInputError(
                f"{path}:{where}: line {frame.line} says {plural(len(frame.symbols), 'atom')} but "
                f"{plural(len(atom_lines), 'atom line')} follow"
            )
        start = following


def _is_count_line(line: str) -> bool:
    tokens = line.split()
    return len(tokens) == 1 and tokens[0].isdigit()


def _atom_lines(lines: list[str], first: int) -> list[tuple[int, str]]:
    """(1-based number, text) of the non-blank lines from index ``first`` up to the next count line or the end."""
    found: list[tuple[int, str]] = []
    for index in range(first, len(lines)):
        if _is_count_line(lines[index]) and found and index > first:
            break
        if lines[index].strip():
            found.append((index + 1, lines[index]))
    return found


def _frame(path: Path, lines: list[str], start: int) -> XYZFrame:
    """The frame whose count line is ``lines[start]``."""
    natoms = _atom_count(path, lines, start)
    charge, mult = _charge_and_multiplicity(lines[start + 1] if len(lines) > start + 1 else "")
    symbols, coords = [], []
    for index in range(start + 2, start + 2 + natoms):
        line = lines[index] if index < len(lines) else ""
        if not line.strip() or _is_count_line(line):
            found = _atom_lines(lines, start + 2)
            if len(found) < natoms or _is_count_line(line):
                counted = len(found) if not _is_count_line(line) else index - start - 2
                raise BadInputError(
                    f"{path}:{start + 1}: line {start + 1} says {plural(natoms, 'atom')} but only "
                    f"{plural(counted, 'atom line')} follow"
                )
            raise BadInputError(f"{path}:{index + 1}: blank line among the atom lines")
        symbol, xyz = _atom_line(path, index + 1, line)
        symbols.append(symbol)
        coords.append(xyz)
    return XYZFrame(symbols, np.array(coords, dtype=float).reshape(-1, 3), charge, mult, start + 1)


def _atom_count(path: Path, lines: list[str], start: int = 0) -> int:
    """A frame's first line: the number of atoms, a whole number of at least 1."""
    try:
        natoms = int(lines[start].split()[0])
    except (IndexError, ValueError):
        raise BadInputError(f"{path}:{start + 1}: not an XYZ file (line {start + 1} must be the atom count)") from None
    if natoms < 1:
        raise BadInputError(f"{path}:{start + 1}: the atom count must be at least 1, got {natoms}")
    return natoms


def _charge_and_multiplicity(line: str) -> tuple[float | None, int | None]:
    """Line 2's ``charge multiplicity``, or (None, None) when it is a comment."""
    tokens = line.split()
    try:
        return float(tokens[0]), int(tokens[1])
    except (IndexError, ValueError):
        return None, None


def _atom_line(path: Path, number: int, line: str) -> tuple[str, list[float]]:
    """``Element x y z`` (further columns ignored) as a symbol and Angstrom coordinates."""
    parts = line.split()
    if len(parts) < 4:
        raise BadInputError(f"{path}:{number}: expected 'Element x y z', got {line.strip()!r}")
    symbol = _element(path, number, parts[0])
    try:
        xyz = [float(x) for x in parts[1:4]]
    except ValueError:
        raise BadInputError(
            f"{path}:{number}: expected 'Element x y z' with numbers for x y z, got {line.strip()!r}"
        ) from None
    if not all(math.isfinite(x) for x in xyz):
        raise BadInputError(f"{path}:{number}: coordinates must be finite numbers, got {line.strip()!r}")
    return symbol, xyz


def _element(path: Path, number: int, token: str) -> str:
    """An element symbol (any case) or atomic number (``8``) as the symbol (``O``)."""
    if token.isdigit():
        z = int(token)
        if 1 <= z < len(qcelemental.periodictable.E):
            return qcelemental.periodictable.E[z]
        raise BadInputError(
            f"{path}:{number}: {token!r} is not an atomic number (1 to {len(qcelemental.periodictable.E) - 1})"
        )
    symbol = _ELEMENTS.get(token.lower())
    if symbol is None:
        raise BadInputError(f"{path}:{number}: {token!r} is not an element symbol")
    return symbol


def find_fragments(symbols: list[str], geometry_angstrom: np.ndarray) -> list[list[int]]:
    """Connected components of the bond graph, each sorted, ordered by first atom.

    Bonds are QCElemental's (``molutil.guess_connectivity``: closer than
    ``mbdask.xyz.bond-tolerance`` times the sum of covalent radii), found a row at a time,
    so memory stays linear in the atoms; the components are a union-find over those bonds
    (a few lines, where SciPy's would add a dependency).
    """
    for symbol in sorted(
        set(symbols)
    ):  # QCElemental would guess 1.8 bohr for a missing radius: fragments would be guesses
        try:
            qcelemental.covalentradii.get(symbol)
        except Exception:
            raise BadInputError(
                f"no covalent radius for {symbol} in QCElemental: give the fragments (--fragments)"
            ) from None
    bonds = qcelemental.molutil.guess_connectivity(
        symbols,
        np.asarray(geometry_angstrom) / qcelemental.constants.bohr2angstroms,
        threshold=config.number("mbdask.xyz.bond-tolerance"),
    )
    parent = list(range(len(symbols)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in bonds:
        parent[root(int(i))] = root(int(j))
    groups: dict[int, list[int]] = {}
    for i in range(len(symbols)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


#: Charges of common ions recognised by formula when fragment charges are not given.
ION_CHARGES = {"H3O": 1.0, "HO": -1.0, "H4N": 1.0, "Na": 1.0, "K": 1.0, "Li": 1.0, "Cl": -1.0, "F": -1.0, "Br": -1.0}


def formula(symbols: list[str]) -> str:
    """Hill-like formula without counts of 1 (``H3O``, ``HO``)."""
    counts: dict[str, int] = {}
    for sym in symbols:
        counts[sym] = counts.get(sym, 0) + 1
    return "".join(f"{s}{counts[s] if counts[s] > 1 else ''}" for s in sorted(counts))


def guess_fragment_charges(symbols: list[str], fragments: list[list[int]]) -> list[float]:
    """0 for each fragment, except common ions (``ION_CHARGES``) recognised by formula."""
    return [ION_CHARGES.get(formula([symbols[i] for i in frag]), 0.0) for frag in fragments]


def parse_fragments(text: str) -> list[list[int]]:
    """``"0-2;3-5;6,7,8"`` (0-based atom indices in the file's order) to lists of atoms.

    Whether they cover every atom once is checked by :func:`molecule_from_xyz`.
    """
    fragments = []
    try:
        for group in text.split(";"):
            atoms: list[int] = []
            for part in group.split(","):
                if "-" in part:
                    lo, hi = part.split("-")
                    atoms += range(int(lo), int(hi) + 1)
                elif part.strip():
                    atoms.append(int(part))
            fragments.append(atoms)
    except ValueError:
        raise BadInputError(f"--fragments {text!r}: expected groups like '0-2;3-5;6,7,8'") from None
    return fragments


def molecule_from_xyz(
    path: str | os.PathLike,
    fragment_charges: list[float] | None = None,
    fragments: list[list[int]] | None = None,
    guess_ions: bool = False,
) -> dict:
    """A QCSchema molecule dict (Bohr) with contiguous fragments found by connectivity (or given).

    ``guess_ions``: fragment charges of common ions (H3O+, OH-, ...) from their formula,
    when ``fragment_charges`` is not given; the total charge is then their sum.

    Where line 2 gives ``charge multiplicity``, fragment charges (given or recognised)
    must sum to that charge, and the multiplicity must fit the electron count's parity:
    a file with an atom too few or too many otherwise runs as an ion without a word.
    """
    symbols, geom, charge, mult = read_xyz(path)
    return _molecule(
        path, XYZFrame(symbols, geom, charge, mult), fragment_charges, fragments, guess_ions, Path(path).stem
    )


def molecules_from_xyz(
    path: str | os.PathLike,
    fragment_charges: list[float] | None = None,
    fragments: list[list[int]] | None = None,
    guess_ions: bool = False,
) -> list[dict]:
    """One molecule per frame of an XYZ file (a trajectory), as :func:`molecule_from_xyz` makes them.

    Every frame must hold the same atoms in the same order. The fragments are found in the
    first frame (unless given) and kept for all: along a trajectory a hydrogen bond that
    stretches past the bonding cutoff must not change what a fragment is. Names are the
    file's stem and the frame number from 1, as wide as the last one (``traj-1`` ... ``traj-5``;
    ``traj-01`` from 10 frames on).
    """
    frames = read_xyz_frames(path)
    first = frames[0]
    for frame in frames[1:]:
        if frame.symbols != first.symbols:
            raise BadInputError(
                f"{path}:{frame.line}: this frame's atoms differ from the first frame's "
                "(a trajectory keeps its atoms and their order)"
            )
    frags = fragments if fragments is not None else find_fragments(first.symbols, first.geometry)
    stem, width = Path(path).stem, len(str(len(frames)))
    if len(frames) == 1:
        return [_molecule(path, first, fragment_charges, frags, guess_ions, stem, fragments is not None)]
    return [
        _molecule(path, frame, fragment_charges, frags, guess_ions, f"{stem}-{number:0{width}d}", fragments is not None)
        for number, frame in enumerate(frames, start=1)
    ]


def _molecule(
    path: str | os.PathLike,
    frame: XYZFrame,
    fragment_charges: list[float] | None,
    fragments: list[list[int]] | None,
    guess_ions: bool,
    name: str,
    given: bool | None = None,
) -> dict:
    """The molecule dict of one frame (see :func:`molecule_from_xyz`); ``given``: the fragments came from the user."""
    symbols, geom, line2_charge, mult = frame.symbols, frame.geometry, frame.charge, frame.multiplicity
    given = fragments is not None if given is None else given
    frags = fragments if fragments is not None else find_fragments(symbols, geom)
    if given and sorted(a for f in frags for a in f) != list(range(len(symbols))):
        raise BadInputError(f"fragments must list every atom 0..{len(symbols) - 1} exactly once")
    guessed = False
    if fragment_charges is None and guess_ions:
        charges = guess_fragment_charges(symbols, frags)
        if any(charges):
            fragment_charges, guessed = charges, True
    charge = 0.0 if line2_charge is None else line2_charge
    if fragment_charges is not None:
        if len(fragment_charges) != len(frags):
            raise BadInputError(
                f"{plural(len(fragment_charges), 'fragment charge')} given for {plural(len(frags), 'fragment')}"
            )
        formulas = [formula([symbols[i] for i in frag]) for frag in frags]
        _check_line2_charge(path, line2_charge, fragment_charges, formulas, guessed)
        charge = float(sum(fragment_charges))
    _check_multiplicity(path, symbols, charge, mult)
    order = [i for frag in frags for i in frag]
    bohr = geom[order] / qcelemental.constants.bohr2angstroms
    contiguous, start = [], 0
    for frag in frags:
        contiguous.append(list(range(start, start + len(frag))))
        start += len(frag)
    mol = {
        "symbols": [symbols[i] for i in order],
        "geometry": bohr.ravel().tolist(),
        "fragments": contiguous,
        "molecular_charge": charge,
        "name": name,
    }
    if mult is not None:
        mol["molecular_multiplicity"] = mult
    if fragment_charges is not None:
        mol["fragment_charges"] = list(fragment_charges)
    return mol


def describe_fragments(molecule: dict) -> list[str]:
    """One line per run of alike neighbouring fragments: 64 waters are ``1-64  H2O  charge +0``, not 64 lines."""
    charges = molecule.get("fragment_charges") or [0.0] * len(molecule["fragments"])
    kinds = [(formula([molecule["symbols"][a] for a in atoms]), q) for atoms, q in zip(molecule["fragments"], charges)]
    lines, first = [], 0
    for i in range(1, len(kinds) + 1):
        if i == len(kinds) or kinds[i] != kinds[first]:
            span = f"{first + 1}" if i == first + 1 else f"{first + 1}-{i}"
            lines.append(f"{span:>9}  {kinds[first][0]:8s} charge {kinds[first][1]:+.0f}")
            first = i
    return lines


@dataclass
class ModelOptions:
    """The model chemistry and expansion an XYZ file runs with (the command line's XYZ options)."""

    program: str = "xtb"
    method: str | None = None
    basis: str | None = None
    bsse: tuple[str, ...] = ("nocp",)
    max_nbody: int = 2
    driver: str = "energy"

    def __post_init__(self) -> None:
        self.bsse = bsse_types(self.bsse)

    def input_for(self, molecule: dict) -> dict:
        """A ManyBodyInput dict for ``molecule`` with this model chemistry."""
        if self.max_nbody < 1:
            raise BadInputError(f"--max-nbody must be at least 1, got {self.max_nbody}")
        if self.basis and self.program == "xtb":
            raise BadInputError(
                f"--basis {self.basis}: xtb takes no basis set (its GFN methods come with their own); leave --basis out"
            )
        method = self.method or ("gfn2-xtb" if self.program == "xtb" else None)
        if not method:
            raise BadInputError("XYZ input needs --method (and --basis for ab initio programs)")
        model = {"method": method, **({"basis": self.basis} if self.basis else {})}
        label = f"{method}/{self.basis}" if self.basis else method
        return {
            "specification": {
                "driver": self.driver,
                "keywords": {"bsse_type": list(self.bsse), "levels": {self.max_nbody: label}},
                "specification": {label: {"program": self.program, "model": model}},
            },
            "molecule": molecule,
        }


def _check_line2_charge(
    path: str | os.PathLike,
    line2_charge: float | None,
    fragment_charges: list[float],
    formulas: list[str],
    guessed: bool,
) -> None:
    """Refuse fragment charges whose sum disagrees with line 2's charge, naming the charged fragments.

    Line 2 without a charge (a comment) leaves the fragment charges in charge.
    """
    total = float(sum(fragment_charges))
    if line2_charge is None or math.isclose(total, line2_charge, abs_tol=1e-6):
        return
    charged = ", ".join(
        f"fragment {i} {f} {q:+g}" for i, (f, q) in enumerate(zip(formulas, fragment_charges), start=1) if q
    )
    if guessed:
        found, fix = "the fragments found carry", "give --fragment-charges or fix line 2"
    else:
        found, fix = "the fragment charges given sum to", "fix line 2 or the fragment charges"
    raise BadInputError(
        f"{path}:2: line 2 says charge {line2_charge:g} but {found} {total:g} ({charged or 'all neutral'}); {fix}"
    )


def _check_multiplicity(path: str | os.PathLike, symbols: list[str], charge: float, mult: int | None) -> None:
    """Refuse line 2's multiplicity where the electron count cannot have it (parity, at least 1)."""
    if mult is None:
        return
    if mult < 1:
        raise BadInputError(f"{path}:2: line 2 says multiplicity {mult}, but a multiplicity is at least 1")
    electrons = sum(qcelemental.periodictable.to_Z(s) for s in symbols) - charge
    if not float(electrons).is_integer():
        return  # fractional charges: leave the judgement to QCElemental
    if int(electrons) % 2 == mult % 2:  # an even count needs an odd multiplicity and vice versa
        need = "odd (1, 3, ...)" if int(electrons) % 2 == 0 else "even (2, 4, ...)"
        raise BadInputError(
            f"{path}:2: line 2 says multiplicity {mult} but {int(electrons)} electrons (charge {charge:g}) need an "
            f"{need} multiplicity"
        )


#: The command line's XYZ options as the library names them (keywords of ``plan``, ``start``,
#: ``submit``, ``compute`` and ``optimize``; on the command line ``--max-nbody`` and so on).
XYZ_OPTIONS = ("program", "method", "basis", "bsse", "max_nbody", "driver", "fragment_charges", "fragments")


def bsse_types(value: str | Sequence[str]) -> tuple[str, ...]:
    """BSSE treatments as a tuple of lower-case names QCManyBody knows (its aliases such as ssfc included).

    ``value`` is a comma-separated string (``"cp,nocp"``, the command line's form) or a sequence of names.
    """
    names = [name.strip().lower() for name in (value.split(",") if isinstance(value, str) else value)]
    unknown = [name for name in names if name not in BsseEnum.__members__]
    if unknown or not names:
        valid = ", ".join(member.value for member in BsseEnum)  # iterating an Enum skips its aliases
        raise BadInputError(
            f"unknown BSSE treatment {(unknown or [''])[0]!r}: expected a comma-separated list of {valid}"
        )
    return tuple(names)


def is_xyz(path: Any) -> bool:
    """Whether ``path`` names an XYZ file (by its suffix): a structure without a model chemistry, run with
    :data:`XYZ_OPTIONS`."""
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).lower().endswith(".xyz")


def xyz_input(
    path: str | os.PathLike,
    *,
    program: str | None = None,
    method: str | None = None,
    basis: str | None = None,
    bsse: str | Sequence[str] | None = None,
    max_nbody: int | None = None,
    driver: str | None = None,
    fragment_charges: Sequence[float] | None = None,
    fragments: Sequence[Sequence[int]] | str | None = None,
) -> dict:
    """The ManyBodyInput dict of a one-structure XYZ file: what ``python -m mbdask run FILE.xyz``
    runs with the same options (the command line calls this too).

    The model chemistry and expansion: ``program`` (default xtb), ``method`` (default gfn2-xtb
    for xtb), ``basis``, ``bsse`` (``"nocp"``, ``"cp,nocp"`` or a list; default nocp),
    ``max_nbody`` (default 2), ``driver`` (default energy); None means the default
    (:class:`ModelOptions`). Fragments are found by connectivity, common ions charged
    (:func:`molecule_from_xyz`), unless ``fragments`` (0-based atoms per fragment, or the
    command line's ``"0-2;3-5"``) and ``fragment_charges`` are given. A file of several frames
    is refused: :func:`mbdask.read_structures` reads those.
    """
    chosen: dict[str, Any] = {
        "program": program,
        "method": method,
        "basis": basis,
        "bsse": bsse,
        "max_nbody": max_nbody,
        "driver": driver,
    }
    model = ModelOptions(**{name: value for name, value in chosen.items() if value is not None})
    if isinstance(fragments, str):
        fragments = parse_fragments(fragments)
    charges = None if fragment_charges is None else [float(q) for q in fragment_charges]
    molecule = molecule_from_xyz(
        path, charges, None if fragments is None else [list(f) for f in fragments], guess_ions=True
    )
    return model.input_for(molecule)


def input_from(inp: Any, options: Mapping[str, Any], function: str) -> Any:
    """``inp`` as given, or for an XYZ file the ManyBodyInput dict that ``options`` (:data:`XYZ_OPTIONS`) make of it.

    Options left at None count as not given. Given for any other input they are refused: a
    ManyBodyInput (file, dict, object or plan) holds its own model chemistry and expansion,
    and running it while ignoring them would run another expansion than the one asked for.
    ``function`` names the caller in the ``TypeError`` for an unknown keyword.
    """
    unknown = sorted(set(options) - set(XYZ_OPTIONS))
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}")
    given = {name: value for name, value in options.items() if value is not None}
    if not is_xyz(inp):
        if given:
            what = os.fspath(inp) if isinstance(inp, (str, os.PathLike)) else f"the {type(inp).__name__} given"
            raise BadInputError(refused_model_options(list(given), [what]))
        return inp
    return xyz_input(inp, **given)


def refused_model_options(options: Sequence[str], holders: Sequence[str], mixed: bool = False) -> str:
    """The one line refusing XYZ model ``options`` given with inputs that hold their own model chemistry (``holders``).

    ``mixed``: XYZ files were given too (the options would apply to some inputs and not others).
    """
    shown = ", ".join(holders[:3]) + (f" and {len(holders) - 3} more" if len(holders) > 3 else "")
    apply = "applies" if len(options) == 1 else "apply"
    holds = f"{shown} holds its" if len(holders) == 1 else f"{shown} hold their"
    fix = (
        "run the XYZ files and the ManyBodyInput files separately"
        if mixed
        else f"leave {'it' if len(options) == 1 else 'them'} out, or change the input"
    )
    return f"{', '.join(options)} {apply} to XYZ input only, and {holds} own model chemistry and expansion: {fix}"

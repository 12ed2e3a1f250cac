"""QCEngine harness for PySCF (``"program": "pyscf"``), which no QCEngine release ships.

Follows QCEngine's ``programs/`` habits: one class, ``found()``, errors raised as QCEngine
exceptions so that ``qcengine.compute`` returns a ``FailedOperation`` with an error type.

Methods: ``hf``/``scf``; any DFT functional PySCF/libxc parses (``b3lyp``, ``pbe0``,
``wb97x-v`` ...); ``mp2`` (conventional, or density-fitted with ``density_fit``);
``ccsd`` and ``ccsd(t)``. Drivers: energy for all; gradient for HF, DFT and MP2; Hessian
for HF and DFT. Ghost atoms (``real: false``) carry basis functions only.

Empirical dispersion (pyscf-dispersion: simple-dftd3 and dftd4) as PySCF names it, a suffix
to HF or a functional: ``b3lyp-d3bj``, ``hf-d3bj``, ``pbe0-d3zero``, ``wb97x-d3bj``,
``b3lyp-d4``; ``d3bjatm`` adds the three-body ATM term. The correction is computed over the
real atoms only: a ghost atom has a basis but no dispersion, so a cp calculation in a
cluster's basis gets the dispersion of its own fragments (what Psi4 does; PySCF's own
``mf.disp`` counts ghosts as element 0 in the coordination numbers, which moves a water
monomer's D3 by 1e-8 Eh). Energies and gradients; Hessians are refused with it.

Keywords: ``reference`` (rhf/uhf/rohf/rks/uks/roks; default by multiplicity),
``conv_tol``, ``conv_tol_grad``, ``max_cycle``, ``level_shift``, ``diis_space``,
``density_fit`` (bool), ``auxbasis``, ``grids_level``, ``nlc_grids_level``,
``frozen_core`` (number of frozen orbitals for MP2/CC), ``gpu`` (bool: use gpu4pyscf,
falling back to the CPU with a warning where it or a GPU is missing).
``task_config.ncores`` sets PySCF's OpenMP threads for the call, ``task_config.memory``
its ``max_memory``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from qcelemental.util import which_import
from qcengine.exceptions import ConvergenceError, InputError
from qcengine.programs.model import ProgramHarness

_HF = {"hf", "scf"}
_MP2 = {"mp2", "df-mp2", "ri-mp2"}
_CC = {"ccsd", "ccsd(t)"}
_GRADIENTS = "hf, DFT and mp2"
_HESSIANS = "hf and DFT"
_KNOWN_KEYWORDS = {
    "reference",
    "conv_tol",
    "conv_tol_grad",
    "max_cycle",
    "level_shift",
    "diis_space",
    "density_fit",
    "auxbasis",
    "grids_level",
    "nlc_grids_level",
    "frozen_core",
    "gpu",
    "verbose",
}


@dataclass(frozen=True)
class Dispersion:
    """An empirical dispersion correction: simple-dftd3's or dftd4's parameters for ``method``."""

    method: str  # the functional whose damping parameters apply ("b3lyp", "hf", "wb97x")
    version: str  # "d3bj", "d3zero", "d3bjm", "d3zerom", "d3op" or "d4"
    three_body: bool  # the Axilrod-Teller-Muto term

    def model(self, mol: Any) -> Any:
        """pyscf-dispersion's model of ``mol``'s atoms (real ones: see :func:`real_atoms`)."""
        if self.version.startswith("d3"):
            from pyscf.dispersion import dftd3

            return dftd3.DFTD3Dispersion(mol, xc=self.method, version=self.version, atm=self.three_body)
        from pyscf.dispersion import dftd4

        return dftd4.DFTD4Dispersion(mol, xc=self.method, atm=self.three_body)


@dataclass(frozen=True)
class Method:
    """A method name read: what the SCF (and any correlation) runs, and the dispersion added to it."""

    name: str  # as given, lower case
    base: str  # hf, a functional, mp2, ccsd...: what runs without the dispersion
    nlc: bool | None  # False: the functional's own non-local part is replaced by the dispersion (wb97x-d3bj)
    dispersion: Dispersion | None

    @property
    def is_dft(self) -> bool:
        return self.base not in _HF | _MP2 | _CC


@functools.lru_cache(maxsize=256)
def read_method(method: str) -> Method:
    """``method`` as PySCF reads a name with a dispersion suffix (``pyscf.scf.dispersion.parse_dft``).

    Cached: the check, the reference, the SCF and the run of every calculation ask for it."""
    name = method.lower()
    if name in _HF | _MP2 | _CC:
        return Method(name, name, None, None)
    from pyscf.scf.dispersion import parse_dft, parse_disp  # also refuses what PySCF cannot run yet (wb97x-d)

    try:
        base, nlc, version = parse_dft(name)
        disp_method, disp_version, three_body = parse_disp(name)
    except (NotImplementedError, ValueError) as exc:
        raise InputError(f"pyscf: method '{name}': {exc}") from None
    if version is None or disp_method is None:
        return Method(name, name, None, None)
    return Method(name, base, False if nlc is False else None, Dispersion(disp_method, disp_version, three_body))


@functools.cache
def _check_dispersion(dispersion: Dispersion) -> None:
    """Refuse a functional and damping that pyscf-dispersion has no parameters for (tried on one atom)."""
    try:
        import pyscf.dispersion  # noqa: F401
    except ImportError:
        raise InputError(
            "pyscf: empirical dispersion needs pyscf-dispersion (pip install pyscf-dispersion, or mbdask[pyscf])"
        ) from None
    from pyscf import gto

    try:
        dispersion.model(gto.M(atom="He 0 0 0", verbose=0)).get_dispersion()
    except Exception as exc:
        raise InputError(
            f"pyscf: no {dispersion.version} parameters for '{dispersion.method}' "
            f"({str(exc).strip() or type(exc).__name__})"
        ) from None


def check_specification(
    method: str, basis: str | None, driver: str, keywords: dict, symbols: Iterable[str] = ()
) -> None:
    """Refuse what this harness cannot run, with one line; used by the harness and by ``mbdask plan``."""
    read = read_method(method)
    method = read.name
    unknown = set(keywords) - _KNOWN_KEYWORDS
    if unknown:
        raise InputError(f"pyscf: unknown keywords {sorted(unknown)} (known: {sorted(_KNOWN_KEYWORDS)})")
    if not basis:
        raise InputError("pyscf: a basis set is required")
    if read.is_dft and not _is_functional(read.base):
        raise InputError(f"pyscf: method '{method}' is neither hf, mp2, ccsd, ccsd(t) nor a functional libxc knows")
    if read.dispersion is not None:
        if read.base in _MP2 | _CC:
            raise InputError(
                f"pyscf: method '{method}': empirical dispersion goes with HF or a functional, not {read.base}"
            )
        if driver == "hessian":
            raise InputError(f"pyscf: hessian is not supported with an empirical dispersion ('{method}')")
        _check_dispersion(read.dispersion)
    if driver == "gradient" and method in _CC:
        raise InputError(f"pyscf: gradient is not supported for {method} (supported for {_GRADIENTS})")
    if driver == "hessian" and (method in _MP2 | _CC):
        raise InputError(f"pyscf: hessian is not supported for {method} (supported for {_HESSIANS})")
    if driver not in ("energy", "gradient", "hessian"):
        raise InputError(f"pyscf: driver '{driver}' is not supported")
    from mbdask.programs.basis import basis_functions

    for symbol in sorted(set(symbols)):
        if basis_functions(symbol.capitalize(), basis) is None:
            raise InputError(f"pyscf: basis '{basis}' is not available for element {symbol}")


def memory_needed_gib(method: str, nbasis: int, nocc: int) -> float:
    """The least memory PySCF runs ``method`` in, in GiB, counted from the arrays it must keep in memory.

    What PySCF can move to disk or compute again (two-electron integrals: direct SCF, an
    outcore MP2 transformation, density fitting's tensors) is not counted; what it cannot is:
    the SCF's matrices and DIIS vectors, MP2's half-transformed block (occupied x virtual x
    basis), and CCSD's doubles amplitudes with their update and DIIS copies (CCSD(T)'s
    triples run in blocks of that size). A floor, so a calculation refused for it would
    have failed or been killed on the worker.
    """
    read = read_method(method)
    n, o = nbasis, nocc
    v = max(n - o, 0)
    words = 20.0 * n * n
    if read.base in _MP2:
        words += o * v * n
    elif read.base in _CC:
        words += 6.0 * o * o * v * v
    return words * 8 / 2**30


def _is_functional(method: str) -> bool:
    from pyscf.dft import libxc

    try:
        libxc.parse_xc(method)
        return True
    except Exception:
        return False


def build_mole(molecule, basis: str, verbose: int = 0):
    """A PySCF ``Mole`` from a QCSchema molecule; ghosts become ``ghost-X`` atoms (basis only)."""
    from pyscf import gto

    geometry = np.asarray(molecule.geometry, dtype=float).reshape(-1, 3)
    atoms = [
        (sym if real else f"ghost-{sym}", tuple(xyz))
        for sym, real, xyz in zip(molecule.symbols, molecule.real, geometry)
    ]
    return gto.M(
        atom=atoms,
        basis=basis,
        unit="Bohr",
        charge=int(round(molecule.molecular_charge)),
        spin=int(molecule.molecular_multiplicity) - 1,
        verbose=verbose,
        output="/dev/null" if verbose else None,
    )


def _reference(method: str, mol, keywords: dict) -> str:
    ref = str(keywords.get("reference", "")).lower()
    dft = read_method(method).is_dft
    if not ref:
        ref = ("r" if mol.spin == 0 else "u") + ("ks" if dft else "hf")
    allowed = {"rks", "uks", "roks"} if dft else {"rhf", "uhf", "rohf"}
    if ref not in allowed:
        raise InputError(f"pyscf: reference '{ref}' does not fit method '{method}' (use one of {sorted(allowed)})")
    return ref


def _mean_field(method: str, mol, keywords: dict, memory_mb: float | None):
    from pyscf import dft, scf

    ref = _reference(method, mol, keywords)
    read = read_method(method)
    if ref.endswith("hf"):
        mf = {"rhf": scf.RHF, "uhf": scf.UHF, "rohf": scf.ROHF}[ref](mol)
    else:
        mf = {"rks": dft.RKS, "uks": dft.UKS, "roks": dft.ROKS}[ref](mol)
        mf.xc = read.base  # the dispersion, if any, is added over the real atoms (PySCFHarness._run)
        if read.nlc is False:
            mf.nlc = False
        if "grids_level" in keywords:
            mf.grids.level = int(keywords["grids_level"])
        if "nlc_grids_level" in keywords:
            mf.nlcgrids.level = int(keywords["nlc_grids_level"])
    if keywords.get("density_fit"):
        mf = mf.density_fit(auxbasis=keywords.get("auxbasis"))
    for name in ("conv_tol", "conv_tol_grad", "max_cycle", "level_shift", "diis_space"):
        if name in keywords:
            setattr(mf, name, keywords[name])
    mf.chkfile = None
    if memory_mb:
        mf.max_memory = memory_mb
    if keywords.get("gpu"):
        mf = _to_gpu(mf)
    return mf


def _to_gpu(mf):
    """gpu4pyscf where it and a GPU are present; otherwise the CPU, with a warning."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
        import gpu4pyscf  # noqa: F401

        return mf.to_gpu()
    except Exception as exc:  # ImportError, CUDA errors: run on the CPU instead
        warnings.warn(f"pyscf: gpu requested but unavailable ({exc}); running on the CPU", RuntimeWarning, stacklevel=2)
        return mf


def real_atoms(mol: Any) -> tuple[Any, list[int]]:
    """``mol`` without its ghost atoms (same geometry, units, charge and spin), and the real atoms' indices."""
    from pyscf import gto

    real = [i for i in range(mol.natm) if not mol.atom_symbol(i).upper().startswith("GHOST")]
    if len(real) == mol.natm:
        return mol, real
    coords = mol.atom_coords()  # Bohr
    atoms = [(mol.atom_pure_symbol(i), tuple(coords[i])) for i in real]
    return gto.M(atom=atoms, unit="Bohr", basis="sto-3g", charge=mol.charge, spin=mol.spin, verbose=0), real


def dispersion_correction(dispersion: Dispersion, mol: Any, gradient: bool) -> tuple[float, np.ndarray | None]:
    """The dispersion energy of ``mol``'s real atoms, and its gradient on every atom of ``mol`` (ghosts: 0)."""
    real_mol, real = real_atoms(mol)
    result = dispersion.model(real_mol).get_dispersion(grad=gradient)
    if not gradient:
        return float(result["energy"]), None
    full = np.zeros((mol.natm, 3))
    full[real] = np.asarray(result["gradient"]).reshape(len(real), 3)
    return float(result["energy"]), full


def _as_numpy(x):
    return x.get() if hasattr(x, "get") else np.asarray(x)


class PySCFHarness(ProgramHarness):
    """PySCF through QCEngine: HF, DFT, MP2, CCSD, CCSD(T) with ghost atoms."""

    _defaults: ClassVar[dict[str, Any]] = {
        "name": "pyscf",
        "scratch": True,
        "thread_safe": False,
        "thread_parallel": True,
        "node_parallel": False,
        "managed_memory": True,
    }
    version_cache: ClassVar[dict[str, str]] = {}

    @staticmethod
    def found(raise_error: bool = False) -> bool:
        return which_import(
            "pyscf", return_bool=True, raise_error=raise_error, raise_msg="Please install via `pip install pyscf`."
        )

    def get_version(self) -> str:
        self.found(raise_error=True)
        if "pyscf" not in self.version_cache:
            import pyscf

            self.version_cache["pyscf"] = pyscf.__version__
        return self.version_cache["pyscf"]

    def compute(self, input_data, config):
        self.found(raise_error=True)
        from pyscf import lib
        from qcelemental.models.v2 import AtomicResult

        spec = input_data.specification
        method = spec.model.method.lower()
        basis = spec.model.basis
        driver = spec.driver.value
        keywords = dict(spec.keywords or {})
        check_specification(method, basis, driver, keywords)

        memory_mb = float(config.memory) * 1024 if config.memory else None
        try:
            mol = build_mole(input_data.molecule, basis, verbose=int(keywords.get("verbose", 0)))
        except RuntimeError as exc:  # charge/spin inconsistent, unknown basis ...
            raise InputError(f"pyscf: {exc}".splitlines()[0]) from None
        except KeyError as exc:
            raise InputError(f"pyscf: basis '{basis}' not available for element {exc}") from None

        with lib.with_omp_threads(int(config.ncores)):
            props, ret = self._run(method, driver, mol, keywords, memory_mb)

        props.update(
            calcinfo_natom=mol.natm,
            calcinfo_nbasis=int(mol.nao),
            calcinfo_nalpha=int(mol.nelec[0]),
            calcinfo_nbeta=int(mol.nelec[1]),
            nuclear_repulsion_energy=float(mol.energy_nuc()),
        )
        return AtomicResult(
            input_data=input_data,
            molecule=input_data.molecule,
            properties=props,
            return_result=ret,
            success=True,
            provenance={"creator": "PySCF", "version": self.get_version(), "routine": "mbdask.programs.pyscf"},
            extras={},
        )

    def _run(self, method: str, driver: str, mol, keywords: dict, memory_mb: float | None):
        read = read_method(method)
        method = read.base
        mf = _mean_field(read.name, mol, keywords, memory_mb)
        e_scf = mf.kernel()
        if not mf.converged:
            raise ConvergenceError(
                f"pyscf: SCF did not converge in {mf.max_cycle} cycles (last energy {float(e_scf):.10f})"
            )
        props: dict[str, Any] = {"scf_total_energy": float(e_scf), "calcinfo_nmo": int(np.shape(mf.mo_coeff)[-1])}
        if getattr(mf, "cycles", None) is not None:
            props["scf_iterations"] = int(mf.cycles)
        energy = float(e_scf)
        post = None
        frozen = keywords.get("frozen_core")
        if method in _MP2:
            from pyscf import mp

            post = mp.MP2(mf, frozen=frozen)
            if keywords.get("density_fit") or method != "mp2":
                post = post.density_fit(auxbasis=keywords.get("auxbasis"))
            if memory_mb:
                post.max_memory = memory_mb
            post.kernel()
            energy = float(post.e_tot)
            props.update(mp2_correlation_energy=float(post.e_corr), mp2_total_energy=energy)
        elif method in _CC:
            from pyscf import cc

            post = cc.CCSD(mf, frozen=frozen)
            if memory_mb:
                post.max_memory = memory_mb
            post.kernel()
            if not post.converged:
                raise ConvergenceError("pyscf: CCSD amplitudes did not converge")
            energy = float(post.e_tot)
            props.update(ccsd_correlation_energy=float(post.e_corr), ccsd_total_energy=energy)
            if method == "ccsd(t)":
                e_t = float(post.ccsd_t())
                energy = float(post.e_tot + e_t)
                props.update(ccsd_prt_pr_correlation_energy=float(post.e_corr + e_t), ccsd_prt_pr_total_energy=energy)
        disp_gradient = None
        if read.dispersion is not None:
            e_disp, disp_gradient = dispersion_correction(read.dispersion, mol, driver == "gradient")
            energy += e_disp
            props.update(scf_dispersion_correction_energy=e_disp, scf_total_energy=energy)
        props["return_energy"] = energy
        ret: Any = energy
        if driver == "gradient":
            grad = _as_numpy((post or mf).nuc_grad_method().kernel())
            if disp_gradient is not None:
                grad = grad + disp_gradient
            props["return_gradient"] = grad
            if post is None:
                props["scf_total_gradient"] = grad
            ret = grad
        elif driver == "hessian":
            hess4 = _as_numpy(mf.Hessian().kernel())
            n = mol.natm
            hess = hess4.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)
            grad = _as_numpy(mf.nuc_grad_method().kernel())
            props.update(return_gradient=grad, scf_total_gradient=grad, return_hessian=hess, scf_total_hessian=hess)
            ret = hess
        return props, ret


__all__ = ["PySCFHarness", "build_mole"]

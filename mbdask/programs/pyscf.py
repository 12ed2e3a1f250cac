"""QCEngine harness for PySCF (``"program": "pyscf"``), which no QCEngine release ships.

Follows QCEngine's ``programs/`` habits: one class, ``found()``, errors raised as QCEngine
exceptions so that ``qcengine.compute`` returns a ``FailedOperation`` with an error type.

Methods: ``hf``/``scf``; any DFT functional PySCF/libxc parses (``b3lyp``, ``pbe0``,
``wb97x-v`` ...); ``mp2`` (conventional, or density-fitted with ``density_fit``);
``ccsd`` and ``ccsd(t)``. Drivers: energy for all; gradient for HF, DFT and MP2; Hessian
for HF and DFT. Ghost atoms (``real: false``) carry basis functions only.

Keywords: ``reference`` (rhf/uhf/rohf/rks/uks/roks; default by multiplicity),
``conv_tol``, ``conv_tol_grad``, ``max_cycle``, ``level_shift``, ``diis_space``,
``density_fit`` (bool), ``auxbasis``, ``grids_level``, ``nlc_grids_level``,
``frozen_core`` (number of frozen orbitals for MP2/CC), ``gpu`` (bool: use gpu4pyscf,
falling back to the CPU with a warning where it or a GPU is missing).
``task_config.ncores`` sets PySCF's OpenMP threads for the call, ``task_config.memory``
its ``max_memory``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
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


def check_specification(
    method: str, basis: str | None, driver: str, keywords: dict, symbols: Iterable[str] = ()
) -> None:
    """Refuse what this harness cannot run, with one line; used by the harness and by ``mbdask plan``."""
    method = method.lower()
    unknown = set(keywords) - _KNOWN_KEYWORDS
    if unknown:
        raise InputError(f"pyscf: unknown keywords {sorted(unknown)} (known: {sorted(_KNOWN_KEYWORDS)})")
    if not basis:
        raise InputError("pyscf: a basis set is required")
    is_dft = method not in _HF | _MP2 | _CC
    if is_dft and not _is_functional(method):
        raise InputError(f"pyscf: method '{method}' is neither hf, mp2, ccsd, ccsd(t) nor a functional libxc knows")
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
    dft = method not in _HF | _MP2 | _CC
    if not ref:
        ref = ("r" if mol.spin == 0 else "u") + ("ks" if dft else "hf")
    allowed = {"rks", "uks", "roks"} if dft else {"rhf", "uhf", "rohf"}
    if ref not in allowed:
        raise InputError(f"pyscf: reference '{ref}' does not fit method '{method}' (use one of {sorted(allowed)})")
    return ref


def _mean_field(method: str, mol, keywords: dict, memory_mb: float | None):
    from pyscf import dft, scf

    ref = _reference(method, mol, keywords)
    if ref.endswith("hf"):
        mf = {"rhf": scf.RHF, "uhf": scf.UHF, "rohf": scf.ROHF}[ref](mol)
    else:
        mf = {"rks": dft.RKS, "uks": dft.UKS, "roks": dft.ROKS}[ref](mol)
        mf.xc = method
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
        mf = _mean_field(method, mol, keywords, memory_mb)
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
        props["return_energy"] = energy
        ret: Any = energy
        if driver == "gradient":
            grad = _as_numpy((post or mf).nuc_grad_method().kernel())
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

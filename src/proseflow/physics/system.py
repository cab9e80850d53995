"""The one place that builds the OpenMM ``System`` for a peptide (paper protocol, PAPER.md section 1).

MD, energy evaluation (OpenMM and PyTorch backends) and the tests all call :func:`create_system`.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import openmm
from openmm import app, unit

FORCEFIELD_FILES = ("amber14-all.xml", "implicit/obc1.xml")
NONBONDED_CUTOFF_NM = 2.0
MAX_FINITE_ENERGY_KJ_PER_MOL = 1e30
"""Energies above this (or NaN) are reported as +inf: float accumulation has overflowed (both energy backends)."""
MOLAR_GAS_CONSTANT_KJ_PER_MOL_K = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)


def kT_kJ_per_mol(temperature_K: float) -> float:
    """Thermal energy k_B T in kJ/mol."""
    return MOLAR_GAS_CONSTANT_KJ_PER_MOL_K * float(temperature_K)


@dataclass(frozen=True)
class ForceFieldSpec:
    """What defines the energy function. Recorded in every artefact that depends on it."""

    forcefield_files: tuple[str, ...] = FORCEFIELD_FILES
    nonbonded_method: str = "CutoffNonPeriodic"
    nonbonded_cutoff_nm: float = NONBONDED_CUTOFF_NM
    constraints: str | None = None
    hydrogen_mass_amu: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


PAPER_FORCEFIELD = ForceFieldSpec()


@functools.lru_cache(maxsize=4)
def forcefield(files: tuple[str, ...] = FORCEFIELD_FILES) -> app.ForceField:
    return app.ForceField(*files)


def create_system(topology: app.Topology, spec: ForceFieldSpec = PAPER_FORCEFIELD) -> openmm.System:
    """Build the OpenMM System of ``topology`` with the paper protocol.

    amber14-all + OBC1 implicit solvent, non-periodic cutoff at 2.0 nm (reaction field, as OpenMM applies
    for ``CutoffNonPeriodic``), no constraints, no hydrogen mass repartitioning, no centre-of-mass motion
    remover (Langevin dynamics needs none, and it would couple the non-interacting copies of batched MD).
    """
    if spec.nonbonded_method != "CutoffNonPeriodic":
        raise ValueError(f"unsupported nonbonded method {spec.nonbonded_method!r}; only CutoffNonPeriodic")
    if spec.constraints not in (None, "None"):
        raise ValueError(f"unsupported constraints {spec.constraints!r}; the paper uses none")
    return forcefield(tuple(spec.forcefield_files)).createSystem(
        topology,
        nonbondedMethod=app.CutoffNonPeriodic,
        nonbondedCutoff=spec.nonbonded_cutoff_nm * unit.nanometer,
        constraints=None,
        rigidWater=False,
        removeCMMotion=False,
        hydrogenMass=None if spec.hydrogen_mass_amu is None else spec.hydrogen_mass_amu * unit.amu,
    )


def platform_by_name(name: str = "auto") -> openmm.Platform:
    """``auto`` picks CUDA, then OpenCL, then CPU, then Reference."""
    available = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if name == "auto":
        for candidate in ("CUDA", "OpenCL", "CPU", "Reference"):
            if candidate in available and _platform_works(candidate):
                return openmm.Platform.getPlatformByName(candidate)
    if name not in available:
        raise ValueError(f"OpenMM platform {name!r} is not available here; available: {available}")
    return openmm.Platform.getPlatformByName(name)


@functools.cache
def _platform_works(name: str) -> bool:
    """A GPU platform can be compiled in yet have no device; try a one-particle context."""
    if name in ("CPU", "Reference"):
        return True
    try:
        system = openmm.System()
        system.addParticle(1.0)
        ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(name))
        del ctx
        return True
    except Exception:
        return False


def platform_properties(platform: openmm.Platform, threads: int | None = None) -> dict[str, str]:
    props: dict[str, str] = {}
    if platform.getName() == "CPU" and threads:
        props["Threads"] = str(int(threads))
    if platform.getName() in ("CUDA", "OpenCL"):
        props["Precision"] = "mixed"
    return props

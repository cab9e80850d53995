"""Energy API: potential energies and forces in kT for batches of configurations ``[B, N, 3]`` in nm.

Backends:
- ``openmm``: one OpenMM ``Context`` per worker process (CPU), or one context on CUDA/OpenCL when present.
  The reference implementation.
- ``torch``: the vectorised PyTorch force field (:mod:`proseflow.physics.energy_torch`), exact to OpenMM.

Every backend builds its System with :func:`proseflow.physics.system.create_system`.
Non-finite input raises ``ValueError``; configurations whose energy overflows (or is NaN) get ``+inf``
energy and zero forces, and never crash a batch.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import openmm
from openmm import unit

from proseflow.physics.structures import topology_of  # noqa: F401 - part of this module's API
from proseflow.physics.system import (
    MAX_FINITE_ENERGY_KJ_PER_MOL,
    create_system,
    kT_kJ_per_mol,
    platform_by_name,
    platform_properties,
)

log = logging.getLogger(__name__)



def check_positions(positions_nm: np.ndarray, n_atoms: int) -> np.ndarray:
    x = np.asarray(positions_nm, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != (n_atoms, 3):
        raise ValueError(f"positions must have shape [B, {n_atoms}, 3] (nm), got {tuple(np.shape(positions_nm))}")
    bad = ~np.isfinite(x).all(axis=(1, 2))
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {len(x)} configurations contain non-finite coordinates "
            f"(first at batch index {int(np.flatnonzero(bad)[0])})"
        )
    return x


class _ContextEvaluator:
    """One OpenMM context evaluating configurations one at a time (kJ/mol, kJ/mol/nm)."""

    def __init__(self, system_xml: str, platform_name: str, threads: int | None):
        system = openmm.XmlSerializer.deserialize(system_xml)
        platform = platform_by_name(platform_name)
        self.n_atoms = system.getNumParticles()
        self.context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform,
                                      platform_properties(platform, threads))

    def __call__(self, x_nm: np.ndarray, forces: bool) -> tuple[np.ndarray, np.ndarray | None]:
        energies = np.empty(len(x_nm))
        f = np.zeros_like(x_nm) if forces else None
        for i, xi in enumerate(x_nm):
            try:
                self.context.setPositions(xi)
                state = self.context.getState(getEnergy=True, getForces=forces)
                e = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            except openmm.OpenMMException:  # e.g. "Particle coordinate is NaN" after an overflow
                e = np.inf
            if not np.isfinite(e) or e > MAX_FINITE_ENERGY_KJ_PER_MOL:
                energies[i] = np.inf
                continue
            energies[i] = e
            if forces:
                fi = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
                f[i] = fi if np.isfinite(fi).all() else 0.0
        return energies, f


_WORKER: _ContextEvaluator | None = None


def _init_worker(system_xml: str, platform_name: str) -> None:
    global _WORKER
    _WORKER = _ContextEvaluator(system_xml, platform_name, threads=1)


def _work(args: tuple[np.ndarray, bool]):
    return _WORKER(*args)


class OpenMMEnergy:
    """Energies in kT from OpenMM, in parallel across CPU cores or on a GPU platform.

    ``n_workers=None`` uses every core (``os.sched_getaffinity``) on the CPU platform; on CUDA/OpenCL one
    context in this process does all the work.
    """

    backend = "openmm"

    def __init__(self, system_or_sequence, temperature_K: float, platform: str = "auto",
                 n_workers: int | None = None, chunk_size: int = 64):
        self.topology = topology_of(system_or_sequence) if not isinstance(system_or_sequence, openmm.System) else None
        system = system_or_sequence if isinstance(system_or_sequence, openmm.System) else create_system(self.topology)
        self.temperature_K = float(temperature_K)
        self.kT = kT_kJ_per_mol(temperature_K)
        self.n_atoms = system.getNumParticles()
        self.platform_name = platform_by_name(platform).getName()
        self._system_xml = openmm.XmlSerializer.serialize(system)
        cores = len(os.sched_getaffinity(0))
        self.n_workers = 1 if self.platform_name in ("CUDA", "OpenCL") else (n_workers or cores)
        self.chunk_size = chunk_size
        self._local: _ContextEvaluator | None = None
        self._pool: ProcessPoolExecutor | None = None

    def _evaluate(self, x_nm: np.ndarray, forces: bool):
        x_nm = check_positions(x_nm, self.n_atoms)
        if self.n_workers == 1 or len(x_nm) <= self.chunk_size:
            if self._local is None:
                self._local = _ContextEvaluator(self._system_xml, self.platform_name,
                                                threads=None if self.n_workers > 1 else 1)
            e, f = self._local(x_nm, forces)
        else:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.n_workers, mp_context=get_context("spawn"),
                                                 initializer=_init_worker,
                                                 initargs=(self._system_xml, self.platform_name))
            chunks = [(x_nm[i : i + self.chunk_size], forces) for i in range(0, len(x_nm), self.chunk_size)]
            parts = list(self._pool.map(_work, chunks))
            e = np.concatenate([p[0] for p in parts])
            f = np.concatenate([p[1] for p in parts]) if forces else None
        return e / self.kT, (None if f is None else f / self.kT)

    def energy_kT(self, positions_nm: np.ndarray) -> np.ndarray:
        return self._evaluate(positions_nm, forces=False)[0]

    def energy_and_forces_kT(self, positions_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._evaluate(positions_nm, forces=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


BACKENDS = ("openmm", "torch")


def make_energy(system_or_sequence, temperature_K: float, backend: str = "openmm", **kwargs):
    """The one entry point to energies in kT. ``backend`` is ``openmm`` or ``torch``."""
    if backend == "openmm":
        return OpenMMEnergy(system_or_sequence, temperature_K, **kwargs)
    if backend == "torch":
        from proseflow.physics.energy_torch import TorchEnergyAPI

        return TorchEnergyAPI(system_or_sequence, temperature_K, **kwargs)
    raise ValueError(f"unknown energy backend {backend!r}; choose one of {BACKENDS}")

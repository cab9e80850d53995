"""The tests' independent energy check: OpenMM's Reference platform on the one system builder
(:func:`proseflow.physics.system.create_system`), one frame at a time: no copies, no batching, no torch. Every energy
path of the package (batched MD copies, the torch backend, the stages' stored energies) is compared against this."""

import numpy as np
import openmm
from openmm import unit

from proseflow.physics.system import create_system


def energies_forces(topology, frames_nm) -> tuple[np.ndarray, np.ndarray]:
    """Potential energy (kJ/mol) and forces (kJ/mol/nm) of ``frames_nm``: [T, N, 3] gives [T] and [T, N, 3]; one frame
    [N, 3] gives a float and [N, 3]."""
    frames = np.asarray(frames_nm, dtype=np.float64)
    one = frames.ndim == 2
    ctx = openmm.Context(create_system(topology), openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    energies, forces = [], []
    for x in frames[None] if one else frames:
        ctx.setPositions(x * unit.nanometer)
        state = ctx.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    energies, forces = np.array(energies), np.array(forces)
    return (float(energies[0]), forces[0]) if one else (energies, forces)

"""All-atom peptide structures from sequence: PeptideBuilder backbone -> PDBFixer -> amber14 hydrogens -> minimised.

Zwitterionic termini (NH3+ / COO-), histidine as HIE (tleap's default at pH 7), all residues L.
"""

from __future__ import annotations

import io
import os
import random
import zlib
from pathlib import Path

import numpy as np
import openmm
from openmm import app, unit

from proseflow.physics.sequences import validate_sequence
from proseflow.physics.system import create_system, forcefield


def _backbone_pdb(sequence: str) -> str:
    """Heavy-atom, extended (beta) peptide from PeptideBuilder, as PDB text."""
    import PeptideBuilder
    from Bio.PDB import PDBIO
    from PeptideBuilder import Geometry

    geos = []
    for letter in sequence:
        geo = Geometry.geometry(letter)
        geo.phi, geo.psi_im1 = -120.0, 130.0  # extended, away from clashes
        geos.append(geo)
    structure = PeptideBuilder.make_structure_from_geos(geos)
    out = io.StringIO()
    pdbio = PDBIO()
    pdbio.set_structure(structure)
    pdbio.save(out)
    return out.getvalue()


def build_peptide(sequence: str, minimize: bool = True, max_iterations: int = 0) -> tuple[app.Topology, np.ndarray]:
    """Topology and positions (nm, ``[N, 3]``) of the capped-free zwitterionic peptide ``sequence``;
    deterministic for a sequence."""
    validate_sequence(sequence, min_length=1)
    # PDBFixer and Modeller.addHydrogens place new atoms with Python's global `random` (unseeded) and relax
    # them with an unseeded integrator on the fastest platform: seed both from the sequence and relax on
    # the Reference platform, so a structure (and all that follows from it) is reproducible.
    state = random.getstate()
    random.seed(zlib.crc32(sequence.encode()))
    try:
        topology, positions_nm = _build(sequence)
    finally:
        random.setstate(state)
    if minimize:
        positions_nm = minimize_positions(topology, positions_nm, max_iterations=max_iterations)
    return topology, positions_nm


def _build(sequence: str) -> tuple[app.Topology, np.ndarray]:
    from pdbfixer import PDBFixer

    fixer = PDBFixer(pdbfile=io.StringIO(_backbone_pdb(sequence)))
    fixer.findMissingResidues()
    fixer.missingResidues = {}
    fixer.findNonstandardResidues()
    fixer.findMissingAtoms()
    fixer.addMissingAtoms(seed=zlib.crc32(sequence.encode()) % 2**31)  # side-chain leftovers, C-terminal OXT

    modeller = app.Modeller(fixer.topology, fixer.positions)
    modeller.delete([a for a in modeller.topology.atoms() if a.element is not None and a.element.symbol == "H"])
    variants = ["HIE" if r.name == "HIS" else None for r in modeller.topology.residues()]
    # the Reference platform: deterministic (the default picks the fastest, whose sums may not be)
    modeller.addHydrogens(forcefield(), pH=7.0, variants=variants,
                          platform=openmm.Platform.getPlatformByName("Reference"))
    topology = modeller.topology
    for residue in topology.residues():
        if residue.name == "HIS":
            residue.name = "HIE"
    return topology, np.asarray(modeller.positions.value_in_unit(unit.nanometer), dtype=np.float64)


def minimize_positions(topology: app.Topology, positions_nm: np.ndarray, max_iterations: int = 0,
                       tolerance_kJ_per_mol_nm: float = 10.0) -> np.ndarray:
    system = create_system(topology)
    integrator = openmm.VerletIntegrator(0.001)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    context.setPositions(positions_nm)
    openmm.LocalEnergyMinimizer.minimize(context, tolerance_kJ_per_mol_nm, max_iterations)
    return np.asarray(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))


def dihedrals_rad(x: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """IUPAC dihedral angles in (-pi, pi] of x [B, N, 3] for quads [D, 4] (atom indices): [B, D]."""
    p0, p1, p2, p3 = (x[:, quads[:, k]] for k in range(4))
    b0, b1, b2 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = np.cross(b0, b1), np.cross(b1, b2)
    y = np.linalg.norm(b1, axis=-1) * np.sum(b0 * n2, axis=-1)
    return np.arctan2(y, np.sum(n1 * n2, axis=-1))


def set_backbone_dihedrals(topology: app.Topology, positions_nm: np.ndarray, phi_deg: float,
                           psi_deg: float) -> np.ndarray:
    """Positions with every backbone phi and psi set to ``phi_deg`` and ``psi_deg``: for each dihedral b-c, the
    side of the molecule beyond c is rotated rigidly about the b-c bond (bond lengths, angles and chirality
    unchanged). A phi inside a ring (proline's N-CA) cannot be turned so and keeps its value. Start structures for
    MD in a chosen backbone basin (``md.<split>.start_phi_psi_deg``); minimise before dynamics."""
    x = np.array(positions_nm, dtype=float)
    neighbours: dict[int, set[int]] = {a.index: set() for a in topology.atoms()}
    for bond in topology.bonds():
        i, j = bond[0].index, bond[1].index
        neighbours[i].add(j)
        neighbours[j].add(i)
    import mdtraj

    top = mdtraj.Topology.from_openmm(topology)
    dummy = mdtraj.Trajectory(np.zeros((1, top.n_atoms, 3), dtype=np.float32), top)
    quads = [(q, phi_deg) for q in mdtraj.compute_phi(dummy)[0]] + [(q, psi_deg) for q in mdtraj.compute_psi(dummy)[0]]
    for quad, target in quads:  # rigid moves: the order does not matter
        b, c = quad[1], quad[2]
        side, stack = {c}, [c]  # atoms reached from c without crossing the b-c bond
        while stack:
            u = stack.pop()
            for n in neighbours[u]:
                if n not in side and not (u == c and n == b):
                    side.add(n)
                    stack.append(n)
        if b in side:  # a ring: the bond does not split the molecule
            continue
        theta = np.radians(target) - dihedrals_rad(x[None], np.asarray(quad)[None])[0, 0]
        axis = (x[c] - x[b]) / np.linalg.norm(x[c] - x[b])
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rot = np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k  # Rodrigues
        moved = np.fromiter(side, dtype=int)
        x[moved] = (x[moved] - x[b]) @ rot.T + x[b]
    return x


def write_pdb(path: str | os.PathLike, topology: app.Topology, positions_nm: np.ndarray) -> None:
    """Write atomically: a half-written PDB never appears under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        app.PDBFile.writeFile(topology, positions_nm * unit.nanometer, fh, keepIds=False)
    os.replace(tmp, path)


def load_pdb(path: str | os.PathLike) -> tuple[app.Topology, np.ndarray]:
    pdb = app.PDBFile(str(path))
    return pdb.topology, np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))


def sequence_of(topology: app.Topology) -> str:
    from proseflow.physics.sequences import THREE_TO_ONE

    return "".join(THREE_TO_ONE[r.name] for r in topology.residues())


def topology_of(system_or_sequence) -> app.Topology:
    """The topology of a sequence (built, not minimised), or the topology itself."""
    if isinstance(system_or_sequence, app.Topology):
        return system_or_sequence
    topology, _ = build_peptide(str(system_or_sequence), minimize=False)
    return topology

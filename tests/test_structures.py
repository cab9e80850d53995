import numpy as np
import pytest
from openmm import app

from proseflow.physics.structures import load_pdb, sequence_of, write_pdb
from proseflow.physics.system import create_system, forcefield

# Sequences with P, G, H, C, W at either terminus.
SEQUENCES = ["PG", "GP", "HC", "CH", "WAW", "PHCWG", "GWCHP"]


def _template_atom_count(seq):
    """Atoms of the amber14 terminal/internal templates (N*, C* variants), computed from the XML."""
    from proseflow.physics.sequences import AMBER_RESIDUE_NAMES

    templates = forcefield()._templates
    n = 0
    for i, c in enumerate(seq):
        name = AMBER_RESIDUE_NAMES[c]
        name = ("N" + name) if i == 0 else ("C" + name) if i == len(seq) - 1 else name
        n += len(templates[name].atoms)
    return n


@pytest.mark.parametrize("seq", SEQUENCES)
def test_atom_counts_match_amber_templates(peptide, seq):
    top, pos = peptide(seq)
    assert top.getNumAtoms() == _template_atom_count(seq) == len(pos)
    assert sequence_of(top) == seq
    assert np.isfinite(pos).all()


@pytest.mark.parametrize("seq", SEQUENCES)
def test_forcefield_accepts_and_termini_are_zwitterionic(peptide, seq):
    top, _ = peptide(seq)
    create_system(top)  # raises if any residue fails to match a template
    residues = list(top.residues())
    first = {a.name for a in residues[0].atoms()}
    last = {a.name for a in residues[-1].atoms()}
    assert "OXT" in last and {"O", "C"} <= last
    n_h_on_n = sum(1 for a in residues[0].atoms() if a.name in {"H", "H1", "H2", "H3"})
    assert n_h_on_n == (2 if seq[0] == "P" else 3), first  # NH3+ (NH2+ for an N-terminal proline)
    if "H" in seq:
        his = next(r for r in residues if r.name == "HIE")
        names = {a.name for a in his.atoms()}
        assert "HE2" in names and "HD1" not in names


def _ca_chirality(top, pos):
    """Signed volume (N-CA) x (C-CA) . (CB-CA) per non-glycine residue."""
    out = []
    for r in top.residues():
        atoms = {a.name: a.index for a in r.atoms()}
        if "CB" not in atoms:
            continue
        ca = pos[atoms["CA"]]
        v = np.dot(np.cross(pos[atoms["N"]] - ca, pos[atoms["C"]] - ca), pos[atoms["CB"]] - ca)
        out.append(v)
    return np.array(out)


@pytest.mark.parametrize("seq", ["ACDEFHIKLMNPQRSTVWY", "WHPC"])
def test_every_ca_is_L(peptide, seq):
    top, pos = peptide(seq)
    vols = _ca_chirality(top, pos)
    assert len(vols) == sum(c != "G" for c in seq)
    # L-amino acids: (N-CA) x (C-CA) . (CB-CA) > 0 (independent check: the mirror image flips every sign)
    assert (vols > 0).all(), vols
    assert (_ca_chirality(top, -pos) < 0).all()


def test_pdb_roundtrip(tmp_path, peptide):
    top, pos = peptide("HW")
    write_pdb(tmp_path / "HW.pdb", top, pos)
    top2, pos2 = load_pdb(tmp_path / "HW.pdb")
    assert [a.name for a in top2.atoms()] == [a.name for a in top.atoms()]
    assert np.abs(pos2 - pos).max() < 1e-3
    assert not list(tmp_path.glob(".*tmp*"))
    app.ForceField("amber14-all.xml", "implicit/obc1.xml").createSystem(top2)


def test_structure_is_reproducible_across_processes():
    """PDBFixer and addHydrogens place atoms with Python's global `random` and relax them with an unseeded
    integrator: the build seeds both, so two fresh interpreters give the same coordinates, and the caller's
    random state is left alone."""
    import os
    import subprocess
    import sys

    code = ("import random; random.seed(None); s = random.getstate()\n"
            "from proseflow.physics.structures import build_peptide\n"
            "t, x = build_peptide('KW'); assert random.getstate() == s; print(x.tobytes().hex())")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2)]
    assert runs[0] and runs[0] == runs[1]


@pytest.mark.parametrize("seq", ["AA", "GPAW", "DGVAHALS"])
def test_backbone_dihedrals_are_set_rigidly(peptide, seq):
    """Every phi and psi reads the requested angle in MDTraj's convention (an independent dihedral code); bond
    lengths and every CA's chirality are those of the input; proline's phi (inside its ring) is left as it was."""
    import mdtraj

    from proseflow.physics.chirality import handedness
    from proseflow.physics.structures import set_backbone_dihedrals

    top, x = peptide(seq)
    y = set_backbone_dihedrals(top, x, 60.0, 45.0)
    traj = mdtraj.Trajectory(np.asarray([x, y], dtype=np.float32), mdtraj.Topology.from_openmm(top))
    phi, psi = np.degrees(mdtraj.compute_phi(traj)[1]), np.degrees(mdtraj.compute_psi(traj)[1])
    proline = np.array([r.name == "PRO" for r in list(top.residues())[1:]])
    np.testing.assert_allclose(phi[1][~proline], 60.0, atol=1e-3)
    np.testing.assert_allclose(phi[1][proline], phi[0][proline], atol=1e-3)
    np.testing.assert_allclose(psi[1], 45.0, atol=1e-3)
    assert np.abs(phi[1] - phi[0])[~proline].max() > 30  # it did move them
    bonds = np.array([[a.index for a in b] for b in top.bonds()])
    length = lambda p: np.linalg.norm(p[bonds[:, 0]] - p[bonds[:, 1]], axis=1)  # noqa: E731
    np.testing.assert_allclose(length(y), length(x), atol=1e-9)
    np.testing.assert_array_equal(handedness(y, top), handedness(x, top))
    assert (handedness(y, top) == 1).all()

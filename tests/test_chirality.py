import mdtraj as md
import numpy as np
import pytest

from proseflow.physics.chirality import (
    check_chirality,
    chiral_centres,
    fix_chirality,
    handedness,
    signed_volumes,
)
from proseflow.physics.structures import build_peptide

SEQUENCES = ["GG", "AITG", "PTCW", "IT"]


@pytest.fixture(scope="module", params=SEQUENCES)
def built(request):
    top, x = build_peptide(request.param, minimize=False)
    return request.param, md.Topology.from_openmm(top), x


def _centred(x):
    return x - x.mean(axis=0)


def _invert_one_ca(top: md.Topology, x: np.ndarray, residue_index: int) -> np.ndarray:
    """Reflect the side chain and HA of one residue through its N-CA-C plane (an L -> D flip of that CA)."""
    residue = top.residue(residue_index)
    backbone = {"N", "H", "H1", "H2", "H3", "CA", "C", "O", "OXT"}
    idx = {a.name: a.index for a in residue.atoms}
    normal = np.cross(x[idx["N"]] - x[idx["CA"]], x[idx["C"]] - x[idx["CA"]])
    normal /= np.linalg.norm(normal)
    y = x.copy()
    for atom in residue.atoms:
        if atom.name not in backbone:
            d = y[atom.index] - x[idx["CA"]]
            y[atom.index] -= 2 * np.dot(d, normal) * normal
    return y


def test_centres_found(built):
    seq, top, _ = built
    centres = chiral_centres(top)
    expected = sum(a != "G" for a in seq) + seq.count("I") + seq.count("T")
    assert len(centres) == expected
    assert all(label.endswith(":CA") or label[:3] in ("ILE", "THR") for label in centres.labels)


def test_built_l_peptide_passes_and_mirror_is_fixed(built):
    seq, top, x = built
    x = _centred(x)
    assert check_chirality(x, top).tolist() == [True]
    batch = np.stack([x, -x, x * np.array([-1.0, 1.0, 1.0])]).astype(np.float32)  # L, inverted, mirrored
    fixed, n_fixed, n_unfixable, ok = fix_chirality(batch, top)
    assert fixed.dtype == np.float32
    assert ok.tolist() == [True, True, True] and n_unfixable == 0
    if seq == "GG":  # no centres: nothing to fix
        assert n_fixed == 0
        return
    assert check_chirality(batch, top).tolist() == [True, False, False]
    assert n_fixed == 2
    assert np.array_equal(fixed[0], batch[0]) and np.allclose(fixed[1], x, atol=1e-6)
    assert check_chirality(fixed, top).all()


def test_one_inverted_centre_is_unfixable():
    top, x = build_peptide("AITG")  # minimised
    top = md.Topology.from_openmm(top)
    y = _invert_one_ca(top, x, 0)  # D-Ala, L-Ile, L-Thr
    hand = handedness(y, top)[0]
    assert hand[0] == -1 and np.all(hand[1:] == 1)
    fixed, n_fixed, n_unfixable, ok = fix_chirality(np.stack([x, y, -y]), top)
    assert ok.tolist() == [True, False, False] and n_fixed == 0 and n_unfixable == 2
    assert np.array_equal(fixed[1], y)


def test_side_chain_centre_alone_detected():
    top, x = build_peptide("IT", minimize=False)
    top = md.Topology.from_openmm(top)
    centres = chiral_centres(top)
    ile_cb = centres.labels.index("ILE1:CB")
    i_cg1, i_cg2 = (next(a.index for a in top.atoms if a.name == n and a.residue.index == 0) for n in ("CG1", "CG2"))
    y = x.copy()
    y[[i_cg1, i_cg2]] = y[[i_cg2, i_cg1]]  # swap two CB substituents: allo-Ile (2S,3R)
    hand = handedness(y, top)[0]
    assert hand[ile_cb] == -1 and np.sum(hand == -1) == 1
    assert not check_chirality(y, top)[0]


def test_reference_signs_match_cip_independently():
    """Compute R/S with the CIP rule directly (viewer opposite the lowest-priority H) for L-Ala CA."""
    top, x = build_peptide("AG", minimize=False)
    top = md.Topology.from_openmm(top)
    idx = {a.name: a.index for a in top.residue(0).atoms}
    h = x[idx["HA"]] - x[idx["CA"]]
    view = h / np.linalg.norm(h)  # viewing direction: the viewer is opposite H and looks towards it
    p = [x[idx[n]] - x[idx["CA"]] for n in ("N", "C", "CB")]  # CIP priorities N > C > CB > H
    proj = [v - np.dot(v, view) * view for v in p]
    turn = np.dot(np.cross(proj[0], proj[1]), view) + np.dot(np.cross(proj[1], proj[2]), view)
    # positive rotation about the viewing direction = clockwise for the viewer = R; L-Ala is S
    assert turn < 0
    assert signed_volumes(x, chiral_centres(top))[0, 0] > 0

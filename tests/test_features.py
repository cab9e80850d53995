"""Per-atom conditioning and the chemistry-aware permutations (PAPER.md section 2)."""

import mdtraj
import numpy as np
import pytest

from proseflow.data.features import (
    ATOM_NAMES,
    BACKBONE_FIRST_IDX,
    PERMUTATION_NAMES,
    RESIDUE_BY_RESIDUE_IDX,
    pad_permutations,
    standard_atom_name,
    system_features,
)
from proseflow.physics.sequences import AMINO_ACIDS
from proseflow.physics.structures import build_peptide

# Every amino acid once at the N terminus, once in the middle and once at the C terminus.
TRIPEPTIDES = [AMINO_ACIDS[i] + AMINO_ACIDS[(i + 7) % 20] + AMINO_ACIDS[(i + 13) % 20] for i in range(20)]
BACKBONE = ("N", "CA", "C", "O", "OXT")
BRANCHED_OR_RING = set("DEFHILNPQRTVWY")  # side chains with a branch point or a ring


@pytest.fixture(scope="module")
def tripeptides():
    return {seq: build_peptide(seq, minimize=False)[0] for seq in TRIPEPTIDES}


def test_vocabulary_is_exactly_the_standardised_names_of_all_20_amino_acids(tripeptides):
    used = set()
    for topology in tripeptides.values():
        for atom in topology.atoms():
            used.add(standard_atom_name(atom.name, atom.residue.name))
    assert used == set(ATOM_NAMES)
    assert len(ATOM_NAMES) == 54  # the paper's ~54 atom types
    assert len(set(ATOM_NAMES)) == len(ATOM_NAMES)


def test_equivalent_atoms_share_a_type():
    assert {standard_atom_name(n, "ALA") for n in ("HB1", "HB2", "HB3")} == {"HB"}
    assert {standard_atom_name(n, "LYS") for n in ("H", "H1", "H2", "H3")} == {"H"}  # N-terminal NH3+
    assert {standard_atom_name(n, "GLY") for n in ("HA2", "HA3")} == {"HA"}
    assert {standard_atom_name(n, "ASP") for n in ("OD1", "OD2")} == {"OD"}
    assert standard_atom_name("HD1", "PHE") != standard_atom_name("HD2", "PHE")  # ring positions differ


def test_conditioning_of_a_sequence(tripeptides):
    seq = TRIPEPTIDES[0]
    feats = system_features(tripeptides[seq])
    atoms = list(tripeptides[seq].atoms())
    assert feats["chain_length"] == 3
    assert feats["atom_names"] == [a.name for a in atoms]
    assert [ATOM_NAMES[t - 1] for t in feats["atom_type"]] == [
        standard_atom_name(a.name, a.residue.name) for a in atoms
    ]
    assert feats["residue_index"].tolist() == [a.residue.index + 1 for a in atoms]
    assert feats["residue_type"].tolist() == [AMINO_ACIDS.index(seq[a.residue.index]) + 1 for a in atoms]
    assert feats["atom_type"].min() >= 1 and feats["residue_type"].min() >= 1


def test_sequence_openmm_and_mdtraj_topologies_give_the_same_features(tripeptides):
    seq = "PWH"
    topology = build_peptide(seq, minimize=False)[0]
    for other in (system_features(seq), system_features(mdtraj.Topology.from_openmm(topology))):
        ref = system_features(topology)
        for key in ("atom_type", "residue_type", "residue_index", "permutations"):
            np.testing.assert_array_equal(other[key], ref[key])


@pytest.mark.parametrize("seq", ["PWH", "GAVL", "HPGW", "YIT", TRIPEPTIDES[3]])
def test_permutations_follow_the_paper(seq):
    feats = system_features(seq)
    names = np.array(feats["atom_names"])
    res = feats["residue_index"]
    perms = feats["permutations"]
    n = len(names)
    assert perms.shape == (8, n) and len(PERMUTATION_NAMES) == 8
    for p in perms:
        assert sorted(p.tolist()) == list(range(n))  # a bijection of the atoms
    for k in range(0, 8, 2):
        np.testing.assert_array_equal(perms[k + 1], perms[k][::-1])  # flip = reversed
    for k in BACKBONE_FIRST_IDX[::2]:  # backbone-first: all N, CA, C, O (, OXT) in residue order first
        expected = [(r, a) for r in range(1, len(seq) + 1) for a in BACKBONE if a != "OXT" or r == len(seq)]
        head = perms[k][: len(expected)]
        assert list(zip(res[head].tolist(), names[head].tolist(), strict=True)) == expected
        assert not np.isin(names[perms[k][len(expected) :]], BACKBONE).any()
        assert np.all(np.diff(res[perms[k][len(expected) :]]) >= 0)  # then residue by residue
    for k in RESIDUE_BY_RESIDUE_IDX[::2]:  # residue-by-residue: contiguous residues, N first, C O last
        order = perms[k]
        assert np.all(np.diff(res[order]) >= 0)
        for r in range(1, len(seq) + 1):
            block = names[order[res[order] == r]].tolist()
            assert block[0] == "N" and block[1] in ("H", "H2", "CA")
            assert block[-3:] == ["C", "O", "OXT"] if r == len(seq) else block[-2:] == ["C", "O"]


def test_hydrogens_follow_their_heavy_atom_in_the_side_chain(tripeptides):
    for topology in list(tripeptides.values())[:6]:
        feats = system_features(topology)
        bonded = {frozenset((b[0].index, b[1].index)) for b in topology.bonds()}
        atoms = list(topology.atoms())
        for k in (2, 6):
            order = feats["permutations"][k]
            for prev, cur in zip(order[:-1], order[1:], strict=True):
                a = atoms[cur]
                if a.element.symbol == "H" and a.name not in ("H", "H2", "H3", "HA", "HA2", "HA3"):
                    parent = next(j for j in range(len(atoms)) if frozenset((j, cur)) in bonded)
                    assert prev == parent or frozenset((parent, prev)) in bonded


def test_variant_reverses_rings_and_branches_only_where_there_are_some(tripeptides):
    for seq, topology in tripeptides.items():
        feats = system_features(topology)
        res = feats["residue_index"]
        std, var = feats["permutations"][2], feats["permutations"][6]
        middle = seq[1]
        differs = not np.array_equal(std[res[std] == 2], var[res[var] == 2])
        assert differs == (middle in BRANCHED_OR_RING), middle
        assert sorted(std[res[std] == 2]) == sorted(var[res[var] == 2])

    def side_chain(seq, k):
        feats = system_features(seq)
        names, res = np.array(feats["atom_names"]), feats["residue_index"]
        order = feats["permutations"][k]
        return [n for n in names[order[res[order] == 2]] if not n.startswith("H") and n not in BACKBONE]

    assert side_chain("GPG", 2)[0] == "CB" and side_chain("GPG", 6)[0] == "CD"  # proline ring both ways
    phe_std, phe_var = side_chain("GFG", 2), side_chain("GFG", 6)
    assert phe_std.index("CD1") < phe_std.index("CD2") and phe_var.index("CD2") < phe_var.index("CD1")
    assert phe_var[2:] == phe_std[2:][::-1]  # the ring is walked the other way round
    val_std, val_var = side_chain("GVG", 2), side_chain("GVG", 6)
    assert val_std == ["CB", "CG1", "CG2"] and val_var == ["CB", "CG2", "CG1"]
    trp_var = side_chain("GWG", 6)
    assert trp_var[:3] == ["CB", "CG", "CD2"]


def test_pad_permutations_keep_padding_last_in_order():
    perms = system_features("GAVL")["permutations"]
    n = perms.shape[1]
    padded = pad_permutations(perms, n + 5)
    assert padded.shape == (8, n + 5)
    np.testing.assert_array_equal(padded[:, :n], perms)
    np.testing.assert_array_equal(padded[:, n:], np.broadcast_to(np.arange(n, n + 5), (8, 5)))
    with pytest.raises(ValueError):
        pad_permutations(perms, n - 1)

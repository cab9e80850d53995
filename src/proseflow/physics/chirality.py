"""Chirality of peptide samples (PAPER.md section 4): detect wrong-handed samples, fix them by mirroring.

A centre's handedness is the sign of the signed volume det[a - c, b - c, d - c] of three heavy-atom
substituents a, b, d around the centre c. With the CIP priorities 1, 2, 3 as a, b, d, the volume is
positive for S and negative for R (lowest priority pointing away, 1 -> 2 -> 3 counter-clockwise is S).
Reference signs (checked in tests against amber14 structures built by ``proseflow.physics.structures``):
- CA of every residue but Gly, (N, C, CB): positive. L = S for N > C(O,O) > CB (for Cys CB > C makes it R
  by name, but the spatial arrangement, and so this sign, is the same).
- Ile CB (2S,3S), (CA, CG1, CG2) with CA > CG1 > CG2: S -> positive.
- Thr CB (2S,3R), (OG1, CA, CG2) with OG1 > CA > CG2: R -> negative.
Mirroring is the point inversion x -> -x of all coordinates (a reflection up to a rotation): it flips
every centre, so a sample with all centres wrong is fixed and one with mixed handedness cannot be.
"""

from __future__ import annotations

from dataclasses import dataclass

import mdtraj as md
import numpy as np

# residue name -> list of (centre atom, (a, b, d) substituents, expected sign of det[a-c, b-c, d-c])
_SIDE_CHAIN_CENTRES = {
    "ILE": [("CB", ("CA", "CG1", "CG2"), 1)],
    "THR": [("CB", ("OG1", "CA", "CG2"), -1)],
}
_CA_CENTRE = ("CA", ("N", "C", "CB"), 1)


@dataclass
class ChiralCentres:
    indices: np.ndarray  # [C, 4] atom indices (centre, a, b, d)
    expected_sign: np.ndarray  # [C] +1 / -1
    labels: list[str]  # e.g. "ILE2:CB"

    def __len__(self) -> int:
        return len(self.labels)


def chiral_centres(topology) -> ChiralCentres:
    """CA of every non-glycine residue, Ile CB and Thr CB, of an OpenMM or mdtraj topology."""
    if not isinstance(topology, md.Topology):
        topology = md.Topology.from_openmm(topology)
    rows, signs, labels = [], [], []
    for residue in topology.residues:
        names = {atom.name: atom.index for atom in residue.atoms}
        for centre, subs, sign in [_CA_CENTRE, *_SIDE_CHAIN_CENTRES.get(residue.name, [])]:
            if centre in names and all(s in names for s in subs):
                rows.append([names[centre], *(names[s] for s in subs)])
                signs.append(sign)
                labels.append(f"{residue.name}{residue.resSeq}:{centre}")
    return ChiralCentres(indices=np.asarray(rows, dtype=np.int64).reshape(-1, 4),
                         expected_sign=np.asarray(signs, dtype=np.int64), labels=labels)


def signed_volumes(positions: np.ndarray, centres: ChiralCentres) -> np.ndarray:
    """[B, C] det[a - c, b - c, d - c] of positions [B, N, 3] (or [N, 3]; any length unit)."""
    x = np.asarray(positions, dtype=np.float64)
    x = x[None] if x.ndim == 2 else x
    c, a, b, d = (x[:, centres.indices[:, k]] for k in range(4))
    return np.einsum("bci,bci->bc", a - c, np.cross(b - c, d - c))


def handedness(positions: np.ndarray, topology_or_centres) -> np.ndarray:
    """[B, C] +1 where a centre has the reference handedness, -1 mirrored, 0 degenerate (planar)."""
    centres = topology_or_centres if isinstance(topology_or_centres, ChiralCentres) else chiral_centres(
        topology_or_centres)
    return np.sign(signed_volumes(positions, centres)).astype(np.int64) * centres.expected_sign


def check_chirality(positions: np.ndarray, topology) -> np.ndarray:
    """[B] bool: every chiral centre of the sample has the reference (L) handedness."""
    return np.all(handedness(positions, topology) == 1, axis=1)


def fix_chirality(positions: np.ndarray, topology) -> tuple[np.ndarray, int, int, np.ndarray]:
    """Mirror (x -> -x) samples whose centres are ALL wrong-handed.

    Returns (fixed positions [B, N, 3], n_fixed, n_unfixable, ok_mask [B]): ok_mask marks samples correct
    after fixing; unfixable ones (mixed or degenerate handedness) are returned unchanged with ok False.
    A system without chiral centres (e.g. GG) is always ok.
    """
    x = np.array(positions, copy=True)  # keeps a float dtype (float32 stays float32)
    x = x.astype(np.float64) if not np.issubdtype(x.dtype, np.floating) else x
    x = x[None] if x.ndim == 2 else x
    hand = handedness(x, topology)
    ok = np.all(hand == 1, axis=1)
    mirrored = np.all(hand == -1, axis=1) & (hand.shape[1] > 0)
    x[mirrored] *= -1.0
    ok_after = ok | mirrored
    return x, int(mirrored.sum()), int((~ok_after).sum()), ok_after

"""Per-atom conditioning features and the chemistry-aware atom permutations (PAPER.md section 2).

Conditioning (index 0 is always padding):
- ``atom_type`` 1..54: the standardised PDB atom name (:data:`ATOM_NAMES`). Chemically equivalent atoms
  share a name: hydrogens numbered within their heavy atom's group lose the number (HB1/HB2/HB3 -> HB,
  HD21/HD22 -> HD2, N-terminal H/H2/H3 -> H, glycine HA2/HA3 -> HA) except the single ring hydrogens of
  His/Phe/Trp/Tyr, which keep their position (HD1, HE1, HZ2, ...); side-chain OD1/OD2 -> OD, OE1/OE2 -> OE.
- ``residue_type`` 1..20 in :data:`proseflow.physics.sequences.AMINO_ACIDS` order.
- ``residue_index`` 1..L and ``chain_length`` L.

Permutations: ``perm[k]`` lists original atom indices in the order block ``k`` visits them
(``x_permuted = x[perm[k]]``). The 8 rows, in :data:`proseflow.data.permutations.PERMUTATION_NAMES` order:
``[bb_std, bb_std_flip, rbr_std, rbr_std_flip, bb_var, bb_var_flip, rbr_var, rbr_var_flip]``:
- backbone-first (bb): N, CA, C, O (, OXT) of every residue in residue order; then per residue its
  backbone hydrogens (H, H2, H3, HA, HA2, HA3) and its side chain.
- residue-by-residue (rbr): per residue N, H, H2, H3, CA, HA, HA2, HA3, side chain, C, O (, OXT).
- side chain: depth-first over the topology's bonds from the side-chain atoms bonded to the backbone
  (CB; also CD for proline), each heavy atom followed at once by its hydrogens; branches visited in
  atom-name order. The "variant" reverses the order of the roots and of every branch, so rings are
  walked the other way round (Phe CD2 before CD1, Pro from CD) and branches swap (Val CG2 before CG1).
- flip: the same order reversed.
Which row each flow block uses: :data:`proseflow.data.permutations.SCHEDULES`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from proseflow.data.permutations import (  # noqa: F401 - re-exported: the loader's rows
    BACKBONE_FIRST_IDX,
    N_PERMUTATIONS,
    PERMUTATION_NAMES,
    RESIDUE_BY_RESIDUE_IDX,
)
from proseflow.physics.sequences import AMINO_ACIDS, THREE_TO_ONE

ATOM_NAMES: tuple[str, ...] = (
    "C", "CA", "CB", "CD", "CD1", "CD2", "CE", "CE1", "CE2", "CE3", "CG", "CG1", "CG2", "CH2", "CZ", "CZ2",
    "CZ3", "H", "HA", "HB", "HD", "HD1", "HD2", "HE", "HE1", "HE2", "HE3", "HG", "HG1", "HG2", "HH", "HH1",
    "HH2", "HZ", "HZ2", "HZ3", "N", "ND1", "ND2", "NE", "NE1", "NE2", "NH1", "NH2", "NZ", "O", "OD", "OE",
    "OG", "OG1", "OH", "OXT", "SD", "SG",
)  # fmt: skip
"""Fixed vocabulary of standardised atom names; ``atom_type = ATOM_NAMES.index(name) + 1`` (0 = padding)."""
ATOM_TYPE = {name: i + 1 for i, name in enumerate(ATOM_NAMES)}
N_ATOM_TYPES = len(ATOM_NAMES) + 1  # including padding
N_RESIDUE_TYPES = len(AMINO_ACIDS) + 1  # including padding

BACKBONE_HEAVY = ("N", "CA", "C", "O", "OXT")
BACKBONE_HYDROGENS = ("H", "H1", "H2", "H3", "HA", "HA2", "HA3")
_BEFORE_SIDE_CHAIN = ("N", "H", "H1", "H2", "H3", "CA", "HA", "HA2", "HA3")
_AFTER_SIDE_CHAIN = ("C", "O", "OXT")
_NAME_ALIASES = {
    "HN": "H",
    "HT1": "H",
    "HT2": "H2",
    "HT3": "H3",
    "OT1": "O",
    "OT2": "OXT",
    "OC1": "O",
    "OC2": "OXT",
}
_AROMATIC = {"HIS", "HIE", "HID", "HIP", "PHE", "TRP", "TYR"}



def standard_atom_name(atom_name: str, residue_name: str) -> str:
    """Standardised atom name of ``atom_name`` in residue ``residue_name`` (three-letter, amber or PDB)."""
    name = _NAME_ALIASES.get(atom_name, atom_name)
    aromatic_ring_h = residue_name in _AROMATIC and name[:2] in ("HD", "HE", "HZ", "HH")
    if name[0] == "H" and name[-1] in "123" and not aromatic_ring_h:
        name = name[:-1]
    if name[:2] in ("OD", "OE"):
        name = name[:2]
    return name


class _Graph:
    """The minimum the features need from an OpenMM or MDTraj topology: residues, atoms, bonds."""

    def __init__(self, topology):
        def call(x):
            return x() if callable(x) else x

        self.residue_names: list[str] = []
        self.residue_atoms: list[list[int]] = []
        self.atom_names: list[str] = []
        self.is_hydrogen: list[bool] = []
        for residue in call(topology.residues):
            self.residue_names.append(residue.name)
            atoms = list(call(residue.atoms))
            self.residue_atoms.append([a.index for a in atoms])
            for a in atoms:
                if a.index != len(self.atom_names):
                    raise ValueError("topology atoms must be numbered 0..N-1 in residue order")
                self.atom_names.append(_NAME_ALIASES.get(a.name, a.name))
                self.is_hydrogen.append(a.element is not None and a.element.symbol == "H")
        self.neighbours: list[list[int]] = [[] for _ in self.atom_names]
        for bond in call(topology.bonds):
            i, j = bond[0].index, bond[1].index
            self.neighbours[i].append(j)
            self.neighbours[j].append(i)

    @property
    def n_atoms(self) -> int:
        return len(self.atom_names)


@functools.lru_cache(maxsize=64)
def _sequence_topology(sequence: str):
    from proseflow.physics.structures import build_peptide

    return build_peptide(sequence, minimize=False)[0]


def _as_graph(topology_or_sequence) -> _Graph:
    if isinstance(topology_or_sequence, _Graph):
        return topology_or_sequence
    if isinstance(topology_or_sequence, str):
        topology_or_sequence = _sequence_topology(topology_or_sequence)
    return _Graph(topology_or_sequence)


def _side_chain(graph: _Graph, atoms: list[int], variant: bool) -> list[int]:
    """Depth-first side-chain order: each heavy atom, then its hydrogens, then its branches."""
    backbone = {i for i in atoms if graph.atom_names[i] in BACKBONE_HEAVY + BACKBONE_HYDROGENS}
    side = [i for i in atoms if i not in backbone]
    side_set = set(side)
    name = graph.atom_names.__getitem__
    heavy = [i for i in side if not graph.is_hydrogen[i]]
    roots = sorted((i for i in heavy if any(j in backbone for j in graph.neighbours[i])), key=name)
    if variant:
        roots.reverse()
    order: list[int] = []
    seen: set[int] = set()

    def visit(i: int) -> None:
        seen.add(i)
        order.append(i)
        nbrs = sorted((j for j in graph.neighbours[i] if j in side_set and j not in seen), key=name)
        hydrogens = [j for j in nbrs if graph.is_hydrogen[j]]
        order.extend(hydrogens)
        seen.update(hydrogens)
        branches = [j for j in nbrs if not graph.is_hydrogen[j]]
        for j in reversed(branches) if variant else branches:
            if j not in seen:
                visit(j)

    for r in roots:
        if r not in seen:
            visit(r)
    if len(order) != len(side):
        missing = sorted(name(i) for i in side_set - set(order))
        raise ValueError(
            f"side-chain atoms {missing} are not bonded to the backbone; does the topology have bonds?"
        )
    return order


# The side-chain orders of the authors' released Prose (their permutations table; shared/prose-fixture), as
# (standard, variant) atom-name orders per residue; a residue with one order uses it for both. Histidine uses
# their HIE entry. Checked against the fixture's permutations (tests/test_released.py).
_RELEASED_SIDE_CHAINS = {
    "ALA": ("CB HB1 HB2 HB3",),
    "ARG": ("CB HB2 HB3 CG HG2 HG3 CD HD2 HD3 NE HE CZ NH1 HH11 HH12 NH2 HH21 HH22",),
    "ASN": ("CB HB2 HB3 CG OD1 ND2 HD21 HD22",),
    "ASP": ("CB HB2 HB3 CG OD1 OD2",),
    "CYS": ("CB HB2 HB3 SG HG",),
    "GLN": ("CB HB2 HB3 CG HG2 HG3 CD OE1 NE2 HE21 HE22",),
    "GLU": ("CB HB2 HB3 CG HG2 HG3 CD OE1 OE2",),
    "GLY": ("",),
    "HIS": ("CB HB2 HB3 CG ND1 CE1 HE1 NE2 HE2 CD2 HD2", "CB HB2 HB3 CG CD2 HD2 NE2 HE2 CE1 HE1 ND1"),
    "ILE": ("CB HB CG2 HG21 HG22 HG23 CG1 HG12 HG13 CD1 HD11 HD12 HD13",
            "CB HB CG1 HG12 HG13 CD1 HD11 HD12 HD13 CG2 HG21 HG22 HG23"),
    "LEU": ("CB HB2 HB3 CG HG CD1 HD11 HD12 HD13 CD2 HD21 HD22 HD23",
            "CB HB2 HB3 CG HG CD2 HD21 HD22 HD23 CD1 HD11 HD12 HD13"),
    "LYS": ("CB HB2 HB3 CG HG2 HG3 CD HD2 HD3 CE HE2 HE3 NZ HZ1 HZ2 HZ3",),
    "MET": ("CB HB2 HB3 CG HG2 HG3 SD CE HE1 HE2 HE3",),
    "PHE": ("CB HB2 HB3 CG CD1 HD1 CE1 HE1 CZ HZ CE2 HE2 CD2 HD2", "CB HB2 HB3 CG CD2 HD2 CE2 HE2 CZ HZ CE1 HE1 CD1 HD1"),
    "PRO": ("CB HB2 HB3 CG HG2 HG3 CD HD2 HD3", "CD HD2 HD3 CG HG2 HG3 CB HB2 HB3"),
    "SER": ("CB HB2 HB3 OG HG",),
    "THR": ("CB HB OG1 HG1 CG2 HG21 HG22 HG23", "CB HB CG2 HG21 HG22 HG23 OG1 HG1"),
    "TRP": ("CB HB2 HB3 CG CD1 HD1 NE1 HE1 CE2 CZ2 HZ2 CH2 HH2 CZ3 HZ3 CE3 HE3 CD2",
            "CB HB2 HB3 CG CD2 CE3 HE3 CZ3 HZ3 CH2 HH2 CZ2 HZ2 CE2 NE1 HE1 CD1 HD1"),
    "TYR": ("CB HB2 HB3 CG CD1 HD1 CE1 HE1 CZ OH HH CE2 HE2 CD2 HD2", "CB HB2 HB3 CG CD2 HD2 CE2 HE2 CZ OH HH CE1 HE1 CD1 HD1"),
    "VAL": ("CB HB CG1 HG11 HG12 HG13 CG2 HG21 HG22 HG23", "CB HB CG2 HG21 HG22 HG23 CG1 HG11 HG12 HG13"),
}
SIDE_CHAIN_STYLES = ("proseflow", "released")


def _released_side_chain(graph: _Graph, atoms: list[int], variant: bool, residue: str) -> list[int]:
    orders = _RELEASED_SIDE_CHAINS[{"HIE": "HIS", "HID": "HIS", "HIP": "HIS"}.get(residue, residue)]
    return _named(graph, atoms, orders[-1 if variant else 0].split())


def _named(graph: _Graph, atoms: list[int], names: Sequence[str]) -> list[int]:
    by_name = {graph.atom_names[i]: i for i in atoms}
    return [by_name[n] for n in names if n in by_name]


def chemistry_permutations(topology_or_sequence, side_chains: str = "proseflow") -> np.ndarray:
    """The 8 permutations ``[8, N]`` (int64) in :data:`PERMUTATION_NAMES` order. ``side_chains``: "proseflow"
    (depth-first over the bonds) or "released" (the authors' released Prose's side-chain orders)."""
    if side_chains not in SIDE_CHAIN_STYLES:
        raise ValueError(f"side_chains must be one of {SIDE_CHAIN_STYLES}, got {side_chains!r}")
    graph = _as_graph(topology_or_sequence)
    out = []
    for variant in (False, True):
        backbone_first_head, backbone_first_tail, residue_by_residue = [], [], []
        for res_name, atoms in zip(graph.residue_names, graph.residue_atoms, strict=True):
            side_chain = (_released_side_chain(graph, atoms, variant, res_name) if side_chains == "released"
                          else _side_chain(graph, atoms, variant))
            backbone_first_head += _named(graph, atoms, BACKBONE_HEAVY)
            backbone_first_tail += _named(graph, atoms, BACKBONE_HYDROGENS) + side_chain
            residue_by_residue += (
                _named(graph, atoms, _BEFORE_SIDE_CHAIN)
                + side_chain
                + _named(graph, atoms, _AFTER_SIDE_CHAIN)
            )
        for perm in (backbone_first_head + backbone_first_tail, residue_by_residue):
            perm = np.asarray(perm, dtype=np.int64)
            if len(perm) != graph.n_atoms or len(np.unique(perm)) != graph.n_atoms:
                raise ValueError(f"atom names of residues {graph.residue_names} do not give a permutation")
            out += [perm, perm[::-1].copy()]
    return np.stack(out)


def system_features(topology_or_sequence, side_chains: str = "proseflow") -> dict:
    """Conditioning of one peptide from its topology (OpenMM or MDTraj) or its sequence (built with
    :func:`proseflow.physics.structures.build_peptide`, whose atom order every artefact uses).

    Returns ``atom_type``, ``residue_type``, ``residue_index`` (int64 ``[N]``), ``chain_length`` (int),
    ``atom_names`` (list of the topology's names) and ``permutations`` (int64 ``[8, N]``, with the side-chain
    orders ``side_chains`` of :func:`chemistry_permutations`).
    """
    graph = _as_graph(topology_or_sequence)
    atom_type, residue_type, residue_index = [], [], []
    for r, (res_name, atoms) in enumerate(zip(graph.residue_names, graph.residue_atoms, strict=True)):
        if res_name not in THREE_TO_ONE:
            raise ValueError(f"residue {r + 1} ({res_name}) is not one of the 20 standard amino acids")
        for i in atoms:
            std = standard_atom_name(graph.atom_names[i], res_name)
            if std not in ATOM_TYPE:
                raise ValueError(
                    f"atom {graph.atom_names[i]} of residue {r + 1} ({res_name}) is not in ATOM_NAMES"
                )
            atom_type.append(ATOM_TYPE[std])
            residue_type.append(AMINO_ACIDS.index(THREE_TO_ONE[res_name]) + 1)
            residue_index.append(r + 1)
    return {
        "atom_type": np.asarray(atom_type, dtype=np.int64),
        "residue_type": np.asarray(residue_type, dtype=np.int64),
        "residue_index": np.asarray(residue_index, dtype=np.int64),
        "chain_length": len(graph.residue_names),
        "atom_names": list(graph.atom_names),
        "permutations": chemistry_permutations(graph, side_chains),
    }


def equivalent_hydrogen_groups(topology_or_sequence) -> list[tuple[int, int, tuple[int, ...]]]:
    """(centre, reference, hydrogens) of every sp3 atom carrying 2-3 hydrogens of one standardised name
    (methyl and methylene carbons, NH3+ nitrogens): atoms that share an atom type and can only be told
    apart by their geometric labelling. ``reference`` is the centre's first heavy neighbour."""
    graph = _as_graph(topology_or_sequence)
    res_of = {i: r for r, atoms in enumerate(graph.residue_atoms) for i in atoms}
    groups = []
    for c, nbrs in enumerate(graph.neighbours):
        if graph.is_hydrogen[c] or len(nbrs) != 4:  # sp3 only: planar NH2 / CH groups are not rotors
            continue
        hs = [j for j in nbrs if graph.is_hydrogen[j]]
        heavy = sorted(j for j in nbrs if not graph.is_hydrogen[j])
        res = graph.residue_names[res_of[c]]
        names = {standard_atom_name(graph.atom_names[j], res) for j in hs}
        if len(hs) >= 2 and len(names) == 1 and heavy:
            groups.append((c, heavy[0], tuple(sorted(hs))))
    return groups


def canonical_hydrogen_labels(positions: np.ndarray, groups) -> np.ndarray:
    """Relabel equivalent hydrogens so that every group has one handedness: det[h1 - c, h2 - c, ref - c] > 0.

    A methyl group's rotation cannot change which way round its hydrogens are labelled, so two builds of
    one peptide can differ in labelling for a whole trajectory, and a flow trained on one labelling gives
    the other a low density. Where the determinant is negative the positions of the first two hydrogens are
    swapped: the same molecule (equal force-field parameters, equal energy), canonically labelled.
    ``positions`` [..., N, 3]; returns a new array.
    """
    x = np.array(positions, copy=True)
    for c, ref, hs in groups:
        a, b = x[..., hs[0], :] - x[..., c, :], x[..., hs[1], :] - x[..., c, :]
        det = np.einsum("...i,...i->...", np.cross(a, b), x[..., ref, :] - x[..., c, :])
        flip = det < 0
        if flip.any():
            h0, h1 = x[..., hs[0], :].copy(), x[..., hs[1], :].copy()
            x[..., hs[0], :] = np.where(flip[..., None], h1, h0)
            x[..., hs[1], :] = np.where(flip[..., None], h0, h1)
    return x


def pad_permutations(perms: np.ndarray, n_max: int) -> np.ndarray:
    """Extend permutations ``[..., N]`` of the real atoms to ``[..., n_max]``: padding N..n_max-1 last, in order."""
    perms = np.asarray(perms)
    n = perms.shape[-1]
    if n_max < n:
        raise ValueError(f"n_max={n_max} is smaller than the number of atoms {n}")
    pad = np.broadcast_to(np.arange(n, n_max, dtype=perms.dtype), (*perms.shape[:-1], n_max - n))
    return np.concatenate([perms, pad], axis=-1)

"""Peptide sequences: validation, uniform training draws and the paper's balanced test sets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

# numpy and pandas are imported where they are used: validation runs when Snakemake builds the DAG,
# which imports nothing beyond the standard library and PyYAML (proseflow.stages.settings).

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
"""The 20 standard amino acids, one-letter codes, alphabetical."""

ONE_TO_THREE = {
    "A": "ALA", "C": "CYS", "D": "ASP", "E": "GLU", "F": "PHE", "G": "GLY", "H": "HIS",
    "I": "ILE", "K": "LYS", "L": "LEU", "M": "MET", "N": "ASN", "P": "PRO", "Q": "GLN",
    "R": "ARG", "S": "SER", "T": "THR", "V": "VAL", "W": "TRP", "Y": "TYR",
}  # fmt: skip
THREE_TO_ONE = {v: k for k, v in ONE_TO_THREE.items()}
# Residue names as the amber14 templates name them (histidine protonated on NE2, as tleap does).
AMBER_RESIDUE_NAMES = {**ONE_TO_THREE, "H": "HIE"}
for _name in ("HIE", "HID", "HIP", "CYX", "ASH", "GLH", "LYN"):
    THREE_TO_ONE[_name] = {"HI": "H", "CY": "C", "AS": "D", "GL": "E", "LY": "K"}[_name[:2]]


class SequenceError(ValueError):
    """A peptide sequence that the pipeline cannot use."""


def validate_sequence(sequence: str, min_length: int | None = None, max_length: int | None = None) -> str:
    """Return ``sequence`` if it is a valid peptide, else raise :class:`SequenceError` naming the problem."""
    if not isinstance(sequence, str) or not sequence:
        raise SequenceError(f"empty or non-string peptide sequence: {sequence!r}")
    bad = sorted({c for c in sequence if c not in AMINO_ACIDS})
    if bad and all(c in AMINO_ACIDS for c in sequence.upper()):
        raise SequenceError(
            f"sequence {sequence!r} is not upper case: sequences are upper-case one-letter amino-acid codes "
            f"(did you mean {sequence.upper()}?)"
        )
    if bad:
        raise SequenceError(
            f"sequence {sequence!r} contains invalid residue letter(s) {', '.join(map(repr, bad))}; "
            f"allowed are the 20 standard amino acids {AMINO_ACIDS}"
        )
    if min_length is not None and len(sequence) < min_length:
        raise SequenceError(f"sequence {sequence!r} has length {len(sequence)} < minimum {min_length}")
    if max_length is not None and len(sequence) > max_length:
        raise SequenceError(f"sequence {sequence!r} has length {len(sequence)} > maximum {max_length}")
    return sequence


def draw_uniform(
    counts_by_length: Mapping[int, int], seed: int, exclude: Iterable[str] = ()
) -> list[str]:
    """Draw distinct sequences uniformly from the 20 amino acids, ``counts_by_length[L]`` of length L.

    Sequences in ``exclude`` (validation and test sets) are never drawn. Deterministic given ``seed``;
    lengths are drawn in increasing order so adding a length does not change the others' draws.
    """
    import numpy as np

    excluded = set(exclude)
    rng = np.random.default_rng(seed)
    out: list[str] = []
    letters = np.array(list(AMINO_ACIDS))
    for length in sorted(counts_by_length):
        n = int(counts_by_length[length])
        available = 20**length - sum(1 for s in excluded if len(s) == length)
        if n > available:
            raise SequenceError(
                f"asked for {n} distinct training sequences of length {length}, but only {available} exist"
            )
        chosen: dict[str, None] = {}
        while len(chosen) < n:
            batch = letters[rng.integers(0, 20, size=(max(2 * (n - len(chosen)), 16), length))]
            for row in batch:
                s = "".join(row)
                if s not in excluded and s not in chosen:
                    chosen[s] = None
                    if len(chosen) == n:
                        break
        out.extend(chosen)
    return out


def draw_balanced(n: int, length: int, seed: int, exclude: Iterable[str] = ()) -> list[str]:
    """The paper's balanced sets: a string with every amino acid equally often, shuffled, cut into pieces.

    Repeats (and members of ``exclude``) are discarded and the procedure continues with a fresh shuffle
    until ``n`` distinct sequences exist.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    excluded = set(exclude)
    out: dict[str, None] = {}
    while len(out) < n:
        reps = -(-n * length // 20)  # ceil: enough copies of the alphabet for n pieces
        pool = np.array(list(AMINO_ACIDS * reps))
        rng.shuffle(pool)
        for i in range(0, len(pool) - length + 1, length):
            s = "".join(pool[i : i + length])
            if s not in excluded and s not in out:
                out[s] = None
                if len(out) == n:
                    break
    return list(out)


def check_disjoint(named_sets: Mapping[str, Sequence[str]]) -> None:
    """Raise if any sequence is listed in two of the named sets (e.g. a test sequence in training)."""
    seen: dict[str, str] = {}
    for name, seqs in named_sets.items():
        for s in seqs:
            if s in seen and seen[s] != name:
                raise SequenceError(f"sequence {s!r} is listed in both the {seen[s]} and the {name} set")
            seen.setdefault(s, name)


def to_frame(sequences: Sequence[str]):
    """A DataFrame with columns sequence, length."""
    import pandas as pd

    return pd.DataFrame({"sequence": list(sequences), "length": [len(s) for s in sequences]})


def read_sequences(path) -> list[str]:
    """Sequences of a ``results/sequences/*.csv`` file. Read as plain strings: pandas' default would turn
    the dipeptide ``NA`` (Asn-Ala, in the paper's test set) into a missing value."""
    import pandas as pd

    frame = pd.read_csv(path, dtype={"sequence": str}, keep_default_na=False)
    return [validate_sequence(s) for s in frame["sequence"]]

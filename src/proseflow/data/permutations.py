"""The one vocabulary of atom permutations, shared by the data loader and the flow (PAPER.md section 2).

The loader stores, for every system, the 8 permutations as rows in :data:`PERMUTATION_NAMES` order
(:func:`proseflow.data.features.chemistry_permutations`); a flow block uses one row, chosen by its index in
the same list. "bb" = backbone-first, "rbr" = residue-by-residue, "std"/"var" = standard/variant
traversal of side chains, "flip" = the same order reversed.

Block schedules (block ``k`` uses ``schedule[k % len(schedule)]``):

- ``prose``: the paper's interleaved cycle of all 8 orders, one per block, alternating backbone-first
  and residue-by-residue and alternating flips, so an 8-block model sees every order and a model of
  any depth >= 2 sees both families.
- ``no_backbone_first`` (ablation): the four residue-by-residue orders, cycled.
- ``tarflow`` (baseline): residue-by-residue and its flip, alternating.

Standard library only: the Snakefile layer and the CLI may import it.
"""

from __future__ import annotations

PERMUTATION_NAMES: tuple[str, ...] = (
    "bb_std", "bb_std_flip", "rbr_std", "rbr_std_flip", "bb_var", "bb_var_flip", "rbr_var", "rbr_var_flip",
)  # fmt: skip
N_PERMUTATIONS = len(PERMUTATION_NAMES)
BACKBONE_FIRST_IDX = tuple(i for i, n in enumerate(PERMUTATION_NAMES) if n.startswith("bb_"))
RESIDUE_BY_RESIDUE_IDX = tuple(i for i, n in enumerate(PERMUTATION_NAMES) if n.startswith("rbr_"))

SCHEDULES: dict[str, tuple[str, ...]] = {
    "prose": ("bb_std", "rbr_std_flip", "bb_std_flip", "rbr_std",
              "bb_var", "rbr_var_flip", "bb_var_flip", "rbr_var"),
    "no_backbone_first": ("rbr_std", "rbr_std_flip", "rbr_var", "rbr_var_flip"),
    "tarflow": ("rbr_std", "rbr_std_flip"),
}  # fmt: skip


def permutation_index(name: str) -> int:
    """Row of permutation ``name`` in the loader's ``permutations`` array."""
    try:
        return PERMUTATION_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown permutation {name!r}; known: {', '.join(PERMUTATION_NAMES)}") from None


def schedule_indices(schedule: str) -> tuple[int, ...]:
    """Loader rows of a named block schedule, in block order (cycled over the blocks)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown permutation schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    return tuple(permutation_index(n) for n in SCHEDULES[schedule])


def block_permutations(schedule: tuple[int, ...], n_blocks: int) -> list[str]:
    """Name of the permutation each of ``n_blocks`` blocks uses."""
    return [PERMUTATION_NAMES[schedule[k % len(schedule)]] for k in range(n_blocks)]

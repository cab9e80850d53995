import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from proseflow.physics.structures import build_peptide  # noqa: E402


@pytest.fixture(scope="session")
def peptide():
    """Cached minimised structures: peptide(seq) -> (topology, positions_nm)."""
    cache = {}

    def get(seq):
        if seq not in cache:
            cache[seq] = build_peptide(seq)
        return cache[seq]

    return get

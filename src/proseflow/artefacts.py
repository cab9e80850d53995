"""Atomic writes of small artefacts: a killed job never leaves a file that looks complete."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def save_npz(path: str | os.PathLike, **arrays) -> None:
    """Write ``arrays`` to ``path`` (.npz) through a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def save_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame to ``path`` (CSV, no index) through a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path

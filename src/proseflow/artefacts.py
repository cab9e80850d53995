"""Atomic writes of artefacts: a killed job never leaves a file that looks complete.

Every writer writes to a temporary name beside the target and renames it into place (``os.replace``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], suffix: str = "") -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``.

    ``suffix`` keeps an extension that a writer insists on (``np.savez`` appends ``.npz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_npz(path: str | os.PathLike, **arrays) -> Path:
    return atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def save_csv(path: str | os.PathLike, frame) -> Path:
    """A pandas DataFrame as CSV, without the index."""
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def save_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

"""Atomic writes of artefacts: a killed job never leaves a file that looks complete.

Every writer writes to a temporary name beside the target and renames it into place (``os.replace``).
"""

from __future__ import annotations

import json
import math
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


def strict_json(obj, default=float):
    """``obj`` with every NaN/Infinity float replaced by None (JSON null); numpy scalars and other
    non-JSON values go through ``default`` first."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v, default) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v, default) for v in obj]
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if not isinstance(obj, float):
        obj = default(obj)
        if not isinstance(obj, float):
            return strict_json(obj, default)
    return obj if math.isfinite(obj) else None


def save_json(path: str | os.PathLike, obj, indent: int | None = 1, default=float) -> Path:
    """Strict JSON (RFC 8259: no NaN/Infinity, written as null), atomically."""
    return save_text(path, json.dumps(strict_json(obj, default), indent=indent, allow_nan=False))

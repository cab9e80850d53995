"""One sample-set type: what every sampler writes (``results/samples/{model}/{seq}/{set}.npz``) and every reader
reads (the evaluation, the budget curves, the export, ``proseflow verify``).

The fields every sampler writes, with their checks (shape, dtype, finiteness):

===================  =========================  ==============================================================
``positions_nm``     float [n, N, 3]            the set's configurations (centred, chirality fixed), finite
``energy_kT``        float [n]                  E/kT of each configuration (inf where the force field fails)
``log_weights``      float [n]                  normalised log weights (logsumexp 0; -inf: weight zero)
``ess``              float in [0, 1]            the sampler's normalised ESS (SMC: before its final resampling)
``n_distinct``       int >= 0                   distinct configurations in the final (resampled) set
``n_energy_evals``   int >= 0                   every energy evaluation the set cost
``wall_time_s``      float >= 0                 wall time of the sampler (proposals included)
``temperature_K``    float > 0                  the target's temperature
===================  =========================  ==============================================================

A sampler's own extras go in ``extras`` (SNIS: ``log_q``, ``resampled_indices``, ``n_nonfinite``, ``n_dropped``,
``n_chirality_zero_weight``, ``drop_top_fraction``; SMC: ``ess_trace``, ``min_ess``, ``n_distinct_ancestors``,
``t_schedule``, ...; self-improvement: ``round_ess``, ...), checked where they are per-sample or indices.
:meth:`SampleSet.save` refuses a set that breaks a check, naming the file and the field, so a sampler that
forgets a field fails when it writes, not a metric later; :meth:`SampleSet.load` names the file and the fix
for an unreadable or malformed file.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from proseflow.artefacts import save_npz

PER_SAMPLE_EXTRAS = ("log_q", "chirality_ok")  # extras with one entry per sample


class SampleSetError(ValueError):
    """A sample file that is missing a field, has a malformed one, or cannot be read."""


@dataclass
class SampleSet:
    positions_nm: np.ndarray
    energy_kT: np.ndarray
    log_weights: np.ndarray
    ess: float
    n_distinct: int
    n_energy_evals: int
    wall_time_s: float
    temperature_K: float
    extras: dict = field(default_factory=dict)

    REQUIRED = ("positions_nm", "energy_kT", "log_weights", "ess", "n_distinct", "n_energy_evals", "wall_time_s",
                "temperature_K")

    def __len__(self) -> int:
        return len(self.positions_nm)

    @property
    def resampled_indices(self) -> np.ndarray | None:
        """The SNIS-resampled draw (indices into the set), or None for sets that are their own draw (SMC)."""
        return self.extras.get("resampled_indices")

    def get(self, name: str, default=None):
        """An extra by name (``default`` if this sampler does not write it)."""
        return self.extras.get(name, default)

    # ------------------------------------------------------------------------------------------------ checks
    def check(self, where: str = "sample set") -> SampleSet:
        """Raise :class:`SampleSetError` naming ``where`` and the field that breaks a check; returns self."""
        def bad(name, why):
            return SampleSetError(f"{where}: field {name!r} {why}")

        x = np.asarray(self.positions_nm)
        if x.ndim != 3 or x.shape[2] != 3 or x.dtype.kind != "f":
            raise bad("positions_nm", f"is {x.dtype} {x.shape}, expected floats [n, N, 3]")
        if not np.isfinite(x).all():
            raise bad("positions_nm", "has non-finite coordinates")
        n = len(x)
        for name in ("energy_kT", "log_weights", *(k for k in PER_SAMPLE_EXTRAS if k in self.extras)):
            a = np.asarray(getattr(self, name) if name in self.REQUIRED else self.extras[name])
            if a.shape != (n,):
                raise bad(name, f"has shape {a.shape}, expected ({n},) like positions_nm")
        lw = np.asarray(self.log_weights, dtype=np.float64)
        if np.isnan(lw).any() or np.isposinf(lw).any():
            raise bad("log_weights", "has NaN or +inf entries (weight zero is -inf)")
        if n and np.isfinite(lw).any():
            total = float(np.logaddexp.reduce(lw[np.isfinite(lw)]))
            if abs(total) > 1e-6:
                raise bad("log_weights", f"is not normalised (logsumexp {total:.3g}, expected 0)")
        if not (np.isfinite(self.ess) and 0.0 <= float(self.ess) <= 1.0 + 1e-9):
            raise bad("ess", f"is {self.ess!r}, expected a normalised ESS in [0, 1]")
        for name in ("n_distinct", "n_energy_evals"):
            v = getattr(self, name)
            if not (float(v).is_integer() and v >= 0):
                raise bad(name, f"is {v!r}, expected a count")
        if not (np.isfinite(self.wall_time_s) and self.wall_time_s >= 0):
            raise bad("wall_time_s", f"is {self.wall_time_s!r}, expected seconds >= 0")
        if not (np.isfinite(self.temperature_K) and self.temperature_K > 0):
            raise bad("temperature_K", f"is {self.temperature_K!r}, expected kelvin > 0")
        idx = self.extras.get("resampled_indices")
        if idx is not None:
            idx = np.asarray(idx)
            if idx.ndim != 1 or (len(idx) and (idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= n)):
                raise bad("resampled_indices", f"must be integer indices into the {n} samples")
        return self

    # ------------------------------------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the set atomically after :meth:`check` (a bad set leaves no file behind)."""
        self.check(str(path))
        clash = set(self.extras) & set(self.REQUIRED)
        if clash:
            raise SampleSetError(f"{path}: extras {sorted(clash)} shadow the required fields")
        fields = {k: getattr(self, k) for k in self.REQUIRED}
        return save_npz(path, **fields, **self.extras)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SampleSet:
        """Read and :meth:`check` a sample file; :class:`SampleSetError` names the file and what to do."""
        fix = "rebuild it (delete it and rerun the rule that writes it)"
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files}
        except FileNotFoundError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
            raise SampleSetError(f"{path}: not a readable sample file ({type(err).__name__}: {err}); {fix}") from None
        missing = [k for k in cls.REQUIRED if k not in arrays]
        if missing:
            raise SampleSetError(f"{path}: sample file without the field(s) {missing} (written by an older proseflow "
                                 f"or another tool); {fix}")
        scalars = {"ess": float, "n_distinct": int, "n_energy_evals": int, "wall_time_s": float,
                   "temperature_K": float}
        values = {k: (scalars[k](arrays[k]) if k in scalars else arrays[k]) for k in cls.REQUIRED}
        extras = {k: (v.item() if v.ndim == 0 and v.dtype.kind in "biufU" else v) for k, v in arrays.items()
                  if k not in cls.REQUIRED}
        return cls(**values, extras=extras).check(str(path))

    def replace(self, **changes) -> SampleSet:
        return dataclasses.replace(self, **changes)

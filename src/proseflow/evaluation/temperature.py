"""Temperature transfer (PAPER.md section 4): a flow trained at T_train used as the proposal at T.

"scaled" prior: z ~ N(0, (T / T_train) I), i.e. q_z^beta with beta = T_train / T, so the prior std is
sqrt(T / T_train); "plain" prior: z ~ N(0, I). Either way the proposals are reweighted to E/kT at T
(the sampling stage takes the prior std; SNIS takes the target temperature). Paper: RLMM at 310, 393,
498, 631 and 800 K.

This module gives the prior std for a mode, and the page / CSV comparing the two priors across temperatures.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from proseflow.artefacts import save_csv
from proseflow.evaluation.registry import TABLE2
from proseflow.samplers.prior import PRIOR_MODES, prior_std_for  # noqa: F401 - part of this module's API

log = logging.getLogger(__name__)

ROW_KEYS = ("sequence", "temperature_K", "prior", *TABLE2)


def temperature_frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    for k in ROW_KEYS:
        if k not in df:
            df[k] = np.nan
    df = df[list(ROW_KEYS) + [c for c in df.columns if c not in ROW_KEYS]]
    return df.sort_values(["sequence", "prior", "temperature_K"], kind="stable").reset_index(drop=True)


def write_temperature_csv(path, rows) -> Path:
    return save_csv(path, temperature_frame(rows).drop(columns="page", errors="ignore"))






def rows_from_evals(eval_paths, priors, sampler: str = "snis", page_dir=None) -> list[dict]:
    """Rows from ``evaluate`` JSON files (sequence, metrics, metadata "temperature_K") and their prior modes.
    ``page_dir``: the folder of the temperature page; each row then links (``page``) to its evaluation's page
    (the JSON's sibling .html: metrics, maps and the 3D structures of the states at that temperature)."""
    if len(eval_paths) != len(priors):
        raise ValueError(f"{len(eval_paths)} evaluation files but {len(priors)} priors")
    rows = []
    for path, prior in zip(eval_paths, priors, strict=True):
        prior_std_for(1.0, 1.0, prior)  # validates the mode
        d = json.loads(Path(path).read_text())
        m = d["metrics"].get(sampler)
        if m is None:
            raise ValueError(f"{path}: no sampler {sampler!r} (has {', '.join(d['metrics'])})")
        rows.append({"sequence": d["sequence"], "temperature_K": float(d["metadata"]["temperature_K"]),
                     "prior": prior, **{k: m.get(k, float("nan")) for k in TABLE2}})
        if page_dir is not None:
            rows[-1]["page"] = Path(os.path.relpath(Path(path).with_suffix(".html"), page_dir)).as_posix()
    return rows

"""Temperature transfer: prior std per mode, page and CSV."""

import base64
import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from proseflow.evaluation import temperature
from proseflow.report.kit import format_value
from proseflow.report.temperature_page import write_temperature_page


def test_prior_std_for():
    assert temperature.prior_std_for(310.0, 310.0, "scaled") == pytest.approx(1.0)
    assert temperature.prior_std_for(620.0, 310.0, "scaled") == pytest.approx(math.sqrt(2.0))
    assert temperature.prior_std_for(800.0, 310.0, "scaled") ** 2 == pytest.approx(800.0 / 310.0)
    assert temperature.prior_std_for(800.0, 310.0, "plain") == 1.0
    with pytest.raises(ValueError, match="'tempered'"):
        temperature.prior_std_for(800.0, 310.0, "tempered")
    with pytest.raises(ValueError):
        temperature.prior_std_for(-1.0, 310.0, "scaled")


def synthetic_rows():
    rng = np.random.default_rng(0)
    rows = []
    for seq in ("AA", "WG"):
        for prior in ("plain", "scaled"):
            for t in (310.0, 393.0, 498.0, 631.0, 800.0):
                rows.append({"sequence": seq, "temperature_K": t, "prior": prior, "ess": rng.uniform(0, 0.3),
                             "energy_w2": rng.uniform(0.1, 5), "torus_w2": rng.uniform(0.1, 1),
                             "tica_w2": float("nan") if seq == "AA" else rng.uniform(0.1, 1)})
    return rows


def test_temperature_page_and_csv(tmp_path):
    rows = synthetic_rows()
    text = write_temperature_page(tmp_path / "t.html", rows).read_text()
    assert not re.search(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', text, re.I)
    assert "<link" not in text.lower()
    srcs = re.findall(r'<img[^>]*\bsrc="([^"]*)"', text)
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    assert base64.b64decode(srcs[0].split(",", 1)[1])[:4] == b"\x89PNG"
    for r in rows:
        for k in ("temperature_K", "ess", "energy_w2", "torus_w2", "tica_w2"):
            assert format_value(r[k], k) in text, (r, k)
    df = pd.read_csv(temperature.write_temperature_csv(tmp_path / "t.csv", rows))
    assert len(df) == len(rows) and list(df.columns[:3]) == ["sequence", "temperature_K", "prior"]


def test_rows_from_evals(tmp_path):
    paths = []
    for i, t in enumerate((310.0, 800.0)):
        p = tmp_path / f"e{i}.json"
        p.write_text(json.dumps({"sequence": "AA", "metadata": {"temperature_K": t},
                                 "metrics": {"snis": {"ess": 0.1 * (i + 1), "energy_w2": 1.0, "torus_w2": 0.2,
                                                      "tica_w2": 0.3}}}))
        paths.append(p)
    rows = temperature.rows_from_evals(paths, ["plain", "scaled"])
    assert [(r["temperature_K"], r["prior"], r["ess"]) for r in rows] == [(310.0, "plain", 0.1),
                                                                          (800.0, "scaled", 0.2)]
    with pytest.raises(ValueError):
        temperature.rows_from_evals(paths, ["plain"])


def test_rows_link_to_their_evaluation_pages(tmp_path):
    """Each temperature row links to its evaluation page (metrics, maps and the 3D structures at that T)."""
    paths = []
    for t, prior in ((310.0, "plain"), (400.0, "scaled")):
        p = tmp_path / "eval" / f"T{t:g}K_{prior}" / "AA.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps({"sequence": "AA", "metadata": {"temperature_K": t},
                                 "metrics": {"snis": {"ess": 0.1, "energy_w2": 1.0, "torus_w2": 0.2, "tica_w2": 0.3}}}))
        paths.append(p)
    rows = temperature.rows_from_evals(paths, ["plain", "scaled"], page_dir=tmp_path / "eval")
    assert [r["page"] for r in rows] == ["T310K_plain/AA.html", "T400K_scaled/AA.html"]
    text = write_temperature_page(tmp_path / "eval" / "temperature.html", rows).read_text()
    assert '<a href="T400K_scaled/AA.html">metrics, maps, 3D structures</a>' in text
    df = pd.read_csv(temperature.write_temperature_csv(tmp_path / "t.csv", rows))
    assert "page" not in df

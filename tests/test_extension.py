"""Adding a sampler through the public extension points (issue 19): a stage module in ``proseflow/stages/``
(its settings, builder and runner side by side, registered once), its rule, and the sampler list. A real
Snakemake run of a scratch copy of the repository shows that these three files are all it takes: the toy
sampler's set is evaluated, its metrics are on the system's page, and nothing else was edited."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TOY_STAGE = '''"""A toy sampler: every k-th SNIS proposal, equally weighted (tests/test_extension.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from proseflow.stages.settings import Stage, StageSettings, register


@dataclass
class SubsampleSettings(StageSettings):
    stage: ClassVar[str] = "subsample"
    every: int
    temperature_K: float


def _subsample(config, model=None):
    return SubsampleSettings(every=config["sampling"]["n_proposals"] // 50, temperature_K=config["md"]["temperature_K"])


def run_subsample(s, inputs, outputs):
    import numpy as np

    from proseflow.samplers.sample_set import SampleSet

    snis = SampleSet.load(inputs.one("snis"))
    keep = np.flatnonzero(np.isfinite(snis.energy_kT))[:: s.every]
    n = len(keep)
    SampleSet(positions_nm=snis.positions_nm[keep], energy_kT=snis.energy_kT[keep],
              log_weights=np.full(n, -np.log(n)), ess=1.0, n_distinct=n, n_energy_evals=n, wall_time_s=0.0,
              temperature_K=s.temperature_K).save(outputs.one("samples"))


register(Stage("subsample", SubsampleSettings, _subsample, run_subsample, conditions=()))
'''

TOY_RULE = '''

rule subsample:
    """The toy sampler of tests/test_extension.py."""
    input:
        snis="results/samples/{model}/{seq}/snis.npz",
    output:
        samples="results/samples/{model}/{seq}/subsample.npz",
    params:
        launch=PROSEFLOW,
        job=stage("subsample", model=lambda w: w.model),
    log:
        "logs/samples/{model}/{seq}.subsample.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        RUN
'''

TINY = {
    "sequences": {"train_counts": {2: 2, 3: 0, 4: 0, 5: 0, 6: 0, 7: 0, 8: 0}, "val": ["AL"], "test": ["WA"]},
    "md": {"burn_in_ps": 0.05, "checkpoint_interval_s": 30,
           "train": {"length_ps": 0.5, "save_interval_ps": 0.05, "systems_per_job": 2},
           "val": {"length_ps": 0.5, "save_interval_ps": 0.05, "systems_per_job": 2},
           "reference": {"length_ps": 4.0, "save_interval_ps": 0.02}},
    "models": {"prose": {"preset": "tiny"}}, "train_models": ["prose"],
    "train": {"batch_size": 8, "max_steps": 4, "val_every": 2, "val_frames": 8, "checkpoint_every": 2, "log_every": 1,
              "compile": False},
    "sampling": {"n_proposals": 200, "batch_size": 100},
    "eval": {"n_metric": 50, "reference_frames": 150, "tica_lag_ps": 0.1, "kmeans_k": 3},
    "samplers": ["snis", "subsample"],
}


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for top in ("Snakefile", "config.yaml", "workflow", "src", "envs", "configs")
            for p in ([root / top] if (root / top).is_file() else sorted((root / top).rglob("*")))
            if p.is_file() and "__pycache__" not in p.parts}


@pytest.mark.slow
def test_a_toy_sampler_takes_its_stage_module_its_rule_and_the_sampler_list(tmp_path):
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    for name in ("workflow", "src", "envs", "configs"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    before = _digests(tmp_path)

    # the three extension points
    (tmp_path / "src/proseflow/stages/subsample.py").write_text(TOY_STAGE)
    with open(tmp_path / "workflow/rules/sample.smk", "a") as f:
        f.write(TOY_RULE)
    samplers = tmp_path / "src/proseflow/samplers/config.py"
    text = samplers.read_text()
    old = 'SAMPLERS = ("snis", *(f"smc_{k}" for k in SMC_KERNELS), "self_improve")'
    assert old in text
    samplers.write_text(text.replace(old, old[:-1] + ', "subsample")'))

    after = _digests(tmp_path)
    touched = sorted(k for k in after if before.get(k) != after[k])
    assert touched == ["src/proseflow/samplers/config.py", "src/proseflow/stages/subsample.py",
                       "workflow/rules/sample.smk"]

    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "results/eval/WA.json", "--cores", "2",
                           "--configfile", "tiny.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "results/eval/WA.json").read_text())
    snis = np.load(tmp_path / "results/samples/prose/WA/snis.npz")
    n_finite = int(np.isfinite(snis["energy_kT"]).sum())
    toy = result["metrics"]["subsample"]
    assert toy["n_samples"] == len(range(0, n_finite, 200 // 50))  # every 4th finite proposal, from its settings
    assert toy["energy_w2"] is not None and toy["ess"] == 1.0
    assert "subsample" in (tmp_path / "results/eval/WA.html").read_text()

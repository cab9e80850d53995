"""One typed settings value per stage, built from the config: no key unread, no field from nowhere.

The drift these guard against was real: the budget study never received sampling.drop_top_fraction (it
used an argparse default) and SMC never received sampling.batch_size. Here every leaf of config.yaml is
perturbed in turn and the settings of every stage are rebuilt: each key must change some stage's
settings, and each settings field must change with some key unless it is a job condition (wildcard) or a
documented default.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proseflow.stages import settings as S

ROOT = Path(__file__).resolve().parents[1]
PAPER = S.load_config(ROOT / "config.yaml")
DEMO = S.load_config(ROOT / "config.yaml", ROOT / "configs" / "demo.yaml")


def every_settings(config) -> dict[str, S.StageSettings]:
    """Each stage under each kind of condition its rules give it; the workflow plan as one more entry."""
    out = {
        "sequences": S.build("sequences", config),
        "structure": S.build("structure", config, sequence="AA"),
        "md/reference": S.build("md", config, split="reference", name="AA"),
        "md/reference_at_T": S.build("md", config, split="reference", name="AA_400K", temperature_K=400.0),
        "md/train": S.build("md", config, split="train", batch=0),
        "md/val": S.build("md", config, split="val", batch=0),
        "reference_file": S.build("reference_file", config, name="AA"),
        "dataset": S.build("dataset", config),
        "tica": S.build("tica", config),
        "sample": S.build("sample", config),
        "sample/scaled_T": S.build("sample", config, temperature_K=400.0, prior="scaled"),
        "snis": S.build("snis", config),
        "snis/T": S.build("snis", config, temperature_K=400.0),
        **{f"smc/{k}": S.build("smc", config, kernel=k) for k in S.SMC_KERNELS},
        "self_improve": S.build("self_improve", config),
        "evaluate": S.build("evaluate", config),
        "evaluate/T": S.build("evaluate", config, temperature_K=400.0, summary_href="../summary.html"),
        "budget": S.build("budget", config),
        "temperature": S.build("temperature", config),
        "report": S.build("report", config),
    }
    for model in config["models"]:
        out[f"train/{model}"] = S.build("train", config, model=model)
    return out


def as_dicts(config) -> dict[str, dict]:
    d = {k: v.to_dict() for k, v in every_settings(config).items()}
    d["plan"] = dataclasses.asdict(S.plan(config))
    return d


def leaves(node, path=()):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from leaves(v, (*path, k))
    else:
        yield path, node


def perturbed(value, path, attempt=0):
    """A different value for the key (a second attempt where the first makes the config invalid)."""
    by_key = {"compile": True, "device": "cpu", "length_buckets": 4, "n_max": 64}  # an "auto" whose other values are not a platform name
    if path and path[-1] in by_key:
        return by_key[path[-1]]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1 if attempt == 0 else value - 1
    if isinstance(value, float):
        return value * 2 if attempt == 0 else value / 2
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        return [value[0] / 2, *value[1:]]  # a fixed-length tuple of numbers (train.betas)
    if isinstance(value, list):
        return value[:-1] if value else ["AA"]
    if isinstance(value, str):
        return {"chi": "gaussian", "torch": "openmm", "auto": "CPU", "paper": "small", "last": "best",
                "diagonal": "triangular", "exp": "linear"}.get(value, value + "x")
    if value is None:
        return ["AA"]
    raise AssertionError(f"no perturbation for {path}={value!r}")


def set_path(config, path, value):
    c = json.loads(json.dumps(config))  # deep copy; keys become strings as in YAML maps of the schema
    node = c
    for k in path[:-1]:
        node = node[str(k)] if str(k) in node else node[k]
    key = path[-1] if path[-1] in node else str(path[-1])
    node[key] = value
    return c


@pytest.fixture(scope="module")
def consumption():
    """(config key -> stage fields it changes) over every leaf of config.yaml."""
    config = json.loads(json.dumps(PAPER))
    base = as_dicts(config)
    changes = {}
    for path, value in leaves(config):
        try:
            after = as_dicts(set_path(config, path, perturbed(value, path)))
        except ValueError:  # e.g. min_length above a train_counts length: try the other direction
            after = as_dicts(set_path(config, path, perturbed(value, path, attempt=1)))
        changes[".".join(map(str, path))] = {(stage.split("/")[0], f) for stage, fields in base.items()
                                             for f in fields if after[stage][f] != fields[f]}
    return changes


def test_every_config_key_is_consumed(consumption):
    unread = sorted(k for k, fields in consumption.items() if not fields)
    assert not unread, f"config keys no stage's settings (nor the workflow plan) read: {unread}"


def test_every_settings_field_comes_from_config_a_condition_or_a_documented_default(consumption):
    from_config = set().union(*consumption.values())
    fields = {(cls.stage, f.name) for cls in S.SETTINGS.values() for f in dataclasses.fields(cls)}
    orphans = sorted(fields - from_config - S.CONDITIONS - set(S.DOCUMENTED_DEFAULTS))
    assert not orphans, f"settings fields set from nowhere (a hidden default that can drift): {orphans}"
    documented_but_read = sorted(set(S.DOCUMENTED_DEFAULTS) & from_config)
    assert not documented_but_read, f"documented defaults that the config does set: {documented_but_read}"
    for stage, name in S.DOCUMENTED_DEFAULTS:
        field = {f.name: f for f in dataclasses.fields(S.SETTINGS[stage])}[name]
        assert field.default is not dataclasses.MISSING, f"{stage}.{name}: a documented default needs a default"


def test_the_two_drift_bugs(consumption):
    """Budget reads sampling.drop_top_fraction; SMC reads sampling.batch_size (both were silently defaulted)."""
    assert {("snis", "drop_top_fraction"), ("budget", "drop_top_fraction")} <= consumption["sampling.drop_top_fraction"]
    assert ("self_improve", "improve") in consumption["sampling.drop_top_fraction"]
    # issue 19: prior std and top-weight drop reach SMC and self-improvement
    assert {("sample", "prior_std"), ("smc", "prior_std"), ("self_improve", "improve")} \
        <= consumption["sampling.prior_std"]
    assert ("smc", "smc") in consumption["sampling.drop_top_fraction"]
    assert {("sample", "batch_size"), ("smc", "batch_size"), ("self_improve", "improve")} \
        <= consumption["sampling.batch_size"]


@pytest.mark.parametrize("config", [PAPER, DEMO], ids=["paper", "demo"])
def test_round_trip_through_json(config):
    for name, s in every_settings(config).items():
        back = S.from_json(s.stage, s.to_json())
        assert back == s, name


def test_bad_settings_are_named():
    s = S.build("snis", DEMO)
    data = {**s.to_dict(), "drop_fraction": 0.1}
    with pytest.raises(S.ConfigError, match="unknown field.*drop_fraction"):
        S.from_dict("snis", data)
    with pytest.raises(S.ConfigError, match="unknown stage 'snsi'"):
        S.build("snsi", DEMO)
    with pytest.raises(S.ConfigError, match="not valid JSON"):
        S.from_json("snis", "{drop")
    with pytest.raises(S.ConfigError, match="SMC kernel must be one of ula, mala, amala, got 'hmc'"):
        S.build("smc", DEMO, kernel="hmc")
    with pytest.raises(ValueError, match="unknown prior mode 'hot'"):
        S.build("sample", DEMO, temperature_K=400.0, prior="hot")


@pytest.mark.parametrize("config", [PAPER, DEMO], ids=["paper", "demo"])
def test_settings_build_the_library_configs(config):
    """The dicts a stage hands the library are accepted by the library's own config classes."""
    from proseflow.flow.train import TrainConfig
    from proseflow.samplers.self_improve import SelfImproveConfig
    from proseflow.samplers.smc import SMCConfig

    for name, s in every_settings(config).items():
        if isinstance(s, S.TrainSettings):  # settings hold the config types themselves, never dicts
            assert isinstance(s.config, TrainConfig) and s.config.model_preset == config["models"][s.model]["preset"]
        elif isinstance(s, S.SmcSettings):
            cfg = s.smc
            assert isinstance(cfg, SMCConfig)
            assert all(getattr(cfg, k) == v for k, v in config["smc"][s.kernel].items()), name
            assert cfg.adaptive == (s.kernel == "amala") and cfg.drop_top_fraction == \
                config["smc"][s.kernel].get("drop_top_fraction", config["sampling"]["drop_top_fraction"])
        elif isinstance(s, S.SelfImproveSettings):
            assert isinstance(s.improve, SelfImproveConfig)
            assert s.improve.drop_top_fraction == config["sampling"]["drop_top_fraction"]
        elif isinstance(s, S.MDSettings):
            assert isinstance(s.protocol, S.MDProtocol) and s.protocol.n_frames >= 1


def test_a_variant_overrides_the_shared_training_recipe():
    """models.<name>.train: that variant's values over `train` (a sweep of batch size or learning rate); the other
    variants keep the recipe; an unknown field is named."""
    config = json.loads(json.dumps(DEMO))
    config["models"]["wide"] = {"preset": "tiny", "overrides": {"channels": 64},
                                "train": {"batch_size": 7, "lr": 3e-3}}
    wide, base = S.build("train", config, model="wide").config, S.build("train", config, model="prose").config
    assert (wide.batch_size, wide.lr, wide.model) == (7, 3e-3, {"channels": 64})
    assert (base.batch_size, base.lr) == (DEMO["train"]["batch_size"], DEMO["train"]["lr"])
    wide, base = dataclasses.asdict(wide), dataclasses.asdict(base)
    assert {k: v for k, v in wide.items() if k not in ("batch_size", "lr", "model", "model_preset")} == \
        {k: v for k, v in base.items() if k not in ("batch_size", "lr", "model", "model_preset")}
    config["models"]["wide"]["train"] = {"btach_size": 7}
    with pytest.raises(S.ConfigError,
                       match=r"models.wide.train.btach_size: unknown key; did you mean models.wide.train.batch_size\?"):
        S.build("train", config, model="wide")


def test_scaled_prior_and_target_temperature_are_conditions():
    plain, scaled = S.build("sample", DEMO), S.build("sample", DEMO, temperature_K=4 * 310.0, prior="scaled")
    assert plain.prior_std == 1.0 and scaled.prior_std == pytest.approx(2.0)
    assert S.build("snis", DEMO, temperature_K=400.0).temperature_K == 400.0
    md = S.build("md", DEMO, split="reference", name="WA_400K", temperature_K=400.0)
    assert md.protocol.temperature_K == 400.0 and md.protocol.length_ps == DEMO["md"]["reference"]["length_ps"]


def test_temperature_conditions_are_path_segments():
    assert S.condition_name(400, "scaled") == "T400K_scaled/" and S.condition_name(310.5, "plain") == "T310.5K_plain/"
    assert S.parse_condition("T400K_scaled/") == (400.0, "scaled") and S.parse_condition("") == (None, "plain")
    assert S.md_suffix(400.0) == "_400K" and S.parse_md_suffix("_400K") == 400.0 and S.parse_md_suffix("") is None
    assert S.md_suffix(310.0, 310) == "" and S.md_suffix(400.0, 310.0) == "_400K"  # the own temperature: main MD
    with pytest.raises(S.ConfigError, match="T400K_hot/"):
        S.parse_condition("T400K_hot/")
    with pytest.raises(ValueError, match="unknown prior mode 'hot'"):
        S.condition_name(400, "hot")
    for t, prior in [(400.0, "scaled"), (310.0, "plain")]:  # the workflow's wildcard patterns accept them
        import re

        assert re.fullmatch(S.CONDITION_PATTERN, S.condition_name(t, prior))
        assert re.fullmatch(S.MD_TEMPERATURE_PATTERN, S.md_suffix(t))
    assert re.fullmatch(S.CONDITION_PATTERN, "") and not re.fullmatch(S.CONDITION_PATTERN, "models/tarflow/")


def test_a_temperature_case_at_the_config_temperature_is_the_main_evaluation():
    """Plain and scaled priors are both N(0, I) at the training temperature and share the main seed, so such a case
    is the system's main evaluation (""); elsewhere, or for a system not evaluated anyway, it is a condition."""
    plan = S.plan(DEMO)
    own = DEMO["md"]["temperature_K"]
    assert S.build("sample", DEMO, temperature_K=own, prior="scaled") == S.build("sample", DEMO)
    assert plan.temperature_condition("WA", own, "scaled") == "" and plan.temperature_condition("WA", own, "plain") == ""
    assert plan.temperature_condition("WA", 400.0, "scaled") == "T400K_scaled/"
    assert "GYDP" not in plan.eval_systems and plan.temperature_condition("GYDP", own, "plain") == f"T{own:g}K_plain/"


def test_settings_and_the_workflow_import_no_scientific_stack():
    """Building the DAG imports proseflow.stages.settings only: no numpy, torch, openmm or matplotlib."""
    code = ("import sys; from proseflow.stages import settings as S; "
            f"c = S.load_config({str(ROOT / 'config.yaml')!r}); S.check_config(c); S.plan(c); "
            "[S.build(s, c) for s in ('sequences', 'dataset', 'tica', 'sample', 'snis', 'budget', 'self_improve')]; "
            "heavy = {'numpy', 'pandas', 'torch', 'openmm', 'matplotlib', 'mdtraj', 'scipy'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}).stdout
    assert out.strip() == "[]", out
    smk = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    smk += (ROOT / "Snakefile").read_text()
    imported = {line.split()[1] for line in smk.splitlines() if line.startswith(("from proseflow", "import proseflow"))}
    assert imported == {"proseflow.stages"} and "from proseflow.stages import settings as S" in smk


# --- typed keys (issue 19): every finding fails check_keys / check_config with the key's full path --------------
def _checked(fragment: dict):
    from proseflow.stages.settings import check_config, check_keys, deep_update

    config = deep_update(S.load_config(ROOT / "config.yaml", ROOT / "configs" / "demo.yaml"), fragment)
    check_keys(config, yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text()))
    check_config(config)


@pytest.mark.parametrize("fragment,message", [
    ({"train": {"max_stpes": 10}}, "train.max_stpes: unknown key; did you mean train.max_steps?"),
    ({"sampling": {"n_proposals": 500.0}}, "sampling.n_proposals: expected an integer, got 500.0"),
    ({"sampling": {"n_propsals": 500}}, "sampling.n_propsals: unknown key; did you mean sampling.n_proposals?"),
    ({"eval": {"kmeans": 5}}, "eval.kmeans: unknown key; did you mean eval.kmeans_k?"),
    ({"self_improve": {"n_round": 3}}, "self_improve.n_round: unknown key; did you mean self_improve.n_rounds?"),
    ({"budget": {"map_budgett": 3}}, "budget.map_budgett: unknown key; did you mean budget.map_budget?"),
    ({"temperature_transfer": {"prior": ["plain"]}}, "temperature_transfer.prior: unknown key"),
    ({"evall": {}}, "evall: unknown key; did you mean eval?"),
    ({"train": {"lr": "1e-3"}}, "write 1.0e-3"),
    ({"smc": {"mala": {"step_size": "5e-4"}}}, "smc.mala.step_size: expected a number"),
    ({"models": {"prose": {"train": {"lrr": 1.0e-3}}}}, "models.prose.train.lrr: unknown key; did you mean"),
    ({"models": {"prose": {"overrides": {"affine": "cubic"}}}}, "models.prose.overrides: affine must be one of"),
    ({"smc": {"ula": {"n_levels": 0}}}, "n_levels must be >= 1"),
    ({"train": {"scale_nm": "auto"}}, "scale_nm"),
    ({"md": {"reference": {"start_phi_psi_deg": [[60, 45]]}}}, "md.reference.start_phi_psi_deg: unknown key"),
    ({"md": {"train": {"start_phi_psi_deg": [[60]]}}}, "md.train: start_phi_psi_deg: each state is [phi, psi]"),
    ({"md": {"val": {"start_phi_psi_deg": [[60, 270]]}}}, "md.val: start_phi_psi_deg: [60, 270] is outside"),
    ({"md": {"val": {"start_phi_psi_deg": [[60, 45], [-70, -40]]}}}, "md.val: start_phi_psi_deg has 2 states but"),
])
def test_typos_and_wrong_types_are_named(fragment, message):
    from proseflow.stages.settings import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        _checked(fragment)


@pytest.mark.parametrize("presets", [(), ("demo.yaml",), ("study_aa.yaml",), ("study_aa.yaml", "study_aa_ab.yaml"),
                                     ("study_aa.yaml", "study_aa_sweep.yaml"), ("study_2aa.yaml",), ("study_2aa_all.yaml",),
                                     ("study_aa.yaml", "study_aa_long.yaml"), ("released.yaml",)])
def test_every_preset_passes_every_check(presets):
    """config.yaml and every preset in configs/ (as the studies layer them) pass the key, schema and code checks
    and build their config types."""
    import jsonschema

    from proseflow.stages.settings import check_config, check_keys, typed_configs

    config = S.load_config(ROOT / "config.yaml", *(ROOT / "configs" / p for p in presets))
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    check_keys(config, schema)
    jsonschema.validate(config, schema)
    check_config(config)
    built = typed_configs(config)
    assert set(built["train"]) == set(config["models"]) and set(built["smc"]) == set(S.SMC_KERNELS)

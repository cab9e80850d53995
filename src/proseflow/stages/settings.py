"""Settings: the validated configuration, and the registry of the pipeline's stages.

The workflow (``workflow/rules/common.smk``) imports this module, so it and the stage modules it loads import
nothing beyond the standard library and PyYAML at module level (numpy only where a sequence set is generated).
Each stage is declared once, in a module of this package (``physics``, ``training``, ``sampling``,
``evaluation``; a new module registers its own): its settings dataclass, the builder of those settings from the
config and its runner, registered with :func:`register`. Every stage's settings are built from the config
once; each setting has exactly one default, on its dataclass field, and only fields that the config does not
hold have one (a stage's ``defaults``, collected in :data:`DOCUMENTED_DEFAULTS`). A rule hands its stage the
JSON of its settings (``python -m proseflow run <stage> --settings JSON``); the stage rebuilds the dataclass
with :func:`from_json` and calls the library.

Conditions are what a rule's wildcards say and the config does not: the model variant, the system, a
target temperature and prior, the SMC kernel, the MD split.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from proseflow import typed
from proseflow.flow.config import FlowConfig, TrainConfig
from proseflow.physics.protocol import MDProtocol
from proseflow.physics.sequences import SequenceError, check_disjoint, draw_balanced, validate_sequence
from proseflow.samplers.config import SAMPLERS, SMC_KERNELS, SelfImproveConfig, SMCConfig
from proseflow.samplers.prior import PRIOR_MODES, prior_std_for


class ConfigError(typed.ConfigTypeError):
    """A configuration value that cannot work."""


# ------------------------------------------------------------------------------------ typed keys
# Config sections whose keys are the fields of a config type ("*": any model variant's name). The schema
# lists the common ones with their ranges; the type is what says which keys exist.
TYPED_SECTIONS: dict[tuple[str, ...], tuple[type, tuple[str, ...]]] = {
    ("train",): (TrainConfig, ("model_preset", "model")),  # (type, fields a variant sets, not `train`)
    ("models", "*", "train"): (TrainConfig, ("model_preset", "model")),
    ("models", "*", "overrides"): (FlowConfig, ()),
    **{("smc", k): (SMCConfig, ("kernel",)) for k in SMC_KERNELS},
    ("self_improve",): (SelfImproveConfig, ()),
}


def _typed_section(path: tuple[str, ...]):
    for pattern, spec in TYPED_SECTIONS.items():
        if len(pattern) == len(path) and all(p in ("*", q) for p, q in zip(pattern, path, strict=True)):
            return spec
    return None


def _dotted(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def check_keys(config: Mapping, schema: Mapping) -> None:
    """Before the schema's own validation: every key exists (the schema's keys, or a config type's fields for
    :data:`TYPED_SECTIONS`) and every number is one, each error naming the key's full path and, for a typo,
    the nearest valid name (``train.lrr: unknown key; did you mean train.lr?``)."""
    _check(config, schema, ())


def _check(value: Any, schema: Mapping, path: tuple) -> None:
    name = _dotted(path)
    kinds = schema.get("type", [])
    kinds = {kinds} if isinstance(kinds, str) else set(kinds)
    for alt in schema.get("oneOf", []):
        if isinstance(alt, Mapping) and isinstance(alt.get("type"), str):
            kinds.add(alt["type"])
    if isinstance(value, str) and kinds & {"number", "integer"} and "string" not in kinds:
        raise ConfigError(f"{name}: expected a number, got {value!r}{typed.yaml_number_hint(value)}")
    if isinstance(value, float) and "integer" in kinds and "number" not in kinds:
        raise ConfigError(f"{name}: expected an integer, got {value!r}"
                          + (f" (write {int(value)})" if value.is_integer() else ""))
    if isinstance(value, Mapping):
        spec = _typed_section(tuple(str(p) for p in path))
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        if spec is not None:
            try:
                typed.check_fields(spec[0], value, name, exclude=spec[1])
            except typed.ConfigTypeError as e:
                raise ConfigError(str(e)) from None
        elif extra is False:
            for key in value:
                if key not in props:
                    raise ConfigError(str(typed.unknown_key(name, key, props)))
        for key, v in value.items():
            sub = props.get(key, extra if isinstance(extra, Mapping) else None)
            if sub is not None:
                _check(v, sub, (*path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, v in enumerate(value):
            _check(v, schema["items"], (*path, i))


def typed_configs(config: Mapping) -> dict:
    """The config types the stages run with, built from the config (so any bad value fails the dry run):
    ``train[model]`` (TrainConfig, its FlowConfig checked too), ``smc[kernel]`` (SMCConfig) and ``self_improve``."""
    out: dict = {"train": {}, "smc": {}}
    try:
        for name in config.get("models", {}):
            cfg = build("train", config, model=name).config
            try:
                FlowConfig.preset(cfg.model_preset, **cfg.model)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"models.{name}.overrides: {e}") from None
            out["train"][name] = cfg
        for kernel in SMC_KERNELS:
            cfg = build("smc", config, kernel=kernel).smc
            cfg.check_schedule()
            out["smc"][kernel] = cfg
        for name in config.get("samplers", []):
            if name not in SAMPLERS:
                raise ConfigError(f"samplers: unknown sampler {name!r}{typed.did_you_mean(name, SAMPLERS)} "
                                  f"(known: {', '.join(SAMPLERS)})")
        out["self_improve"] = build("self_improve", config).improve
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    return out


# ------------------------------------------------------------------------------------------ config
def deep_update(base: dict, override: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_update(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def load_config(*paths: str | Path) -> dict:
    """``config.yaml`` then each preset on top (as ``snakemake --configfile`` does)."""
    config: dict = {}
    for p in paths:
        with open(p) as fh:
            config = deep_update(config, yaml.safe_load(fh) or {})
    return config


def train_counts(config: Mapping) -> dict[int, int]:
    sq = config["sequences"]
    out = {}
    for key, n in sq["train_counts"].items():
        try:
            length = int(key)
        except (TypeError, ValueError):
            raise ConfigError(f"sequences.train_counts: length key {key!r} is not an integer") from None
        if not sq["min_length"] <= length <= sq["max_length"]:
            raise ConfigError(f"sequences.train_counts: length {length} outside the configured range "
                              f"{sq['min_length']}..{sq['max_length']}")
        out[length] = int(n)
    return out


def overlap_allowed(config: Mapping) -> bool:
    """A single-system study: training, validation and test sets may share sequences."""
    return bool(build("sequences", config).allow_train_test_overlap)


def explicit_train(config: Mapping) -> list[str] | None:
    """The explicit training list (``sequences.train``), validated, or None (draw from train_counts)."""
    sq = config["sequences"]
    if sq.get("train") is None:
        return None
    seqs = list(sq["train"])
    for s in seqs:
        try:
            validate_sequence(s, min_length=sq["min_length"], max_length=sq["max_length"])
        except SequenceError as e:
            raise ConfigError(f"sequences.train: {e}") from None
    if len(set(seqs)) != len(seqs):
        raise ConfigError(f"sequences.train: duplicated sequence(s) {sorted({s for s in seqs if seqs.count(s) > 1})}")
    return seqs


def sequence_set(config: Mapping, name: str) -> list[str]:
    """The explicit or generated validation/test list, validated."""
    sq = config["sequences"]
    spec = sq[name]
    if isinstance(spec, Mapping):
        seqs: list[str] = []
        salt = {"val": 1, "test": 2}[name]
        for key, n in spec["generate"].items():
            seqs += draw_balanced(int(n), int(key), seed=sq["seed"] * 1000 + salt * 100 + int(key),
                                  exclude=seqs)
        if name == "val":  # generated validation sets must avoid the test set
            test = sequence_set(config, "test")
            seqs = [s for s in seqs if s not in set(test)]
    else:
        seqs = list(spec)
    for s in seqs:
        try:
            validate_sequence(s, min_length=1, max_length=sq["max_target_length"])
        except SequenceError as e:
            raise ConfigError(f"sequences.{name}: {e}") from None
    if len(set(seqs)) != len(seqs):
        dup = sorted({s for s in seqs if seqs.count(s) > 1})
        raise ConfigError(f"sequences.{name}: duplicated sequence(s) {dup}")
    return seqs


def n_batches(config: Mapping, split: str) -> int:
    """Number of batched MD jobs for ``split`` (train or val): known from the config alone."""
    if split == "train":
        explicit = explicit_train(config)
        total = len(explicit) if explicit is not None else sum(train_counts(config).values())
    else:
        total = len(sequence_set(config, "val"))
    return math.ceil(total / config["md"][split]["systems_per_job"])


def tica_lag_frames(config: Mapping) -> int:
    ev = config["eval"]
    frames = ev["tica_lag_ps"] / (config["md"]["reference"]["save_interval_ps"] * ev["tica_stride"])
    if frames < 1 or abs(frames - round(frames)) > 1e-6:
        raise ConfigError(f"eval.tica_lag_ps {ev['tica_lag_ps']} is not a whole number (>= 1) of strided reference "
                          f"frames ({config['md']['reference']['save_interval_ps']} ps x stride {ev['tica_stride']})")
    return int(round(frames))


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    return copy.deepcopy(over)


def model_overlay(config: Mapping, model: str | None) -> Mapping:
    """The config as ``model``'s sampling, SMC, self-improvement and evaluation jobs see it: the variant's
    ``settings`` (sections the schema allows: sampling, smc, self_improve, eval) merged over the shared ones (a
    shipped single-system model samples 1e4 proposals where the demo's 150-step flows sample 500); the config
    itself for None or a variant without them."""
    own = (config.get("models", {}).get(model) or {}).get("settings") if model is not None else None
    if not own:
        return config
    return {**config, **{k: _merge(config.get(k, {}), v) for k, v in own.items()}}


def eval_model_of(config: Mapping, seq: str) -> str:
    """The variant evaluated on ``seq`` in results/eval/: the one whose ``systems`` name it, else sampling.model."""
    for name, spec in config.get("models", {}).items():
        if seq in (spec.get("systems") or []):
            return name
    return config["sampling"]["model"]


def reference_files(config: Mapping) -> dict:
    """System -> a reference MD file used as is (``md.reference_files``) instead of simulated."""
    return dict(config.get("md", {}).get("reference_files") or {})


def _check_models(config: Mapping) -> None:
    models = config["models"]
    evaluated = set(plan_systems(config))
    claimed: dict = {}
    for name, spec in models.items():
        if spec.get("file") and spec.get("weights"):
            raise ConfigError(f"models.{name}: give `file` (a proseflow model file) or `weights` (the authors' "
                              "released checkpoint), not both")
        for seq in spec.get("systems") or []:
            if seq not in evaluated:
                raise ConfigError(f"models.{name}.systems: {seq!r} is not an evaluated system (sequences.test or "
                                  f"extrapolation_targets: {sorted(evaluated)})")
            if seq in claimed:
                raise ConfigError(f"models.{name}.systems: {seq!r} is already evaluated with model {claimed[seq]!r}")
            claimed[seq] = name
        if spec.get("systems") and name == config["sampling"]["model"]:
            raise ConfigError(f"models.{name}: sampling.model is evaluated on every system; `systems` is for "
                              "another variant")
    for seq, path in reference_files(config).items():
        try:
            validate_sequence(seq, min_length=1, max_length=config["sequences"]["max_target_length"])
        except SequenceError as e:
            raise ConfigError(f"md.reference_files: {e}") from None
        if not str(path).strip():
            raise ConfigError(f"md.reference_files.{seq}: empty path")


def check_config(config: Mapping) -> None:
    """Semantic checks the schema cannot express. Raises :class:`ConfigError` naming the bad value."""
    sq = config["sequences"]
    if sq["min_length"] > sq["max_length"]:
        raise ConfigError(f"sequences.min_length {sq['min_length']} > max_length {sq['max_length']}")
    if sq["max_target_length"] < sq["max_length"]:
        raise ConfigError(f"sequences.max_target_length {sq['max_target_length']} < max_length {sq['max_length']}")
    train_counts(config)
    train = explicit_train(config)
    val, test = sequence_set(config, "val"), sequence_set(config, "test")
    if not overlap_allowed(config):
        try:
            check_disjoint({"val": val, "test": test, **({"train": train} if train is not None else {})})
        except SequenceError as e:
            raise ConfigError(f"{e} (set sequences.allow_train_test_overlap: true for a single-system study)") from None
    if "models" in config:
        for name in [*config["train_models"], config["sampling"]["model"]]:
            if name not in config["models"]:
                raise ConfigError(f"model {name!r} is not defined under `models` (defined: {sorted(config['models'])})")
        for split in ("train", "val"):
            ratio = config["dataset"]["frame_interval_ps"] / config["md"][split]["save_interval_ps"]
            if ratio < 1 - 1e-9 or abs(ratio - round(ratio)) > 1e-6:
                raise ConfigError(f"dataset.frame_interval_ps {config['dataset']['frame_interval_ps']} is not a whole "
                                  f"multiple of md.{split}.save_interval_ps {config['md'][split]['save_interval_ps']}")
    for kind in ("train", "val", "reference"):
        try:
            p = md_protocol(config, kind)
            p.n_frames, p.steps_per_frame, p.burn_in_steps  # noqa: B018 - raise on inconsistent times
        except ValueError as e:
            raise ConfigError(f"md.{kind}: {e}") from None
    if "models" in config and "sampling" in config:
        _check_models(config)
    if "eval" in config:
        tica_lag_frames(config)
    if "models" in config and "smc" in config and "self_improve" in config:
        typed_configs(config)
    if "temperature_transfer" in config:
        for prior in config["temperature_transfer"]["priors"]:
            if prior not in PRIOR_MODES:
                raise ConfigError(f"temperature_transfer.priors: unknown prior {prior!r} (expected one of "
                                  f"{', '.join(PRIOR_MODES)})")


def md_protocol(config: Mapping, kind: str, temperature_K: float | None = None) -> MDProtocol:
    """The MD protocol for ``kind`` in (train, val, reference), at the config's or another temperature."""
    md = config["md"]
    sub = md[kind]
    return MDProtocol(
        temperature_K=float(md["temperature_K"] if temperature_K is None else temperature_K),
        friction_per_ps=md["friction_per_ps"], timestep_fs=md["timestep_fs"],
        burn_in_ps=md["burn_in_ps"], length_ps=sub["length_ps"], save_interval_ps=sub["save_interval_ps"],
        seed=md["seed"], platform=md["platform"], checkpoint_interval_s=md["checkpoint_interval_s"],
        **({"replicas": int(sub["replicas"])} if "replicas" in sub else {}),  # optional keys: MDProtocol's defaults
        **({"start_phi_psi_deg": tuple(tuple(v) for v in sub["start_phi_psi_deg"])} if "start_phi_psi_deg" in sub else {}),
    )


# ------------------------------------------------------------------------------- stage settings
class StageSettings:
    """Base of every stage's settings: a plain dataclass that travels as JSON."""

    stage: ClassVar[str]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class Stage:
    """One pipeline stage, declared once: ``python -m proseflow run <name>`` rebuilds ``settings`` from JSON and
    calls ``run(settings, inputs, outputs)``; the workflow builds the settings with ``build(config, **conditions)``.
    ``conditions``: settings fields a rule sets from its wildcards, not from a config key; ``defaults``: fields no
    config key sets, each with why its dataclass default is the one (both checked by tests/test_settings.py);
    ``threaded``: the runner takes the job's thread count."""

    name: str
    settings: type
    build: Callable
    run: Callable
    conditions: tuple = ()
    defaults: dict = field(default_factory=dict)
    threaded: bool = False


REGISTRY: dict[str, Stage] = {}  # name -> stage: filled by the stage modules of this package (register)


def register(*stages: Stage) -> None:
    """Add stages to :data:`REGISTRY` (each module of ``proseflow.stages`` registers its own at import)."""
    for st in stages:
        if st.name in REGISTRY:
            raise ValueError(f"stage {st.name!r} is registered twice")
        if not (isinstance(st.settings, type) and issubclass(st.settings, StageSettings)):
            raise TypeError(f"stage {st.name!r}: settings must be a StageSettings dataclass, got {st.settings!r}")
        REGISTRY[st.name] = st




































def _from_fields(cls: type, data: Mapping):
    """A config dataclass from its JSON fields (a tuple field came back as a list)."""
    hints = typing.get_type_hints(cls)
    return cls(**{k: tuple(v) if isinstance(v, list) and typing.get_origin(hints.get(k)) is tuple else v
                  for k, v in data.items()})


def from_dict(stage: str, data: Mapping) -> StageSettings:
    """Settings of ``stage`` from their dict; unknown or missing fields are named."""
    try:
        cls = REGISTRY[stage].settings
    except KeyError:
        raise ConfigError(f"unknown stage {stage!r} (known: {', '.join(sorted(REGISTRY))})") from None
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{stage} settings: unknown field(s) {unknown} (known: {sorted(names)})")
    hints = typing.get_type_hints(cls)
    data = {k: _from_fields(hints[k], v) if dataclasses.is_dataclass(hints.get(k)) and isinstance(v, Mapping) else v
            for k, v in data.items()}  # a config type (TrainConfig, SMCConfig, ...) travels as its fields
    try:
        return cls(**data)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{stage} settings: {e}") from None


def from_json(stage: str, text: str) -> StageSettings:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{stage} settings are not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{stage} settings must be a JSON object, got {type(data).__name__}")
    return from_dict(stage, data)


# ------------------------------------------------------------------------------------- builders
def _temperature(config: Mapping, temperature_K: float | None) -> float:
    return float(config["md"]["temperature_K"] if temperature_K is None else temperature_K)


def build(stage: str, config: Mapping, **conditions) -> StageSettings:
    """The settings of ``stage`` from the (validated) config and the rule's conditions."""
    try:
        builder = REGISTRY[stage].build
    except KeyError:
        raise ConfigError(f"unknown stage {stage!r} (known: {', '.join(sorted(REGISTRY))})") from None
    return builder(config, **conditions)












def imported_models(config: Mapping) -> list[str]:
    """The variants never trained here: ``weights`` (the authors' released checkpoint, imported) or ``file`` (a
    proseflow model file, checked and copied)."""
    return [m for m, spec in config.get("models", {}).items() if spec.get("weights") or spec.get("file")]


























# ------------------------------------------------------------------------- what the workflow runs
def temperature_cases(config: Mapping) -> list[tuple[str, float, str]]:
    """(system, temperature in K, prior) of the temperature-transfer study."""
    tt = config["temperature_transfer"]
    return [(s, float(t), p) for s in tt["systems"] for t in tt["temperatures_K"] for p in tt["priors"]]


@dataclass
class Plan:
    """What the workflow runs for a config: the config keys that choose jobs rather than settle a stage."""

    train_models: list  # trained (or imported) by `all`
    eval_model: str  # the variant evaluated in results/eval/
    variants: list  # the other trained variants (evaluated with SNIS for Table 3)
    val: list
    test: list
    eval_systems: list  # test systems, then extrapolation targets
    samplers: list  # sampler files per evaluated system; snis first, always
    temperature_cases: list  # (system, temperature in K, prior)
    n_train_batches: int
    n_val_batches: int
    imported: list = field(default_factory=list)  # variants imported or shipped as files (no MD, no training)
    eval_models: dict = field(default_factory=dict)  # system -> the variant evaluated on it in results/eval/
    reference_files: dict = field(default_factory=dict)  # system -> a reference MD file used as is
    temperature_K: float | None = None  # the config's temperature (md.temperature_K)

    def eval_model_of(self, seq: str) -> str:
        """The variant of results/eval/<seq>: the one whose ``systems`` name it, else sampling.model."""
        return self.eval_models.get(seq, self.eval_model)

    def temperature_condition(self, seq: str, temperature_K: float, prior: str) -> str:
        """Path segment of a temperature-transfer case: T400K_scaled/, or "" (the system's main evaluation) for a
        system evaluated anyway at the config's own temperature, where both priors are the main proposal (scaled:
        sqrt(T / T_train) = 1) with the main seed: a condition there would repeat the main sample set bit for bit."""
        own = self.temperature_K is not None and float(temperature_K) == float(self.temperature_K)
        return "" if own and seq in self.eval_systems else condition_name(temperature_K, prior)

    def variant_evals(self) -> list[tuple[str, str]]:
        """(variant, system) pairs evaluated with SNIS for Table 3: every other variant on every test system,
        and sampling.model on the systems another variant owns (beside it)."""
        pairs = [(m, s) for s in self.test for m in self.variants if m != self.eval_model_of(s)]
        pairs += [(self.eval_model, s) for s in self.test if self.eval_model_of(s) != self.eval_model]
        return pairs

    @property
    def trains(self) -> bool:
        """Whether `all` trains a model (and so needs the training and validation MD)."""
        return any(m not in self.imported for m in self.train_models)


def plan_systems(config: Mapping) -> list[str]:
    """The evaluated systems: the test set, then the extrapolation targets not in it."""
    test = sequence_set(config, "test")
    extra = []
    for s in config.get("extrapolation_targets", []):
        try:
            extra.append(validate_sequence(s, min_length=1, max_length=config["sequences"]["max_target_length"]))
        except SequenceError as e:
            raise ConfigError(f"extrapolation_targets: {e}") from None
    return [*test, *(s for s in extra if s not in test)]


def plan(config: Mapping) -> Plan:
    test = sequence_set(config, "test")
    eval_model = config["sampling"]["model"]
    own = {m for m, spec in config["models"].items() if spec.get("systems")}  # evaluated on their systems only
    systems = plan_systems(config)
    return Plan(train_models=list(config["train_models"]), eval_model=eval_model,
                variants=[m for m in config["train_models"] if m != eval_model and m not in own],
                val=sequence_set(config, "val"), test=test, eval_systems=systems,
                samplers=["snis", *(s for s in config["samplers"] if s != "snis")],
                temperature_cases=temperature_cases(config), n_train_batches=n_batches(config, "train"),
                n_val_batches=n_batches(config, "val"), imported=imported_models(config),
                eval_models={s: eval_model_of(config, s) for s in systems},
                reference_files=reference_files(config), temperature_K=float(config["md"]["temperature_K"]))


# A temperature-transfer job is a main job under a condition: a path segment naming the target temperature
# and prior (``T400K_scaled/`` in sample and evaluation paths; ``_400K`` after the system in MD paths), or
# "" for the config's temperature.
CONDITION_PATTERN = r"(T\d+(\.\d+)?K_(plain|scaled)/)?"
MD_TEMPERATURE_PATTERN = r"(_\d+(\.\d+)?K)?"


def condition_name(temperature_K: float, prior: str) -> str:
    """Path segment of a target temperature and prior: ``T400K_scaled/``."""
    prior_std_for(temperature_K, temperature_K, prior)  # names an unknown prior mode
    return f"T{float(temperature_K):g}K_{prior}/"


def parse_condition(segment: str) -> tuple[float | None, str]:
    """(target temperature in K or None for the config's, prior mode) of a condition segment."""
    if not segment:
        return None, "plain"
    m = re.fullmatch(r"T(\d+(?:\.\d+)?)K_(plain|scaled)/", segment)
    if m is None:
        raise ConfigError(f"condition {segment!r} is not of the form T<kelvin>K_<plain|scaled>/")
    return float(m.group(1)), m.group(2)


def md_suffix(temperature_K: float | None, own_K: float | None = None) -> str:
    """Suffix of an MD path at another temperature: ``_400K``; "" for None or the config's own temperature
    ``own_K`` (a condition at that temperature reads the main reference MD: one MD, not a second identical run)."""
    if temperature_K is None or (own_K is not None and float(temperature_K) == float(own_K)):
        return ""
    return f"_{float(temperature_K):g}K"


def parse_md_suffix(suffix: str) -> float | None:
    if not suffix:
        return None
    m = re.fullmatch(r"_(\d+(?:\.\d+)?)K", suffix)
    if m is None:
        raise ConfigError(f"MD temperature suffix {suffix!r} is not of the form _<kelvin>K")
    return float(m.group(1))


# ------------------------------------------------------------------------------ the stage modules
def _load_stage_modules() -> None:
    """Import every module of this package except settings, run and private ones: each registers its stages.
    A new stage (or family) is one module here; nothing else lists it."""
    import importlib
    import pkgutil

    package = Path(__file__).parent
    for info in sorted(pkgutil.iter_modules([str(package)]), key=lambda m: m.name):
        if info.name not in ("settings", "run") and not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}")


_load_stage_modules()
# derived from the registry (settings classes by their stage name, for from_json and the tests)
SETTINGS: dict[str, type[StageSettings]] = {st.settings.stage: st.settings for st in REGISTRY.values()}
CONDITIONS = {(st.settings.stage, c) for st in REGISTRY.values() for c in st.conditions}
DOCUMENTED_DEFAULTS = {(st.settings.stage, f): why for st in REGISTRY.values() for f, why in st.defaults.items()}
globals().update({cls.__name__: cls for cls in SETTINGS.values()})  # S.SampleSettings etc., as before


__all__ = ["ConfigError", "MDProtocol", "SAMPLERS", "imported_models", "model_overlay", "eval_model_of", "reference_files", "plan_systems", "SMC_KERNELS", "check_keys", "typed_configs", "TYPED_SECTIONS", "SETTINGS", "DOCUMENTED_DEFAULTS", "CONDITIONS", "Stage", "StageSettings", "REGISTRY", "register", "Plan", "plan", "build", "from_dict", "from_json",
           "check_config", "load_config", "sequence_set", "n_batches", "tica_lag_frames", "md_protocol",
           "prior_std_for", "temperature_cases", "condition_name", "parse_condition", "md_suffix", "parse_md_suffix",
           "CONDITION_PATTERN", "MD_TEMPERATURE_PATTERN", "PRIOR_MODES"]

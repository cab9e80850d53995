"""Configuration: semantic checks beyond the JSON schema, and typed views of config sections.

The Snakefile validates ``config`` against ``workflow/schemas/config.schema.yaml`` and then calls
:func:`check_config`; both raise with messages that name the bad key and value.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path

import yaml

from proseflow.md import MDProtocol
from proseflow.sequences import SequenceError, check_disjoint, draw_balanced, validate_sequence


class ConfigError(ValueError):
    """A configuration value that cannot work."""


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
    return bool(config["sequences"].get("allow_train_test_overlap", False))


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


def md_protocol(config: Mapping, kind: str, seed: int | None = None) -> MDProtocol:
    """The MD protocol for ``kind`` in (train, val, reference)."""
    md = config["md"]
    sub = md[kind]
    return MDProtocol(
        temperature_K=md["temperature_K"], friction_per_ps=md["friction_per_ps"], timestep_fs=md["timestep_fs"],
        burn_in_ps=md["burn_in_ps"], length_ps=sub["length_ps"], save_interval_ps=sub["save_interval_ps"],
        seed=md["seed"] if seed is None else seed, platform=md["platform"],
        checkpoint_interval_s=md["checkpoint_interval_s"], replicas=int(sub.get("replicas", 1)),
    )


def n_batches(config: Mapping, split: str) -> int:
    """Number of batched MD jobs for ``split`` (train or val): known from the config alone."""
    if split == "train":
        explicit = explicit_train(config)
        total = len(explicit) if explicit is not None else sum(train_counts(config).values())
    else:
        total = len(sequence_set(config, "val"))
    return math.ceil(total / config["md"][split]["systems_per_job"])


def train_settings(config: Mapping, model: str) -> dict:
    """TrainConfig fields of one model variant: the shared recipe plus the variant's preset and overrides."""
    spec = config["models"][model]
    return {**config["train"], "model_preset": spec["preset"], "model": dict(spec.get("overrides", {}))}


def tica_lag_frames(config: Mapping) -> int:
    ev = config["eval"]
    frames = ev["tica_lag_ps"] / (config["md"]["reference"]["save_interval_ps"] * ev["tica_stride"])
    if frames < 1 or abs(frames - round(frames)) > 1e-6:
        raise ConfigError(f"eval.tica_lag_ps {ev['tica_lag_ps']} is not a whole number (>= 1) of strided reference "
                          f"frames ({config['md']['reference']['save_interval_ps']} ps x stride {ev['tica_stride']})")
    return int(round(frames))


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
    if "eval" in config:
        tica_lag_frames(config)

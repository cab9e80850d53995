"""Training stages: train a flow variant, or import one (the authors' released weights, or a proseflow model
file used as is).

Declared as every stage is (:mod:`proseflow.stages`).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from proseflow import typed
from proseflow.flow.config import TrainConfig
from proseflow.stages import settings as S
from proseflow.stages._files import Files
from proseflow.stages.settings import (
    ConfigError,
    Stage,
    StageSettings,
    imported_models,
    register,
)

log = logging.getLogger("proseflow")


# ------------------------------------------------------------------------------------------ settings
@dataclass
class TrainSettings(StageSettings):
    """TrainConfig fields of one model variant: the shared recipe (with the variant's own ``train`` values over it)
    plus the variant's preset and overrides."""

    stage: ClassVar[str] = "train"
    model: str  # condition: the variant
    config: TrainConfig  # the shared recipe, the variant's own `train` values over it, its preset and overrides


@dataclass
class ImportSettings(StageSettings):
    """A model variant imported from the authors' released weights (``models.<name>.weights``) instead of trained."""

    stage: ClassVar[str] = "import"
    model: str  # condition: the variant
    source: str = "released"  # "released" (models.<name>.weights) or "proseflow" (models.<name>.file, as is)
    head_dim: int = 64  # not in the weights: models.<name>.overrides.head_dim, else the released 64
    max_atoms: int = 256  # the position tables' length: models.<name>.overrides.max_atoms, else 256


# ------------------------------------------------------------------------------------------ builders
def _train(config, model):
    if model not in config["models"]:
        raise ConfigError(f"model {model!r} is not defined under `models` (defined: {sorted(config['models'])})")
    spec = config["models"][model]
    own = dict(spec.get("train") or {})  # the variant's own training settings over the shared recipe
    try:
        typed.check_fields(TrainConfig, own, f"models.{model}.train", exclude=("model_preset", "model"))
    except typed.ConfigTypeError as e:
        raise ConfigError(f"{e} (the architecture goes under models.{model}.overrides)") from None
    values = {**copy.deepcopy(dict(config["train"])), **copy.deepcopy(own), "model_preset": spec["preset"],
              "model": copy.deepcopy(dict(spec.get("overrides", {})))}
    return TrainSettings(model=model, config=typed.build(TrainConfig, values, f"models.{model}"))


def _import(config, model):
    spec = config["models"].get(model)
    if spec is None or not (spec.get("weights") or spec.get("file")):
        raise ConfigError(f"model {model!r} has neither `weights` nor `file` under `models` "
                          f"(imported: {imported_models(config)})")
    if spec.get("file"):
        return ImportSettings(model=model, source="proseflow")
    over = spec.get("overrides") or {}
    return ImportSettings(model=model, **{k: int(over[k]) for k in ("head_dim", "max_atoms") if k in over})


# ------------------------------------------------------------------------------------------ runners
def run_train(s: S.TrainSettings, inputs: Files, outputs: Files) -> None:
    from proseflow.flow.train import train

    config = s.config
    out_dir = Path(outputs.one("model")).parent
    summary = train(config, inputs.many("train"), inputs.many("val", default=[]) or None, out_dir)
    log.info("training finished: %s", json.dumps(summary, default=str))
    if not summary["completed"]:  # stopped by train.stop_after_s: checkpoint written, no model.pt
        raise RuntimeError(f"training stopped at step {summary['step']} before max_steps; rerun to resume")


def run_import(s: S.ImportSettings, inputs: Files, outputs: Files) -> None:
    """A model not trained here -> a proseflow model file with provenance.json beside it: the authors' released
    Prose weights (``weights``; arch prose_released) or a proseflow model file used as is (``file``)."""
    if s.source == "proseflow":
        from proseflow.flow.checkpoint import adopt_model

        out = adopt_model(inputs.one("file"), outputs.one("model"))
        log.info("model file %s -> %s (model %s, used as is)", inputs.one("file"), out, s.model)
        return
    from proseflow.flow.released import import_weights

    out = import_weights(inputs.one("weights"), outputs.one("model"), head_dim=s.head_dim, max_atoms=s.max_atoms)
    log.info("imported %s -> %s (model %s)", inputs.one("weights"), out, s.model)


register(
    Stage("train", TrainSettings, _train, run_train, conditions=("model",)),
    Stage("import", ImportSettings, _import, run_import, conditions=("model",), defaults={
        "source": "released (models.<name>.weights), or proseflow when the variant gives `file` instead",
        "head_dim": "the released Prose's 64, unless an imported variant's overrides.head_dim says otherwise",
        "max_atoms": "256 position-table rows, unless an imported variant's overrides.max_atoms says otherwise"}),
)

import json
import shlex
import sys

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from proseflow.config import (
    ConfigError,
    check_config,
    md_protocol,
    n_batches,
    sequence_set,
    tica_lag_frames,
    train_settings,
)
from proseflow.sequences import validate_sequence
from proseflow.temperature import prior_std_for

try:
    check_config(config)
except ConfigError as e:
    raise WorkflowError(f"invalid configuration: {e}") from None

# Every rule runs the library through its CLI adapter, with the repository's src/ importable
# (works in the project venv and in the conda envs of envs/).
# Without --use-conda, the interpreter running Snakemake (the project venv) runs the jobs too.
from snakemake.settings.types import DeploymentMethod

_PYTHON = "python" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method else shlex.quote(sys.executable)
_ENV = f"PYTHONPATH={shlex.quote(str(Path(workflow.basedir) / 'src'))}${{PYTHONPATH:+:$PYTHONPATH}}"
PF = f"{_ENV} {_PYTHON} -m proseflow"


def launcher(wildcards, resources):
    """The CLI, or under torchrun with one process per GPU when the job has several (DDP training)."""
    gpus = int(getattr(resources, "gpu", 0) or 0)
    if gpus > 1:
        return f"{_ENV} {_PYTHON} -m torch.distributed.run --standalone --nproc-per-node {gpus} -m proseflow"
    return PF

N_TRAIN_BATCHES = n_batches(config, "train")
N_VAL_BATCHES = n_batches(config, "val")
VAL = sequence_set(config, "val")
TEST = sequence_set(config, "test")


wildcard_constraints:
    seq="[A-Z]+",
    batch=r"\d{5}",
    split="train|val",
    model="[A-Za-z0-9_]+",
    temp=r"\d+(\.\d+)?",
    prior="plain|scaled",


def valid_target(seq):
    """Validate a target sequence named in a path; a clear error instead of 'missing rule'."""
    try:
        return validate_sequence(seq, min_length=1, max_length=config["sequences"]["max_target_length"])
    except ValueError as e:
        raise WorkflowError(f"invalid target: {e}") from None


def check_target_case():
    """A requested file whose {seq} is not upper case (results/md/gydp.h5) would fail with 'no rule to
    produce' (the constraint seq=[A-Z]+); name the problem instead. Called once all rules are defined."""
    import re

    settings = workflow.dag_settings  # None while the Snakefile is parsed: read the command line then
    targets = settings.targets if settings is not None else [a for a in sys.argv[1:] if not a.startswith("-")]
    for target in targets:
        for rule in workflow.rules:
            for pattern in map(str, rule.output):  # e.g. results/md/{seq,[A-Z]+}.h5
                regex, seen = "", False
                for part in re.split(r"(\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\})", pattern):
                    if part.startswith("{") and part[1:-1].split(",")[0].strip() == "seq":
                        regex += "(?P=seq)" if seen else "(?P<seq>[A-Za-z]+)"
                        seen = True
                    else:
                        regex += "[^/]+" if part.startswith("{") else re.escape(part)
                match = seen and re.fullmatch(regex, str(target))
                if match and match["seq"] != match["seq"].upper():
                    valid_target(match["seq"])


def protocol_json(kind, **overrides):
    return shlex.quote(json.dumps({**md_protocol(config, kind).__dict__, **overrides}))


def md_batches(split):
    n = N_TRAIN_BATCHES if split == "train" else N_VAL_BATCHES
    return [f"results/md/{split}/batch{i:05d}" for i in range(n)]




EVAL_MODEL = config["sampling"]["model"]
VARIANTS = [m for m in config["train_models"] if m != EVAL_MODEL]
EXTRA = [valid_target(s) for s in config.get("extrapolation_targets", [])]
EVAL_SYSTEMS = [*TEST, *(s for s in EXTRA if s not in TEST)]


# The shell command of every evaluation rule (per system, per variant, per temperature): each rule
# provides the same input/output/params names.
EVALUATE = (
    "{PF} evaluate --md {input.md} --tica {input.tica} --structure {input.structure}"
    " --samplers {input.samplers} --proposals {input.proposals} --train-sequences {input.train}"
    " --model-name {params.model} --model-path {input.model} --temperature-K {params.temperature_K}"
    " --reference-frames {params.reference_frames} --n-metric {params.n_metric} --kmeans-k {params.k}"
    " --seed {params.seed} --out-json {output.json} --out-html {output.html} > {log} 2>&1"
)


def sampler_files(seq):
    names = ["snis", *(s for s in config["samplers"] if s != "snis")]
    return [f"results/samples/{EVAL_MODEL}/{seq}/{name}.npz" for name in names]


def temperature_cases():
    tt = config["temperature_transfer"]
    return [(s, t, p) for s in tt["systems"] for t in tt["temperatures_K"] for p in tt["priors"]]


def temperature_evals():
    return [f"results/temperature/{s}_{t:g}K_{p}.json" for s, t, p in temperature_cases()]


def dataset_stores(split):
    return [f"results/dataset/{split}/batch{i:05d}.zarr" for i in range(N_TRAIN_BATCHES if split == "train" else N_VAL_BATCHES)]


def all_targets():
    return [
        "results/sequences/train.csv",
        *md_batches("train"),
        *md_batches("val"),
        *[f"results/md/{s}.h5" for s in TEST],
        *[f"results/models/{m}/model.pt" for m in config["train_models"]],
        "results/eval/summary.html",
        "results/eval/budget.html",
        *(["results/eval/temperature.html"] if temperature_cases() else []),
    ]

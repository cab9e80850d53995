import os
import shlex
import sys

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

# The only library module the workflow imports: the standard library and PyYAML, nothing scientific.
from proseflow.stages import settings as S
from snakemake.utils import validate

# The config, checked in three passes, each naming the bad key: every key exists and every number is one
# (with the nearest valid name for a typo), the schema's types and ranges, then what only the code knows
# (the config types of training, SMC and self-improvement are built here, so a bad value fails the dry run).
_SCHEMA = S.yaml.safe_load((Path(workflow.basedir) / "workflow/schemas/config.schema.yaml").read_text())
try:
    S.check_keys(config, _SCHEMA)
except S.ConfigError as e:
    raise WorkflowError(f"invalid configuration: {e}") from None
validate(config, "../schemas/config.schema.yaml")
for _name, _spec in config["models"].items():  # a variant's own settings: the same three passes, merged
    if _spec.get("settings"):
        _merged = S.model_overlay(config, _name)
        try:
            S.check_keys(_merged, _SCHEMA)
        except S.ConfigError as e:
            raise WorkflowError(f"invalid configuration: models.{_name}.settings: {e}") from None
        validate(_merged, "../schemas/config.schema.yaml")
try:
    S.check_config(config)
except S.ConfigError as e:
    raise WorkflowError(f"invalid configuration: {e}") from None

# Every rule runs one stage through the same entry point,
#   python -m proseflow run <stage> --settings JSON --input NAME PATH... --output NAME PATH...
# with the repository's src/ importable (in the project venv and in the conda envs of envs/). Without
# --use-conda, the interpreter running Snakemake (the project venv) runs the jobs too. The interpreter and src/
# reach the jobs through the environment (PROSEFLOW_PYTHON, PYTHONPATH), set here, where every Snakemake
# process parses the workflow (the main one, and each cluster job's): no rule's params or shell text holds a
# path, so starting Snakemake another way (python -m snakemake, another checkout path, --use-conda) does not
# make a complete tree look out of date.
from snakemake.settings.types import DeploymentMethod

os.environ["PROSEFLOW_PYTHON"] = ("python" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
                                  else sys.executable)
_SRC = str(Path(workflow.basedir) / "src")
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_SRC, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != _SRC)])
PROSEFLOW = '"$PROSEFLOW_PYTHON" -m proseflow'


envvars:  # set just above; declared so that Snakemake passes them on to remote jobs as well
    "PROSEFLOW_PYTHON",
    "PYTHONPATH",



def launcher(wildcards, resources):
    """The entry point, or under torchrun with one process per GPU when the job has several (DDP training)."""
    gpus = int(getattr(resources, "gpu", 0) or 0)
    if gpus > 1:
        return f'"$PROSEFLOW_PYTHON" -m torch.distributed.run --standalone --nproc-per-node {gpus} -m proseflow'
    return PROSEFLOW


def stage(name, /, **conditions):
    """A params function: what follows `run` on the command line of a job of stage ``name``: the stage, the JSON of
    its settings (proseflow.stages.settings, built from the config and this job's conditions: a value, or a function
    of the wildcards) and the rule's named files. A rule names its stage once; its shell is RUN (or RUN_THREADED)."""
    S.REGISTRY[name]  # noqa: B018 - an unknown stage fails when the workflow is parsed

    def job(wildcards, input, output):
        values = {k: v(wildcards) if callable(v) else v for k, v in conditions.items()}
        return f"{name} --settings {shlex.quote(S.build(name, config, **values).to_json())} {files(wildcards, input, output)}"

    return job


RUN = "{params.launch} run {params.job} > {log} 2>&1"
RUN_THREADED = "{params.launch} run {params.job} --threads {threads} > {log} 2>&1"  # stages that take the job's threads


def files(wildcards, input, output):
    """A params function: the rule's named inputs and outputs as ``--input NAME PATH... --output NAME PATH...``."""
    parts = []
    for flag, named in (("--input", input), ("--output", output)):
        for name, value in named.items():
            paths = [value] if isinstance(value, str) else list(value)
            if paths:
                parts.append(" ".join([flag, name, *map(shlex.quote, map(str, paths))]))
    return " ".join(parts)


PLAN = S.plan(config)
N_TRAIN_BATCHES = PLAN.n_train_batches
N_VAL_BATCHES = PLAN.n_val_batches
VAL = PLAN.val
TEST = PLAN.test
EVAL_MODEL = PLAN.eval_model
VARIANTS = PLAN.variants
# a regex for the {model} wildcard of the trained and of the imported variants ("(?!)" matches nothing)
TRAINED_MODELS = "|".join(m for m in config["models"] if m not in PLAN.imported) or "(?!)"
IMPORTED_MODELS = "|".join(PLAN.imported) or "(?!)"
REFERENCE_FILES = "|".join(PLAN.reference_files) or "(?!)"  # systems whose reference MD is a file used as is
EVAL_SYSTEMS = PLAN.eval_systems


wildcard_constraints:
    seq="[A-Z]+",
    batch=r"\d{5}",
    split="train|val",
    model="[A-Za-z0-9_]+",
    cond=S.CONDITION_PATTERN,
    at_T=S.MD_TEMPERATURE_PATTERN,


def valid_target(seq):
    """Validate a target sequence named in a path; a clear error instead of 'missing rule'."""
    try:
        return S.validate_sequence(seq, min_length=1, max_length=config["sequences"]["max_target_length"])
    except ValueError as e:
        raise WorkflowError(f"invalid target: {e}") from None


_WILDCARD_PATTERNS = {"cond": S.CONDITION_PATTERN, "at_T": S.MD_TEMPERATURE_PATTERN, "batch": r"\d{5}",
                      "split": "train|val", "model": "[A-Za-z0-9_]+"}  # the constraints below


def check_target_case():
    """A requested file whose {seq} is not upper case (results/md/gydp.h5) would fail with 'no rule to
    produce' (the constraint seq=[A-Z]+); name the problem instead. Called once all rules are defined."""
    import re

    settings = workflow.dag_settings  # None while the Snakefile is parsed: read the command line then
    targets = settings.targets if settings is not None else [a for a in sys.argv[1:] if not a.startswith("-")]
    for target in targets:
        if any(r.is_producer(str(target)) for r in workflow.rules):
            continue  # some rule makes it as named (results/eval/budget.html is not a lower-case sequence "t")
        for r in workflow.rules:
            for pattern in map(str, r.output):  # e.g. results/md/{seq,[A-Z]+}.h5
                regex, seen = "", False
                for part in re.split(r"(\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\})", pattern):
                    if part.startswith("{") and part[1:-1].split(",")[0].strip() == "seq":
                        regex += "(?P=seq)" if seen else "(?P<seq>[A-Za-z]+)"
                        seen = True
                    elif part.startswith("{"):  # another wildcard: its own constraint, so that {cond} cannot
                        name = part[1:-1].split(",")[0].strip()  # swallow a lower-case sequence's letters
                        regex += f"(?:{_WILDCARD_PATTERNS.get(name, '[^/]*')})"
                    else:
                        regex += re.escape(part)
                match = seen and re.fullmatch(regex, str(target))
                if match and match["seq"] != match["seq"].upper():
                    valid_target(match["seq"])


# Temperature transfer is a condition of the main rules: "" (the config's temperature) or T400K_scaled/
# ({cond}, in sample and evaluation paths) and "" or _400K ({at_T}, in MD paths).
def target_temperature(wildcards):
    return S.parse_condition(wildcards.cond)[0]


def prior(wildcards):
    return S.parse_condition(wildcards.cond)[1]


def md_temperature(wildcards):
    return S.parse_md_suffix(wildcards.at_T)


def md_suffix(wildcards):
    """The reference MD of a condition: results/md/WA.h5 at the config's temperature, WA_400K.h5 at 400 K."""
    return S.md_suffix(target_temperature(wildcards), config["md"]["temperature_K"])


def md_batches(split):
    n = N_TRAIN_BATCHES if split == "train" else N_VAL_BATCHES
    return [f"results/md/{split}/batch{i:05d}" for i in range(n)]




def eval_model(wildcards):
    """The variant of results/eval/<seq>: the one whose `systems` name it (a shipped model), else sampling.model."""
    return PLAN.eval_model_of(wildcards.seq)


def model_source(wildcards):
    """The input of a variant not trained here: its model file (`file`) or the authors' weights (`weights`)."""
    spec = config["models"][wildcards.model]
    return {"file": spec["file"]} if spec.get("file") else {"weights": spec["weights"]}


def sampler_files(seq, cond=""):
    """The evaluated sample sets of a system: every configured sampler, or SNIS under a temperature condition."""
    model = PLAN.eval_model_of(seq)
    return [f"results/samples/{model}/{seq}/{cond}{name}.npz" for name in (["snis"] if cond else PLAN.samplers)]


def export_targets():
    """The evaluated sample sets as trajectories (rule export_samples), temperature conditions included."""
    sets = [f for seq in EVAL_SYSTEMS for f in sampler_files(seq)]
    sets += [f for s, t, p in temperature_cases() for f in sampler_files(s, PLAN.temperature_condition(s, t, p))]
    return [f.removesuffix(".npz") + ".xtc" for f in dict.fromkeys(sets)]


def temperature_cases():
    return PLAN.temperature_cases


def temperature_evals():
    """One evaluation per case; a case at the config's temperature is the system's main evaluation (plain and
    scaled priors are the same there), so those appear once per prior and are not run again."""
    return [f"results/eval/{PLAN.temperature_condition(s, t, p)}{s}.json" for s, t, p in temperature_cases()]


def dataset_stores(split):
    return [f"results/dataset/{split}/batch{i:05d}.zarr" for i in range(N_TRAIN_BATCHES if split == "train" else N_VAL_BATCHES)]


def all_targets():
    return [
        "results/sequences/train.csv",
        *(md_batches("train") + md_batches("val") if PLAN.trains else []),  # imported models need no training MD
        *[f"results/md/{s}.h5" for s in TEST],
        *[f"results/models/{m}/model.pt" for m in PLAN.train_models],
        "results/eval/summary.html",
        *export_targets(),
        "results/eval/budget.html",
        *(["results/eval/temperature.html"] if temperature_cases() else []),
    ]

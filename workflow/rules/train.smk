rule train_model:
    """Train one flow variant; a restarted job resumes from results/models/{model}/checkpoint.pt.
    With resources gpu > 1 (set in a profile) it runs under torchrun, one DDP process per GPU."""
    input:
        train=dataset_stores("train"),
        val=dataset_stores("val"),
    output:
        model="results/models/{model}/model.pt",
        curve=report("results/models/{model}/loss_curve.png", caption="../report/loss_curve.rst",
                     category="Training", labels={"model": "{model}"}),
    wildcard_constraints:
        model=TRAINED_MODELS,
    params:
        launch=launcher,
        job=stage("train", model=lambda w: w.model),
    threads: 2
    resources:
        gpu=1,
        runtime=lambda w, attempt: 48 * 60 * attempt,
    log:
        "logs/train/{model}.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        RUN


rule import_model:
    """A variant not trained here: `weights` (the authors' released Prose checkpoint) imported into a proseflow
    model file (arch prose_released, every key and shape checked; proseflow.flow.released), or `file` (a proseflow
    model file, e.g. the shipped AA model) checked and used as is; provenance.json beside it either way."""
    input:
        unpack(model_source),
    output:
        model="results/models/{model}/model.pt",
    wildcard_constraints:
        model=IMPORTED_MODELS,
    params:
        launch=PROSEFLOW,
        job=stage("import", model=lambda w: w.model),
    log:
        "logs/train/{model}.import.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        RUN

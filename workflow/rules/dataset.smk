rule build_dataset:
    """One Zarr v3 frame store per MD batch (so parallel jobs never write the same store)."""
    input:
        batch="results/md/{split}/batch{batch}",
    output:
        store=directory("results/dataset/{split}/batch{batch}.zarr"),
    params:
        launch=PROSEFLOW,
        job=stage("dataset"),
    log:
        "logs/dataset/{split}/batch{batch}.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        RUN

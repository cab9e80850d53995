rule build_dataset:
    """One Zarr v3 frame store per MD batch (so parallel jobs never write the same store)."""
    input:
        "results/md/{split}/batch{batch}",
    output:
        directory("results/dataset/{split}/batch{batch}.zarr"),
    params:
        frame_interval_ps=config["dataset"]["frame_interval_ps"],
    log:
        "logs/dataset/{split}/batch{batch}.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        "{PF} dataset --md-dir {input} --frame-interval-ps {params.frame_interval_ps} --out {output} > {log} 2>&1"

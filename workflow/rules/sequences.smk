rule enumerate_sequences:
    """Training, validation and test sequences (CSV)."""
    output:
        train="results/sequences/train.csv",
        val="results/sequences/val.csv",
        test="results/sequences/test.csv",
    params:
        launch=PROSEFLOW,
        job=stage("sequences"),
    log:
        "logs/sequences.log",
    conda:
        "../../envs/md.yaml"
    shell:
        RUN

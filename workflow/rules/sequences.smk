rule enumerate_sequences:
    """Training, validation and test sequences (CSV)."""
    output:
        train="results/sequences/train.csv",
        val="results/sequences/val.csv",
        test="results/sequences/test.csv",
    params:
        launch=PROSEFLOW,
        settings=settings("sequences"),
        files=files,
    log:
        "logs/sequences.log",
    conda:
        "../../envs/md.yaml"
    shell:
        "{params.launch} run sequences --settings {params.settings:q} {params.files} > {log} 2>&1"

rule enumerate_sequences:
    output:
        train="results/sequences/train.csv",
        val="results/sequences/val.csv",
        test="results/sequences/test.csv",
    params:
        sequences=shlex.quote(json.dumps(config["sequences"])),
    log:
        "logs/sequences.log",
    conda:
        "../../envs/md.yaml"
    shell:
        "{PF} sequences --sequences {params.sequences} --out-dir results/sequences > {log} 2>&1"

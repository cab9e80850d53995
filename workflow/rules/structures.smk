rule build_structure:
    output:
        "results/structures/{seq}.pdb",
    params:
        seq=lambda w: valid_target(w.seq),
        max_length=config["sequences"]["max_target_length"],
    log:
        "logs/structures/{seq}.log",
    conda:
        "../../envs/md.yaml"
    shell:
        "{PF} structure --sequence {params.seq} --max-length {params.max_length} --out {output} > {log} 2>&1"

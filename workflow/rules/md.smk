rule simulate_reference:
    """Reference MD of one system (test systems and any valid target sequence)."""
    input:
        "results/structures/{seq}.pdb",
    output:
        "results/md/{seq}.h5",
    params:
        protocol=protocol_json("reference"),
    threads: 2
    resources:
        runtime=lambda w, attempt: 24 * 60 * attempt,
    log:
        "logs/md/{seq}.log",
    conda:
        "../../envs/md.yaml"
    shell:
        "{PF} md --name {wildcards.seq} --structure {input} --protocol {params.protocol}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule simulate_batch:
    """Training/validation MD: `systems_per_job` sequences as non-interacting copies in one context."""
    input:
        "results/sequences/{split}.csv",
    output:
        directory("results/md/{split}/batch{batch}"),
    params:
        protocol=lambda w: protocol_json(w.split),
        systems_per_job=lambda w: config["md"][w.split]["systems_per_job"],
    threads: 2
    resources:
        runtime=lambda w, attempt: 24 * 60 * attempt,
    log:
        "logs/md/{split}/batch{batch}.log",
    conda:
        "../../envs/md.yaml"
    shell:
        "{PF} md-batch --sequences-csv {input} --batch {wildcards.batch} --systems-per-job {params.systems_per_job}"
        " --protocol {params.protocol} --threads {threads} --out-dir {output} > {log} 2>&1"

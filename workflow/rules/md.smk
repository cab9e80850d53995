rule simulate_reference:
    """Reference MD of one system (test systems and any valid target sequence), at the config's temperature
    or, under a temperature condition ({at_T} = _400K), at that temperature (its own cached artefact)."""
    input:
        structure="results/structures/{seq}.pdb",
    output:
        h5="results/md/{seq}{at_T}.h5",
    params:
        launch=PROSEFLOW,
        settings=settings("md", split="reference", name=lambda w: f"{w.seq}{w.at_T}",
                          temperature_K=md_temperature),
        files=files,
    threads: 2
    resources:
        runtime=lambda w, attempt: 24 * 60 * attempt,
    log:
        "logs/md/{seq}{at_T}.log",
    conda:
        "../../envs/md.yaml"
    shell:
        "{params.launch} run md --settings {params.settings:q} {params.files} --threads {threads} > {log} 2>&1"


rule simulate_batch:
    """Training/validation MD: `systems_per_job` sequences as non-interacting copies in one context."""
    input:
        sequences="results/sequences/{split}.csv",
    output:
        batch=directory("results/md/{split}/batch{batch}"),
    params:
        launch=PROSEFLOW,
        settings=settings("md", split=lambda w: w.split, batch=lambda w: int(w.batch)),
        files=files,
    threads: 2
    resources:
        runtime=lambda w, attempt: 24 * 60 * attempt,
    log:
        "logs/md/{split}/batch{batch}.log",
    conda:
        "../../envs/md.yaml"
    shell:
        "{params.launch} run md --settings {params.settings:q} {params.files} --threads {threads} > {log} 2>&1"

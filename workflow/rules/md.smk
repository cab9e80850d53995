rule simulate_reference:
    """Reference MD of one system (test systems and any valid target sequence), at the config's temperature
    or, under a temperature condition ({at_T} = _400K), at that temperature (its own cached artefact)."""
    input:
        structure="results/structures/{seq}.pdb",
    output:
        h5="results/md/{seq}{at_T}.h5",
    params:
        launch=PROSEFLOW,
        job=stage("md", split="reference", name=lambda w: f"{w.seq}{w.at_T}",
                  temperature_K=md_temperature),
    threads: 2
    resources:
        runtime=lambda w, attempt: 24 * 60 * attempt,
    log:
        "logs/md/{seq}{at_T}.log",
    conda:
        "../../envs/md.yaml"
    shell:
        RUN_THREADED


rule simulate_batch:
    """Training/validation MD: `systems_per_job` sequences as non-interacting copies in one context."""
    input:
        sequences="results/sequences/{split}.csv",
    output:
        batch=directory("results/md/{split}/batch{batch}"),
    params:
        launch=PROSEFLOW,
        job=stage("md", split=lambda w: w.split, batch=lambda w: int(w.batch)),
    threads: 2
    resources:
        runtime=lambda w, attempt: 24 * 60 * attempt,
    log:
        "logs/md/{split}/batch{batch}.log",
    conda:
        "../../envs/md.yaml"
    shell:
        RUN_THREADED


rule adopt_reference:
    """A reference MD file used as is (md.reference_files; e.g. the AA study's reference shipped beside the AA
    model): checked against the system's structure and the temperature, then copied."""
    input:
        file=lambda w: config["md"]["reference_files"][w.seq],
        structure="results/structures/{seq}.pdb",
    output:
        h5="results/md/{seq}.h5",
    wildcard_constraints:
        seq=REFERENCE_FILES,
    params:
        launch=PROSEFLOW,
        job=stage("reference_file", name=lambda w: w.seq),
    log:
        "logs/md/{seq}.adopt.log",
    conda:
        "../../envs/md.yaml"
    shell:
        RUN


ruleorder: adopt_reference > simulate_reference

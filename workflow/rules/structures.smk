rule build_structure:
    """An energy-minimised structure of one peptide (PDB)."""
    output:
        pdb="results/structures/{seq}.pdb",
    params:
        launch=PROSEFLOW,
        job=stage("structure", sequence=lambda w: valid_target(w.seq)),
    log:
        "logs/structures/{seq}.log",
    conda:
        "../../envs/md.yaml"
    shell:
        RUN

rule build_structure:
    """An energy-minimised structure of one peptide (PDB)."""
    output:
        pdb="results/structures/{seq}.pdb",
    params:
        launch=PROSEFLOW,
        settings=settings("structure", sequence=lambda w: valid_target(w.seq)),
        files=files,
    log:
        "logs/structures/{seq}.log",
    conda:
        "../../envs/md.yaml"
    shell:
        "{params.launch} run structure --settings {params.settings:q} {params.files} > {log} 2>&1"

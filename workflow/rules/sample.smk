rule fit_tica:
    """TICA model of a reference trajectory (Koopman-reweighted, deeptime)."""
    input:
        "results/md/{seq}.h5",
    output:
        "results/tica/{seq}.npz",
    params:
        lag=tica_lag_frames(config),
        stride=config["eval"]["tica_stride"],
    log:
        "logs/tica/{seq}.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{PF} tica --md {input} --lag-frames {params.lag} --stride {params.stride} --out {output} > {log} 2>&1"


rule sample_proposals:
    """Proposals from a trained flow with exact log q (centre-of-mass corrected), chirality fixed."""
    input:
        model="results/models/{model}/model.pt",
        structure="results/structures/{seq}.pdb",
    output:
        "results/samples/{model}/{seq}/proposals.npz",
    params:
        n=config["sampling"]["n_proposals"],
        batch_size=config["sampling"]["batch_size"],
        com=config["sampling"]["com_correction"],
        seed=config["sampling"]["seed"],
        prior_std=config["sampling"].get("prior_std", 1.0),
    threads: 2
    resources:
        gpu=1,
    log:
        "logs/samples/{model}/{seq}.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        "{PF} sample --model {input.model} --structure {input.structure} --n {params.n}"
        " --batch-size {params.batch_size} --com-correction {params.com} --seed {params.seed}"
        " --prior-std {params.prior_std} --out {output} > {log} 2>&1"


rule reweight_snis:
    """Energies (kT) of the proposals and SNIS weights; the top log-weights are dropped."""
    input:
        proposals="results/samples/{model}/{seq}/proposals.npz",
        structure="results/structures/{seq}.pdb",
    output:
        "results/samples/{model}/{seq}/snis.npz",
    params:
        temperature_K=config["md"]["temperature_K"],
        backend=config["sampling"]["energy_backend"],
        drop=config["sampling"]["drop_top_fraction"],
        seed=config["sampling"]["seed"],
    threads: 2
    log:
        "logs/samples/{model}/{seq}.snis.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        "{PF} snis --proposals {input.proposals} --structure {input.structure} --temperature-K {params.temperature_K}"
        " --energy-backend {params.backend} --drop-top-fraction {params.drop} --seed {params.seed}"
        " --out {output} > {log} 2>&1"


rule sample_smc:
    """SMC from the flow: linear annealing to the target, ULA ("continuous") or MALA ("discrete") moves."""
    input:
        model="results/models/{model}/model.pt",
        structure="results/structures/{seq}.pdb",
    output:
        "results/samples/{model}/{seq}/smc_{kernel}.npz",
    wildcard_constraints:
        kernel="ula|mala",
    params:
        n=config["smc"]["n_particles"],
        smc=lambda w: shlex.quote(json.dumps(config["smc"][w.kernel])),
        temperature_K=config["md"]["temperature_K"],
        backend=config["sampling"]["energy_backend"],
        seed=config["sampling"]["seed"],
    threads: 2
    resources:
        gpu=1,
    log:
        "logs/samples/{model}/{seq}.smc_{kernel}.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        "{PF} smc --model {input.model} --structure {input.structure} --kernel {wildcards.kernel}"
        " --n-particles {params.n} --smc {params.smc} --temperature-K {params.temperature_K}"
        " --energy-backend {params.backend} --seed {params.seed} --out {output} > {log} 2>&1"


rule self_improve:
    """Self-improvement fine-tuning (PAPER.md section 4), then the SNIS set of the fine-tuned flow."""
    input:
        model="results/models/{model}/model.pt",
        structure="results/structures/{seq}.pdb",
    output:
        samples="results/samples/{model}/{seq}/self_improve.npz",
        model="results/self_improve/{model}/{seq}/model.pt",
        rounds="results/self_improve/{model}/{seq}/rounds.json",
    params:
        settings=lambda w: shlex.quote(
            json.dumps(
                {
                    "n_final": config["sampling"]["n_proposals"],
                    "sample_batch_size": config["sampling"]["batch_size"],
                    "com_correction": config["sampling"]["com_correction"],
                    "drop_top_fraction": config["sampling"]["drop_top_fraction"],
                    **config["self_improve"],
                }
            )
        ),
        temperature_K=config["md"]["temperature_K"],
        backend=config["sampling"]["energy_backend"],
        seed=config["sampling"]["seed"],
        out_dir=lambda w: f"results/self_improve/{w.model}/{w.seq}",
    threads: 2
    resources:
        gpu=1,
    log:
        "logs/samples/{model}/{seq}.self_improve.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        "{PF} self-improve --model {input.model} --structure {input.structure} --temperature-K {params.temperature_K}"
        " --energy-backend {params.backend} --settings {params.settings} --seed {params.seed}"
        " --out {output.samples} --out-model-dir {params.out_dir} > {log} 2>&1"

rule fit_tica:
    """TICA model of a reference trajectory (Koopman-reweighted, deeptime)."""
    input:
        md="results/md/{seq}.h5",
    output:
        tica="results/tica/{seq}.npz",
    params:
        launch=PROSEFLOW,
        job=stage("tica", seq=lambda w: w.seq),
    log:
        "logs/tica/{seq}.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        RUN


rule sample_proposals:
    """Proposals from a trained flow with exact log q (centre-of-mass corrected), chirality fixed. Under a
    temperature condition ({cond} = T400K_scaled/) the prior is N(0, I) (plain) or N(0, T/T_train I) (scaled)."""
    input:
        model="results/models/{model}/model.pt",
        structure="results/structures/{seq}.pdb",
    output:
        proposals="results/samples/{model}/{seq}/{cond}proposals.npz",
    params:
        launch=PROSEFLOW,
        job=stage("sample", temperature_K=target_temperature, prior=prior, model=lambda w: w.model),
    threads: 2
    resources:
        gpu=1,
    log:
        "logs/samples/{model}/{seq}/{cond}proposals.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        RUN


rule reweight_snis:
    """Energies (kT) of the proposals and SNIS weights (at the condition's temperature); the top log-weights
    are dropped."""
    input:
        proposals="results/samples/{model}/{seq}/{cond}proposals.npz",
        structure="results/structures/{seq}.pdb",
    output:
        snis="results/samples/{model}/{seq}/{cond}snis.npz",
    params:
        launch=PROSEFLOW,
        job=stage("snis", temperature_K=target_temperature, model=lambda w: w.model),
    threads: 2
    log:
        "logs/samples/{model}/{seq}/{cond}snis.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        RUN


rule sample_smc:
    """SMC from the flow: linear annealing to the target, ULA ("continuous") or MALA ("discrete") moves on the
    paper's fixed schedules, or adaptive MALA (amala: levels at a target conditional ESS)."""
    input:
        model="results/models/{model}/model.pt",
        structure="results/structures/{seq}.pdb",
    output:
        samples="results/samples/{model}/{seq}/smc_{kernel}.npz",
    wildcard_constraints:
        kernel="|".join(S.SMC_KERNELS),
    params:
        launch=PROSEFLOW,
        job=stage("smc", kernel=lambda w: w.kernel, model=lambda w: w.model),
    threads: 2
    resources:
        gpu=1,
    log:
        "logs/samples/{model}/{seq}.smc_{kernel}.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        RUN


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
        launch=PROSEFLOW,
        job=stage("self_improve", model=lambda w: w.model),
    threads: 2
    resources:
        gpu=1,
    log:
        "logs/samples/{model}/{seq}.self_improve.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        RUN


rule export_samples:
    """A final sample set (the SNIS-resampled set, SMC particles) as a trajectory molecular viewers open: XTC and
    a topology PDB, with each frame's weight and energy in a CSV."""
    input:
        samples="results/samples/{model}/{seq}/{cond}{sampler}.npz",
        structure="results/structures/{seq}.pdb",
    output:
        xtc="results/samples/{model}/{seq}/{cond}{sampler}.xtc",
        pdb="results/samples/{model}/{seq}/{cond}{sampler}.pdb",
        csv="results/samples/{model}/{seq}/{cond}{sampler}.csv",
    wildcard_constraints:
        sampler="|".join(S.SAMPLERS),
    params:
        launch=PROSEFLOW,
        job=stage("export"),
    log:
        "logs/samples/{model}/{seq}/{cond}{sampler}.export.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        RUN

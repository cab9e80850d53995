# The paper's experiments beyond Table 2: MD vs flow at equal cost (Fig. 1, Fig. 4) and temperature
# transfer with the plain or scaled prior (PAPER.md section 4).


rule budget_curve:
    """W2 metrics of truncated reference MD and of SNIS on the first B proposals, at equal budgets."""
    input:
        md="results/md/{seq}.h5",
        snis=f"results/samples/{EVAL_MODEL}/{{seq}}/snis.npz",
        structure="results/structures/{seq}.pdb",
        tica="results/tica/{seq}.npz",
    output:
        json="results/budget/{seq}.json",
        maps="results/budget/{seq}.maps.npz",
    params:
        budgets=" ".join(str(b) for b in config["budget"]["budgets"]),
        map_budget=config["budget"]["map_budget"],
        temperature_K=config["md"]["temperature_K"],
        reference_frames=config["eval"]["reference_frames"],
        n_metric=config["eval"]["n_metric"],
        k=config["eval"]["kmeans_k"],
        seed=config["sampling"]["seed"],
    log:
        "logs/budget/{seq}.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{PF} budget-curve --md {input.md} --snis {input.snis} --structure {input.structure} --tica {input.tica}"
        " --budgets {params.budgets} --map-budget {params.map_budget} --temperature-K {params.temperature_K}"
        " --reference-frames {params.reference_frames} --n-metric {params.n_metric} --kmeans-k {params.k}"
        " --seed {params.seed} --out-json {output.json} --out-maps {output.maps} > {log} 2>&1"


rule budget_report:
    input:
        curves=expand("results/budget/{seq}.json", seq=TEST),
        maps=expand("results/budget/{seq}.maps.npz", seq=TEST),
    output:
        html=report("results/eval/budget.html", caption="../report/summary.rst", category="Summary"),
        csv="results/tables/budget.csv",
    log:
        "logs/budget/report.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{PF} budget-report --curves {input.curves} --maps {input.maps} --out-html {output.html}"
        " --out-csv {output.csv} > {log} 2>&1"


rule simulate_reference_at:
    """Reference MD of one system at another temperature (its own cached artefact)."""
    input:
        "results/structures/{seq}.pdb",
    output:
        "results/md/{seq}_{temp}K.h5",
    params:
        protocol=lambda w: protocol_json("reference", temperature_K=float(w.temp)),
    threads: 2
    resources:
        runtime=lambda w, attempt: 24 * 60 * attempt,
    log:
        "logs/md/{seq}_{temp}K.log",
    conda:
        "../../envs/md.yaml"
    shell:
        "{PF} md --name {wildcards.seq}_{wildcards.temp}K --structure {input} --protocol {params.protocol}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule sample_at_temperature:
    """Proposals for target temperature T: plain prior N(0, I) or scaled prior N(0, T/T_train I)."""
    input:
        model="results/models/{model}/model.pt",
        structure="results/structures/{seq}.pdb",
    output:
        "results/samples/{model}/{seq}/T{temp}K_{prior}/proposals.npz",
    params:
        prior_std=lambda w: prior_std_for(float(w.temp), config["md"]["temperature_K"], w.prior),
        n=config["sampling"]["n_proposals"],
        batch_size=config["sampling"]["batch_size"],
        com=config["sampling"]["com_correction"],
        seed=config["sampling"]["seed"],
    threads: 2
    resources:
        gpu=1,
    log:
        "logs/samples/{model}/{seq}.T{temp}K_{prior}.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        "{PF} sample --model {input.model} --structure {input.structure} --n {params.n} --prior-std {params.prior_std}"
        " --batch-size {params.batch_size} --com-correction {params.com} --seed {params.seed}"
        " --out {output} > {log} 2>&1"


rule reweight_at_temperature:
    input:
        proposals="results/samples/{model}/{seq}/T{temp}K_{prior}/proposals.npz",
        structure="results/structures/{seq}.pdb",
    output:
        "results/samples/{model}/{seq}/T{temp}K_{prior}/snis.npz",
    params:
        backend=config["sampling"]["energy_backend"],
        drop=config["sampling"]["drop_top_fraction"],
        seed=config["sampling"]["seed"],
    threads: 2
    log:
        "logs/samples/{model}/{seq}.T{temp}K_{prior}.snis.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        "{PF} snis --proposals {input.proposals} --structure {input.structure} --temperature-K {wildcards.temp}"
        " --energy-backend {params.backend} --drop-top-fraction {params.drop} --seed {params.seed}"
        " --out {output} > {log} 2>&1"


rule evaluate_at_temperature:
    input:
        md="results/md/{seq}_{temp}K.h5",
        tica="results/tica/{seq}.npz",
        structure="results/structures/{seq}.pdb",
        samplers=f"results/samples/{EVAL_MODEL}/{{seq}}/T{{temp}}K_{{prior}}/snis.npz",
        proposals=f"results/samples/{EVAL_MODEL}/{{seq}}/T{{temp}}K_{{prior}}/proposals.npz",
        model=f"results/models/{EVAL_MODEL}/model.pt",
        train="results/sequences/train.csv",
    output:
        json="results/temperature/{seq}_{temp}K_{prior}.json",
        html="results/temperature/{seq}_{temp}K_{prior}.html",
    params:
        model=EVAL_MODEL,
        temperature_K=lambda w: w.temp,
        reference_frames=config["eval"]["reference_frames"],
        n_metric=config["eval"]["n_metric"],
        k=config["eval"]["kmeans_k"],
        seed=config["sampling"]["seed"],
    log:
        "logs/temperature/{seq}_{temp}K_{prior}.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        EVALUATE


rule temperature_report:
    """Metrics vs temperature, plain vs scaled prior (paper: RLMM at 310-800 K)."""
    input:
        temperature_evals(),
    output:
        html=report("results/eval/temperature.html", caption="../report/summary.rst", category="Summary"),
        csv="results/tables/temperature.csv",
    params:
        priors=" ".join(p for _, _, p in temperature_cases()),
    log:
        "logs/temperature/report.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{PF} temperature-report --evals {input} --priors {params.priors} --out-html {output.html}"
        " --out-csv {output.csv} > {log} 2>&1"

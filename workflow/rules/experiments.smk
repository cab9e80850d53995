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
        launch=PROSEFLOW,
        settings=settings("budget"),
        files=files,
    log:
        "logs/budget/{seq}.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{params.launch} run budget --settings {params.settings:q} {params.files} > {log} 2>&1"


rule budget_report:
    """The budget page (Fig. 1 / Fig. 4 style) and its CSV over the test systems."""
    input:
        curves=expand("results/budget/{seq}.json", seq=TEST),
        maps=expand("results/budget/{seq}.maps.npz", seq=TEST),
    output:
        html=report("results/eval/budget.html", caption="../report/budget.rst", category="Summary"),
        csv="results/tables/budget.csv",
    params:
        launch=PROSEFLOW,
        settings=settings("report"),
        files=files,
    log:
        "logs/budget/report.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{params.launch} run budget_report --settings {params.settings:q} {params.files} > {log} 2>&1"


rule simulate_reference_at:
    """Reference MD of one system at another temperature (its own cached artefact)."""
    input:
        structure="results/structures/{seq}.pdb",
    output:
        h5="results/md/{seq}_{temp}K.h5",
    params:
        launch=PROSEFLOW,
        settings=settings("md", split="reference", name=lambda w: f"{w.seq}_{w.temp}K",
                          temperature_K=lambda w: float(w.temp)),
        files=files,
    threads: 2
    resources:
        runtime=lambda w, attempt: 24 * 60 * attempt,
    log:
        "logs/md/{seq}_{temp}K.log",
    conda:
        "../../envs/md.yaml"
    shell:
        "{params.launch} run md --settings {params.settings:q} {params.files} --threads {threads} > {log} 2>&1"


rule sample_at_temperature:
    """Proposals for target temperature T: plain prior N(0, I) or scaled prior N(0, T/T_train I)."""
    input:
        model="results/models/{model}/model.pt",
        structure="results/structures/{seq}.pdb",
    output:
        proposals="results/samples/{model}/{seq}/T{temp}K_{prior}/proposals.npz",
    params:
        launch=PROSEFLOW,
        settings=settings("sample", temperature_K=lambda w: float(w.temp), prior=lambda w: w.prior),
        files=files,
    threads: 2
    resources:
        gpu=1,
    log:
        "logs/samples/{model}/{seq}.T{temp}K_{prior}.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        "{params.launch} run sample --settings {params.settings:q} {params.files} > {log} 2>&1"


rule reweight_at_temperature:
    """SNIS of the proposals to E/kT at the target temperature."""
    input:
        proposals="results/samples/{model}/{seq}/T{temp}K_{prior}/proposals.npz",
        structure="results/structures/{seq}.pdb",
    output:
        snis="results/samples/{model}/{seq}/T{temp}K_{prior}/snis.npz",
    params:
        launch=PROSEFLOW,
        settings=settings("snis", temperature_K=lambda w: float(w.temp)),
        files=files,
    threads: 2
    log:
        "logs/samples/{model}/{seq}.T{temp}K_{prior}.snis.log",
    conda:
        "../../envs/flow.yaml"
    shell:
        "{params.launch} run snis --settings {params.settings:q} {params.files} > {log} 2>&1"


rule evaluate_at_temperature:
    """SNIS at a target temperature against the reference MD at that temperature."""
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
        launch=PROSEFLOW,
        settings=settings("evaluate", temperature_K=lambda w: float(w.temp)),
        files=files,
    log:
        "logs/temperature/{seq}_{temp}K_{prior}.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{params.launch} run evaluate --settings {params.settings:q} {params.files} > {log} 2>&1"


rule temperature_report:
    """Metrics vs temperature, plain vs scaled prior (paper: RLMM at 310-800 K)."""
    input:
        evals=temperature_evals(),
    output:
        html=report("results/eval/temperature.html", caption="../report/temperature.rst", category="Summary"),
        csv="results/tables/temperature.csv",
    params:
        launch=PROSEFLOW,
        settings=settings("temperature"),
        files=files,
    log:
        "logs/temperature/report.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{params.launch} run temperature --settings {params.settings:q} {params.files} > {log} 2>&1"

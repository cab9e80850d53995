# The paper's experiments beyond Table 2: MD vs flow at equal cost (Fig. 1, Fig. 4) and temperature
# transfer with the plain or scaled prior (PAPER.md section 4). Temperature transfer has no rules of its
# own: it is a condition of the main rules (T400K_scaled/ in a sample or evaluation path, _400K in an MD
# path); temperature_report collects those evaluations.


rule budget_curve:
    """W2 metrics of truncated reference MD and of SNIS on the first B proposals, at equal budgets."""
    input:
        md="results/md/{seq}.h5",
        snis=lambda w: f"results/samples/{eval_model(w)}/{w.seq}/snis.npz",
        structure="results/structures/{seq}.pdb",
        tica="results/tica/{seq}.npz",
    output:
        json="results/budget/{seq}.json",
        maps="results/budget/{seq}.maps.npz",
    params:
        launch=PROSEFLOW,
        job=stage("budget", model=eval_model),
    log:
        "logs/budget/{seq}.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        RUN


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
        job=stage("budget_report"),
    log:
        "logs/budget/report.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        RUN


rule temperature_report:
    """Metrics vs temperature, plain vs scaled prior (paper: RLMM at 310-800 K)."""
    input:
        evals=temperature_evals(),
    output:
        html=report("results/eval/temperature.html", caption="../report/temperature.rst", category="Summary"),
        csv="results/tables/temperature.csv",
    params:
        launch=PROSEFLOW,
        job=stage("temperature"),
    log:
        "logs/temperature/report.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        RUN

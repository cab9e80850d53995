rule evaluate_system:
    """Every configured sampler of one system against its reference MD: metrics JSON + HTML page. Under a
    temperature condition ({cond} = T400K_scaled/): SNIS at that temperature and prior against the reference
    MD at that temperature."""
    input:
        md=lambda w: f"results/md/{w.seq}{md_suffix(w)}.h5",
        tica="results/tica/{seq}.npz",
        structure="results/structures/{seq}.pdb",
        samplers=lambda w: sampler_files(valid_target(w.seq), w.cond),
        proposals=lambda w: f"results/samples/{eval_model(w)}/{w.seq}/{w.cond}proposals.npz",
        model=lambda w: f"results/models/{eval_model(w)}/model.pt",
        train="results/sequences/train.csv",
    output:
        json="results/eval/{cond}{seq}.json",
        html=report("results/eval/{cond}{seq}.html", caption="../report/system_report.rst", category="Systems",
                    labels={"system": "{seq}", "condition": "{cond}"}),
    params:
        launch=PROSEFLOW,
        job=stage("evaluate", model=eval_model, temperature_K=target_temperature,
                  summary_href=lambda w: "../summary.html" if w.cond else "summary.html"),
    threads: 1
    log:
        "logs/eval/{cond}{seq}.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        RUN


rule evaluate_variant:
    """SNIS of another trained variant (ablations, TarFlow baseline) on one system, for Table 3."""
    input:
        md="results/md/{seq}.h5",
        tica="results/tica/{seq}.npz",
        structure="results/structures/{seq}.pdb",
        samplers="results/samples/{model}/{seq}/snis.npz",
        proposals="results/samples/{model}/{seq}/proposals.npz",
        model="results/models/{model}/model.pt",
        train="results/sequences/train.csv",
    output:
        json="results/eval/models/{model}/{seq}.json",
        html="results/eval/models/{model}/{seq}.html",
    params:
        launch=PROSEFLOW,
        job=stage("evaluate", model=lambda w: w.model, summary_href="../../summary.html"),
    log:
        "logs/eval/models/{model}/{seq}.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        RUN


rule summarise:
    """Summary page and the paper's tables over the test set (and extrapolation targets, variants)."""
    input:
        evals=[*expand("results/eval/{seq}.json", seq=EVAL_SYSTEMS),
               *[f"results/eval/models/{m}/{s}.json" for m, s in PLAN.variant_evals()]],
    output:
        html=report("results/eval/summary.html", caption="../report/summary.rst", category="Summary"),
        table2="results/tables/table2.csv",
    params:
        launch=PROSEFLOW,
        job=stage("report", links={
            "MD vs flow at equal budget": "budget.html",
            **({"Temperature transfer": "temperature.html"} if temperature_cases() else {}),
        }),
    log:
        "logs/eval/summary.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        RUN

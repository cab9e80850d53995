rule evaluate_system:
    """Every configured sampler of one system against its reference MD: metrics JSON + HTML page."""
    input:
        md="results/md/{seq}.h5",
        tica="results/tica/{seq}.npz",
        structure="results/structures/{seq}.pdb",
        samplers=lambda w: sampler_files(valid_target(w.seq)),
        proposals=f"results/samples/{EVAL_MODEL}/{{seq}}/proposals.npz",
        model=f"results/models/{EVAL_MODEL}/model.pt",
        train="results/sequences/train.csv",
    output:
        json="results/eval/{seq}.json",
        html=report("results/eval/{seq}.html", caption="../report/system_report.rst", category="Systems",
                    labels={"system": "{seq}"}),
    params:
        model=EVAL_MODEL,
        temperature_K=config["md"]["temperature_K"],
        reference_frames=config["eval"]["reference_frames"],
        n_metric=config["eval"]["n_metric"],
        k=config["eval"]["kmeans_k"],
        seed=config["sampling"]["seed"],
    threads: 1
    log:
        "logs/eval/{seq}.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        EVALUATE


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
        model=lambda w: w.model,
        temperature_K=config["md"]["temperature_K"],
        reference_frames=config["eval"]["reference_frames"],
        n_metric=config["eval"]["n_metric"],
        k=config["eval"]["kmeans_k"],
        seed=config["sampling"]["seed"],
    log:
        "logs/eval/models/{model}/{seq}.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        EVALUATE


rule summarise:
    """Summary page and the paper's tables over the test set (and extrapolation targets, variants)."""
    input:
        expand("results/eval/{seq}.json", seq=EVAL_SYSTEMS),
        expand("results/eval/models/{model}/{seq}.json", model=VARIANTS, seq=TEST),
    output:
        html=report("results/eval/summary.html", caption="../report/summary.rst", category="Summary"),
        table2="results/tables/table2.csv",
    params:
        links=" ".join(
            shlex.quote(f"--link={label}={href}")
            for label, href in (
                ("MD vs flow at equal budget", "budget.html"),
                *((("Temperature transfer", "temperature.html"),) if temperature_cases() else ()),
            )
        ),
    log:
        "logs/eval/summary.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{PF} summary --evals {input} --tables-dir results/tables --out-html {output.html} {params.links}"
        " > {log} 2>&1"

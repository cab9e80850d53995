# proseflow: Prose (transferable normalizing flows for peptides), from sequences to reports.
# A table of contents: each stage is one rule module over the tested library in src/proseflow.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"  # the config checked: typed keys, the schema, the semantics
include: "workflow/rules/sequences.smk"
include: "workflow/rules/structures.smk"
include: "workflow/rules/md.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/experiments.smk"


check_target_case()  # results/md/gydp.h5: say sequences are upper case, not "no rule to produce"


rule all:
    input:
        all_targets(),
    default_target: True

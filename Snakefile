# MINT pipeline: train reference models (or read yours) -> analyze -> experts -> allocate -> quantize
# -> evaluate -> tables. Every stage is a thin rule over `mint <stage>`, so each can be run by hand.
#   snakemake --cores 8 results/tables


# A --configfile with its own `models` replaces the embedded default instead of being merged into it
# (Snakemake merges config files key by key, which would add the default models to the user's).
# The path is the Snakefile's own, so that --directory elsewhere still finds the embedded default.
if "models" not in config:

    configfile: f"{workflow.basedir}/config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/reference.smk"
include: "workflow/rules/analyze.smk"
include: "workflow/rules/allocate.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/gguf.smk"


rule all:
    input:
        "results/tables",

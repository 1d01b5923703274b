# MINT pipeline: train reference models (or read yours) -> analyze -> experts -> allocate -> quantize
# -> evaluate -> tables. Every stage is a thin rule over `mint <stage>`, so each can be run by hand.
#   snakemake --cores 8 results/tables


# A --configfile with its own `models` replaces the embedded default instead of being merged into it
# (Snakemake merges config files key by key, which would add the default models to the user's).
if "models" not in config:

    configfile: "config/config.yaml"


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

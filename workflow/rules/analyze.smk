rule analyze:
    input:
        checkpoint=get_checkpoint,
        rules="results/{model}/rules.json",
    output:
        rd="results/{model}/analysis/{shard}.rd.parquet",
        features="results/{model}/analysis/{shard}.features.parquet",
    params:
        checkpoint=lambda wc: checkpoint_dir(wc.model),
        threshold=config["analysis"]["cluster_threshold"],
        spectral="" if config["analysis"]["spectral"] else "--no-spectral",
        extra="",
        out="analysis",
    log:
        "logs/{model}/analyze/{shard}.log",
    benchmark:
        "results/benchmarks/{model}/analyze/{shard}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{MINT} analyze --checkpoint {params.checkpoint} --rules {input.rules} --shard {wildcards.shard}.safetensors"
        " --cluster-threshold {params.threshold} {params.spectral} {params.extra} --threads {threads}"
        " --out results/{wildcards.model}/{params.out} > {log} 2>&1"


rule experts:
    input:
        tables=get_analysis_tables,
        rules="results/{model}/rules.json",
    output:
        units="results/{model}/units/units.parquet",
        clusters="results/{model}/units/clusters.parquet",
        experts="results/{model}/units/experts.parquet",
        features="results/{model}/units/features.parquet",
    params:
        checkpoint=lambda wc: checkpoint_dir(wc.model),
        k=config["analysis"]["clusters_per_unit"],
        seed=config["analysis"]["seed"],
        aggregation=config["analysis"]["aggregation"],
        spectral="" if config["analysis"]["spectral"] else "--no-spectral",
        analysis="analysis",
        out="units",
    log:
        "logs/{model}/experts.log",
    benchmark:
        "results/benchmarks/{model}/experts.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{MINT} experts --checkpoint {params.checkpoint} --rules {input.rules}"
        " --analysis results/{wildcards.model}/{params.analysis}"
        " --k {params.k} --seed {params.seed} --aggregation {params.aggregation} {params.spectral}"
        " --out results/{wildcards.model}/{params.out} > {log} 2>&1"


# Variants (issue 9): the same analysis measured with the clip-search quantizer...
use rule analyze as analyze_clip with:
    output:
        rd="results/{model}/analysis-{clip}/{shard}.rd.parquet",
        features="results/{model}/analysis-{clip}/{shard}.features.parquet",
    wildcard_constraints:
        clip=alternatives(CLIP_TAGS),
    params:
        checkpoint=lambda wc: checkpoint_dir(wc.model),
        threshold=config["analysis"]["cluster_threshold"],
        spectral="" if config["analysis"]["spectral"] else "--no-spectral",
        extra=lambda wc: "--clip" if wc.clip == "clip" else f"--clip {wc.clip[len('clip'):]}",
        out=lambda wc: f"analysis-{wc.clip}",
    log:
        "logs/{model}/analyze-{clip}/{shard}.log",
    benchmark:
        "results/benchmarks/{model}/analyze-{clip}/{shard}.tsv"


# ...and units aggregated another way, or from the clip-search analysis ("units-clip-mean", ...).
use rule experts as experts_variant with:
    input:
        tables=get_units_analysis,
        rules="results/{model}/rules.json",
    output:
        units="results/{model}/{tag}/units.parquet",
        clusters="results/{model}/{tag}/clusters.parquet",
        experts="results/{model}/{tag}/experts.parquet",
        features="results/{model}/{tag}/features.parquet",
    wildcard_constraints:
        tag=alternatives(UNITS_TAGS),
    params:
        checkpoint=lambda wc: checkpoint_dir(wc.model),
        k=config["analysis"]["clusters_per_unit"],
        seed=config["analysis"]["seed"],
        aggregation=get_units_aggregation,
        spectral="" if config["analysis"]["spectral"] else "--no-spectral",
        analysis=lambda wc: units_analysis(wc.tag),
        out=lambda wc: wc.tag,
    log:
        "logs/{model}/experts-{tag}.log",
    benchmark:
        "results/benchmarks/{model}/experts-{tag}.tsv"


# The clustering table: the same analysis with every expert measured (no clustering).
rule analyze_all_experts:
    input:
        checkpoint=get_checkpoint,
        rules="results/{model}/rules.json",
    output:
        rd="results/{model}/analysis-all/{shard}.rd.parquet",
        features="results/{model}/analysis-all/{shard}.features.parquet",
    params:
        checkpoint=lambda wc: checkpoint_dir(wc.model),
        spectral="" if config["analysis"]["spectral"] else "--no-spectral",
    log:
        "logs/{model}/analyze-all/{shard}.log",
    benchmark:
        "results/benchmarks/{model}/analyze-all/{shard}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{MINT} analyze --checkpoint {params.checkpoint} --rules {input.rules} --shard {wildcards.shard}.safetensors"
        " --cluster-threshold 1000000000 {params.spectral} --threads {threads}"
        " --out results/{wildcards.model}/analysis-all > {log} 2>&1"


rule experts_all_experts:
    input:
        tables=get_all_experts_tables,
        rules="results/{model}/rules.json",
    output:
        units="results/{model}/units-all/units.parquet",
        clusters="results/{model}/units-all/clusters.parquet",
        experts="results/{model}/units-all/experts.parquet",
        features="results/{model}/units-all/features.parquet",
    params:
        checkpoint=lambda wc: checkpoint_dir(wc.model),
        aggregation=config["analysis"]["aggregation"],
        spectral="" if config["analysis"]["spectral"] else "--no-spectral",
    log:
        "logs/{model}/experts-all.log",
    benchmark:
        "results/benchmarks/{model}/experts-all.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{MINT} experts --checkpoint {params.checkpoint} --rules {input.rules} --analysis results/{wildcards.model}/analysis-all"
        " --aggregation {params.aggregation} {params.spectral} --out results/{wildcards.model}/units-all > {log} 2>&1"

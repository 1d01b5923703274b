rule importance:
    input:
        checkpoint=get_checkpoint,
        rules="results/{model}/rules.json",
    output:
        "results/{model}/importance.parquet",
    params:
        checkpoint=lambda wc: checkpoint_dir(wc.model),
    log:
        "logs/{model}/importance.log",
    benchmark:
        "results/benchmarks/{model}/importance.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{MINT} importance --checkpoint {params.checkpoint} --rules {input.rules} --out {output} > {log} 2>&1"


rule allocate:
    input:
        units=get_variant_units,
        matched=get_budget_input,
        importance=get_importance,
    output:
        "results/{model}/alloc/{variant}/{budget}.json",
    params:
        solver=lambda wc: get_variant(wc)["solver"],
        floor=lambda wc: get_variant(wc)["sqnr_floor_db"],
        budget=get_budget_spec,
        extra=get_variant_flags,
    log:
        "logs/{model}/allocate/{variant}/{budget}.log",
    benchmark:
        "results/benchmarks/{model}/allocate/{variant}/{budget}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "{MINT} allocate --units {input.units} --budget {params.budget} --solver {params.solver}"
        " --sqnr-floor {params.floor} {params.extra} --out {output} > {log} 2>&1"


use rule allocate as allocate_all_experts with:
    input:
        units="results/{model}/units-all/units.parquet",
        matched=get_budget_input,
    output:
        "results/{model}/alloc/mint-all/{budget}.json",
    params:
        solver=config["variants"]["mint"].get("solver", "exact"),
        floor=config["variants"]["mint"].get("sqnr_floor_db", 9.0),
        budget=get_budget_spec,
        extra=get_matched_floor_flag,
    log:
        "logs/{model}/allocate/mint-all/{budget}.log",
    benchmark:
        "results/benchmarks/{model}/allocate/mint-all/{budget}.tsv"


rule quantize:
    input:
        checkpoint=get_checkpoint,
        allocation="results/{model}/alloc/{method}/{budget}.json",
        rules="results/{model}/rules.json",
    output:
        mlx=directory("results/{model}/mlx/{method}/{budget}"),
        dequant=directory("results/{model}/dequant/{method}/{budget}"),
    wildcard_constraints:
        method=alternatives(VARIANTS + ["uniform", "mlx", "mint-all"]),
    params:
        checkpoint=lambda wc: checkpoint_dir(wc.model),
    log:
        "logs/{model}/quantize/{method}/{budget}.log",
    benchmark:
        "results/benchmarks/{model}/quantize/{method}/{budget}.tsv"
    threads: export_workers   # forked export processes (byte-identical output)
    resources:
        mem_mb=4000,
    shell:
        "{MINT} quantize --checkpoint {params.checkpoint} --rules {input.rules} --allocation {input.allocation}"
        " --mlx-out {output.mlx} --dequant-out {output.dequant} --workers {threads} > {log} 2>&1"


rule quantize_gptq:
    # MINT's allocation (variant mint) with GPTQ's rounding, calibrated on training text as
    # baseline_gptq is (mint/gptq_rounding.py, in .venv-gptq): the same MLX folder, twin and bytes as
    # `quantize` writes, so verify, evaluate and tables take it as the method mint-gptq.
    input:
        checkpoint=get_checkpoint,
        allocation="results/{model}/alloc/mint/{budget}.json",
        rules="results/{model}/rules.json",
    output:
        result="results/{model}/alloc/mint-gptq/{budget}.json",
        mlx=directory("results/{model}/mlx/mint-gptq/{budget}"),
        dequant=directory("results/{model}/dequant/mint-gptq/{budget}"),
    params:
        checkpoint=lambda wc: checkpoint_dir(wc.model),
        seq_len=config["evaluation"]["seq_len"],
    log:
        "logs/{model}/quantize_gptq/{budget}.log",
    benchmark:
        "results/benchmarks/{model}/quantize_gptq/{budget}.tsv"
    # One thread: on the reference models this job's CPU time is at most its wall time even when
    # given two (results/benchmarks/*/quantize_gptq), and a two-core job could only start once both cores
    # were free, which Snakemake reached only at the end: these jobs then ran one at a time beside
    # an idle core for the last ~30 minutes of make tables. First among ready jobs, so that they
    # start as soon as their inputs exist.
    threads: 1
    priority: 10
    resources:
        mem_mb=8000,
    shell:
        "{MINT} quantize-gptq --checkpoint {params.checkpoint} --rules {input.rules} --allocation {input.allocation}"
        " --seq-len {params.seq_len} --threads {threads} --workers {threads} --mlx-out {output.mlx}"
        " --dequant-out {output.dequant} --out {output.result} > {log} 2>&1"


rule verify:
    # The file a user gets, checked in its runtime: mlx-lm loads the MLX folder and its logits on fixed
    # tokens must equal those of the dequantized twin that `evaluate` measures. A load failure or a
    # mismatch fails the job (the log names the folder and the difference), so no table row stands on
    # an export its runtime would not run.
    input:
        mlx="results/{model}/mlx/{method}/{budget}",
        dequant="results/{model}/dequant/{method}/{budget}",
    output:
        "results/{model}/verify/{method}/{budget}.json",
    wildcard_constraints:
        method=alternatives(VARIANTS + ["uniform", "mlx", "mint-all", GPTQ_ROUNDING]),
    params:
        tolerance=config["evaluation"]["verify_tolerance"],
    log:
        "logs/{model}/verify/{method}/{budget}.log",
    benchmark:
        "results/benchmarks/{model}/verify/{method}/{budget}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{MINT} verify --mlx {input.mlx} --dequant {input.dequant} --tolerance {params.tolerance}"
        " --out {output} > {log} 2>&1"

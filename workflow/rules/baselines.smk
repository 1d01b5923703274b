# Matched-size baselines (METHOD.md §6), one (bits, group size) per target, e.g. 4bit-g128:
#   uniform RTN: an ordinary allocation, exported by `quantize` like the method's;
#   mlx-lm's mixed recipes (mixed_3_6, ...): run by mlx-lm's own convert, read back as an allocation;
#   mlx-lm's calibrated dynamic_quant (dynamic_4.8, dynamic_3_6_4.5): run by its own functions on
#   GPTQ's calibration windows, read back the same way;
#   GPTQ: llm-compressor in its own environment (`make gptq-env`), which writes its own result and
#   dequantized folder (and no MLX folder: its format is compressed-tensors, not MLX). Its
#   calibration windows are as long as the evaluation windows (capped by the model's context).


rule baseline_uniform:
    input:
        units="results/{model}/units/units.parquet",
    output:
        "results/{model}/alloc/uniform/{bits}bit-g{group}.json",
    wildcard_constraints:
        bits=r"\d+",
        group=r"\d+",
    log:
        "logs/{model}/baseline_uniform/{bits}bit-g{group}.log",
    benchmark:
        "results/benchmarks/{model}/baseline_uniform/{bits}bit-g{group}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "{MINT} baseline uniform --units {input.units} --bits {wildcards.bits} --group-size {wildcards.group}"
        " --out {output} > {log} 2>&1"


rule baseline_mlx:
    input:
        checkpoint=get_checkpoint,
        units="results/{model}/units/units.parquet",
    output:
        "results/{model}/alloc/mlx/{recipe}.json",
    wildcard_constraints:
        recipe=r"mixed_\d_\d",
    params:
        checkpoint=lambda wc: checkpoint_dir(wc.model),
    log:
        "logs/{model}/baseline_mlx/{recipe}.log",
    benchmark:
        "results/benchmarks/{model}/baseline_mlx/{recipe}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{MINT} baseline mlx-recipe --checkpoint {params.checkpoint} --units {input.units}"
        " --recipe {wildcards.recipe} --out {output} > {log} 2>&1"


rule baseline_mlx_dynamic:
    input:
        checkpoint=get_checkpoint,
        units="results/{model}/units/units.parquet",
    output:
        "results/{model}/alloc/mlx/{recipe}.json",
    wildcard_constraints:
        recipe=MLX_DYNAMIC,
    params:
        checkpoint=lambda wc: checkpoint_dir(wc.model),
        flags=get_mlx_dynamic_flags,
        # GPTQ's calibration windows: the same training text for both calibrated baselines.
        seq_len=config["evaluation"]["seq_len"],
    log:
        "logs/{model}/baseline_mlx_dynamic/{recipe}.log",
    benchmark:
        "results/benchmarks/{model}/baseline_mlx_dynamic/{recipe}.tsv"
    # mlx's CPU backend runs dynamic_quant on one core (98% measured); two held the other core idle
    # for its ~6 minutes per model.
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{MINT} baseline mlx-dynamic --checkpoint {params.checkpoint} --units {input.units} {params.flags}"
        " --seq-len {params.seq_len} --out {output} > {log} 2>&1"


rule baseline_gptq:
    input:
        checkpoint=get_checkpoint,
    output:
        result="results/{model}/gptq/{bits}bit-g{group}.json",
        dequant=directory("results/{model}/dequant/gptq/{bits}bit-g{group}"),
    wildcard_constraints:
        bits=r"\d+",
        group=r"\d+",
    params:
        checkpoint=lambda wc: checkpoint_dir(wc.model),
        seq_len=config["evaluation"]["seq_len"],
    log:
        "logs/{model}/baseline_gptq/{bits}bit-g{group}.log",
    benchmark:
        "results/benchmarks/{model}/baseline_gptq/{bits}bit-g{group}.tsv"
    # One thread: on the reference models this job's CPU time is at most its wall time even when
    # given two (results/benchmarks/*/baseline_gptq), and a two-core job could only start once both cores
    # were free, which Snakemake reached only at the end: these jobs then ran one at a time beside
    # an idle core for the last ~30 minutes of make tables. First among ready jobs, so that they
    # start as soon as their inputs exist.
    threads: 1
    priority: 10
    resources:
        mem_mb=8000,
    shell:
        "{MINT} baseline gptq --checkpoint {params.checkpoint} --bits {wildcards.bits}"
        " --group-size {wildcards.group} --seq-len {params.seq_len} --threads {threads}"
        " --out {output.result} --dequant-out {output.dequant} > {log} 2>&1"

rule evaluate_bf16:
    input:
        checkpoint=get_checkpoint,
    output:
        "results/{model}/eval/bf16.json",
    params:
        checkpoint=lambda wc: checkpoint_dir(wc.model),
        seq_len=config["evaluation"]["seq_len"],
        windows=config["evaluation"]["windows"],
        dtype=config["evaluation"]["dtype"],
    log:
        "logs/{model}/evaluate/bf16.log",
    benchmark:
        "results/benchmarks/{model}/evaluate/bf16.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "mint evaluate --model {params.checkpoint} --seq-len {params.seq_len} --windows {params.windows}"
        " --dtype {params.dtype} --out {output} > {log} 2>&1"


rule evaluate:
    input:
        checkpoint=get_checkpoint,
        dequant="results/{model}/dequant/{variant}/{budget}",
    output:
        "results/{model}/eval/{variant}/{budget}.json",
    params:
        checkpoint=lambda wc: checkpoint_dir(wc.model),
        seq_len=config["evaluation"]["seq_len"],
        windows=config["evaluation"]["windows"],
        dtype=config["evaluation"]["dtype"],
    log:
        "logs/{model}/evaluate/{variant}/{budget}.log",
    benchmark:
        "results/benchmarks/{model}/evaluate/{variant}/{budget}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "mint evaluate --model {input.dequant} --reference {params.checkpoint} --seq-len {params.seq_len}"
        " --windows {params.windows} --dtype {params.dtype} --out {output} > {log} 2>&1"

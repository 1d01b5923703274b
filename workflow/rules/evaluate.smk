rule evaluate_bf16:
    input:
        checkpoint=get_checkpoint,
    output:
        summary="results/{model}/eval/bf16.json",
        windows="results/{model}/eval/bf16.windows.npz",
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
        "{MINT} evaluate --model {params.checkpoint} --seq-len {params.seq_len} --windows {params.windows}"
        " --dtype {params.dtype} --threads {threads} --save-logprobs --out {output.summary} > {log} 2>&1"


# Against the 16-bit model's saved log-probabilities (bf16.logprobs.npy, when small enough), so the
# reference is not run again for every evaluation.
rule evaluate:
    input:
        checkpoint=get_checkpoint,
        dequant="results/{model}/dequant/{method}/{budget}",
        verified=get_verification,
        reference="results/{model}/eval/bf16.json",
    output:
        summary="results/{model}/eval/{method}/{budget}.json",
        windows="results/{model}/eval/{method}/{budget}.windows.npz",
    params:
        checkpoint=lambda wc: checkpoint_dir(wc.model),
        seq_len=config["evaluation"]["seq_len"],
        windows=config["evaluation"]["windows"],
        dtype=config["evaluation"]["dtype"],
    log:
        "logs/{model}/evaluate/{method}/{budget}.log",
    benchmark:
        "results/benchmarks/{model}/evaluate/{method}/{budget}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{MINT} evaluate --model {input.dequant} --reference {params.checkpoint} --reference-eval {input.reference} --seq-len {params.seq_len}"
        " --windows {params.windows} --dtype {params.dtype} --threads {threads} --out {output.summary} > {log} 2>&1"

# GGUF (issue 16): llama.cpp's own preset mixes and MINT-GGUF at exactly their bytes, both evaluated
# with llama.cpp's logits. The models in config `gguf.models` make results/tables/gguf.* from it.


rule gguf_compare:
    input:
        checkpoint=get_checkpoint,
    output:
        "results/{model}/gguf/compare.csv",
    params:
        flags=get_gguf_flags,
    log:
        "logs/{model}/gguf_compare.log",
    benchmark:
        "results/benchmarks/{model}/gguf_compare.tsv"
    # One thread: on the reference models this job's CPU time is at most its wall time even when
    # given two (results/benchmarks/*/gguf_compare), and a two-core job could only start once both cores
    # were free, which Snakemake reached only at the end: these jobs then ran one at a time beside
    # an idle core for the last ~30 minutes of make tables. First among ready jobs, so that they
    # start as soon as their inputs exist.
    threads: 1
    priority: 10
    resources:
        mem_mb=4000,
    shell:
        "{MINT} gguf-compare {params.flags} --threads {threads} --out {output} > {log} 2>&1"

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
    threads: 2
    # First among ready jobs: left to the end, these two-core jobs had run one after another
    # while nothing else could (about 20 of make tables' 84 minutes).
    priority: 10
    resources:
        mem_mb=4000,
    shell:
        "{MINT} gguf-compare {params.flags} --threads {threads} --out {output} > {log} 2>&1"

rule tables:
    input:
        allocations=[a for m in MODELS for a in get_allocations(m)],
        evaluations=[e for m in MODELS for e in get_evaluations(m)],
    output:
        directory("results/tables"),
    log:
        "logs/tables.log",
    shell:
        "mint tables --results results --out {output} > {log} 2>&1"

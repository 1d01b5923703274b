rule tables:
    input:
        allocations=[a for m in MODELS for a in get_allocations(m)],
        evaluations=[e for m in MODELS for e in get_evaluations(m)],
        units=get_units_tables(),
        gguf=get_gguf_tables(),
    output:
        report(directory("results/tables"), patterns=["{name}.csv"], caption="../report/tables.rst",
               category="Tables"),
        report(directory("results/plots"), patterns=["{name}.png"], caption="../report/plots.rst",
               category="Plots"),
    params:
        study=get_study_flags(),
        gguf=get_gguf_table_flags(),
    log:
        "logs/tables.log",
    shell:
        "{MINT} tables --results results --tables {output[0]} --plots {output[1]} {params.study}"
        " {params.gguf} {PROVENANCE} > {log} 2>&1"

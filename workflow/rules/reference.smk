checkpoint train_reference:
    output:
        directory("results/{model}/checkpoint"),
    params:
        recipe=lambda wc: model_source(wc.model)["reference"],
        profile=config.get("reference_profile", "full"),
        overrides=lambda wc: json.dumps(config["models"][wc.model].get("reference_overrides", {})),
    log:
        "logs/{model}/train_reference.log",
    benchmark:
        "results/benchmarks/{model}/train_reference.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{MINT} train-reference --model {params.recipe} --profile {params.profile}"
        " --overrides '{params.overrides}' --threads {threads} --out {output} > {log} 2>&1"


checkpoint download:
    output:
        directory("resources/{model}"),
    params:
        hub_id=lambda wc: model_source(wc.model)["hub"],
    log:
        "logs/{model}/download.log",
    shell:
        "hf download {params.hub_id} --include '*.safetensors' '*.json' 'tokenizer*'"
        " --local-dir {output} > {log} 2>&1"


rule rules_file:
    output:
        "results/{model}/rules.json",
    params:
        rules=lambda wc: config["models"][wc.model].get("rules", []),
    log:
        "logs/{model}/rules_file.log",
    run:
        with open(output[0], "w") as f:
            json.dump(params.rules, f, indent=1)

import glob
import hashlib
import json
import os
import re
import sys

from snakemake.utils import validate


validate(config, "../../config/schema.yaml")

# Every rule runs the `mint` of the Python running Snakemake, so the pipeline works without an
# activated environment (a `mint` looked up on PATH is missing there, or another install's).
MINT = f'"{sys.executable}" -m mint'
# What made the results, recorded in the tables: the project's commit (read from the Snakefile's
# folder, which need not be the working directory) and a hash of the effective config.
CONFIG_SHA256 = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
PROVENANCE = f'--project "{workflow.basedir}" --config-sha256 {CONFIG_SHA256[:12]}'

MODELS = list(config["models"])
VARIANTS = list(config["variants"])
BASELINES = ("uniform", "gptq", "mlx")
# MINT's allocation (variant mint) rounded by GPTQ with calibration text: `mint quantize-gptq`.
GPTQ_ROUNDING = "mint-gptq"
# mlx-lm's calibrated dynamic_quant at a target bits per weight: "dynamic_4.8" at its default low and
# high bits (4 and 5), "dynamic_3_6_4.5" at 3 and 6.
MLX_DYNAMIC = r"dynamic_(?:\d_\d_)?\d+(?:\.\d+)?"
# A budget named after a baseline ("gptq-4bit-g128", "mlx-mixed_3_6", "mlx-dynamic_4.8") is that
# baseline's exact size: matched-size runs.
MATCHED = re.compile(rf"^(?P<baseline>uniform|gptq|mlx)-(?P<config>\d+bit-g\d+|mixed_\d_\d|{MLX_DYNAMIC})$")


def baseline_configs(model, kind):
    return config["models"][model].get("baselines", {}).get(kind, [])


# The variant study (issue 9): study variants x study budgets on every model.
STUDY = config.get("variant_study")
if STUDY:
    unknown = sorted(set([STUDY["faithful"]] + STUDY["variants"]) - set(config["variants"]))
    if unknown:
        raise ValueError(f"variant_study names variants {unknown} that `variants` does not define; "
                         f"defined: {sorted(config['variants'])}")
# The models whose GGUF comparison (issue 16) is part of the tables.
GGUF_MODELS = config["gguf"]["models"]
if set(GGUF_MODELS) - set(MODELS):
    raise ValueError(f"gguf.models names {sorted(set(GGUF_MODELS) - set(MODELS))}, which `models` does not "
                     f"define; defined: {MODELS}")
# A budget equal to the faithful reproduction's own min-safe size.
FAITHFUL_MIN_SAFE = "faithful-min-safe"
BUDGETS = sorted({b for m in config["models"].values() for b in m["budgets"]}
                 | set(STUDY["budgets"] if STUDY else []))
BASELINE_CONFIGS = sorted({c for m in MODELS for k in BASELINES for c in baseline_configs(m, k)})


def alternatives(names):
    return "|".join(re.escape(n) for n in names) or "^$"


wildcard_constraints:
    model=alternatives(MODELS),
    variant=alternatives(VARIANTS),
    method=alternatives(VARIANTS + list(BASELINES) + ["mint-all", GPTQ_ROUNDING]),
    budget=alternatives(BUDGETS + BASELINE_CONFIGS),
    shard=r"[^/]+",


def model_source(model):
    return config["models"][model]["source"]


def check_local_sources():
    """A local source must be a Hugging Face folder: say so now, naming the model, rather than as a
    missing input file of some rule later."""
    for model, entry in config["models"].items():
        path = entry["source"].get("path")
        if path is not None and not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"model {model}: source path {path!r} is not a Hugging Face checkpoint folder "
                             "(no config.json there); fix `source: {path: ...}` in the config")


check_local_sources()


def gptq_rounding_budgets(model):
    """Budgets at which the model's `mint` allocation is also rounded by GPTQ (method mint-gptq)."""
    return config["models"][model].get("gptq_rounding", [])


def check_gptq_rounding():
    """mint-gptq rounds the variant `mint`'s allocation at budgets the model allocates: say so now,
    rather than as a missing input later."""
    if GPTQ_ROUNDING in VARIANTS:
        raise ValueError(f"the variant name {GPTQ_ROUNDING!r} is taken by GPTQ rounding; rename the variant")
    for model in MODELS:
        budgets = gptq_rounding_budgets(model)
        if budgets and "mint" not in VARIANTS:
            raise ValueError(f"model {model}: gptq_rounding rounds the variant `mint`'s allocation, "
                             "which `variants` does not define")
        stray = sorted(set(budgets) - set(get_budgets(model)))
        if stray:
            raise ValueError(f"model {model}: gptq_rounding budgets {stray} are not among its budgets")


def checkpoint_dir(model):
    """The model's Hugging Face folder: the user's own, a hub download, or a reference trained here."""
    source = model_source(model)
    if "path" in source:
        return source["path"]
    if "hub" in source:
        return f"resources/{model}"
    return f"results/{model}/checkpoint"


def export_workers(wildcards):
    """Export processes of `mint quantize`: one for the reference models, whose exports take a second
    (a second forked worker would only hold a core that another job could use), two otherwise."""
    return 1 if "reference" in model_source(wildcards.model) else 2


def get_gguf_flags(wildcards):
    """Flags of `mint gguf-compare` from the config's gguf section (schema defaults filled); without
    gguf.windows, the evaluation's count, so that the GGUF table is scored on the other tables' windows."""
    g = config["gguf"]
    windows = g.get("windows", config["evaluation"]["windows"])
    return (f"--checkpoint {checkpoint_dir(wildcards.model)} --presets {' '.join(g['presets'])} --windows {windows}"
            f" --seq-len {config['evaluation']['seq_len']} --pretokenizer {g['pretokenizer']}")


def get_gguf_tables():
    """The GGUF comparison of every model in gguf.models: inputs of the tables."""
    return [f"results/{m}/gguf/compare.csv" for m in GGUF_MODELS]


def get_gguf_table_flags():
    """`mint tables` flags naming the models of the GGUF table (empty without any)."""
    return f"--gguf-models {' '.join(GGUF_MODELS)}" if GGUF_MODELS else ""


def get_checkpoint(wildcards):
    """Input that stands for the whole checkpoint: a produced folder, or the user's config.json."""
    source = model_source(wildcards.model)
    if "path" in source:
        return os.path.join(source["path"], "config.json")
    return checkpoint_dir(wildcards.model)


def get_shards(model):
    """Shard names (file stems) of a model; for produced checkpoints, known once they exist."""
    source = model_source(model)
    if "reference" in source:
        checkpoints.train_reference.get(model=model)
    elif "hub" in source:
        checkpoints.download.get(model=model)
    files = sorted(glob.glob(os.path.join(checkpoint_dir(model), "*.safetensors")))
    if not files:
        raise ValueError(f"model {model}: no *.safetensors in {checkpoint_dir(model)}")
    return [os.path.basename(f)[: -len(".safetensors")] for f in files]


def get_analysis_tables(wildcards):
    return expand(
        "results/{model}/analysis/{shard}.{kind}.parquet",
        model=wildcards.model,
        shard=get_shards(wildcards.model),
        kind=["rd", "features"],
    )


def get_rules_file(model):
    """Extra classification rules of a model entry, written to a file the CLI reads."""
    return f"results/{model}/rules.json"


def variant_config(name):
    defaults = {"solver": "exact", "sqnr_floor_db": 9.0, "clip": False,
                "aggregation": config["analysis"]["aggregation"], "loss": "nrmse"}
    return {**defaults, **config["variants"][name]}


def get_variant(wildcards):
    return variant_config(wildcards.variant)


def clip_tag(clip):
    """"clip" (clip search for every config), "clip3" (up to 3 bits), or "" (none)."""
    return "" if clip is False else "clip" if clip is True else f"clip{int(clip)}"


def units_tag(variant):
    """Which units table a variant allocates from: "units" (the default analysis), else
    "units-<changes>" for clip search and/or another aggregation."""
    v = variant_config(variant)
    changes = ([clip_tag(v["clip"])] if v["clip"] is not False else []) + (
        [v["aggregation"]] if v["aggregation"] != config["analysis"]["aggregation"] else [])
    return "-".join(["units"] + changes)


UNITS_TAGS = sorted({units_tag(v) for v in VARIANTS} - {"units"})
CLIP_TAGS = sorted({clip_tag(variant_config(v)["clip"]) for v in VARIANTS} - {""})


def get_variant_units(wildcards):
    return f"results/{wildcards.model}/{units_tag(wildcards.variant)}/units.parquet"


def get_importance(wildcards):
    """The output weights a variant with loss "output" allocates with (none for the others)."""
    if get_variant(wildcards)["loss"] != "output":
        return []
    return f"results/{wildcards.model}/importance.parquet"


def get_variant_flags(wildcards):
    """Allocator flags of a variant beyond solver and floor (empty for the published options)."""
    v = get_variant(wildcards)
    flags = [] if v["loss"] == "nrmse" else [f"--loss {v['loss']}"]
    flags += [f"--importance {get_importance(wildcards)}"] if v["loss"] == "output" else []
    flags += [f"--bits {' '.join(map(str, v['bits']))}"] if "bits" in v else []
    flags += [f"--group-sizes {' '.join(map(str, v['group_sizes']))}"] if "group_sizes" in v else []
    flags += [f"--raised-floor {v['raised_floor_db']}"] if "raised_floor_db" in v else []
    return " ".join(flags + [get_matched_floor_flag(wildcards)])


def get_matched_floor_flag(wildcards):
    """At a baseline's exact size below the method's min-safe size (mlx-lm's mixed_2_6, say), the
    method drops its SQNR floor rather than fail, and the tables say so: a matched comparison needs a run."""
    return "--floor-below-min-safe 0" if MATCHED.match(wildcards.budget) else ""


def units_analysis(tag):
    """The analysis folder a units folder is built from: clip-search curves or plain ones."""
    first = tag.split("-")[1:2]
    return f"analysis-{first[0]}" if first and first[0].startswith("clip") else "analysis"


def get_units_analysis(wildcards):
    folder = units_analysis(wildcards.tag)
    return expand("results/{model}/{folder}/{shard}.{kind}.parquet", model=wildcards.model, folder=folder,
                  shard=get_shards(wildcards.model), kind=["rd", "features"])


def get_units_aggregation(wildcards):
    rest = [t for t in wildcards.tag.split("-")[1:] if not t.startswith("clip")]
    return rest[0] if rest else config["analysis"]["aggregation"]


def get_budgets(model):
    return config["models"][model]["budgets"]


def model_variants(model, key, default):
    """The variant names a model entry lists under `key` (else `default`), each defined under `variants`."""
    names = config["models"][model].get(key, default)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise ValueError(f"model {model}: {key} names unknown variants {unknown}; defined: {VARIANTS}")
    return names


def get_variants(model):
    """The model's own list of variants, else every variant of the config."""
    return model_variants(model, "variants", VARIANTS)


def get_allocated_only(model):
    """Variants the model allocates at each of its budgets for the tables (the solver table compares the
    greedy with the exact allocation) but does not export, verify or evaluate."""
    return model_variants(model, "allocated_only", [])


def get_budget_input(wildcards):
    """A matched budget needs the baseline's result, whose size it takes."""
    if wildcards.budget == FAITHFUL_MIN_SAFE:
        return f"results/{wildcards.model}/alloc/{STUDY['faithful']}/min-safe.json"
    m = MATCHED.match(wildcards.budget)
    if not m:
        return []
    if m["baseline"] == "gptq":
        return f"results/{wildcards.model}/gptq/{m['config']}.json"
    return f"results/{wildcards.model}/alloc/{m['baseline']}/{m['config']}.json"


def get_mlx_dynamic_flags(wildcards):
    """`mint baseline mlx-dynamic` flags of a name such as dynamic_4.8 or dynamic_3_6_4.5."""
    *bits, bpw = wildcards.recipe.removeprefix("dynamic_").split("_")
    low_high = f" --low-bits {bits[0]} --high-bits {bits[1]}" if bits else ""
    return f"--target-bpw {bpw}{low_high}"


def get_budget_spec(wildcards):
    matched = get_budget_input(wildcards)
    return f"@{matched}" if matched else wildcards.budget


def get_all_experts_tables(wildcards):
    return expand(
        "results/{model}/analysis-all/{shard}.{kind}.parquet",
        model=wildcards.model,
        shard=get_shards(wildcards.model),
        kind=["rd", "features"],
    )


def compares_clustering(model):
    return bool(config["models"][model].get("compare_clustering", False)) and "mint" in VARIANTS


def clustering_budgets(model):
    """The budgets of the clustering comparison: `compare_clustering: true` means all the model's."""
    chosen = config["models"][model].get("compare_clustering", False)
    if not compares_clustering(model):
        return []
    if chosen is True:
        return get_budgets(model)
    unknown = sorted(set(chosen) - set(get_budgets(model)))
    if unknown:
        raise ValueError(f"model {model}: compare_clustering names budgets {unknown} the model does not list")
    return list(chosen)


def get_allocations(model):
    """Every allocation of a model: variants and allocated-only variants x budgets, the uniform baselines
    and mlx-lm's recipes."""
    variants = get_variants(model) + [v for v in get_allocated_only(model) if v not in get_variants(model)]
    return expand("results/{model}/alloc/{variant}/{budget}.json", model=model,
                  variant=variants, budget=get_budgets(model)) + [
        f"results/{model}/alloc/{kind}/{c}.json" for kind in ("uniform", "mlx") for c in baseline_configs(model, kind)]


def options_of(variant):
    """What decides a variant's options per unit (and so its min-safe allocation)."""
    v = variant_config(variant)
    return (v["clip"], v["aggregation"], v["sqnr_floor_db"], tuple(v.get("bits", ())), tuple(v.get("group_sizes", ())))


def has_menu(variant):
    """A variant offering fewer configs; its own min-safe size may lie above the faithful one (a unit
    whose cheapest safe option is off the menu), so it is not run at the faithful min-safe size."""
    v = variant_config(variant)
    return "bits" in v or "group_sizes" in v


def forced_at_min_safe():
    """Study variants whose allocation at the faithful min-safe size is the faithful one: at min-safe
    every unit takes its cheapest option (no two configs cost the same), so with the same options the
    solver and the loss cannot change anything. They are not run again there."""
    return [v for v in STUDY["variants"] if options_of(v) == options_of(STUDY["faithful"])] if STUDY else []


def study_runs(model):
    """(variant, budget) of the variant study; the faithful variant at its own min-safe size is its
    "min-safe" run, and variants forced to the same allocation there are not run twice."""
    if not STUDY:
        return []
    runs = [(v, b) for v in [STUDY["faithful"]] + STUDY["variants"] for b in STUDY["budgets"]
            if not (b == FAITHFUL_MIN_SAFE and (v in forced_at_min_safe() or has_menu(v)))]
    return [(v, "min-safe" if (v, b) == (STUDY["faithful"], FAITHFUL_MIN_SAFE) else b) for v, b in runs]


def get_evaluations(model):
    """Every evaluation of a model: 16-bit, each variant's allocation (not the allocated-only ones), each
    baseline, and the variant study."""
    runs = [(v, b) for v in get_variants(model) for b in get_budgets(model)]
    runs += [(k, c) for k in BASELINES for c in baseline_configs(model, k)]
    runs += [("mint-all", b) for b in clustering_budgets(model)]
    runs += [(GPTQ_ROUNDING, b) for b in gptq_rounding_budgets(model)]
    runs += [r for r in study_runs(model) if r not in runs]
    return [f"results/{model}/eval/bf16.json"] + [f"results/{model}/eval/{m}/{b}.json" for m, b in runs]


def get_verification(wildcards):
    """The runtime check of the export behind an evaluation; GPTQ's baseline writes no MLX folder."""
    if wildcards.method == "gptq":
        return []
    return f"results/{wildcards.model}/verify/{wildcards.method}/{wildcards.budget}.json"


def get_units_tables():
    return [f"results/{m}/units/{kind}.parquet" for m in MODELS for kind in ("units", "clusters")]


def get_study_flags():
    """`mint tables` flags naming the variant study (empty without one)."""
    if not STUDY:
        return ""
    forced = forced_at_min_safe()
    return (f"--faithful {STUDY['faithful']} --study {' '.join(STUDY['variants'])}"
            f" --study-budgets {' '.join(STUDY['budgets'])}" + (f" --forced {' '.join(forced)}" if forced else ""))


check_gptq_rounding()

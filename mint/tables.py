"""Tables and plots from the pipeline's result files (CSV + Markdown, PNG).

Reads what the other stages wrote under `results/{model}/` (allocations, baseline results,
evaluations with their per-window losses, unit tables) and writes:
- `results.*`: every evaluated model: size, average bits, mean / median / trimmed PPL, KLD, the
  paired difference of per-window log-perplexity against the 16-bit model and against GPTQ, and how
  its export was verified in its runtime (the `verify` rule: largest logit difference from the twin).
- `matched_size.*`: per model, 16-bit, uniform RTN, GPTQ, mlx-lm's mixed recipes and the method at the
  baselines' sizes.
- `budget_sweep.*`: the method over budgets, with the bit distribution and a status.
- `solver.*`: greedy vs exact at every budget where both allocated (objective, LP bound, gap, bytes
  used), with each one's perplexity where it was evaluated.
- `clustering.*`: for models analysed both ways, clustered representatives vs every expert measured
  (analysis time, chosen configs that differ, PPL and KLD of the two allocations).
- `variants.*` (with a variant study): each variant against the faithful reproduction at equal bytes,
  per model and budget: KLD, and the paired per-window log-perplexity difference with its standard
  error; `variants_summary.*` counts, per variant, where it is better or worse by more than 2 SE.
- `gguf.*` (for the models named): llama.cpp's presets against MINT-GGUF at each preset file's bytes,
  both scored by llama.cpp (`mint gguf-compare`), with whether its windows are the other tables'.
Each table carries the commit and the config hash that made it.
"""

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mint import files, plots
from mint.evaluate import paired_comparison

GIB = 1024**3
# A model is "broken" past this perplexity ratio over 16-bit (the paper's no-veto Scout run: 23.6 vs 7.4).
BROKEN_RATIO = 2.0


def provenance(config_path="config/config.yaml", project=".", config_sha256=None):
    """(commit, config hash): what made these tables. The commit is read from the project's folder
    (the pipeline runs with --directory elsewhere); the hash is the one given (the pipeline's
    effective config) or that of the config file."""
    git = ["git", "-C", str(project)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
        commit += "+dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    if config_sha256:
        return commit, config_sha256
    path = Path(config_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.exists() else "none"
    return commit, digest


def _read(path):
    return json.loads(Path(path).read_text())


def collect_runs(results_dir):
    """One row per evaluated model: method, budget, its size and its evaluation, from the files."""
    rows = []
    for model_dir in sorted(p for p in Path(results_dir).iterdir() if (p / "eval" / "bf16.json").exists()):
        model = model_dir.name
        bf16 = _read(model_dir / "eval" / "bf16.json")
        # The 16-bit size as the allocator counts it (every tensor on disk), from any allocation.
        any_alloc = next((model_dir / "alloc").glob("*/*.json"))
        alloc = _read(any_alloc)
        rows.append(_row(model, "bf16", "16-bit", None, alloc["size16_bytes"], alloc["n_params"], bf16,
                         model_dir / "eval") | {"verified": "n/a (the source)"})
        for path in sorted((model_dir / "eval").glob("*/*.json")):
            method, budget = path.parent.name, path.stem
            if method == "gptq":
                info = _read(model_dir / "gptq" / f"{budget}.json")
            else:
                info = _read(model_dir / "alloc" / method / f"{budget}.json")
            rows.append(_row(model, method, budget, info, info["total_bytes"], info["n_params"], _read(path),
                             model_dir / "eval") | {"verified": verified(model_dir, method, budget)})
    return pd.DataFrame(rows)


def verified(model_dir, method, budget):
    """How the run's export was checked in its runtime: "mlx-lm 3.1e-06" (the largest logit difference
    from the dequantized twin), or why there is no such check."""
    if method == "gptq":
        return "n/a (no MLX export)"
    path = Path(model_dir) / "verify" / method / f"{budget}.json"
    if not path.exists():
        return "no"
    check = _read(path)
    return f"{check['runtime']} {check['max_abs_diff']:.1e}" if check["verified"] else "FAILED"


def format_bits(distribution):
    """{"3": 0.79, "4": 0.19, "16": 0.0006} -> "3b 79%, 4b 19%, 16b 0.1%" (fractions of parameters)."""
    if not isinstance(distribution, dict):
        return "16b 100%"
    parts = sorted(distribution.items(), key=lambda kv: int(kv[0]))
    return ", ".join(f"{b}b {100 * f:.3g}%" for b, f in parts if f > 0)


def _row(model, method, budget, info, size_bytes, n_params, ev, eval_dir):
    row = dict(model=model, method=method, budget=budget, size_bytes=int(size_bytes),
               size_gib=size_bytes / GIB, avg_bits=8 * size_bytes / n_params,
               ppl_mean=ev["ppl_mean"], ppl_median=ev["ppl_median"], ppl_trimmed5=ev["ppl_trimmed5"],
               windows_ppl_gt_100=ev["windows_ppl_gt_100"], n_windows=ev["n_windows"],
               kld=ev.get("kld_mean", 0.0 if method == "bf16" else float("nan")),
               windows=str(eval_dir / (f"{method}/{budget}" if method != "bf16" else "bf16")) + ".windows.npz")
    if info is not None:
        row.update(solver=info.get("solver"), objective=info.get("objective"), lp_bound=info.get("lp_bound"),
                   gap_rel=info.get("gap_rel"), budget_bytes=info.get("budget_bytes"),
                   floor_lowered=bool(info.get("floor_lowered", False)),
                   bits=format_bits(info["bit_distribution"]) if "bit_distribution" in info
                   else f"{info.get('bits')}b g{info.get('group_size')} (quantized layers)")
    return row


BASELINE_METHODS = ("uniform", "gptq", "mlx")
# A budget named after a baseline run ("gptq-3bit-g128", "mlx-mixed_3_6") is that run's exact size.
MATCHED_BUDGET = re.compile(r"^(?P<baseline>uniform|gptq|mlx)-(?P<config>.+)$")


def matched_baseline(group, budget):
    """The baseline run whose exact size `budget` names, in one model's runs, or None."""
    m = MATCHED_BUDGET.match(budget)
    if m is None:
        return None
    hit = group[(group["method"] == m["baseline"]) & (group["budget"] == m["config"])]
    return hit.iloc[0] if len(hit) else None


def add_paired(runs):
    """Paired per-window log-PPL difference of each run against 16-bit and, for a run at a baseline's
    exact size, against that baseline (same windows: positive = this run is worse)."""
    out = runs.copy()
    for model, group in runs.groupby("model"):
        bf16 = group[group["method"] == "bf16"].iloc[0]["windows"]
        for i, row in group.iterrows():
            if row["method"] != "bf16":
                d = paired_comparison(bf16, row["windows"])
                out.loc[i, ["dlogppl_vs_bf16", "se_vs_bf16"]] = d["mean_diff_log_ppl"], d["se"]
            base = matched_baseline(group, row["budget"])
            if base is not None and row["method"] not in BASELINE_METHODS:
                d = paired_comparison(base["windows"], row["windows"])
                out.loc[i, ["matched_to", "dlogppl_vs_matched", "se_vs_matched"]] = (
                    label(base), d["mean_diff_log_ppl"], d["se"])
    return out


def verdict_row(run, base, significant_se=None):
    """`run` against `base` on the same windows: sizes, perplexities, KLDs, the paired log-PPL
    difference (negative: `run` is better), z and the verdict (a win or loss past `significant_se`)."""
    significant_se = significant_se or SIGNIFICANT_SE
    d = paired_comparison(base["windows"], run["windows"])
    z = d["mean_diff_log_ppl"] / d["se"] if d["se"] > 0 else 0.0
    return dict(model=run["model"], baseline=label(base), method=run["method"],
                floor_lowered=run.get("floor_lowered") in (True,), avg_bits=run["avg_bits"],
                size_bytes=run["size_bytes"], baseline_bytes=base["size_bytes"], ppl_method=run["ppl_mean"],
                ppl_baseline=base["ppl_mean"], kld_method=run["kld"], kld_baseline=base["kld"],
                dlogppl=d["mean_diff_log_ppl"], se=d["se"], z=z,
                verdict="win" if z < -significant_se else "loss" if z > significant_se else "tie")


def matched_verdicts(runs, significant_se=None):
    """Each method run at a baseline's exact size against that baseline: the headline comparison;
    and MINT's allocation rounded by GPTQ against the same allocation rounded by MINT (what
    calibration adds at equal bytes and equal (bits, group) per unit)."""
    rows = []
    matched = runs[runs["matched_to"].notna()] if "matched_to" in runs else runs.iloc[:0]
    for _, r in matched.iterrows():
        rows.append(verdict_row(r, matched_baseline(runs[runs["model"] == r["model"]], r["budget"]), significant_se))
    for _, r in runs[runs["method"] == "mint-gptq"].iterrows():
        same = runs[(runs["model"] == r["model"]) & (runs["method"] == "mint") & (runs["budget"] == r["budget"])]
        if len(same):
            rows.append(verdict_row(r, same.iloc[0], significant_se))
    cols = ["model", "baseline", "method", "floor_lowered", "avg_bits", "size_bytes", "baseline_bytes", "ppl_method",
            "ppl_baseline", "kld_method", "kld_baseline", "dlogppl", "se", "z", "verdict"]
    return pd.DataFrame(rows, columns=cols).sort_values(["model", "avg_bits", "method"])


def label(row):
    if row["method"] == "bf16":
        return "16-bit"
    if row["method"] in ("uniform", "gptq"):
        return f"{row['method']} {row['budget']}"
    if row["method"] == "mlx":
        return f"mlx-lm {row['budget']}"
    lowered = " (no floor: below min-safe)" if row.get("floor_lowered") in (True,) else ""
    return f"{row['method']} @ {row['budget']}{lowered}"


def status(row, ppl16):
    ratio = row["ppl_mean"] / ppl16
    return "broken" if ratio > BROKEN_RATIO else f"{100 * (ratio - 1):+.2f}% PPL"


def matched_size_table(runs):
    """Per model: 16-bit, uniform RTN, GPTQ, mlx-lm's recipes, and the method at the baselines' exact sizes."""
    keep = runs["method"].isin(["bf16", "uniform", "gptq", "mlx"]) | (
        runs["budget"].str.match(r"^(gptq|uniform|mlx)-") & (runs["method"] != "mint-all"))
    cols = ["model", "method_label", "size_gib", "avg_bits", "ppl_mean", "ppl_median", "ppl_trimmed5", "kld",
            "matched_to", "dlogppl_vs_matched", "se_vs_matched", "dlogppl_vs_bf16", "se_vs_bf16", "verified"]
    table = runs[keep].assign(method_label=runs[keep].apply(label, axis=1))
    return table.reindex(columns=cols).sort_values(["model", "size_gib"])


def budget_sweep_table(runs):
    """The method (and its no-veto variant) over budgets, with bit distribution and status."""
    rows = []
    for model, group in runs.groupby("model"):
        ppl16 = group[group["method"] == "bf16"].iloc[0]["ppl_mean"]
        for _, row in group[~group["method"].isin(["gptq", "mint-greedy", "mint-all"])].iterrows():
            rows.append(dict(model=model, run=label(row), size_gib=row["size_gib"], avg_bits=row["avg_bits"],
                             bits=row["bits"] if isinstance(row["bits"], str) else "16b 100%",
                             ppl_mean=row["ppl_mean"], kld=row["kld"], status=status(row, ppl16),
                             verified=row["verified"]))
    return pd.DataFrame(rows).sort_values(["model", "size_gib"])


SOLVER_PAIR = ("mint", "mint-greedy")  # the exact solver's variant, the greedy's
ALLOCATION_COLUMNS = ["model", "method", "budget", "objective", "lp_bound", "gap_rel", "budget_bytes", "size_bytes"]
SOLVER_COLUMNS = ["model", "budget", "budget_bytes", "exact_objective", "greedy_objective", "lp_bound",
                  "exact_gap_rel", "greedy_excess_rel", "exact_bytes", "greedy_bytes", "ppl_exact", "ppl_greedy"]


def allocation_row(model, method, budget, info):
    """What the solver table reads from one allocation file."""
    return dict(model=model, method=method, budget=budget, objective=info.get("objective"),
                lp_bound=info.get("lp_bound"), gap_rel=info.get("gap_rel"), budget_bytes=info.get("budget_bytes"),
                size_bytes=info["total_bytes"])


def collect_allocations(results_dir, methods=SOLVER_PAIR):
    """One row per allocation file of the named variants (results/{model}/alloc/{method}/{budget}.json),
    evaluated or not: a variant can be allocated for the tables only (config key allocated_only)."""
    rows = [allocation_row(path.parents[2].name, method, path.stem, _read(path))
            for method in methods for path in sorted(Path(results_dir).glob(f"*/alloc/{method}/*.json"))]
    return pd.DataFrame(rows, columns=ALLOCATION_COLUMNS)


def solver_table(allocations, runs):
    """Greedy against exact at every budget where both allocated: objective, LP bound, gap, bytes used,
    and each one's perplexity where it was evaluated (NaN where not)."""
    exact_name, greedy_name = SOLVER_PAIR
    ppl = runs.set_index(["model", "method", "budget"])["ppl_mean"] if len(runs) else pd.Series(dtype=float)
    rows = []
    for (model, budget), group in allocations.groupby(["model", "budget"]):
        by = {r["method"]: r for _, r in group.iterrows()}
        if not set(SOLVER_PAIR) <= set(by):
            continue
        exact, greedy = by[exact_name], by[greedy_name]
        rows.append(dict(model=model, budget=budget, budget_bytes=exact["budget_bytes"],
                         exact_objective=exact["objective"], greedy_objective=greedy["objective"],
                         lp_bound=exact["lp_bound"], exact_gap_rel=exact["gap_rel"],
                         greedy_excess_rel=greedy["objective"] / exact["objective"] - 1 if exact["objective"] else 0.0,
                         exact_bytes=exact["size_bytes"], greedy_bytes=greedy["size_bytes"],
                         ppl_exact=ppl.get((model, exact_name, budget), np.nan),
                         ppl_greedy=ppl.get((model, greedy_name, budget), np.nan)))
    return pd.DataFrame(rows, columns=SOLVER_COLUMNS)


def stage_seconds(results_dir, model, stages):
    """Wall seconds of the named stages, from Snakemake's benchmark files (all shards summed)."""
    total = 0.0
    for stage in stages:
        for path in Path(results_dir, "benchmarks", model).glob(f"{stage}"):
            total += float(pd.read_csv(path, sep="\t")["s"].iloc[0])
    return total


def clustering_table(runs, results_dir):
    """Clustered representatives (mint) against every expert measured (mint-all), per budget."""
    rows = []
    for (model, budget), group in runs[runs["method"].isin(["mint", "mint-all"])].groupby(["model", "budget"]):
        by = {r["method"]: r for _, r in group.iterrows()}
        if set(by) != {"mint", "mint-all"}:
            continue
        alloc = {m: _read(Path(results_dir) / model / "alloc" / m / f"{budget}.json") for m in by}
        chosen = {m: {u["unit"]: (u["bits"], u["group_size"]) for u in a["units"]} for m, a in alloc.items()}
        differ = sum(chosen["mint"][u] != chosen["mint-all"][u] for u in chosen["mint"])
        paired = paired_comparison(by["mint-all"]["windows"], by["mint"]["windows"])
        rows.append(dict(
            model=model, budget=budget,
            analysis_s_clustered=stage_seconds(results_dir, model, ["analyze/*.tsv", "experts.tsv"]),
            analysis_s_all=stage_seconds(results_dir, model, ["analyze-all/*.tsv", "experts-all.tsv"]),
            units=len(chosen["mint"]), units_differing=differ,
            objective_clustered=alloc["mint"]["objective"], objective_all=alloc["mint-all"]["objective"],
            ppl_clustered=by["mint"]["ppl_mean"], ppl_all=by["mint-all"]["ppl_mean"],
            kld_clustered=by["mint"]["kld"], kld_all=by["mint-all"]["kld"],
            dlogppl_clustered_vs_all=paired["mean_diff_log_ppl"], se=paired["se"]))
    return pd.DataFrame(rows)


# The faithful reproduction at its own min-safe size is its "min-safe" run (see common.smk).
FAITHFUL_MIN_SAFE = "faithful-min-safe"
# A paired difference counts as a win or a loss past this many standard errors.
SIGNIFICANT_SE = 2.0


def variants_table(runs, faithful, variants, budgets, forced=()):
    """Each variant against `faithful` at equal bytes, per model and budget.

    dlogppl = mean over windows of (log PPL of the variant - log PPL of the faithful run): negative
    is better; z = dlogppl / se. kld_ratio = KLD of the variant / KLD of the faithful run. Variants
    in `forced` have the faithful allocation at the faithful min-safe size (only the solver or the
    loss differ, and min-safe leaves no choice): that row is the faithful run, verdict "forced".
    """
    rows = []
    for model, group in runs.groupby("model"):
        by = {(r["method"], r["budget"]): r for _, r in group.iterrows()}
        for budget in budgets:
            base = by.get((faithful, "min-safe" if budget == FAITHFUL_MIN_SAFE else budget))
            if base is None:
                continue
            for variant in [faithful] + [v for v in variants if v != faithful]:
                is_forced = variant in forced and budget == FAITHFUL_MIN_SAFE
                run = base if variant == faithful or is_forced else by.get((variant, budget))
                if run is None:
                    continue
                d = paired_comparison(base["windows"], run["windows"])
                z = d["mean_diff_log_ppl"] / d["se"] if d["se"] > 0 else 0.0
                rows.append(dict(model=model, budget=budget, variant=variant, size_bytes=run["size_bytes"],
                                 avg_bits=run["avg_bits"], ppl_mean=run["ppl_mean"], kld=run["kld"],
                                 kld_ratio=run["kld"] / base["kld"] if base["kld"] > 0 else float("nan"),
                                 dlogppl=d["mean_diff_log_ppl"], se=d["se"], z=z,
                                 verdict="forced" if is_forced else "better" if z < -SIGNIFICANT_SE
                                 else "worse" if z > SIGNIFICANT_SE else "same"))
    return pd.DataFrame(rows)


def variants_summary(table):
    """Per variant: runs, wins and losses past 2 SE, runs with a lower KLD, geometric-mean KLD ratio."""
    rows = []
    for variant, group in table.groupby("variant", sort=False):
        ratio = group["kld_ratio"]
        rows.append(dict(variant=variant, runs=len(group), better=int((group["verdict"] == "better").sum()),
                         worse=int((group["verdict"] == "worse").sum()),
                         lower_kld=int((ratio < 1).sum()),
                         geomean_kld_ratio=float(np.exp(np.log(ratio).mean())),
                         mean_z=float(group["z"].mean())))
    return pd.DataFrame(rows)


def reference_table(runs, results_dir):
    """Per reference model trained here: its size, training and how much uniform RTN costs it.

    The sensitivity columns are the perplexity increase of uniform round-to-nearest (every weight
    but embeddings and head) over the 16-bit model, with the paired log-PPL difference's standard
    error: how much room for improvement over naive 3-4 bits the model leaves.
    """
    rows = []
    for model, group in runs.groupby("model"):
        meta_path = Path(results_dir) / model / "checkpoint" / "train_meta.json"
        if not meta_path.exists():
            continue
        meta = _read(meta_path)
        r = meta["recipe"]
        bf16 = group[group["method"] == "bf16"].iloc[0]
        row = dict(model=model, architecture=meta["architecture"], experts=r["num_experts"], top_k=r["top_k"],
                   params=meta["params"], tokens_seen=meta["tokens_seen"], tokens_per_param=meta["tokens_per_param"],
                   train_minutes=meta["train_wall_s"] / 60, val_loss=meta["final_val_loss"],
                   ppl_16bit=bf16["ppl_mean"])
        for _, u in group[group["method"] == "uniform"].sort_values("budget").iterrows():
            row[f"uniform_{u['budget']}_ppl_pct"] = 100 * (u["ppl_mean"] / bf16["ppl_mean"] - 1)
            row[f"uniform_{u['budget']}_se_pct"] = 100 * u["se_vs_bf16"]
        rows.append(row)
    return pd.DataFrame(rows)


# The columns of a model's gguf/compare.csv that the GGUF table shows (`mint gguf-compare` writes them).
GGUF_COLUMNS = ["preset", "bytes_preset", "bytes_mint", "bpw_preset", "bpw_mint", "ppl_16bit", "ppl_preset",
                "ppl_mint", "ppl_median_preset", "ppl_median_mint", "kld_preset", "kld_mint",
                "dlogppl_mint_vs_preset", "dlogppl_se", "preset_types", "mint_types", "n_windows", "seq_len",
                "seed", "text", "text_tokens"]
# What fixes an evaluation's windows (evaluate.make_windows), with the same tokenizer (the checkpoint's).
WINDOW_KEYS = ["text", "text_tokens", "seq_len", "seed", "n_windows"]


def gguf_table(results_dir, models):
    """llama.cpp's presets against MINT-GGUF at each preset's bytes, one row per model and preset.

    dlogppl = mean over windows of (log PPL of MINT-GGUF - log PPL of the preset): negative is better
    for MINT; the verdict counts past 2 SE. same_windows: the comparison was scored on the windows of
    the model's other tables (same text, tokens, window length, seed and count as its 16-bit run).
    """
    frames = []
    for model in models:
        path = Path(results_dir) / model / "gguf" / "compare.csv"
        compare = pd.read_csv(path)
        missing = [c for c in GGUF_COLUMNS if c not in compare.columns]
        if missing:
            raise ValueError(f"{path} lacks {missing}: written by an older `mint gguf-compare`; delete it and rerun")
        bf16 = _read(Path(results_dir) / model / "eval" / "bf16.json")
        same = np.logical_and.reduce([compare[k] == bf16[k] for k in WINDOW_KEYS])
        z = compare["dlogppl_mint_vs_preset"] / compare["dlogppl_se"]
        verdict = np.where(z < -SIGNIFICANT_SE, "mint better", np.where(z > SIGNIFICANT_SE, "preset better", "same"))
        frames.append(compare.assign(model=model, z=z, verdict=verdict, same_windows=same))
    cols = ["model", "preset", "bytes_preset", "bytes_mint", "bpw_preset", "bpw_mint", "ppl_16bit", "ppl_preset",
            "ppl_mint", "ppl_median_preset", "ppl_median_mint", "kld_preset", "kld_mint", "dlogppl_mint_vs_preset",
            "dlogppl_se", "z", "verdict", "preset_types", "mint_types", "n_windows", "seq_len", "same_windows"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def gguf_windows_note(table):
    """One line saying on which windows the GGUF table was scored, and whether they are the others'."""
    if table.empty:
        return "No model has the GGUF comparison."
    counts = ", ".join(f"{m}: {int(g['n_windows'].iloc[0])}" for m, g in table.groupby("model"))
    same = "the same windows as the other tables" if table["same_windows"].all() else (
        "NOT the other tables' windows (gguf.windows differs from evaluation.windows) where same_windows is False")
    return (f"Scored by llama.cpp's logits on WikiText-2 windows of {int(table['seq_len'].iloc[0])} tokens "
            f"(windows per model: {counts}); {same}.")


def write_table(df, stem, provenance_line):
    """CSV for machines, Markdown for people; both say what made them."""
    with files.replaced(f"{stem}.csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    files.write_text(f"{stem}.md", f"{provenance_line}\n\n" + df.to_markdown(index=False, floatfmt=".4g") + "\n")


def make_plots(runs, results_dir, plots_dir):
    plots_dir.mkdir(parents=True, exist_ok=True)
    for model, group in runs.groupby("model"):
        points = group[group["method"] != "bf16"].assign(ppl=group["ppl_mean"])
        ref = group[group["method"] == "bf16"].iloc[0]
        plots.plot_ppl_vs_size(points, plots_dir / f"{model}_ppl_vs_size.png", f"{model}: perplexity vs size",
                               reference=(ref["size_gib"], ref["ppl_mean"]))
        units_dir = Path(results_dir) / model / "units"
        units = pd.read_parquet(units_dir / "units.parquet")
        plots.plot_rd_curves(units, plots_dir / f"{model}_rd_curves.png",
                             title=f"{model}: most and least sensitive units")
        clusters = pd.read_parquet(units_dir / "clusters.parquet")
        if len(clusters):
            plots.plot_clusters(clusters, plots_dir / f"{model}_clusters.png")
        mint_runs = group[group["method"] == "mint"].sort_values("size_gib")
        if len(mint_runs):
            pick = mint_runs.iloc[len(mint_runs) // 2]
            alloc = _read(Path(results_dir) / model / "alloc" / "mint" / f"{pick['budget']}.json")
            plots.plot_bits_heatmap(alloc, plots_dir / f"{model}_bits_heatmap.png",
                                    f"{model}: mint @ {pick['budget']} ({pick['avg_bits']:.2f} bpw)")


def make_gguf_table(results, models, tables, plots_dir, provenance_line):
    """gguf.csv / gguf.md (with the line saying which windows) and the KLD plot gguf_kld.png."""
    table = gguf_table(results, models)
    write_table(table, Path(tables) / "gguf", f"{provenance_line} {gguf_windows_note(table)}")
    plots.plot_gguf(table, Path(plots_dir) / "gguf_kld.png")
    return table


def make_tables(results, tables, plots_dir, config="config/config.yaml", faithful=None, study=(),
                study_budgets=(), forced=(), gguf_models=(), project=".", config_sha256=None):
    runs = add_paired(collect_runs(results))
    study_only = set(study) - {"mint", faithful}
    regular = runs[~runs["method"].isin(study_only)]
    tables, plots_dir = Path(tables), Path(plots_dir)
    tables.mkdir(parents=True, exist_ok=True)
    commit, digest = provenance(config, project, config_sha256)
    line = f"Made by commit {commit} with config sha256 {digest}."
    write_table(runs.drop(columns=["windows"]), tables / "results", line)
    write_table(matched_size_table(regular), tables / "matched_size", line)
    write_table(matched_verdicts(regular), tables / "matched_verdicts", line)
    write_table(budget_sweep_table(regular), tables / "budget_sweep", line)
    write_table(reference_table(regular, results), tables / "reference_models", line)
    write_table(solver_table(collect_allocations(results), runs), tables / "solver", line)
    write_table(clustering_table(runs, results), tables / "clustering", line)
    if faithful and study:
        table = variants_table(runs, faithful, study, study_budgets, forced)
        write_table(table, tables / "variants", line)
        write_table(variants_summary(table), tables / "variants_summary", line)
        plots.plot_variants(table, Path(plots_dir) / "variants_kld.png")
    if gguf_models:
        make_gguf_table(results, gguf_models, tables, plots_dir, line)
    make_plots(regular, results, plots_dir)
    print(f"{len(runs)} evaluated runs -> {tables}, plots -> {plots_dir}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="mint tables", description=__doc__.splitlines()[0])
    p.add_argument("--results", default="results", help="the pipeline's results folder")
    p.add_argument("--tables", default="results/tables", help="output folder for tables")
    p.add_argument("--plots", dest="plots_dir", default="results/plots", help="output folder for plots")
    p.add_argument("--config", default="config/config.yaml", help="config whose hash is recorded")
    p.add_argument("--config-sha256", help="record this config hash instead (the pipeline's effective config)")
    p.add_argument("--project", default=".", help="the project's git folder, whose commit is recorded")
    p.add_argument("--faithful", help="the variant study's faithful reproduction (e.g. mint-greedy)")
    p.add_argument("--study", nargs="*", default=(), help="the variant study's variants")
    p.add_argument("--study-budgets", nargs="*", default=(), help="the variant study's budgets")
    p.add_argument("--forced", nargs="*", default=(),
                   help="study variants whose allocation at the faithful min-safe size is the faithful one")
    p.add_argument("--gguf-models", nargs="*", default=(),
                   help="models whose results/{model}/gguf/compare.csv (mint gguf-compare) makes the GGUF table")
    args = p.parse_args(argv)
    make_tables(**vars(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

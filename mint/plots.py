"""Plots of the pipeline's results (PNG): where people would rather look than read.

- `plot_bits_heatmap`: the chosen bits (and group) over layers x projections of one allocation.
- `plot_rd_curves`: rate-distortion curves of the most and least sensitive units.
- `plot_clusters`: the k-means clusters of one expert stack, representatives marked.
- `plot_ppl_vs_size`: perplexity against size for every method of a model.
- `plot_frontier`: the objective against size over the budgets of `mint plan`.
- `plot_gguf`: KLD against bits per weight, llama.cpp's presets and MINT-GGUF at their bytes.
Each takes tables or dicts and a path; nothing here computes results.
"""

import re

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mint import files  # noqa: E402

_LAYER = re.compile(r"^(?P<prefix>.*?layers\.)(?P<layer>\d+)\.(?P<rest>.+)$")


def split_unit(unit):
    """(layer, module path inside the layer) of a unit name, or (None, unit) outside the layers."""
    m = _LAYER.match(unit)
    return (int(m["layer"]), m["rest"]) if m else (None, unit)


def _save(fig, path):
    fig.tight_layout()
    with files.replaced(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def plot_bits_heatmap(allocation, path, title=None):
    """Bits chosen per (layer, projection); cells say bits/group, 16-bit cells say "16"."""
    rows = [(*split_unit(u["unit"]), u["bits"], u["group_size"]) for u in allocation["units"]
            if u["role"] != "norm"]
    table = pd.DataFrame(rows, columns=["layer", "module", "bits", "group_size"]).dropna(subset=["layer"])
    bits = table.pivot(index="layer", columns="module", values="bits").sort_index()
    group = table.pivot(index="layer", columns="module", values="group_size").reindex_like(bits)
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * bits.shape[1], 3.0 + 0.3 * bits.shape[0]))
    image = ax.imshow(bits.to_numpy(dtype=float), cmap="viridis", vmin=2, vmax=16, aspect="auto")
    for (i, j), b in np.ndenumerate(bits.to_numpy(dtype=float)):
        if np.isnan(b):
            continue
        g = group.iat[i, j]
        label = "16" if b == 16 else f"{int(b)}/{int(g)}"
        ax.text(j, i, label, ha="center", va="center", fontsize=7, color="white" if b < 9 else "black")
    ax.set_xticks(range(bits.shape[1]), bits.columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(bits.shape[0]), [int(v) for v in bits.index], fontsize=7)
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, label="bits")
    outside = [f"{u['unit']}: {u['bits']}" + (f"/{u['group_size']}" if u["bits"] != 16 else "")
               for u in allocation["units"] if u["role"] != "norm" and split_unit(u["unit"])[0] is None]
    ax.set_title((title or "bits/group per unit") + ("\n" + ", ".join(outside) if outside else ""), fontsize=8)
    _save(fig, path)


def sensitivity(units, bits=4, group_size=64):
    """Each unit's NRMSE at one reference config: how much it suffers from quantization."""
    at = units[(units["bits"] == bits) & (units["group_size"] == group_size)]
    return at.set_index("unit")["nrmse"].sort_values()


def plot_rd_curves(units, path, n=3, title=None):
    """NRMSE against bits per weight for the n least and n most sensitive units (log scale)."""
    ranked = sensitivity(units)
    chosen = list(ranked.index[:n]) + list(ranked.index[-n:])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, unit in enumerate(chosen):
        curve = units[(units["unit"] == unit) & (units["bits"] != 16)].copy()
        curve["bpw"] = 8 * curve["bytes"] / curve["n_params"]
        curve = curve.sort_values("bpw")
        style = "-" if i >= n else "--"
        ax.plot(curve["bpw"], curve["nrmse"], style, marker="o", ms=3,
                label=("most " if i >= n else "least ") + f"sensitive: {unit}")
    ax.axhline(10 ** (-9 / 20), color="red", lw=0.8, ls=":", label="9 dB SQNR floor")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (incl. scales and biases)")
    ax.set_ylabel("NRMSE (max over experts)")
    ax.set_title(title or "rate-distortion curves", fontsize=9)
    ax.legend(fontsize=6)
    _save(fig, path)


def plot_clusters(clusters, path, unit=None, title=None):
    """Standardized (std, kurtosis) of one stack's experts coloured by cluster; stars = representatives."""
    if unit is None:
        # The stack whose experts differ most, where the clustering matters most.
        unit = clusters.groupby("unit")["kurtosis"].std().idxmax()
    stack = clusters[clusters["unit"] == unit]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(stack["std"], stack["kurtosis"], c=stack["cluster"], cmap="tab10", s=25)
    reps = stack[stack["is_representative"]]
    ax.scatter(reps["std"], reps["kurtosis"], marker="*", s=160, facecolors="none", edgecolors="black",
               label="representative (measured)")
    ax.set_xlabel("std")
    ax.set_ylabel("excess kurtosis")
    ax.set_title(title or f"expert clusters: {unit}", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_ppl_vs_size(points, path, title=None, reference=None):
    """Perplexity against size (GiB) for every method.

    Args:
        points: DataFrame with columns method, size_gib, ppl (one row per evaluated model).
        reference: (size_gib, ppl) of the 16-bit model, drawn as a line.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method, group in points.groupby("method", sort=False):
        group = group.sort_values("size_gib")
        ax.plot(group["size_gib"], group["ppl"], marker="o", label=method)
    if reference is not None:
        ax.axhline(reference[1], color="gray", ls=":", label=f"16-bit ({reference[0]:.3f} GiB)")
    ax.set_xlabel("size (GiB)")
    ax.set_ylabel("perplexity (WikiText-2, token-weighted)")
    ax.set_title(title or "perplexity vs size", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_variants(table, path, title="Variants vs the faithful reproduction at equal bytes"):
    """Paired log-PPL difference (+-2 SE) of each variant, one panel per budget, models side by side."""
    budgets = list(dict.fromkeys(table["budget"]))
    variants = [v for v in dict.fromkeys(table["variant"])]
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(1, len(budgets), figsize=(6 * len(budgets), 4.5), squeeze=False, sharey=True)
    width = 0.8 / max(len(models), 1)
    for ax, budget in zip(axes[0], budgets):
        part = table[table["budget"] == budget]
        for k, model in enumerate(models):
            rows = part[part["model"] == model].set_index("variant").reindex(variants)
            x = np.arange(len(variants)) + (k - (len(models) - 1) / 2) * width
            ax.errorbar(x, rows["dlogppl"], yerr=2 * rows["se"], fmt="o", ms=4, capsize=2, label=model)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(np.arange(len(variants)), variants, rotation=40, ha="right")
        ax.set_title(budget)
    axes[0][0].set_ylabel("paired mean diff. of log PPL vs faithful (below 0 = better)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def plot_gguf(table, path, title="llama.cpp's presets and MINT-GGUF at the same bytes"):
    """KLD against the 16-bit GGUF over bits per weight, one panel per model: the presets (labelled)
    and MINT-GGUF at each preset file's bytes. Log KLD: the presets span two orders of magnitude."""
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(5 * max(len(models), 1), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = table[table["model"] == model].sort_values("bpw_preset")
        ax.plot(rows["bpw_preset"], rows["kld_preset"], marker="s", label="llama.cpp preset (no imatrix)")
        ax.plot(rows["bpw_mint"], rows["kld_mint"], marker="o", label="MINT-GGUF at the preset's bytes")
        for r in rows.itertuples():
            ax.annotate(r.preset, (r.bpw_preset, r.kld_preset), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xlabel("bits per weight (file bytes x 8 / weights)")
        ax.set_title(model, fontsize=9)
    axes[0][0].set_ylabel("KLD vs the 16-bit GGUF (nats/token)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_frontier(table, path, title, fit=None, points=None):
    """Objective against size over the budgets of `mint plan`, min-safe marked; with a quality fit
    (mint/quality.py), a second panel: the measured runs it was fitted on, the fitted line, and the
    KLD it expects at each budget of this model."""
    ok = table[table["feasible"]].sort_values("size_gib")
    fig, axes = plt.subplots(1, 2 if fit else 1, figsize=(12.5 if fit else 7, 4.2), squeeze=False)
    ax = axes[0, 0]
    ax.plot(ok["size_gib"], ok["objective"], "o-", color="tab:blue")
    for _, r in ok.iterrows():
        ax.annotate(r["budget"], (r["size_gib"], r["objective"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    if len(ok):   # the min-safe row is annotated already; the line marks where the floor starts to bind
        ax.axvline(ok["size_gib"].iloc[0], color="tab:red", ls=":", lw=1)
    ax.set_xlabel("size (GiB)")
    ax.set_ylabel("objective (sum of unit costs, lower is better)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if fit:
        from mint.quality import MIN_WEIGHT_ERROR, predict_quality

        ax = axes[0, 1]
        used = points[(points["weight_error"] > MIN_WEIGHT_ERROR) & (points["kld"] > 0)]
        for model, group in used.groupby("model"):
            ax.scatter(group["weight_error"], group["kld"], s=14, label=f"measured: {model}")
        grid = np.geomspace(*fit["error_range"], 50)
        kld, low, high, _ = predict_quality(fit, grid)
        ax.plot(grid, kld, color="black", lw=1, label="fit")
        ax.fill_between(grid, low, high, color="black", alpha=0.1, label="fit +- rms")
        inside = ok[ok["fit_in_range"]]
        outside = ok[~ok["fit_in_range"]]
        ax.scatter(inside["weight_error"], inside["kld_fit"], marker="x", color="tab:red",
                   label="this model (expected)")
        ax.scatter(outside["weight_error"], outside["kld_fit"], marker="x", color="tab:red", alpha=0.35,
                   label="this model (extrapolated)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("weight error (parameter-weighted mean NRMSE)")
        ax.set_ylabel("KLD to 16-bit")
        ax.set_title(f"fitted on {', '.join(fit['models'])} ({fit['n']} runs)", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    _save(fig, path)

"""What an allocation's weight error means for quality, fitted on runs the pipeline has measured.

The allocator sees only weight error. The pipeline measures, for the same allocations, the KL divergence
of the next-token distribution from the 16-bit model and the perplexity. This module fits the relation
between the two on those runs so that `mint plan --fit results/` can show, before any weights are
written, what each budget is expected to cost in KLD and perplexity, with the fit's own error. The fit is
a property of the models it was made on (the reference models, by default): it is labelled as such and
transfers to another model only as far as that model resembles them.

Weight error is the parameter-weighted mean NRMSE over the quantizable units of an allocation, a size-free
version of the allocator's objective (which sums prior-weighted NRMSE and so grows with the unit count).
Two relations, each fitted by least squares:
    log KLD          = a + b * log(weight error)      (a power law; error reported as a factor)
    delta log PPL    = c * weight error ** 2          (noise power adds; through the origin)
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

# Runs whose weight error is below this are (near-)lossless: KLD there is noise, not signal.
MIN_WEIGHT_ERROR = 1e-4


def weight_error(units):
    """Parameter-weighted mean NRMSE over the quantizable units (allocation["units"] records)."""
    kept = [u for u in units if u["role"] != "norm"]
    n = sum(int(u["n_params"]) for u in kept)
    return sum(int(u["n_params"]) * float(u["nrmse"]) for u in kept) / n if n else 0.0


def measured_points(results_dir):
    """One row per evaluated allocation under `results_dir`: model, method, budget, weight error, KLD and
    the change of log mean perplexity against the model's 16-bit evaluation."""
    rows = []
    for bf16_file in sorted(Path(results_dir).glob("*/eval/bf16.json")):
        model_dir = bf16_file.parent.parent
        ppl16 = json.loads(bf16_file.read_text())["ppl_mean"]
        for eval_file in sorted((model_dir / "eval").glob("*/*.json")):
            method, budget = eval_file.parent.name, eval_file.stem
            alloc_file = model_dir / "alloc" / method / f"{budget}.json"
            if not alloc_file.exists():   # GPTQ: rounded with data, not an allocation of ours
                continue
            allocation = json.loads(alloc_file.read_text())
            if allocation.get("rounding") == "gptq":   # GPTQ moved the weights: the units' errors are not theirs
                continue
            ev = json.loads(eval_file.read_text())
            rows.append(dict(model=model_dir.name, method=method, budget=budget,
                             weight_error=weight_error(allocation["units"]),
                             kld=ev.get("kld_mean", float("nan")),
                             dlogppl=math.log(ev["ppl_mean"] / ppl16)))
    return pd.DataFrame(rows, columns=["model", "method", "budget", "weight_error", "kld", "dlogppl"])


def fit_quality(points):
    """Least-squares fits of KLD and delta log PPL on weight error (see the module doc).

    Returns a dict: kld_intercept, kld_slope, kld_rms_log (root mean square residual of log KLD), ppl_coef,
    ppl_rms (of delta log PPL), n (runs used), models (their names) and error_range (the smallest and
    largest weight error fitted: outside it a prediction is an extrapolation), or raises ValueError
    when fewer than three usable runs exist.
    """
    p = points[(points["weight_error"] > MIN_WEIGHT_ERROR) & (points["kld"] > 0)].dropna()
    if len(p) < 3:
        raise ValueError(f"need at least 3 measured runs with weight error > {MIN_WEIGHT_ERROR:g} and KLD > 0 "
                         f"to fit; found {len(p)} (run the pipeline first: make tables)")
    x, y = np.log(p["weight_error"].to_numpy()), np.log(p["kld"].to_numpy())
    slope, intercept = np.polyfit(x, y, 1)
    e2, d = p["weight_error"].to_numpy() ** 2, p["dlogppl"].to_numpy()
    coef = float(e2 @ d / (e2 @ e2))
    return dict(kld_intercept=float(intercept), kld_slope=float(slope),
                kld_rms_log=float(np.sqrt(np.mean((y - (intercept + slope * x)) ** 2))),
                ppl_coef=coef, ppl_rms=float(np.sqrt(np.mean((d - coef * e2) ** 2))),
                n=int(len(p)), models=sorted(p["model"].unique()),
                error_range=[float(p["weight_error"].min()), float(p["weight_error"].max())])


def predict_quality(fit, error):
    """(KLD, KLD low, KLD high, perplexity increase in %) the fit expects at weight error `error`;
    low/high are one root-mean-square residual either side."""
    error = np.asarray(error, float)
    log_kld = fit["kld_intercept"] + fit["kld_slope"] * np.log(np.maximum(error, 1e-12))
    spread = fit["kld_rms_log"]
    ppl_pct = 100 * np.expm1(fit["ppl_coef"] * error**2)
    return np.exp(log_kld), np.exp(log_kld - spread), np.exp(log_kld + spread), ppl_pct


def describe_fit(fit):
    """One line naming what the fit was made on and how good it is."""
    return (f"fitted on {fit['n']} measured runs of {', '.join(fit['models'])}: "
            f"KLD = {math.exp(fit['kld_intercept']):.3g} * e^{fit['kld_slope']:.2f} "
            f"(within x{math.exp(fit['kld_rms_log']):.2f} rms), "
            f"delta log PPL = {fit['ppl_coef']:.3g} * e^2 (+- {fit['ppl_rms']:.2g} rms), e = weight error, "
            f"fitted for e in [{fit['error_range'][0]:.3g}, {fit['error_range'][1]:.3g}]")

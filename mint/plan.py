"""What each budget buys, from the rate-distortion data alone, before any weights are written.

    mint plan path/to/hf-model --out plan/          # plan/frontier.csv, frontier.md, frontier.png

For budgets from the min-safe size to 8 bits per weight, and for named sizes (16GiB, 24GiB, ...)
between the min-safe and the 16-bit size, the allocation the preset of `mint convert` would write:
its objective (the weight error the knapsack minimises), the bits mix, the weakest unit's SQNR and
the floor that holds there. A named size below min-safe is listed as infeasible. The analysis is the
one `mint convert` caches, so planning and converting measure the model once.

    mint plan path/to/hf-model --fit results/      # + expected KLD and perplexity, fitted on measured runs

With `--fit`, the relation between weight error and quality measured by the pipeline (mint/quality.py)
adds the expected KLD (with its spread) and perplexity increase to every row, labelled with the models
it was fitted on.
"""

import argparse
import sys
import warnings
from pathlib import Path

import pandas as pd

from mint import allocate as alloc
from mint import files, plots, quality
from mint.checkpoint import CheckpointError
from mint.convert import DEFAULT_PRESET, FAITHFUL_PRESET, PRESETS, ConvertError, allocate_preset, bits_mix, \
    prepare_units, resolve_source

GIB = 1024**3
BPW_GRID = (2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 8.0)
NAMED_GIB = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512)


def frontier(units, preset=DEFAULT_PRESET, bpw=BPW_GRID, named_gib=NAMED_GIB):
    """One row per budget: size, objective, bits mix (share of all parameters) and the floor."""
    n_params = int(units.drop_duplicates("unit")["n_params"].sum())
    size16 = alloc.size16_bytes(units)
    budgets = [("min-safe", "min-safe")] + [(f"{b:g}bpw", f"{b:g}bpw") for b in bpw]
    budgets += [(f"{g}GiB", f"{g}GiB") for g in named_gib if g * GIB < size16]
    rows = []
    for label, spec in budgets:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # a budget above 16 bits says so in its row
                a = allocate_preset(units, spec, preset)
        except alloc.BudgetError:
            bytes_ = alloc.parse_budget(spec, n_params, size16, min_safe=0)
            rows.append(dict(budget=label, size_gib=bytes_ / GIB, bits_per_weight=8 * bytes_ / n_params,
                             objective=float("nan"), weight_error=float("nan"), min_sqnr_db=float("nan"), floor_db=float("nan"),
                             feasible=False, mix="below min-safe"))
            continue
        shares = {}
        for u in a["units"]:
            shares[int(u["bits"])] = shares.get(int(u["bits"]), 0) + int(u["n_params"]) / n_params
        quantized = [u["sqnr_db"] for u in a["units"] if u["role"] != "norm" and u["bits"] != 16]
        rows.append(dict(budget=label, size_gib=a["total_bytes"] / GIB, bits_per_weight=a["avg_bits"],
                         objective=a["objective"], weight_error=quality.weight_error(a["units"]), min_sqnr_db=min(quantized) if quantized else float("nan"),
                         floor_db=a["sqnr_floor_db"], feasible=True,
                         mix=" ".join(f"{b}b {100 * s:.0f}%" for b, s in sorted(shares.items()))))
    table = pd.DataFrame(rows)
    order = table["size_gib"].rank(method="first")
    return table.iloc[order.argsort()].drop_duplicates(["budget"]).reset_index(drop=True)


def add_expected_quality(table, fit):
    """The frontier with the quality the fit expects at each row's weight error, and whether that
    error lies inside the range the fit was made on (elsewhere the numbers are extrapolations)."""
    error = table["weight_error"].to_numpy()
    kld, low, high, ppl = quality.predict_quality(fit, error)
    lo, hi = fit["error_range"]
    return table.assign(kld_fit=kld, kld_fit_low=low, kld_fit_high=high, ppl_increase_fit_pct=ppl,
                        fit_in_range=(error >= lo) & (error <= hi))


def plan(source, out, faithful=False, work=None, fit=None, progress=True):
    """Write the frontier of `source` (table and plot) to `out`; with `fit` (a results folder of the
    pipeline), also the quality fitted on the runs measured there. Returns the table."""
    path = resolve_source(source)
    preset = FAITHFUL_PRESET if faithful else DEFAULT_PRESET
    fitted = points = None
    if fit is not None:
        points = quality.measured_points(fit)
        fitted = quality.fit_quality(points)
    units, folder, _ = prepare_units(path, PRESETS[preset]["clip"], work, progress)
    table = frontier(units, preset)
    if fitted is not None:
        table = add_expected_quality(table, fitted)
        table.attrs["fit"] = quality.describe_fit(fitted)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files.write_text(out / "frontier.csv", table.to_csv(index=False))
    note = f"\nExpected quality {table.attrs['fit']}.\n" if fitted is not None else ""
    files.write_text(out / "frontier.md", table.to_markdown(index=False, floatfmt=".4g") + "\n" + note)
    plots.plot_frontier(table, out / "frontier.png", f"{path.name}: budget frontier ({preset})", fitted, points)
    return table


def main(argv=None):
    p = argparse.ArgumentParser(prog="mint plan", description=__doc__.splitlines()[0])
    p.add_argument("source", help="Hugging Face checkpoint folder, or a hub id (owner/name)")
    p.add_argument("--out", default="plan", help="folder for frontier.csv, frontier.md and frontier.png")
    p.add_argument("--faithful", action="store_true", help="plan the published method instead of the default preset")
    p.add_argument("--work", help="work folder for the cached analysis (default $MINT_CACHE or ~/.cache/mint)")
    p.add_argument("--fit", metavar="RESULTS",
                   help="the pipeline's results folder: add the KLD and perplexity fitted on the runs measured there")
    args = p.parse_args(argv)
    try:
        table = plan(**vars(args))
    except (ConvertError, CheckpointError, ValueError, OSError) as e:
        print(f"mint plan: error: {e}", file=sys.stderr)
        return 2
    print(table.to_markdown(index=False, floatfmt=".4g"))
    if "fit" in table.attrs:
        print(f"expected quality {table.attrs['fit']}")
    print(f"-> {args.out}/frontier.csv, frontier.md, frontier.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

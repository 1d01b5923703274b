"""Experts: cluster large expert stacks, measure representatives, aggregate every unit (METHOD.md §3).

A unit is one MLX module: a (layer, projection) stack of routed experts shares one (bits, group)
because the runtime's kernels need it. For units with more experts than the threshold, k-means on the
standardized (norm, std, kurtosis) of every expert picks one representative per cluster (the member
nearest its centroid); the representative's RD curve stands for every member. Aggregation over the
experts of a unit is conservative: NRMSE = max, SQNR = min, bytes = sum (a parameter-weighted mean
NRMSE is an option).

Inputs: the per-shard tables of `mint analyze`. Outputs: `units.parquet` (the allocator's input, one row
per unit and config), `clusters.parquet` (the assignment, for inspection and plots), and
`experts.parquet` (every expert's curve, measured or inherited from its representative).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from tqdm import tqdm

from mint import kernels, quantizer
from mint.allocate import config_columns
from mint.analyze import TableError, load_rules, rd_rows, read_matrix, read_parquet, tensor_features, write_parquet
from mint.checkpoint import Checkpoint, CheckpointError, default_dtype16

CLUSTERS_PER_UNIT = 8
# NRMSE of a unit over its experts: the worst (published), the parameter-weighted mean, or the
# 90th percentile (worst-case minus the few outliers that max lets dominate a whole stack).
AGGREGATIONS = ("max", "mean", "q90")
CLUSTER_FEATURES = ["norm", "std", "kurtosis"]
# Distances to a cluster's centre (standardized features) closer than this count as equal.
TIE_TOLERANCE = 1e-9
# The columns that name an expert matrix in every table.
IDENT = ["tensor", "shard", "unit", "role", "layer", "expert", "proj", "n_params"]


def cluster_experts(stats, k=CLUSTERS_PER_UNIT, seed=0):
    """k-means on standardized features of one unit's experts.

    Args:
        stats: DataFrame with one row per expert and the CLUSTER_FEATURES columns.
    Returns:
        (labels, representatives): a cluster label per row, and per cluster the row position of the
        member nearest the centroid.
    """
    x = stats[CLUSTER_FEATURES].to_numpy(dtype=np.float64)
    spread = x.std(axis=0)
    # A feature that does not vary carries no information; dividing by 0 would make it NaN.
    x = (x - x.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    k = min(k, len(x))
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
    distance = np.linalg.norm(x - km.cluster_centers_[km.labels_], axis=1)
    reps = {}
    for label in range(k):
        members = np.flatnonzero(km.labels_ == label)
        # Near-ties go to the first member: a two-member cluster's members are equidistant from its
        # centre, and the last digits of the features (their summation order) must not decide
        # which one stands for the cluster (it changed a unit's curve by 1.3% once).
        near = distance[members] <= distance[members].min() + TIE_TOLERANCE
        reps[label] = int(members[np.flatnonzero(near)[0]])
    return km.labels_, reps, distance


def measure_representatives(ckpt, stats, k, seed, spectral=True, progress=True, clip=False):
    """Cluster every clustered unit and measure its representatives.

    Args:
        stats: features rows with analyzed == False (light statistics of each expert).
    Returns:
        (clusters DataFrame, rd rows of every expert of those units, each inheriting its
        representative's curve, and feature rows of the representatives).
    """
    refs = {(r.unit, r.name): r for r in ckpt.refs}
    clusters, rd, feats = [], [], []
    units = list(stats.groupby("unit", sort=False))
    for unit, members in tqdm(units, desc="cluster experts", unit="unit", disable=not progress):
        members = members.sort_values("expert").reset_index(drop=True)
        labels, reps, distance = cluster_experts(members, k, seed)
        # Plain records, not pandas rows: indexing a row per member cost more than measuring.
        idents = members[IDENT].to_dict("records")
        values = members[CLUSTER_FEATURES].to_dict("records")
        curves = {}
        for label, pos in reps.items():
            ident = idents[pos]
            w = read_matrix(ckpt, refs[(unit, ident["tensor"])], int(ident["expert"]))
            curves[label] = rd_rows(w, default_dtype16(ckpt), clip=clip)
            feats.append(dict(ident, analyzed=True, **tensor_features(w, spectral=spectral)))
        for pos, ident in enumerate(idents):
            label = int(labels[pos])
            clusters.append(dict(unit=unit, layer=ident["layer"], proj=ident["proj"], expert=int(ident["expert"]),
                                 cluster=label, representative=int(idents[reps[label]]["expert"]),
                                 is_representative=reps[label] == pos, distance=float(distance[pos]),
                                 **values[pos]))
            rd.extend(dict(ident, **point) for point in curves[label])
    return pd.DataFrame(clusters), pd.DataFrame(rd), pd.DataFrame(feats)


def aggregate_units(rd, aggregation="max"):
    """One row per (unit, config): bytes summed over members, NRMSE max (or weighted mean or 90th
    percentile), SQNR min (or that of the aggregate NRMSE).

    A config is kept for a unit only if every member can be stored with it.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    clip = rd["clip"].fillna(False).astype(bool) if "clip" in rd else False
    rd = rd.assign(weighted=rd["nrmse"] * rd["n_params"], clip=clip)
    members = rd.groupby("unit", sort=False)["expert"].nunique().rename("n_members")
    # A GGUF option is named by its ggml type (Q4_0, Q4_1 and IQ4_NL are all 4-bit blocks of 32).
    keys = ["unit", *config_columns(rd)]
    grouped = rd.groupby(keys, sort=False)
    units = grouped.agg(role=("role", "first"), layer=("layer", "first"), n_params=("n_params", "sum"),
                        n_rows=("expert", "size"), bytes=("bytes", "sum"), nrmse=("nrmse", "max"),
                        weighted=("weighted", "sum"), sqnr_db=("sqnr_db", "min"),
                        # the exporter must quantize the way a config was measured
                        clip=("clip", "first")).reset_index()
    if aggregation == "q90":
        q90 = grouped["nrmse"].quantile(0.9)
        units["nrmse"] = q90.reindex(pd.MultiIndex.from_frame(units[keys])).to_numpy()
    if aggregation == "mean":
        units["nrmse"] = units["weighted"] / units["n_params"]
    if aggregation != "max":
        # The SQNR that goes with the aggregate NRMSE, so the safety veto sees the same aggregate.
        units["sqnr_db"] = np.where(units["nrmse"] > 0, -20 * np.log10(units["nrmse"].clip(lower=1e-300)),
                                    quantizer.EXACT_SQNR_DB)
    units = units.join(members, on="unit")
    units["n_experts"] = units["n_members"]
    # A config is usable only if every member was measured with it (all share the input dimension).
    complete = units["n_rows"] == units.groupby("unit")["n_rows"].transform("max")
    units = units[complete].drop(columns=["weighted", "n_rows", "n_members"])
    return units.reset_index(drop=True)


def read_tables(analysis_dir, kind):
    paths = sorted(Path(analysis_dir).glob(f"*.{kind}.parquet"))
    if not paths:
        raise FileNotFoundError(f"no *.{kind}.parquet in {analysis_dir}: run `mint analyze` first")
    frames = [read_parquet(p) for p in paths]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def build_units(checkpoint, analysis_dir, out_dir, k=CLUSTERS_PER_UNIT, seed=0, aggregation="max",
                spectral=True, rules=None):
    """Cluster, measure representatives, aggregate: write units/clusters/experts tables to `out_dir`."""
    started = time.perf_counter()
    ckpt = Checkpoint(checkpoint, rules=rules)
    rd = read_tables(analysis_dir, "rd")
    features = read_tables(analysis_dir, "features")
    pending = features[~features["analyzed"]] if len(features) else features
    # Representatives are measured with the quantizer the analysis measured: clip search up to the
    # largest bit width it was used for (True for every width), or none.
    clipped = rd.loc[rd["clip"].fillna(False).astype(bool), "bits"] if "clip" in rd else []
    clip = False if len(clipped) == 0 else True if clipped.max() >= max(quantizer.BITS) else int(clipped.max())
    clusters = pd.DataFrame(columns=["unit", "layer", "proj", "expert", "cluster", "representative",
                                     "is_representative", "distance", *CLUSTER_FEATURES])
    if len(pending):
        # One torch thread: the tensors here are small (1 MiB chunks, one expert).
        with kernels.one_torch_thread():
            clusters, rep_rd, rep_feats = measure_representatives(ckpt, pending, k, seed, spectral, clip=clip)
        rd = pd.concat([rd, rep_rd], ignore_index=True)
        features = pd.concat([features[features["analyzed"]], rep_feats], ignore_index=True)
    units = aggregate_units(rd, aggregation)
    out_dir = Path(out_dir)
    write_parquet(rd, out_dir / "experts.parquet")
    write_parquet(features, out_dir / "features.parquet")
    write_parquet(clusters, out_dir / "clusters.parquet")
    write_parquet(units, out_dir / "units.parquet")
    print(f"{units['unit'].nunique()} units, {len(clusters)} clustered experts "
          f"in {clusters['unit'].nunique() if len(clusters) else 0} units, "
          f"{time.perf_counter() - started:.1f} s")
    return units


def main(argv=None):
    p = argparse.ArgumentParser(prog="mint experts", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="the checkpoint folder that was analysed")
    p.add_argument("--analysis", dest="analysis_dir", required=True, help="folder of `mint analyze` tables")
    p.add_argument("--out", dest="out_dir", required=True, help="folder for units/clusters/experts tables")
    p.add_argument("--k", type=int, default=CLUSTERS_PER_UNIT, help="clusters per unit (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aggregation", choices=AGGREGATIONS, default="max",
                   help="NRMSE over a unit's experts: max (published), parameter-weighted mean, or 90th percentile")
    p.add_argument("--no-spectral", dest="spectral", action="store_false")
    p.add_argument("--rules", type=load_rules, default=None,
                   help="JSON file of extra classification rules for an unknown architecture")
    args = p.parse_args(argv)
    try:
        build_units(**vars(args))
    except (CheckpointError, TableError, OSError) as e:
        print(f"mint experts: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

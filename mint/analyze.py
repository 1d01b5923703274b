"""Per-tensor measurements from weights alone (METHOD.md §2), one safetensors shard at a time.

For every 2-D weight (every expert of a stack) the full rate-distortion curve over the 18 quantized
configs plus 16-bit, and the extra features (norm, std, kurtosis, group-kurtosis percentiles, 3-sigma
outliers, spectral features). Routed experts of a unit with more than `cluster_threshold` experts get
only the light statistics here (norm, std, kurtosis); `mint experts` clusters them and measures one
representative per cluster (METHOD.md §3).

Outputs, per shard, two Parquet tables: `rd` (one row per matrix and config) and `features` (one row
per matrix). Shards are independent, so they can be analysed in parallel and resumed.
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow
import torch
from tqdm import tqdm

from mint import kernels, quantizer, sampling
from mint.checkpoint import Checkpoint, CheckpointError, default_dtype16

# Units with more routed experts than this are clustered (METHOD.md §3).
CLUSTER_THRESHOLD = 32
# Rank of the randomized SVD for spectral features (METHOD.md §2).
SPECTRAL_RANK = 256
# Group size for the per-group kurtosis percentiles.
KURTOSIS_GROUP = 128


# Statistics of other dtypes than bfloat16 and float32 are taken over float32 blocks of about this
# many weights (converted one block at a time), so an embedding of 300M weights needs megabytes of
# temporaries, not gigabytes.
_STATS_CHUNK = 1 << 18


def _row_blocks(w):
    """`w` as 2-D blocks of whole rows that the compiled kernels read: bfloat16 as its bit patterns and
    float32 as is (one block, no copy), any other dtype widened to float32 a block at a time."""
    x = w.reshape(-1, w.shape[-1]) if w.dim() > 1 else w.reshape(1, -1)
    if x.dtype == torch.bfloat16:
        yield x.contiguous().view(torch.int16).numpy().view(np.uint16)
    elif x.dtype == torch.float32:
        yield x.contiguous().numpy()
    else:
        step = max(1, _STATS_CHUNK // max(x.shape[1], 1))
        for i in range(0, x.shape[0], step):
            yield x[i : i + step].float().contiguous().numpy()


def _moments(w, group):
    """One pass over `w`: (n, mean, sum of squared deviations, sum of 4th powers of deviations) in
    float64, and the excess kurtosis of every group of `group` consecutive weights of a row."""
    state = np.zeros(5)
    kurt = np.empty(w.numel() // group)
    done = 0
    for block in _row_blocks(w):
        n_groups = block.size // group
        kernels.moments(block, group, kurt[done : done + n_groups], state)
        done += n_groups
    return (int(state[0]), state[1], state[2], state[4]), kurt


def _light_from_moments(n, mean, m2, m4):
    var = m2 / n
    kurt = m4 / n / var**2 - 3 if var > 0 else 0.0
    # sum(x^2) = sum((x - mean)^2) + n * mean^2
    return dict(norm=math.sqrt(m2 + n * mean**2), std=math.sqrt(var), kurtosis=kurt)


def light_stats(w):
    """Norm, std and excess kurtosis of a matrix: the clustering features (cheap, one pass)."""
    sums, _ = _moments(w, w.shape[-1])
    return _light_from_moments(*sums)


def _kurtosis_group(w, group=KURTOSIS_GROUP):
    """Groups of `group` along the input axis, or whole rows when `group` does not divide it."""
    return group if w.shape[-1] % group == 0 else w.shape[-1]


def _group_kurtosis_percentiles(kurt):
    """Percentiles (50, 90, 99) of the groups' excess kurtosis (linear interpolation, as torch's)."""
    p50, p90, p99 = np.quantile(kurt, [0.5, 0.9, 0.99])
    return dict(group_kurtosis_p50=float(p50), group_kurtosis_p90=float(p90), group_kurtosis_p99=float(p99))


def spectral_features(w, rank=SPECTRAL_RANK, seed=0):
    """Stable rank, tail mass outside the top k/10 singular values, and log10(s1/s_k).

    A seeded randomized SVD of rank `rank` (exact singular values for smaller matrices).
    """
    w = w.float()
    energy = float(w.double().square().sum())
    if energy == 0:
        return dict(stable_rank=0.0, tail_mass=0.0, log10_cond=0.0)
    if min(w.shape) <= rank:
        s = torch.linalg.svdvals(w)
    else:
        torch.manual_seed(seed)
        _, s, _ = torch.svd_lowrank(w, q=rank, niter=2)
    k = len(s)
    top = s[: max(1, k // 10)].double().square().sum()
    s_k = float(s[-1])
    return dict(
        stable_rank=energy / float(s[0]) ** 2,
        tail_mass=max(0.0, 1.0 - float(top) / energy),
        log10_cond=math.log10(float(s[0]) / s_k) if s_k > 0 else float("inf"),
    )


def tensor_features(w, spectral=True):
    """All extra features of METHOD.md §2 for one matrix."""
    (n, mean, m2, m4), kurt = _moments(w, _kurtosis_group(w))
    feats = _light_from_moments(n, mean, m2, m4)
    if n > 1:
        # Beyond 3 (unbiased) standard deviations from the mean: a second pass, which needs both.
        limit = 3 * math.sqrt(m2 / (n - 1))
        feats["outlier_frac"] = sum(kernels.count_beyond(b, mean, limit) for b in _row_blocks(w)) / n
    else:
        feats["outlier_frac"] = 0.0
    feats.update(_group_kurtosis_percentiles(kurt))
    if spectral:
        feats.update(spectral_features(w))
    return feats


def rd_rows(w, scale_dtype, configs=quantizer.ALL_CONFIGS, clip=False):
    """The RD curve of one matrix as rows; configs MLX cannot store (group does not divide) are dropped."""
    return [row for row in quantizer.rd_curve(w, configs, scale_dtype, clip) if row["bytes"] is not None]


def read_matrix(ckpt, ref, expert):
    """One matrix of a reference: expert `expert` of a fused stack, else the tensor itself."""
    return ckpt.read_expert(ref, expert) if ref.n_experts > 1 else ckpt.read(ref)


def _matrices(ckpt, ref):
    """Yield (expert index or -1, matrix) for a reference: one matrix, or every expert of a fused stack."""
    experts = range(ref.n_experts) if ref.n_experts > 1 else [-1 if ref.expert is None else ref.expert]
    for e in experts:
        yield e, read_matrix(ckpt, ref, e)


def sample_size(sample_rows, n_rows):
    """Rows to sample from a matrix of `n_rows`: `sample_rows` rows, or that fraction if below 1."""
    if sample_rows < 1:
        return max(2, math.ceil(sample_rows * n_rows))
    return int(sample_rows)


def measure_sampled(w, sample_rows, key, scale_dtype, spectral=True, clip=False):
    """RD rows and features of one matrix from a seeded sample of its rows (mint/sampling.py).

    The light statistics (the clustering's features) are the whole matrix's, since they are cheap;
    the group-kurtosis and outlier features are those of the randomly sampled rows; spectral
    features, if asked, the whole matrix's (a sample of rows has other singular values).
    """
    n = sample_size(sample_rows, w.shape[0])
    plan = sampling.row_sample(sampling.row_squares(w), n, key)
    rows = sampling.sampled_rd_curve(w, n, key, scale_dtype, clip=clip, plan=plan)
    # Features of the random part only: the certainty rows are the largest, not typical ones.
    part = w[plan[1]] if len(plan[1]) >= 2 else w
    feats = tensor_features(part, spectral=False)
    feats.update(light_stats(w))
    if spectral:
        feats.update(spectral_features(w))
    return rows, feats


def analyze_shard(ckpt, shard, cluster_threshold=CLUSTER_THRESHOLD, spectral=True, progress=True, clip=False,
                  sample_rows=None):
    """Measure every tensor of one shard. Returns (rd DataFrame, features DataFrame).

    With `clip`, the RD curves are those of the clip-search quantizer (`quantizer.CLIP_RATIOS`).
    With `sample_rows` (rows, or a fraction below 1), each routed expert's RD curve is estimated from
    that many seeded rows, with its standard error in `nrmse_se` (0 for the tensors measured exactly:
    every other role, whose tensor is a unit by itself).
    """
    rd, features = [], []
    refs = ckpt.refs_in_shard(shard)
    # The dtype the exporter stores scales and biases in: what a runtime rebuilds is what we measure.
    scale_dtype = default_dtype16(ckpt)
    for ref in tqdm(refs, desc=f"analyze {shard}", unit="tensor", disable=not progress):
        clustered = ref.role == "routed_expert" and ckpt.num_experts(ref.unit) > cluster_threshold
        for expert, w in _matrices(ckpt, ref):
            ident = dict(tensor=ref.name, shard=shard, unit=ref.unit, role=ref.role,
                         layer=-1 if ref.layer is None else ref.layer, expert=expert,
                         proj=ref.proj or "", n_params=w.numel())
            if w.dim() < 2 or not ref.quantizable:
                # Norms, biases and other non-module tensors always stay 16-bit (METHOD.md §4).
                rd.append(dict(ident, bits=16, group_size=0, bytes=2 * w.numel(), nrmse=0.0,
                               sqnr_db=quantizer.EXACT_SQNR_DB))
                continue
            if clustered:
                features.append(dict(ident, analyzed=False, **light_stats(w)))
                continue
            if sample_rows and ref.role == "routed_expert":
                key = f"{ref.unit}/{ref.name}/{expert}"
                rows, feats = measure_sampled(w, sample_rows, key, scale_dtype, spectral, clip)
            else:
                rows = rd_rows(w, scale_dtype, clip=clip)
                feats = tensor_features(w, spectral=spectral)
                if sample_rows:
                    rows = [dict(row, nrmse_se=0.0, sample_rows=w.shape[0]) for row in rows]
            rd.extend(dict(ident, **row) for row in rows)
            # No timing column: the tables must be byte-identical across runs; `analyze` logs the time.
            features.append(dict(ident, analyzed=True, **feats))
    return pd.DataFrame(rd), pd.DataFrame(features)


class TableError(ValueError):
    """A table file of an earlier stage cannot be read; the message names it and what to do."""


def read_parquet(path):
    """A table written by `write_parquet`; TableError naming the file when it is damaged."""
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, pyarrow.ArrowException) as e:  # pyarrow's types for a damaged file
        reason = " ".join(str(e).split())  # pyarrow's messages span lines; an error is one line
        raise TableError(f"{path}: not a readable Parquet table ({type(e).__name__}: {reason}); "
                         "delete it and rerun the stage that wrote it") from None


def write_parquet(df, path):
    """Write a table atomically: a crash never leaves a half-written file in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def analyze(checkpoint, out_dir, shards=None, cluster_threshold=CLUSTER_THRESHOLD, spectral=True,
            threads=None, rules=None, clip=False, sample_rows=None, progress=True):
    """Analyse the given shards (default: all) of a checkpoint into `out_dir/<shard>.{rd,features}.parquet`.

    Shards whose outputs already exist are skipped, so an interrupted run resumes where it stopped.
    """
    if threads:
        torch.set_num_threads(threads)
    ckpt = Checkpoint(checkpoint, rules=rules)
    out_dir = Path(out_dir)
    for shard in shards or ckpt.shards:
        if shard not in ckpt.shards:
            raise CheckpointError(f"{checkpoint}: no shard named {shard!r} (shards: {', '.join(ckpt.shards)})")
        rd_path = out_dir / f"{Path(shard).stem}.rd.parquet"
        feat_path = out_dir / f"{Path(shard).stem}.features.parquet"
        if rd_path.exists() and feat_path.exists():
            continue
        started = time.perf_counter()
        rd, features = analyze_shard(ckpt, shard, cluster_threshold, spectral, progress, clip=clip,
                                     sample_rows=sample_rows)
        write_parquet(features, feat_path)
        write_parquet(rd, rd_path)
        print(f"{shard}: {len(features)} matrices in {time.perf_counter() - started:.2f} s")
    return out_dir


def _sample_rows(text):
    value = float(text)
    if value <= 0 or (value >= 1 and value != int(value)):
        raise argparse.ArgumentTypeError(f"{text!r}: a number of rows (>= 1) or a fraction in (0, 1)")
    return int(value) if value >= 1 else value


def load_rules(path):
    """Extra classification rules (a JSON list, as in a config entry's `rules`); empty file = none."""
    try:
        with open(path) as f:
            rules = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise argparse.ArgumentTypeError(f"cannot read rules from {path}: {e}") from None
    if rules and not isinstance(rules, list):
        raise argparse.ArgumentTypeError(f"{path}: rules must be a JSON list of rule objects")
    return rules or None


def main(argv=None):
    p = argparse.ArgumentParser(prog="mint analyze", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="Hugging Face checkpoint folder (config.json + *.safetensors)")
    p.add_argument("--out", dest="out_dir", required=True, help="output folder for <shard>.rd.parquet and <shard>.features.parquet")
    p.add_argument("--shard", action="append", dest="shards", help="analyse only this shard (repeatable)")
    p.add_argument("--cluster-threshold", type=int, default=CLUSTER_THRESHOLD,
                   help="units with more routed experts than this are clustered (default %(default)s)")
    p.add_argument("--no-spectral", dest="spectral", action="store_false", help="skip the randomized SVD features")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--sample-rows", type=_sample_rows, default=None,
                   help="estimate each routed expert's RD curve from this many seeded rows (or this fraction "
                        "of its rows, if below 1), with a standard error per config; default: every row (exact)")
    p.add_argument("--clip", nargs="?", type=int, const=True, default=False, metavar="MAX_BITS",
                   help="measure the clip-search quantizer (per-group range shrink, see quantizer.CLIP_RATIOS):"
                        " for every config, or with MAX_BITS only for configs of at most that many bits")
    p.add_argument("--rules", type=load_rules, default=None,
                   help="JSON file of extra classification rules for an unknown architecture")
    args = p.parse_args(argv)
    try:
        analyze(**vars(args))
    except (CheckpointError, OSError) as e:
        print(f"mint analyze: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

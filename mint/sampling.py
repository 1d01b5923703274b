"""Sampled rate-distortion curves: a matrix's curve estimated from some of its rows.

Groups lie along the input (last) axis, so every row holds whole groups and its squared error at a
config, e_r, depends on that row alone. Of the N rows of a matrix we measure n: the n/4 of largest
norm with certainty (a few outlier rows can carry much of a heavy-tailed matrix's energy and error),
and a simple random sample s of the others, drawn from a generator seeded by the tensor's identity
(unit, name, expert), so a result never depends on run order or process and is byte-reproducible.
The squared NRMSE R = sum_r e_r / sum_r w_r (w_r = ||row r||^2) is estimated by the combined ratio
estimator, each sampled row standing for k = N_rest / n_s rows:

    R_hat = (sum_top e_r + k sum_s e_r) / (sum_top w_r + k sum_s w_r),      NRMSE_hat = sqrt(R_hat),

with standard error (delta method, finite-population correction, only the sampled stratum varies)

    SE(R_hat) = N_rest * sqrt((1 - n_s / N_rest) / n_s * S_d^2) / (sum_top w_r + k sum_s w_r),
    d_r = e_r - R_hat * w_r,       SE(NRMSE_hat) = SE(R_hat) / (2 * NRMSE_hat)

(S_d^2 the sample variance of d_r over s). With n >= N every row is measured and the SE is 0.
tests/unit/test_sampling.py states and checks the error bound on heavy-tailed matrices.

    w = torch.randn(768, 2048).bfloat16()
    curve = sampled_rd_curve(w, 128, key="model.layers.0.mlp.experts.3.up_proj.weight")
    curve[7]   # {'bits': 4, 'group_size': 64, 'bytes': ..., 'nrmse': ..., 'sqnr_db': ..., 'nrmse_se': ..., 'sample_rows': 128}
"""

import hashlib
import math

import torch

from mint import quantizer

# Rows measured per matrix by default (`mint analyze --sample-rows`): 1/6 of a Qwen3-30B-A3B gate/up
# expert (768 rows), 1/16 of a down expert (2048 rows).
DEFAULT_SAMPLE_ROWS = 128
# Share of the measured rows taken with certainty: the rows of largest norm (a few outlier rows can
# hold much of a matrix's energy and error; leaving them to chance is what makes row samples of
# heavy-tailed matrices unreliable).
TOP_FRACTION = 0.25


def seed_for(key):
    """A 63-bit seed from a string: the same key gives the same sample on any machine and run."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def row_sample(squares, n, key, top_fraction=TOP_FRACTION):
    """The rows to measure: the largest rows by squared norm, and a seeded random sample of the rest.

    Args:
        squares: [N] squared norm of every row of the matrix.
        n: rows to measure in all (every row if n >= N).
        key: seeds the random part (the tensor's identity, so results do not depend on run order).
    Returns:
        (top, sampled): sorted row indices measured with certainty, and sampled at random from the
        N - len(top) others (every row is in `top` when n >= N).
    """
    n_rows = squares.numel()
    if n >= n_rows:
        return torch.arange(n_rows), torch.arange(0)
    n_top = int(n * top_fraction)
    # Stable sort: ties keep row order, so the choice is deterministic.
    order = torch.sort(squares, descending=True, stable=True).indices
    top, rest = order[:n_top], order[n_top:]
    gen = torch.Generator().manual_seed(seed_for(key))
    sampled = rest[torch.randperm(len(rest), generator=gen)[: n - n_top]]
    return top.sort().values, sampled.sort().values


def ratio_estimate(errors, squares, n_sampled, n_rest):
    """NRMSE and its standard error from the measured rows of a stratified row sample.

    Args:
        errors: float64 [configs, m] squared error of each measured row at each config; the first
            m - n_sampled rows are the certainty (top) rows, the last n_sampled the random ones.
        squares: float64 [m] squared norm of each measured row, same order.
        n_sampled: rows drawn at random; n_rest: rows they were drawn from.
    Returns:
        (nrmse [configs], nrmse_se [configs]) float64.
    """
    n_top = squares.numel() - n_sampled
    scale = n_rest / n_sampled if n_sampled else 0.0
    weights = torch.cat([torch.ones(n_top, dtype=torch.float64), torch.full((n_sampled,), scale, dtype=torch.float64)])
    energy = float((weights * squares).sum())
    if energy == 0:
        zeros = torch.zeros(errors.shape[0], dtype=torch.float64)
        return zeros, zeros.clone()
    ratio = (errors * weights).sum(-1) / energy
    nrmse = ratio.sqrt()
    if n_sampled < 2 or n_sampled >= n_rest:
        return nrmse, torch.zeros_like(nrmse)
    d = errors[:, n_top:] - ratio.unsqueeze(-1) * squares[n_top:]
    var_ratio = n_rest**2 * (1 - n_sampled / n_rest) / n_sampled * d.var(dim=-1) / energy**2
    # sqrt(R) has derivative 1 / (2 sqrt(R)); where R is 0 every measured row is exact and so is the SE.
    se = torch.where(nrmse > 0, var_ratio.sqrt() / (2 * nrmse.clamp_min(1e-300)), torch.zeros_like(nrmse))
    return nrmse, se


def row_squares(w):
    """Squared norm of every row of `w` [rows, in], float64."""
    return torch.linalg.vector_norm(w, dim=-1, dtype=torch.float64).square()


def sampled_rd_curve(w, n, key, scale_dtype=torch.float16, configs=quantizer.ALL_CONFIGS, clip=False, plan=None):
    """RD curve of matrix `w` [rows, in] estimated from `n` of its rows; configs MLX cannot store dropped.

    Returns rows like `quantizer.rd_curve`'s plus `nrmse_se` (standard error of the NRMSE estimate)
    and `sample_rows` (rows measured). Bytes are those of the whole matrix. `plan` is
    `row_sample(row_squares(w), n, key)` when the caller has it already.
    """
    top, sampled = plan if plan is not None else row_sample(row_squares(w), n, key)
    rows = torch.cat([top, sampled])
    errors, measured = quantizer.squared_errors(w[rows], configs, scale_dtype, clip=clip, per_row=True)
    nrmse, se = ratio_estimate(errors, measured, len(sampled), w.shape[0] - len(top))
    curve = []
    for (bits, g), value, stderr in zip(configs, nrmse.tolist(), se.tolist()):
        if not quantizer.fits(w.shape[-1], g):
            continue
        if (bits, g) == quantizer.FULL or value == 0:
            value, stderr, sqnr = 0.0, 0.0, quantizer.EXACT_SQNR_DB
        else:
            sqnr = -20 * math.log10(value)
        curve.append(dict(bits=bits, group_size=g, bytes=quantizer.tensor_bytes(w.numel(), bits, g),
                          nrmse=value, sqnr_db=sqnr, nrmse_se=stderr, sample_rows=len(rows),
                          clip=(bits, g) != quantizer.FULL and quantizer.clips(clip, bits)))
    return curve

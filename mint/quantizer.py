"""Affine group-wise round-to-nearest quantization in the MLX format, and its exact storage cost.

Per group of `group_size` consecutive weights along the input (last) axis:

    scale = (max - min) / (2**bits - 1)      bias = min
    q     = clamp(round((w - bias) / scale), 0, 2**bits - 1)
    w_hat = scale * q + bias

Scale and bias are rounded to a 16-bit dtype *before* q is computed, so the weights we measure are
exactly the weights a runtime rebuilds from what we store (METHOD.md §1). Packing follows MLX: each
row is a little-endian bit stream in uint32 words, element j in bits [j*bits, (j+1)*bits).

Everything here is a pure function over tensors; `rd_curve` measures all configs from one read.
"""

import math

import numpy as np
import torch

from mint import kernels

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
# (bits, group_size) for every quantized config; 16-bit is (16, 0).
CONFIGS = tuple((b, g) for b in BITS for g in GROUP_SIZES)
FULL = (16, 0)
ALL_CONFIGS = CONFIGS + (FULL,)
# The 16-bit storage dtypes the compiled path rounds scales and biases to.
_DTYPE16 = {torch.float16: kernels.FLOAT16, torch.bfloat16: kernels.BFLOAT16}

# Bytes per group: one 16-bit scale and one 16-bit bias.
GROUP_OVERHEAD_BYTES = 4
# SQNR reported for an exact reconstruction (all-zero tensor, or 16-bit), METHOD.md §2.
EXACT_SQNR_DB = 100.0

# Working-set bound for rd_curve: rows are processed in chunks of about this many weights. 1 MiB of
# float32 per temporary stays in cache: 2.3x faster than 16 MiB chunks on a 151936 x 2048 embedding.
_CHUNK_ELEMENTS = 1 << 18

# Clip search (an option, off in the published method): each group tries its range shrunk about
# its midpoint by these ratios and keeps the one with the least squared error. Only the stored
# scale and bias change, so the result is still plain MLX affine. 1.0 comes first so that ties
# keep the unclipped range.
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6)


def check_config(bits, group_size):
    """Raise ValueError unless (bits, group_size) is a supported config."""
    if (bits, group_size) == FULL:
        return
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS} (or 16 for unquantized), got {bits}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size}")


def tensor_bytes(n_weights, bits, group_size):
    """Exact bytes of a tensor of `n_weights` stored at (bits, group_size); 16-bit is (16, 0).

    >>> tensor_bytes(4096 * 4096, 4, 64)   # 4.5 bits per weight
    9437184
    """
    if (bits, group_size) == FULL:
        return 2 * n_weights
    check_config(bits, group_size)
    return math.ceil(n_weights * bits / 8) + GROUP_OVERHEAD_BYTES * math.ceil(n_weights / group_size)


def bits_per_weight(bits, group_size):
    """Effective bits per weight of a config: bits + 32 / group_size (16 for unquantized)."""
    return 16.0 if (bits, group_size) == FULL else bits + 8 * GROUP_OVERHEAD_BYTES / group_size


def fits(in_features, group_size):
    """MLX needs the input dimension to be a whole number of groups."""
    return group_size == 0 or in_features % group_size == 0


def _scale_bias(w_min, w_max, bits, scale_dtype):
    """Scale and bias rounded to the storage dtype, returned in float32 for arithmetic."""
    levels = 2**bits - 1
    scale = ((w_max - w_min) / levels).to(scale_dtype).float()
    bias = w_min.to(scale_dtype).float()
    return scale, bias


def _codes(groups, scale, bias, bits):
    """Integer codes of `groups` [..., n_groups, g] given per-group scale and bias [..., n_groups]."""
    levels = 2**bits - 1
    scale, bias = scale.unsqueeze(-1), bias.unsqueeze(-1)
    # A group whose range rounds to a zero scale is constant: every code is 0 and w_hat = bias.
    zero = scale == 0
    safe = torch.where(zero, torch.ones_like(scale), scale)
    q = (groups - bias).div_(safe).round_().clamp_(0, levels)
    # The check is per group (small); the full-size fix-up runs only when some group needs it.
    return q.masked_fill_(zero, 0) if bool(zero.any()) else q


def clips(clip, bits):
    """Whether a config of `bits` uses the clip search under the setting `clip`: False (never), True
    (always) or an int (configs of at most that many bits: where rounding noise dominates, clipping
    a few large weights pays; at more bits those weights matter more than the noise they save)."""
    return clip if isinstance(clip, bool) else bits <= int(clip)


def _clipped_scale_bias(groups, w_min, w_max, bits, scale_dtype, ratios=CLIP_RATIOS):
    """Per group, the scale and bias of the clip ratio with the least squared error.

    Returns (scale, bias, squared error per group), all [..., n_groups] in float32.
    """
    best = None
    mid, half = (w_max + w_min) / 2, (w_max - w_min) / 2
    for ratio in ratios:
        lo, hi = (w_min, w_max) if ratio == 1.0 else (mid - ratio * half, mid + ratio * half)
        scale, bias = _scale_bias(lo, hi, bits, scale_dtype)
        q = _codes(groups, scale, bias, bits)
        err = q.mul_(scale.unsqueeze(-1)).add_(bias.unsqueeze(-1)).sub_(groups).square_().sum(-1)
        if best is None:
            best = [scale, bias, err]
            continue
        better = err < best[2]  # strict: a tie keeps the earlier (wider) range
        for i, new in enumerate((scale, bias, err)):
            best[i] = torch.where(better, new, best[i])
    return tuple(best)


def quantize(w, bits, group_size, scale_dtype=torch.float16, clip=False):
    """Quantize `w` [..., in] group-wise along the last axis.

    Returns (q, scales, biases): q uint8 codes [..., in]; scales and biases [..., in/group_size] in
    `scale_dtype`. `dequantize(q, scales, biases, group_size)` rebuilds exactly the weights measured.
    With `clip`, each group's range is the best of CLIP_RATIOS (the same choice `squared_errors` makes).
    """
    check_config(bits, group_size)
    if (bits, group_size) == FULL:
        raise ValueError("16-bit is stored as is, not quantized")
    if not fits(w.shape[-1], group_size):
        raise ValueError(f"input dimension {w.shape[-1]} is not a multiple of group size {group_size}")
    groups = w.float().reshape(*w.shape[:-1], -1, group_size)
    w_min, w_max = torch.aminmax(groups, dim=-1)
    if clip:
        scale, bias, _ = _clipped_scale_bias(groups, w_min, w_max, bits, scale_dtype)
    else:
        scale, bias = _scale_bias(w_min, w_max, bits, scale_dtype)
    q = _codes(groups, scale, bias, bits).reshape(w.shape).to(torch.uint8)
    return q, scale.to(scale_dtype), bias.to(scale_dtype)


def dequantize(q, scales, biases, group_size):
    """Rebuild float32 weights from codes [..., in] and per-group scales/biases [..., in/g]."""
    groups = q.float().reshape(*q.shape[:-1], -1, group_size)
    w = groups * scales.float().unsqueeze(-1) + biases.float().unsqueeze(-1)
    return w.reshape(q.shape)


def _bit_positions(bits):
    """For each of the 32 codes that fill `bits` whole words: (word, shift) of its lowest bit."""
    return [divmod(j * bits, 32) for j in range(32)]


def pack(q, bits):
    """Pack uint8 codes [..., in] into MLX's uint32 words [..., in*bits/32] (little-endian bit stream).

    32 codes always fill exactly `bits` words, so rows are cut into blocks of 32 codes and each code
    position is OR-ed into place with one vectorized shift (spilling into the next word if it
    straddles a boundary): 32 passes over 1/32 of the data, whatever the width.
    """
    n = q.shape[-1]
    if n % 32:
        raise ValueError(f"a row of {n} codes is not a whole number of 32-code blocks")
    # Code position first, so each pass reads and writes contiguous memory. int32 arithmetic wraps
    # exactly like uint32 for shifts and ORs; codes are non-negative, so >> brings in zeros.
    blocks = q.reshape(*q.shape[:-1], n // 32, 32).movedim(-1, 0).to(torch.int32)
    words = torch.zeros(bits, *blocks.shape[1:], dtype=torch.int32)
    for j, (word, shift) in enumerate(_bit_positions(bits)):
        words[word] |= blocks[j] << shift
        if shift + bits > 32:
            words[word + 1] |= blocks[j] >> (32 - shift)
    return words.movedim(0, -1).reshape(*q.shape[:-1], n * bits // 32).view(torch.uint32)


def unpack(packed, bits, n):
    """Inverse of `pack`: uint32 words [..., n*bits/32] -> uint8 codes [..., n]."""
    words = packed.contiguous().view(torch.int32).reshape(*packed.shape[:-1], n // 32, bits).movedim(-1, 0)
    mask = (1 << bits) - 1
    codes = torch.empty(32, *words.shape[1:], dtype=torch.int32)
    for j, (word, shift) in enumerate(_bit_positions(bits)):
        # >> on int32 sign-extends; the mask keeps only the code's own bits.
        code = words[word] >> shift
        if shift + bits > 32:
            low = 32 - shift
            code = (code & ((1 << low) - 1)) | (words[word + 1] << low)
        codes[j] = code & mask
    return codes.movedim(0, -1).reshape(*packed.shape[:-1], n).to(torch.uint8)


def squared_errors(w, configs=CONFIGS, scale_dtype=torch.float16, clip=False, per_row=False):
    """Sum of squared reconstruction errors of `w` [rows, in] for every config, from one pass.

    Fused: per chunk of rows, one compiled pass (`kernels.rd_errors`) finds each group's range once
    (at the smallest group size, combined for the larger ones) and measures every bit width while
    the group is in cache. The errors are those of `squared_errors_torch` (the same float32
    operations per weight; only the float64 sums differ in order). Configs whose group size does not
    divide the input dimension get NaN (MLX cannot store them). Configs that `clips(clip, bits)`
    take the torch path's clip search.
    Returns (errors float64 [len(configs)], sum of squares of w). With `per_row`, both are kept per
    row of `w` (errors [len(configs), rows], sums of squares [rows]; groups never span rows), which a
    sampled estimate's standard error needs (mint/sampling.py).
    """
    if scale_dtype not in _DTYPE16:
        return squared_errors_torch(w, configs, scale_dtype, clip, per_row)
    w = w.reshape(-1, w.shape[-1])
    rows, cols = w.shape
    fused, clipped = {}, []  # (bits, group size) -> config index; clip-search config indices
    for i, (bits, g) in enumerate(configs):
        if (bits, g) == FULL or not fits(cols, g):
            continue
        if clips(clip, bits):
            clipped.append(i)
        else:
            fused[(bits, g)] = i
    # The kernel measures every (group size, bit width) pair of the fused configs' sizes and widths.
    group_sizes = sorted({g for _, g in fused})
    bit_widths = sorted({b for b, _ in fused})
    if any(g % group_sizes[0] for g in group_sizes):
        raise ValueError(f"group sizes {group_sizes} are not multiples of the smallest")
    measured = [(b, g) for g in group_sizes for b in bit_widths]
    levels = np.array([2.0**b - 1 for b in bit_widths], dtype=np.float32)
    per_rows = torch.zeros(len(configs), rows, dtype=torch.float64)
    for i, (bits, g) in enumerate(configs):
        if (bits, g) != FULL and not fits(cols, g):
            per_rows[i] = float("nan")
    energy = torch.zeros(rows, dtype=torch.float64)
    kernels.set_threads(torch.get_num_threads())
    # bfloat16 goes into the kernel as its bit patterns (widened there, row by row): one pass less,
    # and no float32 temporary, so the whole matrix is one call. Other dtypes are widened in chunks.
    bf16 = w.dtype == torch.bfloat16 and fused and not clipped
    chunk = max(1, rows) if bf16 else max(1, _CHUNK_ELEMENTS // max(cols, 1))
    for start in range(0, rows, chunk):
        piece = w[start : start + chunk]
        span = slice(start, start + len(piece))
        block = None if bf16 else piece.float().contiguous()
        if fused:
            x = piece.contiguous().view(torch.int16).numpy().view(np.uint16) if bf16 else block.numpy()
            out = np.zeros((len(measured), len(piece)))
            kernels.rd_errors(x, np.array(group_sizes, dtype=np.int64), levels,
                              *_DTYPE16[scale_dtype], out, energy[span].numpy())
            take = [k for k, config in enumerate(measured) if config in fused]
            per_rows[[fused[measured[k]] for k in take], span] = torch.from_numpy(out[take])
        else:
            energy[span] = _row_squares(block)
        if clipped:
            sub, _ = squared_errors_torch(block, [configs[i] for i in clipped], scale_dtype, clip, per_row=True)
            per_rows[clipped, span] = sub
    if per_row:
        return per_rows, energy
    return per_rows.sum(-1), float(energy.sum())


def squared_errors_torch(w, configs=CONFIGS, scale_dtype=torch.float16, clip=False, per_row=False):
    """`squared_errors` in plain torch ops, one config at a time: the reference the fused path is
    tested against, and the path of clip-search configs.

    Sum of squared reconstruction errors of `w` [rows, in] for every config, from one pass.

    Per-group min/max are computed once per group size and shared by every bit width. Configs whose
    group size does not divide the input dimension get NaN (MLX cannot store them). Configs that
    `clips(clip, bits)` get the errors of `quantize(..., clip=True)`.
    Returns (errors float64 [len(configs)], sum of squares of w). With `per_row`, both are kept per
    row of `w` (errors [len(configs), rows], sums of squares [rows]; groups never span rows), which a
    sampled estimate's standard error needs (mint/sampling.py).
    """
    w = w.reshape(-1, w.shape[-1])
    rows, cols = w.shape
    errors = torch.zeros((len(configs), rows) if per_row else len(configs), dtype=torch.float64)
    energy = torch.zeros(rows, dtype=torch.float64) if per_row else 0.0
    chunk = max(1, _CHUNK_ELEMENTS // max(cols, 1))
    for start in range(0, rows, chunk):
        block = w[start : start + chunk].float()
        span = slice(start, start + len(block))
        if per_row:
            energy[span] = _row_squares(block)
        else:
            energy += float(torch.linalg.vector_norm(block, dtype=torch.float64)) ** 2
        by_group = {}
        for i, (bits, g) in enumerate(configs):
            if (bits, g) == FULL:
                continue  # 16-bit stores the weights as they are
            if not fits(cols, g):
                errors[i] = float("nan")
                continue
            if g not in by_group:
                groups = block.reshape(block.shape[0], -1, g)
                by_group[g] = (groups, *torch.aminmax(groups, dim=-1))
            groups, w_min, w_max = by_group[g]
            if clips(clip, bits):
                err = _clipped_scale_bias(groups, w_min, w_max, bits, scale_dtype)[2]
                if per_row:
                    errors[i, span] = err.sum(-1, dtype=torch.float64)
                else:
                    errors[i] += float(err.sum(dtype=torch.float64))
                continue
            scale, bias = _scale_bias(w_min, w_max, bits, scale_dtype)
            q = _codes(groups, scale, bias, bits)
            err = q.mul_(scale.unsqueeze(-1)).add_(bias.unsqueeze(-1)).sub_(groups)
            # Accumulated in float64 without a float64 copy of the block.
            if per_row:
                errors[i, span] = _row_squares(err)
            else:
                errors[i] += float(torch.linalg.vector_norm(err, dtype=torch.float64)) ** 2
    return errors, energy


def _row_squares(t):
    """Sum of squares of each row of `t` [rows, ...] in float64, without a float64 copy."""
    return torch.linalg.vector_norm(t.reshape(len(t), -1), dim=-1, dtype=torch.float64).square()


def nrmse_sqnr(sq_error, energy):
    """NRMSE and SQNR (dB) from a squared error and the tensor's energy ||W||^2 (METHOD.md §2)."""
    if energy == 0 or sq_error == 0:
        return 0.0, EXACT_SQNR_DB
    if math.isnan(sq_error):
        return float("nan"), float("nan")
    nrmse = math.sqrt(sq_error / energy)
    return nrmse, -20 * math.log10(nrmse)


def rd_curve(w, configs=ALL_CONFIGS, scale_dtype=torch.float16, clip=False):
    """Rate-distortion curve of one 2-D tensor: a list of dicts (bits, group_size, bytes, nrmse, sqnr_db,
    clip), `clip` telling whether that config was measured with the clip search (see `clips`).

    16-bit has NRMSE 0 by definition (the checkpoint's own 16-bit values are the reference).
    """
    errors, energy = squared_errors(w, configs, scale_dtype, clip)
    n = w.numel()
    curve = []
    for (bits, g), err in zip(configs, errors.tolist()):
        nrmse, sqnr = (0.0, EXACT_SQNR_DB) if (bits, g) == FULL else nrmse_sqnr(err, energy)
        size = tensor_bytes(n, bits, g) if fits(w.shape[-1], g) else None
        curve.append(dict(bits=bits, group_size=g, bytes=size, nrmse=nrmse, sqnr_db=sqnr,
                          clip=(bits, g) != FULL and clips(clip, bits)))
    return curve


def quantize_mlx(w, bits, group_size, scale_dtype=torch.bfloat16):
    """Quantize `w` [..., in] as MLX's own `mx.quantize` does (affine mode), for baselines that must be
    what mlx-lm writes: MLX puts one end of each group's range exactly on the grid (scale = edge / its
    code, bias 0 when that code is 0), where `quantize` keeps the plain min-max range. Same return
    form as `quantize`; `pack(q, bits)` gives MLX's own packed words.
    """
    import mlx.core as mx

    check_config(bits, group_size)
    x = mx.array(w.to(scale_dtype).float().numpy()).astype(getattr(mx, str(scale_dtype).removeprefix("torch.")))
    packed, scales, biases = mx.quantize(x, group_size=group_size, bits=bits)

    def to_torch(a):
        return torch.from_numpy(np.array(a.astype(mx.float32))).to(scale_dtype)

    words = torch.from_numpy(np.array(packed).view(np.int32)).view(torch.uint32)
    return unpack(words, bits, w.shape[-1]).to(torch.uint8), to_torch(scales), to_torch(biases)

"""Compiled (numba) loops for the hot paths: the squared errors of every config in one pass.

`rd_errors` is the fused form of `quantizer.squared_errors_torch`. Per row, each group's minimum and
maximum are found once at the smallest group size and combined for the larger ones; each group's
difference to its bias (the rounded minimum, shared by every bit width) is formed once and stays in
L1 while every bit width quantizes it, so nothing the size of the tensor is materialised per
config. The codes are those the export stores (the same rounding), but that the kernel multiplies
by the scale's reciprocal where the export divides: a difference within an ulp of a rounding
midpoint may get the other code, half a step away like the export's, with the same squared error.
Each group's squared error is summed in float32 lanes with fused multiply-adds (vectorised; at most
128 weights, relative error ~1e-7) and the groups in float64, so totals agree with the torch path
to ~1e-7 (tested), not bit for bit: the float64 sum per weight kept the loop scalar and the kernel
1.55x slower, and the division cost another 1.2x with the separate multiplies and adds.

Scales and biases are rounded to the 16-bit storage dtype here too (`round16`, round to nearest
even, as torch's `.to(dtype)`), so a chunk of rows needs no torch op but its float32 conversion.
Weights must be finite (as checkpoints' are): the range and rounding loops assume it.

Compiled on first use and cached next to this file (`cache=True`), so later processes start warm.
"""

import contextlib
import os

import numba
import numpy as np
from numba import njit, prange

# numba's own thread pool, not OpenMP: after a parallel region OpenMP workers spin-wait, and on a
# 2-core machine running a second analysis process they stole enough CPU to make this process's
# kernels and torch ops 5-10x slower (measured: 6 vs 62 M params/s). An explicit setting wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"



@contextlib.contextmanager
def one_torch_thread():
    """Run torch on one thread inside the block (restored after): beside these single-threaded
    kernels, on small tensors, torch's second OpenMP thread on a shared 2-core machine mostly
    spun and waited (export conversions 10-40x, expert measuring 2.8-3.9x slower, measured)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# (significand bits incl. the implicit one, smallest normal exponent, largest finite) per 16-bit dtype.
FLOAT16 = (11, -14, 65504.0)
BFLOAT16 = (8, -126, 3.3895313892515355e38)


@njit(cache=True, nogil=True)
def row_float32(x, r, buf):
    """Row `r` of `x` as float32 in `buf`: bfloat16 given as its uint16 bit patterns is widened
    exactly (its bits are float32's upper half), so no float32 copy of the tensor is made first."""
    if x.itemsize == 2:  # bfloat16 bits (both branches must type for either dtype)
        bits = buf.view(np.uint32)
        for j in range(x.shape[1]):
            bits[j] = np.uint32(x[r, j]) << np.uint32(16)
    else:
        for j in range(x.shape[1]):
            buf[j] = x[r, j]
    return buf


@njit(cache=True, nogil=True)
def round16(a, digits, min_exp, largest):
    """Round every float32 of the contiguous array `a` in place to the nearest 16-bit value (ties to
    even), as torch's `.to(dtype)` does; values stay float32. `a` must be finite.

    A value the 16-bit dtype holds as a normal number loses its 24 - digits low significand bits by
    integer round-half-to-even on its bit pattern (a carry into the exponent is the right result);
    one below the smallest normal (fixed spacing 2**(min_exp - digits + 1)) is rounded by adding and
    subtracting 2**(min_exp - digits + 24), which float32's own rounding does to that spacing.
    """
    bits = a.view(np.uint32)
    drop = 24 - digits
    half = np.uint32((1 << (drop - 1)) - 1)
    keep = np.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)
    smallest_normal = np.uint32((min_exp + 127) << 23)
    magic = np.float32(2.0 ** (min_exp - digits + 24))
    for j in range(a.shape[0]):
        u = bits[j]
        sign = u & np.uint32(0x80000000)
        mag = u & np.uint32(0x7FFFFFFF)
        if mag < smallest_normal:
            v = abs(a[j])
            v = (v + magic) - magic
            a[j] = v if sign == 0 else -v
        else:
            mag = (mag + half + ((mag >> np.uint32(drop)) & np.uint32(1))) & keep
            bits[j] = sign | mag
            if abs(a[j]) > largest:
                # Rounded past the largest finite value (from at least half a spacing above it).
                a[j] = np.float32(np.inf) if sign == 0 else np.float32(-np.inf)


@njit(fastmath={"reassoc"}, cache=True, nogil=True)
def _sum_squares(e, n):
    """sum(e[:n]**2) in float64. Reassociation (only here) lets the reduction vectorise."""
    acc = 0.0
    for j in range(n):
        v = np.float64(e[j])
        acc += v * v
    return acc


@njit(fastmath={"reassoc", "contract"}, cache=True, nogil=True)
def _group_error(diff, scale, inv, top, g):
    """Squared error of one group at one bit width, from its differences to the bias. Reassociation
    (only of the float32 sum over at most 128 weights, kept in several lanes) lets the loop vectorise;
    contraction makes `q * scale - diff` and the sum of squares fused multiply-adds.
    The codes are the export's (rint(diff / scale)) but for a diff within an ulp of a rounding
    midpoint, where diff * inv may round the other way: both codes are then half a step away, so the
    squared error is the same. `inv` = 1 / scale comes from the caller: computed here, under
    reassociation, LLVM turns the product back into the division (8% slower, measured)."""
    acc = np.float32(0)
    for j in range(g):
        # np.rint rounds half to even, as torch.round does.
        q = min(max(np.rint(diff[j] * inv), np.float32(0)), top)
        e = q * scale - diff[j]
        acc += e * e
    return np.float64(acc)


@njit(cache=True, nogil=True)
def _group_error_float64(diff, scale, top, g):
    """`_group_error` summed in float64: for squares past float32's range (weights of 1e19 and up,
    as a corrupt file has), where the float32 sum overflows."""
    total = 0.0
    for j in range(g):
        q = min(max(np.rint(diff[j] / scale), np.float32(0)), top)
        e = np.float64(q * scale - diff[j])
        total += e * e
    return total


@njit(fastmath={"nnan", "ninf", "nsz"}, cache=True, nogil=True)
def _ranges(row, g, lo, hi):
    """Minimum and maximum of each group of `g` in `row` (finite weights: the flags let it vectorise)."""
    for k in range(lo.shape[0]):
        m = row[k * g]
        n = m
        for j in range(k * g + 1, (k + 1) * g):
            m = min(m, row[j])
            n = max(n, row[j])
        lo[k] = m
        hi[k] = n


@njit(cache=True, nogil=True, parallel=True)
def rd_errors(x, group_sizes, levels, digits, min_exp, largest, out, energy):
    """Add each row's squared quantization error at every (group size, bit width) to `out`.

    Args:
        x: float32 [rows, cols], finite, or bfloat16 as uint16 bit patterns (`row_float32`); every
            group size divides cols, the first divides the others.
        group_sizes: int64 [n_groups], ascending.
        levels: float32 [n_bits], 2**bits - 1 (the same bit widths for every group size).
        digits, min_exp, largest: the 16-bit storage dtype (FLOAT16 or BFLOAT16).
        out: float64 [n_groups * n_bits, rows] (group size major), accumulated into.
        energy: float64 [rows], each row's sum of squares, accumulated into.
    """
    rows, cols = x.shape
    n_bits = levels.shape[0]
    base = group_sizes[0]
    for r in prange(rows):
        row = row_float32(x, r, np.empty(cols, np.float32))
        lo = np.empty(cols // base, np.float32)
        hi = np.empty(cols // base, np.float32)
        _ranges(row, base, lo, hi)
        energy[r] += _sum_squares(row, cols)
        diff = np.empty(group_sizes[-1], np.float32)
        for gi in range(group_sizes.shape[0]):
            g = group_sizes[gi]
            per, n_groups = g // base, cols // g
            biases = np.empty(n_groups, np.float32)
            scales = np.empty(n_groups * n_bits, np.float32)
            for k in range(n_groups):
                w_min, w_max = lo[k * per], hi[k * per]
                for m in range(1, per):
                    w_min = min(w_min, lo[k * per + m])
                    w_max = max(w_max, hi[k * per + m])
                biases[k] = w_min
                span = w_max - w_min
                for i in range(n_bits):
                    scales[k * n_bits + i] = span / levels[i]
            round16(biases, digits, min_exp, largest)
            round16(scales, digits, min_exp, largest)
            # Inline and without slices: a call per group with array arguments (reference counting)
            # had cost more than measuring the group at every bit width.
            for k in range(n_groups):
                start, bias = k * g, biases[k]
                for j in range(g):
                    diff[j] = row[start + j] - bias
                for i in range(n_bits):
                    scale = scales[k * n_bits + i]
                    if scale == 0:
                        # A range that rounds to a zero scale: every code is 0 and w_hat = bias.
                        out[gi * n_bits + i, r] += _sum_squares(diff, g)
                    else:
                        e = _group_error(diff, scale, np.float32(1) / scale, levels[i], g)
                        if not np.isfinite(e):
                            e = _group_error_float64(diff, scale, levels[i], g)
                        out[gi * n_bits + i, r] += e


@njit(cache=True, nogil=True)
def quantize_pack(x, group_size, bits, digits, min_exp, largest, words, scales, biases):
    """`quantizer.quantize` then `quantizer.pack`, fused: MLX's packed words of `x`, and its scales
    and biases rounded to the 16-bit dtype (held in float32), the same values as the torch path's.

    Args:
        x: float32 [rows, cols], finite, cols a multiple of 32 and of group_size; or bfloat16 as
            uint16 bit patterns (`row_float32`).
        words: uint32 [rows, cols * bits / 32], written (element j of a row in bits [j*bits, (j+1)*bits)
            of the row's little-endian bit stream).
        scales, biases: float32 [rows, cols / group_size], written.
    """
    rows, cols = x.shape
    n_groups = cols // group_size
    levels = np.float32(2**bits - 1)
    codes = np.empty(group_size, np.uint32)
    buf = np.empty(cols, np.float32)
    for r in range(rows):
        row = row_float32(x, r, buf)
        _ranges(row, group_size, biases[r], scales[r])  # minima, maxima
        for k in range(n_groups):
            scales[r, k] = (scales[r, k] - biases[r, k]) / levels
        round16(biases[r], digits, min_exp, largest)
        round16(scales[r], digits, min_exp, largest)
        acc = np.uint64(0)
        filled = 0
        out = 0
        for k in range(n_groups):
            scale, bias = scales[r, k], biases[r, k]
            xs = row[k * group_size : (k + 1) * group_size]
            if scale == 0:
                codes[:] = 0  # a constant group: every code is 0 and w_hat = bias
            else:
                for j in range(group_size):
                    codes[j] = np.uint32(min(max(np.rint((xs[j] - bias) / scale), np.float32(0)), levels))
            for j in range(group_size):
                acc |= np.uint64(codes[j]) << np.uint64(filled)
                filled += bits
                if filled >= 32:
                    words[r, out] = np.uint32(acc & np.uint64(0xFFFFFFFF))
                    out += 1
                    acc >>= np.uint64(32)
                    filled -= 32


# ---------------------------------------------------------------------------------------------
# Statistics of a matrix (mint/analyze.py's features), read row by row like the RD kernel (bfloat16
# widened in place), so no float32 copy is made. Sums are float64 and reassociated (vectorised).


@njit(fastmath={"reassoc"}, cache=True, nogil=True)
def _group_moments(row, start, g):
    """(mean, sum of (x - mean)**2, **3, **4) of row[start:start + g], in float64."""
    xs = row[start : start + g]  # a slice, so that indices are known non-negative: contiguous loads
    total = 0.0
    for j in range(g):
        total += np.float64(xs[j])
    mean = total / g
    s2 = s3 = s4 = 0.0
    for j in range(g):
        c = np.float64(xs[j]) - mean
        c2 = c * c
        s2 += c2
        s3 += c2 * c
        s4 += c2 * c2
    return mean, s2, s3, s4


@njit(cache=True, nogil=True)
def _merge_moments(state, nb, mb, m2b, m3b, m4b):
    """Merge a part's (count, mean, central sums of powers 2-4) into `state` = [n, mean, M2, M3, M4]:
    the exact pairwise combination of Chan et al. and Pebay (2008), stable in float64."""
    na, ma, m2a, m3a, m4a = state[0], state[1], state[2], state[3], state[4]
    n = na + nb
    d = mb - ma
    dn = d / n
    state[0] = n
    state[1] = ma + dn * nb
    state[2] = m2a + m2b + d * dn * na * nb
    state[3] = m3a + m3b + d * dn * dn * na * nb * (na - nb) + 3 * dn * (na * m2b - nb * m2a)
    state[4] = (m4a + m4b + d * dn * dn * dn * na * nb * (na * na - na * nb + nb * nb)
                + 6 * dn * dn * (na * na * m2b + nb * nb * m2a) + 4 * dn * (na * m3b - nb * m3a))


@njit(cache=True, nogil=True)
def moments(x, group, kurt, state):
    """One pass over `x` [rows, cols] (float32, or bfloat16 as uint16 bit patterns; `group` divides
    cols): the excess kurtosis of each group of `group` consecutive values of a row into `kurt`
    (row-major; 0 for a constant group), and every value merged into `state` = [n, mean, M2, M3, M4]
    (central sums of powers), which may hold earlier blocks' values already."""
    rows, cols = x.shape
    per_row = cols // group
    row = np.empty(cols, np.float32)
    for r in range(rows):
        row_float32(x, r, row)
        for k in range(per_row):
            mean, s2, s3, s4 = _group_moments(row, k * group, group)
            var = s2 / group
            kurt[r * per_row + k] = s4 / group / (var * var) - 3 if var > 0 else 0.0
            _merge_moments(state, group, mean, s2, s3, s4)


@njit(cache=True, nogil=True)
def count_beyond(x, mean, limit):
    """How many of `x` [rows, cols] (as `moments` takes it) lie farther than `limit` from `mean`,
    compared in float32 as torch does (a float32 tensor against Python floats)."""
    m, lim = np.float32(mean), np.float32(limit)
    row = np.empty(x.shape[1], np.float32)
    n = 0
    for r in range(x.shape[0]):
        row_float32(x, r, row)
        for j in range(x.shape[1]):
            n += abs(row[j] - m) > lim
    return n


@njit(cache=True, nogil=True)
def no_exponent_all_ones(bits, mask):
    """True when no value of the float array given as its unsigned bit patterns `bits` (1-D) has
    every exponent bit (`mask`) set, i.e. none is NaN or Inf. Without an early exit, so it vectorises."""
    found = False
    for j in range(bits.shape[0]):
        found |= (bits[j] & mask) == mask
    return not found


def set_threads(n):
    """Threads of the parallel kernels (capped at what numba was started with)."""
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))

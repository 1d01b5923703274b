"""Compiled (numba) loops for the hot paths: the squared errors of every bit width in one pass.

`rd_group_errors` is the fused form of `quantizer.squared_errors_torch`: for one group size, each
group's difference to its bias (the rounded minimum, shared by every bit width) is formed once and
stays in L1 while all bit widths quantize it, so nothing the size of the tensor is materialised
per config. Every float32 operation is the one the torch path does, in the same order, and the
compiler is not allowed to contract or reassociate them, so each weight's error is bit-identical;
only the float64 sum over a group is reassociated (vectorised), which moves the total by ~1e-16.

Compiled on first use and cached next to this file (`cache=True`), so later processes start warm.
"""

import numba
import numpy as np
from numba import njit, prange


@njit(fastmath={"reassoc"}, cache=True, nogil=True)
def _sum_squares(e, n):
    """sum(e[:n]**2) in float64. Reassociation (only here) lets the reduction vectorise."""
    acc = 0.0
    for j in range(n):
        v = np.float64(e[j])
        acc += v * v
    return acc


@njit(cache=True, nogil=True, parallel=True)
def rd_group_errors(x, group_size, scales, biases, levels, out):
    """Add each row's squared quantization error at every bit width of one group size to `out`.

    Args:
        x: float32 [rows, cols] weights, cols a multiple of group_size.
        scales: float32 [n_bits, rows, cols / group_size], already rounded to the 16-bit dtype.
        biases: float32 [rows, cols / group_size] (the group minima rounded to the 16-bit dtype).
        levels: float32 [n_bits], 2**bits - 1.
        out: float64 [n_bits, rows], accumulated into.
    """
    rows, cols = x.shape
    n_groups = cols // group_size
    for r in prange(rows):
        diff = np.empty(group_size, np.float32)
        err = np.empty(group_size, np.float32)
        for k in range(n_groups):
            bias = biases[r, k]
            xs = x[r, k * group_size : (k + 1) * group_size]
            for j in range(group_size):
                diff[j] = xs[j] - bias
            for i in range(levels.shape[0]):
                scale = scales[i, r, k]
                if scale == 0:
                    # A range that rounds to a zero scale: every code is 0 and w_hat = bias.
                    for j in range(group_size):
                        err[j] = bias - xs[j]
                else:
                    top = levels[i]
                    for j in range(group_size):
                        # np.rint rounds half to even, as torch.round does.
                        q = min(max(np.rint(diff[j] / scale), np.float32(0)), top)
                        err[j] = (q * scale + bias) - xs[j]
                out[i, r] += _sum_squares(err, group_size)


def set_threads(n):
    """Threads of the parallel kernels (capped at what numba was started with)."""
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))

"""The quantizer against closed forms, brute force, round trips and (when installed) mlx itself."""

import math

import numpy as np
import pytest
import torch

from mint import quantizer as qz


@pytest.mark.parametrize("bits,group", qz.CONFIGS)
def test_bytes_closed_form(bits, group):
    n = 768 * 2048
    assert qz.tensor_bytes(n, bits, group) == n * bits // 8 + 4 * n // group
    # Effective bits per weight = b + 32/g (METHOD.md §1).
    assert qz.tensor_bytes(n, bits, group) * 8 / n == pytest.approx(qz.bits_per_weight(bits, group))


def test_bytes_examples():
    assert qz.bits_per_weight(4, 64) == 4.5 and qz.bits_per_weight(4, 32) == 5.0
    assert qz.tensor_bytes(10, 16, 0) == 20
    assert qz.tensor_bytes(100, 3, 64) == math.ceil(300 / 8) + 4 * 2
    with pytest.raises(ValueError):
        qz.tensor_bytes(100, 7, 64)
    with pytest.raises(ValueError):
        qz.tensor_bytes(100, 4, 48)


def reference_quantize(w, bits, group, scale_dtype):
    """Element-by-element reference: the formulas of METHOD.md §1 written out with Python floats."""
    rows, cols = w.shape
    out = torch.empty(rows, cols)
    levels = 2**bits - 1
    for r in range(rows):
        for start in range(0, cols, group):
            vals = w[r, start : start + group].tolist()
            lo, hi = min(vals), max(vals)
            scale = float(torch.tensor((hi - lo) / levels, dtype=torch.float32).to(scale_dtype).float())
            bias = float(torch.tensor(lo, dtype=torch.float32).to(scale_dtype).float())
            for j, v in enumerate(vals):
                q = 0 if scale == 0 else min(levels, max(0, round((v - bias) / scale)))
                out[r, start + j] = scale * q + bias
    return out


@pytest.mark.parametrize("bits", qz.BITS)
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
def test_quantize_matches_reference(bits, scale_dtype):
    torch.manual_seed(bits)
    w = torch.randn(3, 64)
    q, s, b = qz.quantize(w, bits, 32, scale_dtype)
    assert q.dtype == torch.uint8 and int(q.max()) <= 2**bits - 1
    assert s.dtype == scale_dtype and s.shape == (3, 2)
    ours = qz.dequantize(q, s, b, 32)
    ref = reference_quantize(w, bits, 32, scale_dtype)
    # Python's round() and torch.round() both round half to even; the arithmetic differs only in the
    # float32 vs float64 evaluation of s*q+b.
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)


def test_error_bounded_by_half_step():
    torch.manual_seed(0)
    w = torch.randn(16, 128)
    for bits in qz.BITS:
        q, s, b = qz.quantize(w, bits, 64, torch.float16)
        err = (qz.dequantize(q, s, b, 64) - w).abs().reshape(16, 2, 64)
        # Half a step plus the fp16 rounding of scale (times the largest code) and bias.
        bound = s.float() / 2 + (s.float() * (2**bits - 1) + b.float().abs()) * 2**-10
        assert (err <= bound.unsqueeze(-1) + 1e-7).all()


def test_constant_and_zero_groups():
    w = torch.zeros(2, 64)
    w[1] = 0.25
    q, s, b = qz.quantize(w, 4, 32)
    assert torch.equal(qz.dequantize(q, s, b, 32), w)
    errors, energy = qz.squared_errors(torch.zeros(4, 64))
    assert energy == 0 and float(errors.nansum()) == 0
    assert qz.nrmse_sqnr(0.0, 0.0) == (0.0, qz.EXACT_SQNR_DB)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_squared_errors_of_a_matrix_without_rows(dtype):
    """No rows, no error: the bfloat16 path measures a matrix in one call, whose chunk of rows must
    still be at least one."""
    errors, energy = qz.squared_errors(torch.zeros(0, 64, dtype=dtype), scale_dtype=torch.bfloat16)
    assert energy == 0 and float(errors.nansum()) == 0


@pytest.mark.parametrize("bits", qz.BITS)
def test_pack_round_trip(bits):
    gen = torch.Generator().manual_seed(bits)
    for shape in [(1, 32), (5, 64), (2, 3, 128), (7, 256)]:
        q = torch.randint(0, 2**bits, shape, generator=gen, dtype=torch.uint8)
        packed = qz.pack(q, bits)
        assert packed.dtype == torch.uint32
        assert packed.shape == (*shape[:-1], shape[-1] * bits // 32)
        # Exact bytes: packed codes are exactly n*bits/8 bytes.
        assert packed.numel() * 4 == q.numel() * bits // 8
        assert torch.equal(qz.unpack(packed, bits, shape[-1]), q)


def test_pack_bit_order():
    # Element j occupies bits [j*b, (j+1)*b) of the row's little-endian bit stream.
    q = torch.tensor([[1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 7] + [0] * 21], dtype=torch.uint8)
    word = int(qz.pack(q, 3)[0, 0])
    assert word == 1 | (2 << 3) | (3 << 6) | (7 << 30) & 0xFFFFFFFF
    assert int(qz.pack(q, 3)[0, 1]) == 7 >> 2


def test_rd_curve_matches_direct_quantization():
    torch.manual_seed(1)
    w = torch.randn(48, 256) * torch.linspace(0.1, 2, 256)
    curve = qz.rd_curve(w)
    assert len(curve) == 19
    for point in curve:
        bits, g = point["bits"], point["group_size"]
        if (bits, g) == qz.FULL:
            assert point["nrmse"] == 0 and point["bytes"] == 2 * w.numel()
            continue
        w_hat = qz.dequantize(*qz.quantize(w, bits, g), g)
        nrmse = float((w_hat - w).norm() / w.norm())
        assert point["nrmse"] == pytest.approx(nrmse, rel=1e-5)
        assert point["sqnr_db"] == pytest.approx(-20 * math.log10(point["nrmse"]), rel=1e-12)
        assert point["bytes"] == qz.tensor_bytes(w.numel(), bits, g)
    # More bits never hurt at a fixed group size on Gaussian-like weights.
    by = {(p["bits"], p["group_size"]): p["nrmse"] for p in curve}
    for g in qz.GROUP_SIZES:
        errs = [by[(b, g)] for b in qz.BITS]
        assert errs == sorted(errs, reverse=True)


def test_rd_curve_chunking_is_invisible(monkeypatch):
    torch.manual_seed(2)
    w = torch.randn(64, 128)
    whole = qz.squared_errors(w)[0]
    monkeypatch.setattr(qz, "_CHUNK_ELEMENTS", 128 * 5)  # 5 rows per chunk
    chunked = qz.squared_errors(w)[0]
    assert torch.allclose(whole, chunked, rtol=1e-9)


def test_group_not_dividing_is_dropped():
    curve = qz.rd_curve(torch.randn(4, 96))
    sizes = {(p["bits"], p["group_size"]): p["bytes"] for p in curve}
    assert sizes[(4, 32)] is not None and sizes[(4, 64)] is None and sizes[(4, 128)] is None
    with pytest.raises(ValueError, match="multiple of group size"):
        qz.quantize(torch.randn(4, 96), 4, 64)


@pytest.mark.mlx
@pytest.mark.parametrize("bits", qz.BITS)
@pytest.mark.parametrize("group", qz.GROUP_SIZES)
def test_mlx_dequantize_equals_ours(bits, group):
    import mlx.core as mx   # installed by `make test`: a missing runtime fails here, never skips

    torch.manual_seed(bits * group)
    w = torch.randn(2, 3, 256) * 0.05
    for scale_dtype in (torch.float16, torch.bfloat16):
        q, s, b = qz.quantize(w, bits, group, scale_dtype)
        packed = mx.array(qz.pack(q, bits).view(torch.int32).numpy()).view(mx.uint32)
        # Scales and biases widened to float32 exactly, so mlx computes s*q+b in float32 like we do.
        theirs = mx.dequantize(packed, mx.array(s.float().numpy()), mx.array(b.float().numpy()),
                               group_size=group, bits=bits)
        assert np.array_equal(np.array(theirs), qz.dequantize(q, s, b, group).numpy())


def _brute_force_clip(w, bits, group, scale_dtype):
    """Clip search by hand: per group, every ratio quantized on its own, the least error kept."""
    levels = 2**bits - 1
    best = None
    for g in w.float().reshape(-1, group):
        lo, hi = float(g.min()), float(g.max())
        errs = []
        for r in qz.CLIP_RATIOS:
            mid, half = (hi + lo) / 2, (hi - lo) / 2
            a, b = (lo, hi) if r == 1.0 else (mid - r * half, mid + r * half)
            scale = torch.tensor((b - a) / levels).to(scale_dtype).float()
            bias = torch.tensor(a).to(scale_dtype).float()
            q = torch.zeros_like(g) if scale == 0 else ((g - bias) / scale).round().clamp(0, levels)
            errs.append(float((q * scale + bias - g).square().sum()))
        best = (best or 0.0) + min(errs)
    return best


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_clip_search_matches_brute_force_and_never_hurts(bits):
    torch.manual_seed(bits)
    # Heavy tails (Student-t, 3 dof) are where clipping pays: a few large weights stretch the range.
    w = torch.distributions.StudentT(3.0).sample((16, 128)) * 0.02
    w = w.to(torch.bfloat16)
    configs = [(bits, 32), (bits, 64), (bits, 128)]
    plain, energy = qz.squared_errors(w, configs, torch.bfloat16)
    clipped, _ = qz.squared_errors(w, configs, torch.bfloat16, clip=True)
    for i, (b, g) in enumerate(configs):
        assert clipped[i] <= plain[i] * (1 + 1e-6)
        assert clipped[i] == pytest.approx(_brute_force_clip(w, b, g, torch.bfloat16), rel=1e-4)
        # What quantize(clip=True) stores rebuilds exactly the error that was measured.
        q, s, z = qz.quantize(w, b, g, torch.bfloat16, clip=True)
        rebuilt = float((qz.dequantize(q, s, z, g) - w.float()).double().square().sum())
        assert rebuilt == pytest.approx(float(clipped[i]), rel=1e-5)
    # At 2-3 bits on heavy tails the search finds real gains, not just ties.
    assert clipped[0] < 0.95 * plain[0]


def test_clip_up_to_a_bit_width():
    """clip=3 searches the range of 2- and 3-bit configs only; the curve says which were clipped."""
    torch.manual_seed(0)
    w = (torch.distributions.StudentT(3.0).sample((16, 128)) * 0.02).to(torch.bfloat16)
    every = {(p["bits"], p["group_size"]): p for p in qz.rd_curve(w, scale_dtype=torch.bfloat16, clip=True)}
    plain = {(p["bits"], p["group_size"]): p for p in qz.rd_curve(w, scale_dtype=torch.bfloat16)}
    low = {(p["bits"], p["group_size"]): p for p in qz.rd_curve(w, scale_dtype=torch.bfloat16, clip=3)}
    for config, point in low.items():
        source = every if config[0] <= 3 and config != qz.FULL else plain
        assert point["nrmse"] == source[config]["nrmse"] and point["clip"] == source[config]["clip"]
        assert point["clip"] == (config[0] <= 3)
    assert not qz.clips(False, 2) and qz.clips(True, 8) and qz.clips(4, 4) and not qz.clips(4, 5)


@pytest.mark.mlx
@pytest.mark.parametrize("bits", qz.BITS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_quantize_mlx_is_mlx_own_quantization(bits, dtype):
    """quantize_mlx packs to MLX's own words and its scales and biases are MLX's, so a baseline written
    with it is the file mlx-lm writes; its codes dequantize to mx.dequantize's weights."""
    import mlx.core as mx

    gen = torch.Generator().manual_seed(bits)
    w = (torch.randn(48, 256, generator=gen) * torch.rand(48, 1, generator=gen)).to(dtype)
    w[0, :64] = w[0, :64].abs()          # a group with min > 0 and one with max < 0: both edges
    w[1, :64] = -w[1, :64].abs()
    q, scales, biases = qz.quantize_mlx(w, bits, 64, dtype)
    mdtype = {torch.bfloat16: mx.bfloat16, torch.float16: mx.float16}[dtype]
    packed, s, b = mx.quantize(mx.array(w.float().numpy()).astype(mdtype), group_size=64, bits=bits)
    assert np.array_equal(qz.pack(q, bits).view(torch.int32).numpy(), np.array(packed).view(np.int32))
    assert torch.equal(scales.float(), torch.from_numpy(np.array(s.astype(mx.float32))))
    assert torch.equal(biases.float(), torch.from_numpy(np.array(b.astype(mx.float32))))
    want = mx.dequantize(packed, s.astype(mx.float32), b.astype(mx.float32), group_size=64, bits=bits)
    np.testing.assert_allclose(qz.dequantize(q, scales, biases, 64).numpy(), np.array(want), rtol=0, atol=1e-6)
    # And it is not the plain min-max code: the two differ somewhere.
    assert not torch.equal(qz.quantize(w, bits, 64, dtype)[1], scales)


def _heavy_tailed_with_constant_groups(rows, cols, seed):
    """Student-t weights (outliers stretch ranges), a constant row and a constant group (zero scale)."""
    gen = torch.Generator().manual_seed(seed)
    normal = torch.randn(rows, cols, generator=gen)
    chi2 = torch.randn(3, rows, cols, generator=gen).square().sum(0)
    w = normal / (chi2 / 3).sqrt() * 0.02
    w[0] = 0.5
    w[1, :32] = -0.25
    return w


@pytest.mark.parametrize("dtype,scale_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                               (torch.float32, torch.bfloat16)])
@pytest.mark.parametrize("cols", [96, 192, 384])
def test_fused_errors_equal_torch_path(dtype, scale_dtype, cols, monkeypatch):
    """The compiled one-pass kernel gives the torch path's errors, per row and in total, for every
    config, including group sizes that do not divide (NaN) and zero-scale groups; chunking too."""
    w = _heavy_tailed_with_constant_groups(40, cols, seed=cols).to(dtype)
    monkeypatch.setattr(qz, "_CHUNK_ELEMENTS", cols * 7)  # several chunks, the last one short
    for per_row in (False, True):
        fused, energy = qz.squared_errors(w, qz.ALL_CONFIGS, scale_dtype, per_row=per_row)
        ref, ref_energy = qz.squared_errors_torch(w, qz.ALL_CONFIGS, scale_dtype, per_row=per_row)
        assert fused.shape == ref.shape
        assert torch.equal(fused.isnan(), ref.isnan())
        assert (fused.isnan().any(-1) if per_row else fused.isnan()).sum() == 6 * sum(cols % g != 0 for g in qz.GROUP_SIZES)
        # The kernel sums a group's errors in float32 lanes and forms each from w - bias (mint/kernels.py):
        # ~1e-7 of a total; up to ~1e-5 of the tiny 8-bit totals of float32 weights, whose last bits count.
        assert torch.allclose(fused.nan_to_num(), ref.nan_to_num(), rtol=2e-5, atol=0)
        assert torch.allclose(torch.as_tensor(energy), torch.as_tensor(ref_energy), rtol=1e-12, atol=0)


def test_fused_errors_equal_brute_force():
    """Each config's error is that of the weights `quantize` stores, rebuilt by `dequantize`."""
    w = _heavy_tailed_with_constant_groups(12, 256, seed=5).bfloat16()
    errors, _ = qz.squared_errors(w, qz.CONFIGS, torch.bfloat16)
    for (bits, g), err in zip(qz.CONFIGS, errors.tolist()):
        w_hat = qz.dequantize(*qz.quantize(w, bits, g, torch.bfloat16), g)
        assert err == pytest.approx(float((w_hat - w.float()).double().square().sum()), rel=1e-6)


def test_bfloat16_bits_input_equals_float32_input():
    """bfloat16 weights enter the kernels as their bit patterns: the same errors, words, scales and
    biases as their float32 values, subnormals, negative zero and the largest values included."""
    import numpy as np

    from mint import kernels

    w = _heavy_tailed_with_constant_groups(24, 256, seed=3)
    w[2, :8] = torch.tensor([1e-40, -1e-39, -0.0, 0.0, 1e38, -1e38, 1e-38, 5.0])
    w = w.bfloat16()
    bits = w.view(torch.int16).numpy().view(np.uint16)
    for scale_dtype in (torch.bfloat16, torch.float16):  # float16 scales of row 2 overflow: NaN both ways
        a, b = (qz.squared_errors(x, scale_dtype=scale_dtype, per_row=True)[0] for x in (w, w.float()))
        assert np.array_equal(a.numpy(), b.numpy(), equal_nan=True)
    for bits_, g in ((4, 64), (3, 32)):
        outs = []
        for x in (bits, w.float().numpy()):
            words = np.empty((24, 256 * bits_ // 32), np.uint32)
            scales, biases = np.empty((24, 256 // g), np.float32), np.empty((24, 256 // g), np.float32)
            kernels.quantize_pack(x, g, bits_, *kernels.BFLOAT16, words, scales, biases)
            outs.append((words, scales, biases))
        for a, b in zip(*outs):
            assert np.array_equal(a, b)


def test_fused_errors_do_not_depend_on_threads():
    w = _heavy_tailed_with_constant_groups(64, 128, seed=9)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = qz.squared_errors(w, per_row=True)[0]
        torch.set_num_threads(2)
        two = qz.squared_errors(w, per_row=True)[0]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_round16_equals_torch_conversion(dtype):
    """The compiled rounding of scales and biases is torch's `.to(dtype)`: normal and subnormal
    values, exact ties (which go to even), the largest finite value, overflow and zero."""
    import numpy as np

    from mint import kernels

    params = kernels.FLOAT16 if dtype == torch.float16 else kernels.BFLOAT16
    gen = torch.Generator().manual_seed(0)
    # Random magnitudes across every exponent of the dtype, both signs.
    exps = torch.randint(-30 if dtype == torch.float16 else -140, 17 if dtype == torch.float16 else 127, (20000,),
                         generator=gen)
    values = torch.rand(20000, generator=gen).add(1) * torch.pow(2.0, exps.float())
    values = values * torch.where(torch.rand(20000, generator=gen) < 0.5, -1.0, 1.0)
    # Exact ties: midpoints between neighbouring 16-bit values (above and below them too).
    grid = torch.randn(5000, generator=gen).mul(100).to(dtype)
    up = torch.nextafter(grid.float(), torch.tensor(float("inf"))).to(dtype)
    ties = (grid.float() + up.float()) / 2
    subnormal = torch.arange(0, 64, dtype=torch.float32) * 2.0 ** (-25 if dtype == torch.float16 else -134)
    limit = torch.finfo(dtype).max
    edges = torch.tensor([0.0, -0.0, limit, -limit, limit * 1.001, limit * 0.9999, 1e-30, 3e-8])
    x = torch.cat([values, ties, torch.nextafter(ties, torch.tensor(0.0)), subnormal, edges]).float()
    x = x[x.isfinite()]
    ours = x.numpy().copy()
    kernels.round16(ours, *params)
    expected = x.to(dtype).float().numpy()
    assert np.array_equal(ours, expected), x.numpy()[ours != expected][:5]

"""The sampled RD estimate (mint/sampling.py): exact when every row is measured, reproducible, and
within its stated error bound on heavy-tailed matrices."""

import math

import pandas as pd
import pytest
import torch

from mint import analyze, quantizer, sampling
from mint.testing import make_tiny_checkpoint


def heavy_tailed(shape, seed, outlier_rows=4, outlier_scale=10.0):
    """Student-t (3 degrees of freedom) weights with a few rows scaled up: planted outlier rows."""
    gen = torch.Generator().manual_seed(seed)
    normal = torch.randn(shape, generator=gen)
    chi2 = sum(torch.randn(shape, generator=gen).square() for _ in range(3))
    w = normal / (chi2 / 3).sqrt() * 0.02
    w[torch.randperm(shape[0], generator=gen)[:outlier_rows]] *= outlier_scale
    return w.bfloat16()


def test_per_row_errors_add_up_to_the_totals():
    w = heavy_tailed((96, 256), seed=0)
    totals, energy = quantizer.squared_errors(w, scale_dtype=torch.bfloat16)
    rows, squares = quantizer.squared_errors(w, scale_dtype=torch.bfloat16, per_row=True)
    assert rows.shape == (len(quantizer.CONFIGS), 96) and squares.shape == (96,)
    torch.testing.assert_close(rows.sum(-1), totals, rtol=1e-12, atol=0)
    assert math.isclose(float(squares.sum()), energy, rel_tol=1e-12)


def test_every_row_measured_is_the_exact_curve_with_zero_error():
    w = heavy_tailed((64, 256), seed=1)
    exact = quantizer.rd_curve(w, scale_dtype=torch.bfloat16)
    sampled = sampling.sampled_rd_curve(w, 64, "t", torch.bfloat16)
    assert [(r["bits"], r["group_size"], r["bytes"]) for r in sampled] == [(r["bits"], r["group_size"], r["bytes"]) for r in exact]
    for e, s in zip(exact, sampled):
        assert math.isclose(s["nrmse"], e["nrmse"], rel_tol=1e-12) and s["nrmse_se"] == 0 and s["sample_rows"] == 64


def test_the_sample_depends_only_on_the_key():
    squares = sampling.row_squares(heavy_tailed((768, 128), seed=2))
    a, b = sampling.row_sample(squares, 128, "layer.0/expert.3"), sampling.row_sample(squares, 128, "layer.0/expert.3")
    other = sampling.row_sample(squares, 128, "layer.0/expert.4")
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(a[0], other[0]) and not torch.equal(a[1], other[1])  # same top rows, other random ones
    top, sampled = a
    assert len(top) == 32 and len(sampled) == 96 and len(set(top.tolist()) | set(sampled.tolist())) == 128
    # The certainty rows are the largest.
    assert squares[top].min() >= squares[sampled].max()


@pytest.mark.parametrize("shape", [(768, 2048), (2048, 768)])  # Qwen3-30B-A3B gate/up and down experts
def test_sampled_nrmse_error_is_bounded_on_heavy_tailed_matrices(shape):
    """The bound, at the default 128 rows, over 12 seeds x 18 configs of Student-t(3) matrices with 4
    rows scaled 10x (a third of the energy in 0.5% of the rows):

    - every estimate is within 4.5 standard errors of the exact NRMSE, and at least 95% within 3;
    - the relative error |NRMSE_hat / NRMSE - 1| is at most 6% and its median at most 1%.

    (Measured: max 4.0 SE, 99% within 3 SE, relative error median 0.3%, max 4.5%, both shapes
    together.) A simple random sample without the certainty rows fails this: its error reaches
    7.6 SE and 17%, because whether the outlier rows are drawn decides the estimate.
    """
    z, rel = [], []
    for seed in range(12):
        w = heavy_tailed(shape, seed)
        exact = quantizer.rd_curve(w, scale_dtype=torch.bfloat16)
        sampled = sampling.sampled_rd_curve(w, sampling.DEFAULT_SAMPLE_ROWS, f"seed{seed}", torch.bfloat16)
        for e, s in zip(exact, sampled):
            if e["bits"] == 16:
                continue
            assert s["nrmse_se"] > 0
            z.append(abs(s["nrmse"] - e["nrmse"]) / s["nrmse_se"])
            rel.append(abs(s["nrmse"] / e["nrmse"] - 1))
    z, rel = torch.tensor(z), torch.tensor(rel)
    assert float(z.max()) <= 4.5, float(z.max())
    assert float((z <= 3).float().mean()) >= 0.95, float((z <= 3).float().mean())
    assert float(rel.max()) <= 0.06 and float(rel.median()) <= 0.01, (float(rel.max()), float(rel.median()))


def test_analyze_with_sample_rows_estimates_routed_experts_only(tmp_path):
    ckpt = make_tiny_checkpoint("mixtral", tmp_path / "m", num_experts=4, hidden=64, intermediate=256)
    analyze.analyze(ckpt, tmp_path / "s", spectral=False, sample_rows=32)
    analyze.analyze(ckpt, tmp_path / "s2", spectral=False, sample_rows=32)
    analyze.analyze(ckpt, tmp_path / "x", spectral=False)
    rd = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "s").glob("*.rd.parquet")))
    again = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "s2").glob("*.rd.parquet")))
    exact = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "x").glob("*.rd.parquet")))
    pd.testing.assert_frame_equal(rd.reset_index(drop=True), again.reset_index(drop=True))  # reproducible
    experts = rd[rd["role"] == "routed_expert"]
    others = rd[(rd["role"] != "routed_expert") & (rd["bits"] < 16)]
    # Every expert matrix has more than 32 rows (w1/w3 256, w2 64), so every one is sampled.
    assert (experts["sample_rows"] == 32).all() and (experts.loc[experts["bits"] < 16, "nrmse_se"] > 0).all()
    assert (others["nrmse_se"] == 0).all() and len(others)
    # Tensors measured exactly agree with the exact analysis.
    key = ["tensor", "expert", "bits", "group_size"]
    merged = others.merge(exact, on=key, suffixes=("", "_exact"))
    assert len(merged) == len(others) and (merged["nrmse"] - merged["nrmse_exact"]).abs().max() < 1e-12

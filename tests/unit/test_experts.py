"""Analysis and expert aggregation on tiny checkpoints written by transformers."""

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from mint import analyze, experts, quantizer
from mint.checkpoint import Checkpoint
from mint.testing import make_tiny_checkpoint


def run_pipeline(ckpt_dir, tmp_path, **kwargs):
    analyze.analyze(ckpt_dir, tmp_path / "analysis", spectral=False)
    return experts.build_units(ckpt_dir, tmp_path / "analysis", tmp_path / "units", spectral=False, **kwargs)


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "qwen3_moe", "llama4"])
def test_units_cover_every_weight(arch, tmp_path):
    ckpt_dir = make_tiny_checkpoint(arch, tmp_path / arch, hidden=128, intermediate=128, max_shard_size="150KB")
    units = run_pipeline(ckpt_dir, tmp_path)
    ckpt = Checkpoint(ckpt_dir)
    full = units[units["bits"] == 16]
    # Every parameter is in exactly one unit, and all-16-bit is the checkpoint's 16-bit size.
    assert full["n_params"].sum() == ckpt.n_params()
    assert full["bytes"].sum() == ckpt.size16_bytes()
    assert set(full["unit"]) == set(ckpt.units())
    # Quantizable units have all 18 configs (every dimension here is a multiple of 128) + 16-bit.
    per_unit = units.groupby("unit").size()
    quantizable = {u for u, refs in ckpt.units().items() if refs[0].quantizable}
    assert (per_unit[list(quantizable)] == 19).all()
    assert (per_unit.drop(list(quantizable)) == 1).all()


def test_aggregation_is_conservative(tmp_path):
    ckpt_dir = make_tiny_checkpoint("mixtral", tmp_path / "m", num_experts=8, hidden=128, intermediate=128)
    units = run_pipeline(ckpt_dir, tmp_path)
    rd = pd.read_parquet(tmp_path / "units" / "experts.parquet")
    unit = "model.layers.1.block_sparse_moe.switch_mlp.down_proj"
    members = rd[(rd["unit"] == unit) & (rd["bits"] == 3) & (rd["group_size"] == 64)]
    row = units[(units["unit"] == unit) & (units["bits"] == 3) & (units["group_size"] == 64)].iloc[0]
    assert len(members) == 8 and row["n_experts"] == 8
    assert row["nrmse"] == members["nrmse"].max()
    assert row["sqnr_db"] == members["sqnr_db"].min()
    assert row["bytes"] == members["bytes"].sum() == 8 * quantizer.tensor_bytes(128 * 128, 3, 64)
    mean = run_pipeline(ckpt_dir, tmp_path / "mean", aggregation="mean")
    mrow = mean[(mean["unit"] == unit) & (mean["bits"] == 3) & (mean["group_size"] == 64)].iloc[0]
    assert mrow["nrmse"] == pytest.approx(members["nrmse"].mean())
    assert mrow["nrmse"] < row["nrmse"]
    q90 = run_pipeline(ckpt_dir, tmp_path / "q90", aggregation="q90")
    qrow = q90[(q90["unit"] == unit) & (q90["bits"] == 3) & (q90["group_size"] == 64)].iloc[0]
    assert qrow["nrmse"] == pytest.approx(members["nrmse"].quantile(0.9))
    assert mrow["nrmse"] < qrow["nrmse"] <= row["nrmse"]


def test_clip_search_reaches_representatives_and_units(tmp_path):
    """An analysis with clip search measures representatives the same way and marks the units."""
    ckpt_dir = make_tiny_checkpoint("qwen3_moe", tmp_path / "q", num_experts=40, hidden=128, intermediate=128,
                                    num_layers=1)
    plain = run_pipeline(ckpt_dir, tmp_path / "plain", k=4)
    analyze.analyze(ckpt_dir, tmp_path / "clip" / "analysis", spectral=False, clip=True)
    clipped = experts.build_units(ckpt_dir, tmp_path / "clip" / "analysis", tmp_path / "clip" / "units", k=4,
                                  spectral=False)
    assert not plain["clip"].any() and (clipped["clip"] == (clipped["bits"] < 16)).all()
    key = ["unit", "bits", "group_size"]
    both = plain.merge(clipped, on=key, suffixes=("_plain", "_clip"))
    quantized = both[both["bits"] < 16]
    # Clip search never loses to the plain range, and wins somewhere at low bits, experts included.
    assert (quantized["nrmse_clip"] <= quantized["nrmse_plain"] * (1 + 1e-6)).all()
    experts_2bit = quantized[(quantized["bits"] == 2) & quantized["unit"].str.contains("switch_mlp")]
    assert (experts_2bit["nrmse_clip"] < experts_2bit["nrmse_plain"]).all()
    # Clip search up to 3 bits: representatives too, and 4 bits and up stay plain.
    analyze.analyze(ckpt_dir, tmp_path / "low" / "analysis", spectral=False, clip=3)
    low = experts.build_units(ckpt_dir, tmp_path / "low" / "analysis", tmp_path / "low" / "units", k=4,
                              spectral=False)
    both = low.merge(clipped, on=key, suffixes=("_low", "_clip")).merge(plain, on=key)
    assert (low["clip"] == low["bits"].between(2, 3)).all()
    assert (both.loc[both["bits"] <= 3, "nrmse_low"] == both.loc[both["bits"] <= 3, "nrmse_clip"]).all()
    assert (both.loc[both["bits"] > 3, "nrmse_low"] == both.loc[both["bits"] > 3, "nrmse"]).all()


def plant_heavy_tailed_expert(ckpt_dir, name, seed=0):
    """Replace one expert's weights with Student-t (3 dof) values of the same standard deviation."""
    for shard in ckpt_dir.glob("*.safetensors"):
        tensors = load_file(shard)
        if name in tensors:
            w = tensors[name].float()
            gen = torch.Generator().manual_seed(seed)
            normal = torch.randn(w.shape, generator=gen)
            chi2 = torch.randn(3, *w.shape, generator=gen).square().sum(0)
            t = normal / (chi2 / 3).sqrt()
            tensors[name] = (t / t.std() * w.std()).to(torch.bfloat16)
            save_file(tensors, shard, metadata={"format": "pt"})
            return tensors[name]
    raise AssertionError(f"{name} not found")


def test_planted_heavy_tailed_expert_gets_its_own_cluster(tmp_path):
    ckpt_dir = make_tiny_checkpoint("qwen3_moe", tmp_path / "q", num_experts=64, hidden=128, intermediate=128,
                                    num_layers=1)
    planted = plant_heavy_tailed_expert(ckpt_dir, "model.layers.0.mlp.experts.17.down_proj.weight")
    units = run_pipeline(ckpt_dir, tmp_path, k=8)
    clusters = pd.read_parquet(tmp_path / "units" / "clusters.parquet")
    unit = "model.layers.0.mlp.switch_mlp.down_proj"
    stack = clusters[clusters["unit"] == unit]
    assert len(stack) == 64 and stack["cluster"].nunique() == 8
    label = stack.loc[stack["expert"] == 17, "cluster"].item()
    assert (stack["cluster"] == label).sum() == 1, "the heavy-tailed expert shares its cluster"
    # Only representatives were measured: one per cluster.
    assert stack["is_representative"].sum() == 8
    # The unit's aggregated NRMSE is the planted expert's own, at every config.
    for point in quantizer.rd_curve(planted, quantizer.CONFIGS, torch.bfloat16):
        row = units[(units["unit"] == unit) & (units["bits"] == point["bits"])
                    & (units["group_size"] == point["group_size"])].iloc[0]
        assert row["nrmse"] == pytest.approx(point["nrmse"], rel=1e-12)
        assert row["bytes"] == 64 * point["bytes"]


def test_analysis_resumes_per_shard(tmp_path):
    ckpt_dir = make_tiny_checkpoint("mixtral", tmp_path / "m", hidden=128, intermediate=128, max_shard_size="150KB")
    out = tmp_path / "analysis"
    analyze.analyze(ckpt_dir, out, spectral=False)
    first = sorted(out.glob("*.rd.parquet"))
    assert len(first) > 1
    # A crash after the first shard: delete the others; a rerun rewrites only those, identically.
    kept = first[0].read_bytes()
    removed = {p: p.read_bytes() for p in first[1:]}
    for p in removed:
        p.unlink()
    mtime = first[0].stat().st_mtime_ns
    analyze.analyze(ckpt_dir, out, spectral=False)
    assert first[0].stat().st_mtime_ns == mtime and first[0].read_bytes() == kept
    assert all(p.read_bytes() == data for p, data in removed.items())


def test_features_are_recorded(tmp_path):
    ckpt_dir = make_tiny_checkpoint("mixtral", tmp_path / "m", hidden=128, intermediate=128)
    analyze.analyze(ckpt_dir, tmp_path / "analysis", spectral=True)
    feats = experts.read_tables(tmp_path / "analysis", "features")
    for column in ["norm", "std", "kurtosis", "outlier_frac", "group_kurtosis_p99", "stable_rank",
                   "tail_mass", "log10_cond"]:
        assert feats[column].notna().all(), column
    assert (feats["stable_rank"] >= 1).all() and ((feats["tail_mass"] >= 0) & (feats["tail_mass"] < 1)).all()


def test_spectral_features_closed_form():
    # A diagonal matrix has its diagonal as singular values.
    s = torch.tensor([4.0, 2.0, 1.0, 1.0] + [0.5] * 16)
    feats = analyze.spectral_features(torch.diag(s))
    energy = float(s.square().sum())
    assert feats["stable_rank"] == pytest.approx(energy / 16)
    assert feats["tail_mass"] == pytest.approx(1 - (16 + 4) / energy)  # top k/10 = 2 values
    assert feats["log10_cond"] == pytest.approx(torch.log10(torch.tensor(8.0)).item())


def test_light_stats_closed_form():
    w = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    stats = analyze.light_stats(w)
    assert stats["norm"] == pytest.approx(2.0) and stats["std"] == pytest.approx(1.0)
    assert stats["kurtosis"] == pytest.approx(-2.0)  # two-point distribution


def test_fused_analysis_gives_the_same_allocations(tmp_path, monkeypatch):
    """The compiled RD kernel against the torch path it replaced: curves within float64 rounding,
    and the same config for every unit at every budget (clustered experts included)."""
    from mint.allocate import allocate

    ckpt_dir = make_tiny_checkpoint("qwen3_moe", tmp_path / "q3", num_experts=12, hidden=128, intermediate=128)
    analyze.analyze(ckpt_dir, tmp_path / "fused" / "analysis", spectral=False, cluster_threshold=8)
    fused = experts.build_units(ckpt_dir, tmp_path / "fused" / "analysis", tmp_path / "fused" / "units", k=3,
                                spectral=False)
    monkeypatch.setattr(quantizer, "squared_errors", quantizer.squared_errors_torch)
    analyze.analyze(ckpt_dir, tmp_path / "torch" / "analysis", spectral=False, cluster_threshold=8)
    reference = experts.build_units(ckpt_dir, tmp_path / "torch" / "analysis", tmp_path / "torch" / "units", k=3,
                                    spectral=False)
    key = ["unit", "bits", "group_size"]
    merged = fused.merge(reference, on=key, suffixes=("", "_ref"))
    assert len(merged) == len(fused) == len(reference)
    assert (merged["bytes"] == merged["bytes_ref"]).all()
    # The kernel sums each group's squared errors in float32 lanes (mint/kernels.py): ~1e-7 relative.
    assert ((merged["nrmse"] - merged["nrmse_ref"]).abs() <= 1e-5 * merged["nrmse_ref"]).all()
    for budget in ("min-safe", "3.5bpw", "4.5bpw", "6bpw"):
        for solver in ("exact", "greedy"):
            a, b = allocate(fused, budget, solver=solver), allocate(reference, budget, solver=solver)
            assert a["units"]
            assert [(u["unit"], u["bits"], u["group_size"]) for u in a["units"]] == \
                   [(u["unit"], u["bits"], u["group_size"]) for u in b["units"]]


@pytest.mark.parametrize("shape,dtype,offset", [((48, 256), torch.bfloat16, 0.001), ((30, 96), torch.float16, 0.001),
                                                ((7, 2880), torch.float32, 0.001), ((64, 256), torch.float32, 10.0)])
def test_features_equal_float64_brute_force(shape, dtype, offset, monkeypatch):
    """The compiled statistics against the definitions in float64 on the whole matrix, with blocks
    small enough that every statistic spans several (and the group kurtosis falls back to whole rows
    when 128 does not divide the input dimension). A mean 500 standard deviations from zero checks
    that merging the groups' moments loses nothing to cancellation."""
    monkeypatch.setattr(analyze, "_STATS_CHUNK", 1000)
    torch.manual_seed(3)
    w = (torch.distributions.StudentT(4.0).sample(shape) * 0.02 + offset).to(dtype)
    x = w.double().reshape(-1)
    c = x - x.mean()
    var = c.square().mean()
    feats = analyze.tensor_features(w, spectral=False)
    assert feats["norm"] == pytest.approx(float(x.norm()), rel=1e-12)
    assert feats["std"] == pytest.approx(float(var.sqrt()), rel=1e-12)
    assert feats["kurtosis"] == pytest.approx(float(c.pow(4).mean() / var**2 - 3), rel=1e-10)
    assert feats["outlier_frac"] == float((c.abs() > 3 * c.std()).double().mean())
    group = 128 if shape[1] % 128 == 0 else shape[1]
    g = x.reshape(-1, group)
    gc = g - g.mean(-1, keepdim=True)
    kurt = gc.pow(4).mean(-1) / gc.square().mean(-1).square() - 3
    p = torch.quantile(kurt, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
    for value, name in zip(p.tolist(), ("p50", "p90", "p99")):
        assert feats[f"group_kurtosis_{name}"] == pytest.approx(value, rel=1e-9)


def test_equidistant_members_give_the_first_as_representative():
    """A two-member cluster's members are equidistant from its centre: the first stands for it,
    whichever way the features' last digits fall (they follow the summation order)."""
    base = pd.DataFrame(dict(norm=[1.0, 1.0, 5.0, 5.0], std=[0.1, 0.1, 0.5, 0.5], kurtosis=[0.0, 0.2, 3.0, 3.4]))
    for nudge in (1e-13, -1e-13):
        stats = base.copy()
        stats.loc[1, "kurtosis"] += nudge
        stats.loc[3, "kurtosis"] -= nudge
        _, reps, _ = experts.cluster_experts(stats, k=2)
        assert sorted(reps.values()) == [0, 2]

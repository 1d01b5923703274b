"""Synthetic checkpoints: real layout, planted heavy-tailed experts that the clustering isolates."""

import json

import pandas as pd

from mint import analyze, experts, synth
from mint.checkpoint import Checkpoint


def test_synth_layout_sizes_and_planted_experts(tmp_path):
    out = tmp_path / "synth"
    summary = synth.synth(out, num_layers=2, planted=2, shard_gib=0.002, progress=False, num_experts=40,
                          hidden_size=256, moe_intermediate_size=128, vocab_size=512)
    ckpt = Checkpoint(out)
    assert ckpt.model_type == "qwen3_moe" and len(ckpt.shards) == summary["shards"] > 1
    assert ckpt.n_params() == summary["n_params"]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(ckpt.shards)
    stacks = [u for u, refs in ckpt.units().items() if refs[0].role == "routed_expert"]
    assert len(stacks) == 6 and all(ckpt.num_experts(u) == 40 for u in stacks)

    analyze.analyze(out, tmp_path / "analysis", spectral=False)
    experts.build_units(out, tmp_path / "analysis", tmp_path / "units", k=8, spectral=False)
    clusters = pd.read_parquet(tmp_path / "units" / "clusters.parquet")
    planted = set(summary["planted_experts"])
    for unit, stack in clusters.groupby("unit"):
        sizes = stack.groupby("cluster")["expert"].transform("size")
        # Every planted expert sits in a cluster of planted experts only, and is measured or
        # represented by a planted expert: its heavy tails are never averaged away.
        for _, row in stack[stack["expert"].isin(planted)].iterrows():
            mates = set(stack.loc[stack["cluster"] == row["cluster"], "expert"])
            assert mates <= planted, (unit, mates)
        assert sizes.max() < 40

"""Output weights (mint importance) against the blocks of transformers run on the same probes."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from mint import importance as I
from mint.checkpoint import Checkpoint
from mint.testing import ARCHITECTURES, make_tiny_checkpoint


def _hf_block_energies(path, probes, seed):
    """The same quantities from transformers' own modules: attention over a single key (a sequence
    of length one, so softmax is 1 and the output is o_proj(v)) and the MLP/MoE block, each after
    its RMSNorm gain, on the probes block_energies draws."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    inner = model.model
    hidden = model.config.get_text_config().hidden_size
    out = {}
    with torch.no_grad():
        for index, layer in enumerate(inner.layers):
            z = torch.randn(probes, hidden, generator=torch.Generator().manual_seed(seed + index))
            x = (z * layer.input_layernorm.weight)[:, None, :]
            position_ids = torch.zeros(probes, 1, dtype=torch.long)
            rope = inner.rotary_emb(x, position_ids)
            y = layer.self_attn(hidden_states=x, position_embeddings=rope, attention_mask=None)[0]
            out[("attention", index)] = float(y.square().sum(-1).mean())
            mlp = next(getattr(layer, n) for n in ("mlp", "block_sparse_moe", "feed_forward") if hasattr(layer, n))
            y = mlp((z * layer.post_attention_layernorm.weight)[:, None, :])
            y = y[0] if isinstance(y, tuple) else y
            out[("mlp", index)] = float(y.reshape(probes, -1).square().sum(-1).mean())
    return out


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_block_energies_equal_the_real_blocks(arch, tmp_path):
    path = make_tiny_checkpoint(arch, tmp_path / arch, num_experts=8, dtype=torch.float32)
    ours = I.block_energies(Checkpoint(path), probes=32, seed=3)
    theirs = _hf_block_energies(path, probes=32, seed=3)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-4), key
    assert ours[("embedding", -1)] > 0


def test_sampled_experts_estimate_a_large_stack(tmp_path):
    """Past max_experts the routed part is estimated from a sample; on random tiny weights it stays
    within a third of the exact value."""
    path = make_tiny_checkpoint("qwen3_moe", tmp_path / "q", num_experts=48, dtype=torch.float32)
    ckpt = Checkpoint(path)
    exact = I.block_energies(ckpt, probes=64, max_experts=48)
    sampled = I.block_energies(ckpt, probes=64, max_experts=8)
    for key in exact:
        if key[0] == "mlp":
            assert sampled[key] == pytest.approx(exact[key], rel=0.35), key
        else:
            assert sampled[key] == exact[key]


def test_rho_is_a_share_of_the_residual_and_scales_with_its_block(tmp_path):
    path = make_tiny_checkpoint("mixtral", tmp_path / "m", dtype=torch.float32)
    table = I.output_weights(Checkpoint(path), probes=16)
    # One rho per block: blocks and the embedding split the residual; the head is 1; norms 0.
    blocks = table[table["role"].isin(["attention", "routed_expert", "embedding"])]
    shares = blocks.drop_duplicates(["role", "layer"])["rho"].sum()
    assert shares == pytest.approx(1.0, rel=1e-9)
    assert (table.loc[table["role"] == "lm_head", "rho"] == 1).all()
    assert (table.loc[table["role"] == "norm", "rho"] == 0).all()
    assert table.loc[table["role"] == "router", "rho"].tolist() == \
        table.loc[table["unit"].str.endswith("switch_mlp.down_proj"), "rho"].tolist()
    # o_proj is linear in the attention output: twice the weights, four times that block's energy.
    before = I.block_energies(Checkpoint(path), probes=16)
    shard = next(path.glob("*.safetensors"))
    tensors = load_file(shard)
    tensors["model.layers.1.self_attn.o_proj.weight"] *= 2
    save_file(tensors, shard, metadata={"format": "pt"})
    after = I.block_energies(Checkpoint(path), probes=16)
    for key in before:
        factor = 4 if key == ("attention", 1) else 1
        assert after[key] == pytest.approx(factor * before[key], rel=1e-5), key


def test_cli(tmp_path, capsys):
    path = make_tiny_checkpoint("qwen2_moe", tmp_path / "q", dtype=torch.float32)
    assert I.main(["--checkpoint", str(path), "--out", str(tmp_path / "imp.parquet"), "--probes", "8"]) == 0
    assert "lm_head" in capsys.readouterr().out
    assert I.main(["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "mint importance: error" in capsys.readouterr().err

"""Synthetic checkpoints with real layouts and real sizes, for benchmarks of scale.

`mint synth` writes a Qwen3-MoE-layout checkpoint (Qwen3-30B-A3B's shape by default: hidden 2048,
128 experts of width 768, 32 query / 4 key-value heads of 128) with as many layers as asked, in
sharded bf16 safetensors plus an index and a config.json that transformers' Qwen3MoeConfig wrote.
Weights are seeded Gaussians (std 0.02), except a few planted heavy-tailed experts (Student-t with 3
degrees of freedom, same std) per stack, which the expert clustering must isolate. Only one shard is
held in memory at a time, so a checkpoint larger than memory can be written.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

# Qwen3-30B-A3B's shape (its config.json on the Hub).
QWEN3_30B = dict(hidden_size=2048, moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8,
                 num_attention_heads=32, num_key_value_heads=4, head_dim=128, vocab_size=151936)
INIT_STD = 0.02
# Tensors that start a shard of their own (the final norm joins the head).
_OWN_SHARD = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}


def heavy_tailed(shape, gen, dof=3):
    """Student-t samples scaled to INIT_STD: a few large outliers, the rest close to zero."""
    normal = torch.randn(shape, generator=gen)
    chi2 = sum(torch.randn(shape, generator=gen).square() for _ in range(dof))
    t = normal / (chi2 / dof).sqrt()
    return t / t.std() * INIT_STD


def tensor_specs(num_layers, shape):
    """(name, shape, kind) of every tensor, in file order; kind is "normal", "norm" or "expert"."""
    h, e, w = shape["hidden_size"], shape["num_experts"], shape["moe_intermediate_size"]
    q, kv, d = shape["num_attention_heads"] * shape["head_dim"], shape["num_key_value_heads"] * shape["head_dim"], shape["head_dim"]
    specs = [("model.embed_tokens.weight", (shape["vocab_size"], h), "normal")]
    for layer in range(num_layers):
        p = f"model.layers.{layer}"
        specs += [(f"{p}.input_layernorm.weight", (h,), "norm"), (f"{p}.post_attention_layernorm.weight", (h,), "norm"),
                  (f"{p}.self_attn.q_proj.weight", (q, h), "normal"), (f"{p}.self_attn.k_proj.weight", (kv, h), "normal"),
                  (f"{p}.self_attn.v_proj.weight", (kv, h), "normal"), (f"{p}.self_attn.o_proj.weight", (h, q), "normal"),
                  (f"{p}.self_attn.q_norm.weight", (d,), "norm"), (f"{p}.self_attn.k_norm.weight", (d,), "norm"),
                  (f"{p}.mlp.gate.weight", (e, h), "normal")]
        for expert in range(e):
            specs += [(f"{p}.mlp.experts.{expert}.gate_proj.weight", (w, h), "expert"),
                      (f"{p}.mlp.experts.{expert}.up_proj.weight", (w, h), "expert"),
                      (f"{p}.mlp.experts.{expert}.down_proj.weight", (h, w), "expert")]
    specs += [("model.norm.weight", (h,), "norm"), ("lm_head.weight", (shape["vocab_size"], h), "normal")]
    return specs


def planted_experts(num_experts, planted, seed):
    """The expert indices made heavy-tailed in every stack (the same ones in each, seeded)."""
    gen = torch.Generator().manual_seed(seed + 1)
    return sorted(torch.randperm(num_experts, generator=gen)[:planted].tolist())


def synth(out, num_layers=1, planted=3, shard_gib=2.0, seed=0, progress=True, **overrides):
    """Write the checkpoint to `out`; returns a summary dict (parameters, bytes, shards, planted)."""
    from transformers import Qwen3MoeConfig

    shape = {**QWEN3_30B, **overrides}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    Qwen3MoeConfig(num_hidden_layers=num_layers, intermediate_size=6144, torch_dtype="bfloat16",
                   **shape).save_pretrained(out)
    specs = tensor_specs(num_layers, shape)
    heavy = set(planted_experts(shape["num_experts"], planted, seed))
    gen = torch.Generator().manual_seed(seed)
    limit = int(shard_gib * 1024**3)
    shards, current, size, weight_map = [], {}, 0, {}

    def flush():
        name = f"model-{len(shards) + 1:05d}.safetensors"
        save_file(current, out / name, metadata={"format": "pt"})
        shards.append(name)
        weight_map.update({k: name for k in current})
        current.clear()

    for name, dims, kind in tqdm(specs, desc="synth", unit="tensor", disable=not progress):
        if kind == "norm":
            t = 1 + 0.1 * torch.randn(dims, generator=gen)
        elif kind == "expert" and int(name.split(".experts.")[1].split(".")[0]) in heavy:
            t = heavy_tailed(dims, gen)
        else:
            t = torch.randn(dims, generator=gen) * INIT_STD
        t = t.bfloat16()
        # The embedding and the head (with the final norm) get shards of their own, so that a
        # benchmark can tell the per-layer cost from the fixed one by timing shards.
        if current and (size + t.numel() * 2 > limit or name in _OWN_SHARD or set(current) & _OWN_SHARD):
            if not (name == "lm_head.weight" and set(current) == {"model.norm.weight"}):
                flush()
                size = 0
        current[name] = t
        size += t.numel() * 2
    flush()
    # Shards were numbered as they were written; name them "of N" now that N is known.
    final = {s: s.replace(".safetensors", f"-of-{len(shards):05d}.safetensors") for s in shards}
    for old, new in final.items():
        (out / old).rename(out / new)
    n_params = sum(torch.Size(d).numel() for _, d, _ in specs)
    index = {"metadata": {"total_size": 2 * n_params}, "weight_map": {k: final[v] for k, v in weight_map.items()}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return dict(path=str(out), n_params=n_params, bytes=2 * n_params, shards=len(shards),
                planted_experts=sorted(heavy))


def main(argv=None):
    p = argparse.ArgumentParser(prog="mint synth", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--layers", dest="num_layers", type=int, default=1, help="decoder layers (Qwen3-30B-A3B has 48)")
    p.add_argument("--planted", type=int, default=3, help="heavy-tailed experts per stack")
    p.add_argument("--shard-gib", type=float, default=2.0, help="shard size in GiB")
    p.add_argument("--experts", dest="num_experts", type=int, default=QWEN3_30B["num_experts"])
    p.add_argument("--hidden", dest="hidden_size", type=int, default=QWEN3_30B["hidden_size"])
    p.add_argument("--expert-width", dest="moe_intermediate_size", type=int,
                   default=QWEN3_30B["moe_intermediate_size"])
    p.add_argument("--vocab", dest="vocab_size", type=int, default=QWEN3_30B["vocab_size"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.num_layers < 1 or args.planted < 0 or args.planted > args.num_experts or args.shard_gib <= 0:
        print("mint synth: error: need --layers >= 1, 0 <= --planted <= --experts, --shard-gib > 0", file=sys.stderr)
        return 2
    summary = synth(args.out, args.num_layers, args.planted, args.shard_gib, args.seed,
                    num_experts=args.num_experts, hidden_size=args.hidden_size,
                    moe_intermediate_size=args.moe_intermediate_size, vocab_size=args.vocab_size)
    print(f"{summary['path']}: {summary['n_params'] / 1e9:.3f}B parameters, {summary['bytes'] / 1024**3:.2f} GiB "
          f"in {summary['shards']} shard(s); heavy-tailed experts {summary['planted_experts']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

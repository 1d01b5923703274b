"""Output weights from weights alone: how much of the model's output a unit's error reaches (issue 9).

The published objective counts every unit's NRMSE alike. But a relative error e in a matrix of a
block perturbs that block's output by about e times the output (exactly so for isotropic inputs),
and what the last RMSNorm and the head see is that perturbation next to the whole residual stream.
So a unit's squared error reaches the output in proportion to

    rho = E||block output||^2 / E||final residual||^2,   E||final residual||^2 ~ E||embedding row||^2
                                                          + sum over blocks of E||block output||^2

(blocks add into the residual; their outputs are taken as uncorrelated). The LM head, whose error
goes straight into the logits, has rho = 1. Block outputs are measured data-free, with seeded
random probes through the block's RMSNorm gain, as the published paper computed but never used:

- attention: x = g * z, z ~ N(0, I); one key (a sequence of length one), so the output is
  o_proj(v_proj(x)) with the key/value heads repeated to the query heads;
- MoE: the block itself on the same probes (router top-k weights by the architecture's rule, the
  chosen experts, whose input Llama 4 scales by the weight and the others their output, plus the
  shared expert times its sigmoid gate if it has one) when the stack has
  at most `max_experts` experts; for larger stacks the routed part is E[sum_k w_k^2] times the
  mean E||expert(x)||^2 of an evenly spread sample of experts, their outputs taken as uncorrelated.

`allocate --loss output` then minimizes sum_i prior_i * rho_i * NRMSE_i^2.
"""

import argparse
import re
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from mint.analyze import load_rules, read_matrix, write_parquet
from mint.checkpoint import Checkpoint, CheckpointError

PROBES = 256        # random inputs per block
MAX_EXPERTS = 16    # experts run per MoE block; larger stacks use an evenly spread sample
_LAYER = re.compile(r"layers\.(\d+)\.")


def _layer_of(name):
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


class _Layer:
    """The tensors of one decoder layer, found by role and projection name."""

    def __init__(self, ckpt, refs):
        self.ckpt = ckpt
        self.by_proj = {}
        self.vectors = {}   # RMSNorm gains ("input", "post") and the v_proj bias ("v_bias")
        for ref in refs:
            if ref.role == "norm" and ref.name.endswith("layernorm.weight"):
                self.vectors["input" if "input_layernorm" in ref.name else "post"] = ref
            elif ref.role == "norm" and ref.name.endswith("v_proj.bias"):
                self.vectors["v_bias"] = ref
            elif ref.role in ("attention", "routed_expert", "shared_expert", "dense_mlp"):
                self.by_proj.setdefault((ref.role, ref.proj), []).append(ref)
            elif ref.role == "router":
                key = "shared_gate" if "shared_expert_gate" in ref.name else "router"
                self.by_proj[(key, None)] = [ref]

    def vector(self, kind):
        return self.ckpt.read(self.vectors[kind]).float() if kind in self.vectors else None

    def matrix(self, role, proj, expert=-1):
        refs = self.by_proj.get((role, proj))
        if not refs:
            return None
        if expert < 0:
            return read_matrix(self.ckpt, refs[0], -1).float()
        ref = refs[0] if refs[0].n_experts > 1 else next(r for r in refs if r.expert == expert)
        return read_matrix(self.ckpt, ref, expert).float()

    def n_experts(self):
        refs = self.by_proj.get(("routed_expert", "down_proj"), [])
        return refs[0].n_experts if refs and refs[0].n_experts > 1 else len(refs)


def _mlp(x, gate, up, down):
    return (F.silu(x @ gate.T) * (x @ up.T)) @ down.T


def attention_energy(layer, z, heads, kv_heads):
    """E||o_proj(v_proj(x))||^2 for x = input gain * z: attention to a single key."""
    g, wv, wo = layer.vector("input"), layer.matrix("attention", "v_proj"), layer.matrix("attention", "o_proj")
    if g is None or wv is None or wo is None:
        return 0.0
    v = (z * g) @ wv.T
    bias = layer.vector("v_bias")
    v = v if bias is None else v + bias
    head_dim = v.shape[-1] // kv_heads
    v = v.view(len(z), kv_heads, head_dim).repeat_interleave(heads // kv_heads, dim=1).reshape(len(z), -1)
    return float((v @ wo.T).square().sum(-1).mean())


def routing_weights(logits, top_k, scheme):
    """Each probe's top-k routing weights, [probes, k], by the architecture's rule."""
    if scheme == "sigmoid":  # Llama 4: sigmoid of the chosen logits
        return torch.sigmoid(logits.topk(top_k, dim=-1).values)
    probs = torch.softmax(logits, dim=-1).topk(top_k, dim=-1).values
    return probs / probs.sum(-1, keepdim=True) if scheme == "softmax-renorm" else probs


def moe_energy(layer, z, top_k, scheme, max_experts=MAX_EXPERTS):
    """E||MoE block output||^2 for x = post-attention gain * z (see the module docstring)."""
    g = layer.vector("post")
    if g is None:
        return 0.0
    x = z * g
    total = torch.zeros_like(x)   # the block's output per probe, where it is computed exactly
    sampled = 0.0                 # energy of the routed part of a large stack, estimated from a sample
    n = layer.n_experts()
    router = layer.matrix("router", None)
    if n and router is not None:
        k = min(top_k, n)
        logits = x @ router.T
        weights = routing_weights(logits, k, scheme)
        chosen = logits.topk(k, dim=-1).indices                                       # [probes, k]

        def expert(e, inputs):
            return _mlp(inputs, *(layer.matrix("routed_expert", p, e) for p in ("gate_proj", "up_proj", "down_proj")))

        # Llama 4 scales an expert's input by its weight; the others scale its output.
        scales_input = scheme == "sigmoid"
        if n <= max_experts:
            # Every expert run on every probe: the block's routed output, exactly.
            for e in range(n):
                w = (weights * (chosen == e)).sum(-1, keepdim=True)                   # [probes, 1], 0 if not chosen
                total += expert(e, x * w) if scales_input else w * expert(e, x)
        else:
            # An evenly spread sample of experts, the k outputs of a probe taken as uncorrelated.
            picks = [round(i * (n - 1) / (max_experts - 1)) for i in range(max_experts)]
            if scales_input:
                per_expert = [sum(expert(e, x * weights[:, j:j + 1]).square().sum(-1).mean() for j in range(k))
                              for e in picks]
                sampled = float(torch.stack(per_expert).mean())
            else:
                mean_energy = torch.stack([expert(e, x).square().sum(-1).mean() for e in picks]).mean()
                sampled = float(weights.square().sum(-1).mean() * mean_energy)
    for role in ("shared_expert", "dense_mlp"):
        mats = [layer.matrix(role, p) for p in ("gate_proj", "up_proj", "down_proj")]
        if any(m is None for m in mats):
            continue
        y = _mlp(x, *mats)
        gate = layer.matrix("shared_gate", None)
        if role == "shared_expert" and gate is not None:
            y = y * torch.sigmoid(x @ gate.T)
        total = total + y
    return sampled + float(total.square().sum(-1).mean())


def routing_scheme(config):
    """How an architecture turns router logits into weights."""
    if str(config.get("model_type", "")).startswith("llama4"):
        return "sigmoid"
    if config.get("model_type") == "mixtral" or config.get("norm_topk_prob", False):
        return "softmax-renorm"
    return "softmax"


def block_energies(ckpt, probes=PROBES, seed=0, max_experts=MAX_EXPERTS):
    """{("embedding", -1) | ("attention", layer) | ("mlp", layer): output energy} of a checkpoint."""
    cfg = ckpt.text_config
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    top_k = int(cfg.get("num_experts_per_tok") or 1)
    scheme = routing_scheme(cfg)
    layers = {}
    for ref in ckpt.refs:
        layer = ref.layer if ref.layer is not None and ref.layer >= 0 else _layer_of(ref.name)
        if layer is not None:
            layers.setdefault(layer, []).append(ref)
    energies = {}
    embedding = [r for r in ckpt.refs if r.role == "embedding"]
    if embedding:
        w = ckpt.read(embedding[0]).float()
        energies[("embedding", -1)] = float(w.square().sum(-1).mean())
    for index in sorted(layers):
        layer = _Layer(ckpt, layers[index])
        # The same probes for every block, seeded: the table is reproducible byte for byte.
        z = torch.randn(probes, hidden, generator=torch.Generator().manual_seed(seed + index))
        energies[("attention", index)] = attention_energy(layer, z, heads, kv_heads)
        energies[("mlp", index)] = moe_energy(layer, z, top_k, scheme, max_experts)
    return energies


BLOCK_OF_ROLE = {"attention": "attention", "router": "mlp", "routed_expert": "mlp", "shared_expert": "mlp",
                 "dense_mlp": "mlp"}


def output_weights(ckpt, probes=PROBES, seed=0, max_experts=MAX_EXPERTS):
    """One row per unit: unit, role, layer, block energy and rho (see the module docstring)."""
    energies = block_energies(ckpt, probes, seed, max_experts)
    residual = sum(energies.values())
    rows = []
    for unit, refs in ckpt.units().items():
        ref = refs[0]
        layer = ref.layer if ref.layer is not None and ref.layer >= 0 else _layer_of(ref.name)
        if ref.role == "lm_head":
            energy, rho = residual, 1.0
        elif ref.role == "embedding":
            energy = energies.get(("embedding", -1), 0.0)
            rho = energy / residual
        elif ref.role in BLOCK_OF_ROLE and layer is not None:
            energy = energies.get((BLOCK_OF_ROLE[ref.role], layer), 0.0)
            rho = energy / residual
        else:
            energy, rho = 0.0, 0.0   # norms and biases: always 16-bit, no error to weigh
        rows.append(dict(unit=unit, role=ref.role, layer=-1 if layer is None else layer,
                         block_energy=energy, rho=rho))
    return pd.DataFrame(rows)


def main(argv=None):
    p = argparse.ArgumentParser(prog="mint importance", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="Hugging Face checkpoint folder")
    p.add_argument("--out", required=True, help="parquet table of output weights per unit")
    p.add_argument("--probes", type=int, default=PROBES, help="random inputs per block (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-experts", type=int, default=MAX_EXPERTS,
                   help="experts run per MoE block; more are sampled evenly (default %(default)s)")
    p.add_argument("--rules", type=load_rules, default=None, help="JSON file of extra classification rules")
    args = p.parse_args(argv)
    try:
        ckpt = Checkpoint(args.checkpoint, rules=args.rules)
        table = output_weights(ckpt, args.probes, args.seed, args.max_experts)
    except (CheckpointError, KeyError) as e:
        print(f"mint importance: error: {e}", file=sys.stderr)
        return 2
    write_parquet(table, Path(args.out))
    print(table.groupby("role")["rho"].agg(["count", "min", "max"]).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())

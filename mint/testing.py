"""Tiny random MoE checkpoints written by transformers itself, for tests and the e2e workflow.

`make_tiny_checkpoint` builds a real transformers model of one of the four architectures we support
from a tiny config, fills it with seeded random weights, and `save_pretrained`s it, so the files on
disk are exactly what transformers writes for that architecture (per-expert tensors for Mixtral and
Qwen, fused [in, out] expert stacks for Llama-4).

>>> path = make_tiny_checkpoint("qwen3_moe", tmp_path / "q3", hidden=128, intermediate=128)  # doctest: +SKIP
"""

import math
from pathlib import Path

import torch

ARCHITECTURES = ("mixtral", "qwen2_moe", "qwen3_moe", "llama4")

# Weights are N(0, INIT_STD^2 / fan_in): activations keep unit scale through the layers, so logits,
# router scores and attention are far from flat (transformers' default std 0.02 makes them nearly so).
INIT_STD = 1.0
# Norm weights are 1 + N(0, NORM_JITTER^2), biases N(0, NORM_JITTER^2): not all ones, not degenerate.
NORM_JITTER = 0.1


def _config(arch, *, num_experts, num_layers, hidden, intermediate, vocab):
    """A transformers config (and model class) for a tiny model of `arch`."""
    import transformers

    heads = 4
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        max_position_embeddings=512,
    )
    if arch == "mixtral":
        cfg = transformers.MixtralConfig(
            intermediate_size=intermediate, num_local_experts=num_experts, num_experts_per_tok=2, **common
        )
        return cfg, transformers.MixtralForCausalLM
    if arch == "qwen2_moe":
        # mlx-lm's qwen2_moe has no dense layers and ignores norm_topk_prob: keep every layer sparse and
        # the transformers default (no renormalization).
        cfg = transformers.Qwen2MoeConfig(
            intermediate_size=intermediate,
            moe_intermediate_size=intermediate,
            shared_expert_intermediate_size=intermediate,
            num_experts=num_experts,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            norm_topk_prob=False,
            **common,
        )
        return cfg, transformers.Qwen2MoeForCausalLM
    if arch == "qwen3_moe":
        cfg = transformers.Qwen3MoeConfig(
            intermediate_size=intermediate,
            moe_intermediate_size=intermediate,
            num_experts=num_experts,
            num_experts_per_tok=2,
            head_dim=hidden // heads,
            norm_topk_prob=True,
            **common,
        )
        return cfg, transformers.Qwen3MoeForCausalLM
    if arch == "llama4":
        # MoE every second layer, so dense layers (feed_forward.gate_proj, ...) appear too. mlx-lm's
        # llama4.py routes to one expert and uses eps 1e-6 in its qk-norm where transformers uses
        # rms_norm_eps: set that to 1e-6 so both compute the same function.
        cfg = transformers.Llama4TextConfig(
            intermediate_size=intermediate,
            intermediate_size_mlp=2 * intermediate,
            num_local_experts=num_experts,
            num_experts_per_tok=1,
            interleave_moe_layer_step=2,
            head_dim=hidden // heads,
            rms_norm_eps=1e-6,
            **common,
        )
        return cfg, transformers.Llama4ForCausalLM
    raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")


@torch.no_grad()
def _randomize(model, seed, experts_in_out):
    """Refill every parameter of `model` with seeded, well-scaled random values (see INIT_STD): norms
    near 1, biases near 0, embeddings at INIT_STD, matrices at INIT_STD / sqrt(fan-in), where
    `experts_in_out` says fused experts are stored [E, in, out] (fan-in on axis -2)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if p.dim() == 1:
            value = noise * NORM_JITTER + (0.0 if name.endswith("bias") else 1.0)
        elif "embed" in name or "wte" in name:
            value = noise * INIT_STD
        else:
            fan_in = p.shape[-2] if experts_in_out and p.dim() == 3 and "experts" in name else p.shape[-1]
            value = noise * (INIT_STD / math.sqrt(fan_in))
        p.copy_(value.to(p.dtype))
    return model


def randomize(model, arch, seed=0):
    """`_randomize` for the tiny models of `make_tiny_checkpoint` (Llama-4 stores experts [E, in, out])."""
    return _randomize(model, seed, experts_in_out=arch == "llama4")


def make_tiny_checkpoint(
    arch,
    path,
    *,
    num_experts=4,
    num_layers=None,
    hidden=64,
    intermediate=64,
    vocab=256,
    seed=0,
    max_shard_size=None,
    dtype=torch.bfloat16,
) -> Path:
    """Write a tiny random `arch` checkpoint with transformers' `save_pretrained` and return its folder.

    Args:
        arch: one of ARCHITECTURES.
        path: output folder (created).
        num_layers: default 2, and 4 for llama4 (mlx-lm's llama4.py indexes the 4th layer's cache, and
            layers 1 and 3 are MoE, 0 and 2 dense).
        hidden, intermediate: use multiples of 128 where group size 128 must fit.
        max_shard_size: e.g. "200KB" to get several shards and an index.
        dtype: dtype of the saved weights.
    """
    if num_layers is None:
        num_layers = 4 if arch == "llama4" else 2
    cfg, cls = _config(
        arch, num_experts=num_experts, num_layers=num_layers, hidden=hidden, intermediate=intermediate, vocab=vocab
    )
    torch.manual_seed(seed)
    model = randomize(cls(cfg), arch, seed).to(dtype).eval()
    path = Path(path)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(path, **kwargs)
    return path


# ---------------------------------------------------------------------------------------------
# The family matrix (issue 14): one tiny model per MoE family users run, built from its transformers
# class. Every dimension has its own size (hidden 192, expert width 96, dense width 320, head dims 16
# to 64, LoRA ranks 64 and 224, ...) so a swapped axis cannot pass a shape check or a logits check;
# every input dimension is a multiple of 32 so each unit has a quantized option. Where a runtime ties
# two sizes (mlx-lm's mixtral takes head_dim = hidden / heads) the config says so.

# Sizes shared by the family configs: hidden 192, expert width 96, dense width 320, 5 query heads
# and 1 key/value head of 32 (attention width 160), vocabulary 256.
_H, _EXPERT_I, _DENSE_I, _VOCAB = 192, 96, 320, 256
_COMMON = dict(vocab_size=_VOCAB, hidden_size=_H, tie_word_embeddings=False, max_position_embeddings=512,
               bos_token_id=1, eos_token_id=2)
_ATTN = dict(num_attention_heads=5, num_key_value_heads=1, head_dim=32)
_DEEPSEEK = dict(
    _COMMON, intermediate_size=_DENSE_I, moe_intermediate_size=_EXPERT_I, num_hidden_layers=3,
    num_attention_heads=5, num_key_value_heads=5, n_routed_experts=8, n_shared_experts=1,
    num_experts_per_tok=2, first_k_dense_replace=1, kv_lora_rank=64, q_lora_rank=224,
    qk_rope_head_dim=16, qk_nope_head_dim=24, v_head_dim=64)

# family -> (transformers config class, model class, config kwargs, experts stored [E, in, out] in memory).
# The keys are model_types of mint.layouts.FAMILIES (the family table); these are its test models.
FAMILY_CONFIGS = {
    # mlx-lm's mixtral derives head_dim from hidden_size / num_attention_heads.
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(
        _COMMON, num_attention_heads=6, num_key_value_heads=2, head_dim=32, intermediate_size=_EXPERT_I, num_hidden_layers=2, num_local_experts=4,
        num_experts_per_tok=2), False),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(
        _COMMON, num_attention_heads=5, num_key_value_heads=1, intermediate_size=_DENSE_I,
        moe_intermediate_size=_EXPERT_I, shared_expert_intermediate_size=224, num_hidden_layers=2, num_experts=6,
        num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=False), False),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        _COMMON, **_ATTN, intermediate_size=_DENSE_I, moe_intermediate_size=_EXPERT_I, num_hidden_layers=2,
        num_experts=6, num_experts_per_tok=2, norm_topk_prob=True), False),
    # mlx-lm's llama4 routes to one expert, needs 4 layers and uses eps 1e-6 in its qk-norm.
    "llama4_text": ("Llama4TextConfig", "Llama4ForCausalLM", dict(
        _COMMON, **_ATTN, intermediate_size=_EXPERT_I, intermediate_size_mlp=_DENSE_I, num_hidden_layers=4,
        num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=2, rms_norm_eps=1e-6), True),
    # The multimodal wrapper (what the hub's Llama-4 checkpoints are), with a one-layer vision tower.
    "llama4": ("Llama4Config", "Llama4ForConditionalGeneration", dict(
        text_config=dict(_COMMON, **_ATTN, intermediate_size=_EXPERT_I, intermediate_size_mlp=_DENSE_I,
                         num_hidden_layers=4, num_local_experts=4, num_experts_per_tok=1,
                         interleave_moe_layer_step=2, rms_norm_eps=1e-6),
        vision_config=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                           image_size=56, patch_size=14, vision_output_dim=64, projector_input_dim=64,
                           projector_output_dim=_H)), True),
    # Kimi-K2 is this architecture (model_type kimi_k2 in its own config, deepseek_v3 in transformers).
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", dict(
        _DEEPSEEK, n_group=2, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True), False),
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM", dict(
        _DEEPSEEK, num_attention_heads=6, num_key_value_heads=6, n_group=2, topk_group=1,
        topk_method="group_limited_greedy", routed_scaling_factor=1.5),
        False),
    "glm4_moe": ("Glm4MoeConfig", "Glm4MoeForCausalLM", dict(
        _COMMON, **_ATTN, intermediate_size=_DENSE_I, moe_intermediate_size=_EXPERT_I, num_hidden_layers=3,
        n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1,
        first_k_dense_replace=1, routed_scaling_factor=2.5, norm_topk_prob=True, use_qk_norm=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}), False),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(
        _COMMON, num_attention_heads=6, num_key_value_heads=2, intermediate_size=_EXPERT_I, num_hidden_layers=2,
        num_experts=6, num_experts_per_tok=2), False),
    "phimoe": ("PhimoeConfig", "PhimoeForCausalLM", dict(
        _COMMON, num_attention_heads=6, num_key_value_heads=2, intermediate_size=_EXPERT_I, num_hidden_layers=2,
        num_local_experts=4, num_experts_per_tok=2, attention_bias=True, lm_head_bias=True,
        router_jitter_noise=0.0), False),
    "minimax_m2": ("MiniMaxM2Config", "MiniMaxM2ForCausalLM", dict(
        _COMMON, **_ATTN, intermediate_size=_EXPERT_I, num_hidden_layers=2, num_local_experts=6,
        num_experts_per_tok=2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                "partial_rotary_factor": 0.5}), False),
    "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM", dict(
        _COMMON, num_attention_heads=6, num_key_value_heads=2, intermediate_size=_EXPERT_I, num_hidden_layers=2,
        num_local_experts=4, num_experts_per_tok=2, embedding_multiplier=2.0, logits_scaling=1.5,
        residual_multiplier=0.7, attention_multiplier=0.2), False),
    "ernie4_5_moe": ("Ernie4_5_MoeConfig", "Ernie4_5_MoeForCausalLM", dict(
        _COMMON, num_attention_heads=6, num_key_value_heads=2, intermediate_size=_DENSE_I,
        moe_intermediate_size=_EXPERT_I, num_hidden_layers=2, moe_num_experts=4, moe_k=2, moe_num_shared_experts=1,
        moe_layer_start_index=0), False),
    "qwen3_next": ("Qwen3NextConfig", "Qwen3NextForCausalLM", dict(
        _COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=48, intermediate_size=_DENSE_I,
        moe_intermediate_size=_EXPERT_I, shared_expert_intermediate_size=224, num_hidden_layers=4, num_experts=6,
        num_experts_per_tok=2, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=32,
        linear_value_head_dim=64, linear_conv_kernel_dim=4, decoder_sparse_step=1, mlp_only_layers=[],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}), False),
    # The multimodal model (as the hub ships Qwen3.5-MoE), with a one-layer vision tower.
    "qwen3_5_moe": ("Qwen3_5MoeConfig", "Qwen3_5MoeForConditionalGeneration", dict(
        text_config=dict(_COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=48,
                         moe_intermediate_size=_EXPERT_I, shared_expert_intermediate_size=224, num_hidden_layers=4,
                         num_experts=6, num_experts_per_tok=2, linear_num_key_heads=2, linear_num_value_heads=4,
                         linear_key_head_dim=32, linear_value_head_dim=64, linear_conv_kernel_dim=4,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "partial_rotary_factor": 0.25, "mrope_section": [2, 2, 2]}),
        vision_config=dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=_H,
                           num_position_embeddings=16)), False),
    "jamba": ("JambaConfig", "JambaForCausalLM", dict(
        _COMMON, num_attention_heads=6, num_key_value_heads=2, intermediate_size=_EXPERT_I, num_hidden_layers=4,
        num_experts=4, num_experts_per_tok=2, expert_layer_period=2, expert_layer_offset=1, attn_layer_period=2,
        attn_layer_offset=1, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=24,
        ), False),
    # Expert width 160 here: 2 * 96 would equal the hidden size of the fused gate/up.
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", dict(
        _COMMON, **_ATTN, intermediate_size=160, num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2,
        sliding_window=8, rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=8.0, beta_fast=32.0,
                                               beta_slow=1.0, original_max_position_embeddings=64, truncate=True)),
        True),
    "dbrx": ("DbrxConfig", "DbrxForCausalLM", dict(
        vocab_size=_VOCAB, d_model=_H, n_heads=6, n_layers=2, max_seq_len=512,
        attn_config={"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},  # transformers needs clip_qkv
        ffn_config={"ffn_hidden_size": _EXPERT_I, "moe_num_experts": 4, "moe_top_k": 2}), False),
}


def family_config(family, **overrides):
    """(config, model class) of the tiny model of `family` (a key of FAMILY_CONFIGS); `overrides` replace
    keys of its (text) config."""
    import transformers

    if family not in FAMILY_CONFIGS:
        raise ValueError(f"family must be one of {tuple(FAMILY_CONFIGS)}, got {family!r}")
    config_name, model_name, kwargs, _ = FAMILY_CONFIGS[family]
    if "text_config" in kwargs:
        kwargs = {**kwargs, "text_config": {**kwargs["text_config"], **overrides}}
    else:
        kwargs = {**kwargs, **overrides}
    return getattr(transformers, config_name)(**kwargs), getattr(transformers, model_name)


def randomize_family(model, family, seed=0):
    """`_randomize` for a family model: its FAMILY_CONFIGS entry says whether experts are [E, in, out]."""
    return _randomize(model, seed, experts_in_out=FAMILY_CONFIGS[family][3])


def make_tiny_family(family, path, *, seed=0, dtype=torch.bfloat16, **overrides) -> Path:
    """Write the tiny random checkpoint of `family` with `save_pretrained` (the hub's layout as
    transformers writes it) and return its folder; `overrides` replace keys of its (text) config."""
    cfg, cls = family_config(family, **overrides)
    torch.manual_seed(seed)
    model = randomize_family(cls(cfg), family, seed).to(dtype).eval()
    path = Path(path)
    model.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------
# Hub layouts that differ from what save_pretrained writes.

FP8_BLOCK = 128
FP8_MAX = 448.0  # largest finite float8_e4m3fn
# Roles an fp8 release stores in fp8 (DeepSeek-V3 keeps embedding, head, routers and norms in bf16).
FP8_ROLES = ("attention", "routed_expert", "shared_expert", "dense_mlp")


def to_fp8(w, block=FP8_BLOCK):
    """(fp8 weight, scale_inv) of a float matrix, one scale per block x block tile (amax / 448)."""
    rows, cols = w.shape
    tiles_r, tiles_c = -(-rows // block), -(-cols // block)
    scale = torch.empty(tiles_r, tiles_c)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(tiles_r):
        for j in range(tiles_c):
            tile = w[i * block:(i + 1) * block, j * block:(j + 1) * block].float()
            scale[i, j] = tile.abs().max().clamp_min(1e-12) / FP8_MAX
            q[i * block:(i + 1) * block, j * block:(j + 1) * block] = (tile / scale[i, j]).to(torch.float8_e4m3fn)
    return q, scale


def write_fp8_release(src, dst, mtp_layer=False):
    """Rewrite checkpoint `src` as an fp8 release in `dst` (DeepSeek-V3's hub layout): the 2-D
    weights of FP8_ROLES in e4m3 with `weight_scale_inv` block scales and a quantization_config;
    with `mtp_layer`, one multi-token-prediction layer after the last decoder layer, as the hub
    checkpoints of DeepSeek-V3, Kimi-K2 and GLM-4.5 store it."""
    import json

    from safetensors.torch import load_file, save_file

    from mint.checkpoint import Checkpoint

    src, dst = Path(src), Path(dst)
    roles = {r.name: r.role for r in Checkpoint(src).refs}
    tensors = {}
    for name, w in load_file(src / "model.safetensors").items():
        if roles.get(name) in FP8_ROLES and w.dim() == 2:
            tensors[name], tensors[name + "_scale_inv"] = to_fp8(w.float())
        else:
            tensors[name] = w
    config = json.loads((src / "config.json").read_text())
    if mtp_layer:
        n, hidden = config["num_hidden_layers"], config["hidden_size"]
        gen = torch.Generator().manual_seed(1)
        tensors[f"model.layers.{n}.eh_proj.weight"] = torch.randn(hidden, 2 * hidden, generator=gen).bfloat16()
        tensors[f"model.layers.{n}.enorm.weight"] = torch.ones(hidden).bfloat16()
        tensors[f"model.layers.{n}.mlp.experts.0.up_proj.weight"] = torch.randn(
            config["moe_intermediate_size"], hidden, generator=gen).bfloat16()
        config["num_nextn_predict_layers"] = 1
    dst.mkdir(parents=True, exist_ok=True)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def write_kimi_k2(src, dst):
    """A DeepSeek-V3 checkpoint `src` as Kimi-K2 ships it: the same tensors, config model_type kimi_k2."""
    import json
    import shutil

    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["model_type"] = "kimi_k2"
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def to_mxfp4(w):
    """(blocks, scales) of float matrices [..., rows, cols] in MXFP4, from the format's definition:
    per block of 32 along the last axis the exponent e = ceil(log2(amax / 6)) (6 is e2m1's largest
    value), each element the nearest e2m1 value of w / 2^e, two 4-bit codes per byte, low first."""
    from mint.checkpoint import E2M1_VALUES

    *lead, rows, cols = w.shape
    groups = w.float().reshape(*lead, rows, cols // 32, 32)
    amax = groups.abs().amax(-1).clamp_min(2.0**-126)
    exponent = torch.ceil(torch.log2(amax / 6.0)).clamp(-127, 127)
    values = torch.tensor(E2M1_VALUES[:8])
    scaled = groups / torch.exp2(exponent)[..., None]
    magnitude = (scaled.abs()[..., None] - values).abs().argmin(-1)  # nearest of the 8 magnitudes
    codes = (magnitude | ((scaled < 0).long() << 3)).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks.contiguous(), (exponent + 127).to(torch.uint8)


def write_mxfp4_release(src, dst):
    """Rewrite a GPT-OSS checkpoint `src` (transformers' bf16 layout, experts [E, in, out]) as the hub
    ships it in `dst`: expert matrices as MXFP4 `<name>_blocks` / `<name>_scales` of [E, out, in], and
    a quantization_config saying so."""
    import json

    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    tensors = {}
    for name, w in load_file(src / "model.safetensors").items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            tensors[name + "_blocks"], tensors[name + "_scales"] = to_mxfp4(w.float().transpose(-1, -2))
        else:
            tensors[name] = w
    dst.mkdir(parents=True, exist_ok=True)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def write_fused_experts(src, dst):
    """Rewrite a Qwen3.5-MoE checkpoint `src` (per-expert keys, as transformers saves it) as the hub
    ships it in `dst`: each layer's experts fused, `experts.gate_up_proj` [E, 2I, H] (gate rows
    first) and `experts.down_proj` [E, H, I], without `.weight`."""
    import json
    import re
    import shutil

    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    per_expert = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
    tensors, experts = {}, {}
    for name, w in load_file(src / "model.safetensors").items():
        m = per_expert.match(name)
        if m:
            experts.setdefault(m.group(1), {}).setdefault(m.group(3), {})[int(m.group(2))] = w
        else:
            tensors[name] = w
    for prefix, projs in experts.items():
        stack = {p: torch.stack([ws[e] for e in sorted(ws)]) for p, ws in projs.items()}
        tensors[f"{prefix}.gate_up_proj"] = torch.cat([stack["gate_proj"], stack["up_proj"]], dim=1)
        tensors[f"{prefix}.down_proj"] = stack["down_proj"]
    dst.mkdir(parents=True, exist_ok=True)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    shutil.copy2(src / "config.json", dst / "config.json")
    return dst


def write_tiny_tokenizer(path, vocab=256):
    """A tiny seeded SentencePiece tokenizer (`tokenizer.model`) in checkpoint folder `path`.

    llama.cpp's converter needs a tokenizer; BPE ones must match a pre-tokenizer it knows by hash,
    SentencePiece ones need not (Mixtral, Qwen2/3-MoE and Llama-4 converters try SentencePiece
    first), so test and synthetic checkpoints carry this one. Pieces beyond its vocabulary are
    padded by the converter up to the model's vocab size.
    """
    import io

    import sentencepiece as spm

    words = [f"w{i} x{i % 7} y{i % 11} the a of and" for i in range(400)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(words), model_writer=model, vocab_size=min(vocab, 64),
                                   model_type="bpe", character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0,
                                   pad_id=-1, minloglevel=2, num_threads=1, seed_sentencepiece_size=1000)
    (Path(path) / "tokenizer.model").write_bytes(model.getvalue())
    return Path(path)


def write_tiny_bpe_tokenizer(path, vocab=256, special_tokens=("<|endoftext|>",)):
    """A tiny byte-level BPE tokenizer (tokenizer.json, as transformers saves it) in folder `path`.

    llama.cpp's converter identifies a BPE tokenizer's pre-tokenizer by the hash of its output on a
    fixed text; this one is unknown to it (tests answer that check themselves, see test_gguf.py).
    Below 260 tokens the alphabet is only the symbols of the training text and the newline's (llama.cpp
    looks the newline up when it loads a BPE vocabulary), so that it fits a model of 256 tokens.
    `special_tokens`: the first is the end-of-text token; converters of some families look up others
    by name (GLM's "[gMASK]", "<|user|>", ...).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if vocab >= 260:
        # 256 byte symbols + 1 special token + merges: the vocabulary must exceed the alphabet.
        size, alphabet = vocab - 2, pre_tokenizers.ByteLevel.alphabet()
    else:
        size, alphabet = vocab, ["\u010a"]  # "Ċ", byte-level's newline
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=list(special_tokens), initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator([f"w{i} the a of and x{i % 7}" for i in range(300)], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=special_tokens[0]).save_pretrained(path)
    return Path(path)

"""Small reference MoE models, trained here on the CPU from the vendored text.

No real MoE checkpoint can be downloaded where the pipeline's embedded default runs, so it trains four
small models built with the real transformers classes (their checkpoints have the real layouts:
Mixtral's per-expert `block_sparse_moe.experts.{e}.w{1,2,3}`, Qwen's `mlp.experts.{e}.*_proj`,
Llama 4's stacked `feed_forward.experts.gate_up_proj`) and then measures them with METHOD.md §5:

    mini-mixtral    MixtralForCausalLM     8 experts, top-2
    mini-qwen2moe   Qwen2MoeForCausalLM    40 routed experts, top-4, plus a gated shared expert
    mini-qwen3moe   Qwen3MoeForCausalLM    40 experts, top-4
    mini-llama4     Llama4ForCausalLM      16 experts, top-1, plus a shared expert (Llama4TextConfig)

All share one byte-level BPE tokenizer trained on the training corpus plus WikiText-2 valid (never the
test split). Training: AdamW, linear warmup then cosine decay, windows from the packed Gutenberg corpus
and (a quarter of them) from WikiText-2 valid less its last articles, which give the validation loss
logged to `train_log.csv`. Output: `save_pretrained` in
bf16 safetensors, the tokenizer, `train_log.csv` and `train_meta.json`.

Recipes are plain dicts in `RECIPES[profile][model]`; `quick` takes seconds (tests), `full` is sized
for about 30 minutes for all four on a 2-core machine (two at a time). Every key can be overridden by a config dict.
"""

import argparse
import csv
import functools
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mint import data

# ---------------------------------------------------------------------------------------------------
# Recipes.
#
# Throughput measured on this project's 2-core CPU box (AMD EPYC with AVX512-BF16), one thread,
# batch 8 x 256 tokens, fp32 weights + AdamW with bf16 autocast, while other jobs kept the load at 2-4
# (so +-25%). "probe" is `measure_throughput(name, steps=12)`; "run" is a 60-150 step `train_reference`
# with the validation time taken out:
#                  params   probe tok/s   run tok/s   planned tok/s
#   mini-mixtral    5.44M      2,975        2,330        2,500
#   mini-qwen2moe  14.91M      1,876        2,150        2,000
#   mini-qwen3moe  14.91M      1,495        1,220        1,250
#   mini-llama4     8.99M      2,258        2,960        2,500   (with the sparse training forward)
# `experts_implementation="grouped_mm"` (torch.nn.functional.grouped_mm) beat "eager": 2,975 vs 2,544
# tok/s for 8 experts, 4x for 60-64 experts (2,231 vs 522; 1,223 vs 313). bf16 autocast beat fp32 for
# mini-mixtral (2,975 vs 2,391) and tied for mini-qwen3moe. Two threads were 5x *slower* (417 tok/s)
# on the shared machine. The steps of the `full` profile come from the planned column, FULL_STEPS_NOTE.
# Windows of 512 tokens (batch 4, the same 2,048 tokens per step, so that training covers the
# evaluation length of config.yaml) probed at 2,914 / 1,925 / 2,813 tok/s for mixtral / qwen3moe /
# llama4: not slower than 256 within the noise, so the planned column stands.
# ---------------------------------------------------------------------------------------------------

# Architecture per model: transformers class names and the MoE shape. Dimensions are multiples of 128
# so that group size 128 divides every input dimension (METHOD.md §1).
ARCHS = {
    "mini-mixtral": {"config_class": "MixtralConfig", "model_class": "MixtralForCausalLM"},
    "mini-qwen2moe": {"config_class": "Qwen2MoeConfig", "model_class": "Qwen2MoeForCausalLM"},
    "mini-qwen3moe": {"config_class": "Qwen3MoeConfig", "model_class": "Qwen3MoeForCausalLM"},
    "mini-llama4": {"config_class": "Llama4TextConfig", "model_class": "Llama4ForCausalLM"},
}
MODELS = tuple(ARCHS)

# Keys shared by all models of a profile (training, data, tokenizer).
_TRAIN_FULL = {
    "vocab_size": 1024,  # BPE vocabulary, shared by all four models
    "tokenizer_chars": None,  # characters of each corpus used to train the tokenizer (None: all)
    "train_chars": None,  # characters of the Gutenberg corpus used for training (None: all, 2.46M tokens)
    "seq_len": 512,  # tokens per training window = config.yaml's evaluation length
    "batch_size": 4,  # windows per step: 2,048 tokens
    "steps": 1000,  # optimizer steps (set per model below)
    "lr": 3e-3,  # peak AdamW learning rate (small models tolerate a high one)
    "min_lr_ratio": 0.1,  # cosine decays to lr * min_lr_ratio
    "warmup_steps": 50,  # linear warmup from 0
    "weight_decay": 0.1,  # on 2-D+ tensors only
    "beta2": 0.95,
    "grad_clip": 1.0,
    "router_aux_loss_coef": 0.01,  # load-balancing loss, keeps every expert trained
    "eval_every": 100,  # steps between validation losses
    "eval_windows": 64,  # held-out WikiText-2 valid windows per validation (evenly spaced)
    # The Gutenberg novels alone never show WikiText's raw format (" @-@ ", " , ", " = Title = "):
    # 6.6% of WikiText valid tokens never occur in them, and a model trained on them alone stays
    # near uniform on WikiText (val loss 8.6 nats of 9.0). So windows are also drawn from WikiText-2
    # valid (data/wikitext-2-raw-v1/README.md: training uses Gutenberg plus wiki.valid.raw, never test),
    # holding out its last articles for the validation loss.
    "wiki_fraction": 0.25,  # probability that a training window comes from WikiText-2 valid
    "wiki_holdout": 0.1,  # last ~10% of WikiText-2 valid (whole articles) held out for validation
    "seed": 0,
    "autocast_bf16": True,  # bf16 autocast for the forward; weights and AdamW stay fp32
    "experts_implementation": "grouped_mm",  # transformers' expert kernel while training
    "max_position_embeddings": 2048,
}

# Model shapes of the full profile (issue 15): every weight row is a multiple of 256 (hidden 256, expert
# width 256, 8 heads x 32), so llama.cpp's k-quants apply and the GGUF comparison shares these models;
# a 1,024-token vocabulary keeps embeddings and head a small share (13% of mini-mixtral, 3-7% of the
# others; real MoEs: a few percent); two layers, so that each model sees many tokens per parameter in
# its training time, because quantization sensitivity grows with tokens per parameter (SENSITIVITY_NOTE).
_WIDE = {"hidden_size": 256, "num_layers": 2, "num_heads": 8, "num_kv_heads": 4, "head_dim": 32,
         "expert_intermediate_size": 256}
_SHAPES_FULL = {
    "mini-mixtral": {**_WIDE, "num_experts": 8, "top_k": 2, "shared_intermediate_size": 0},
    # Qwen1.5-MoE: many fine experts, top-4, a shared expert 2x an expert's width behind a sigmoid
    # gate. 40 experts (> 32, so the clustered path runs) rather than 60, for training time.
    "mini-qwen2moe": {**_WIDE, "num_experts": 40, "top_k": 4, "shared_intermediate_size": 512},
    # Qwen3-MoE: many fine experts, no shared expert; 40 top-4 rather than 128 top-8, for training time.
    "mini-qwen3moe": {**_WIDE, "num_experts": 40, "top_k": 4, "shared_intermediate_size": 0},
    # Llama 4 uses one `intermediate_size` for the routed experts and the shared expert. Four layers:
    # mlx-lm's llama4 model indexes the 4th layer's cache (chunked attention), so fewer do not load.
    "mini-llama4": {**_WIDE, "num_layers": 4, "num_experts": 16, "top_k": 1, "shared_intermediate_size": 256},
}

# FULL_STEPS_NOTE: about 14 minutes of training per model, two models at a time on 2 cores (so ~30 min
# for the four). `measure_throughput(name, steps=8)` on a quiet 2-core box (2026-12-06), one thread:
#                  params   probe tok/s   planned tok/s (two jobs share the memory bus: -15%)
#   mini-mixtral    4.07M      7,089          6,000
#   mini-qwen2moe  17.46M      3,788          3,200
#   mini-qwen3moe  16.67M      3,818          3,200
#   mini-llama4     7.61M      7,171          6,000   (2 layers; the recipe has 4, ~3,200 planned)
# steps = 840 s * planned tok/s / 2,048 tokens per step:
#   mixtral  2,460 steps, 5.0M tokens (1.24 tokens/param; 1.26M per expert)
#   qwen2moe 1,310 steps, 2.7M tokens (0.15 tokens/param; 268k per routed expert)
#   qwen3moe 1,310 steps, 2.7M tokens (0.16 tokens/param; 268k per expert)
#   llama4   1,310 steps, 2.7M tokens (4 layers, ~14M params: ~0.2 tokens/param; 168k per routed expert)
_STEPS_FULL = {"mini-mixtral": 2460, "mini-qwen2moe": 1310, "mini-qwen3moe": 1310, "mini-llama4": 1310}
# SENSITIVITY_NOTE (the previous, hidden-128 recipes, measured once on an H200 with --device cuda,
# uniform RTN at g64 of every weight but embeddings and head, 64 windows of 512, change of log
# perplexity +- its paired se):
#   model     steps  tokens/param  bf16 PPL   4-bit             3-bit             KLD 4-bit / 3-bit
#   mixtral    680       0.26        400.5    +0.22% +- 0.05    +0.24% +- 0.06    0.0022 / 0.0050
#   qwen3moe   340       0.05        538.8    -0.26% +- 0.05    -0.04% +- 0.08    0.0012 / 0.0032
#   llama4     680       0.15        381.8    +0.15% +- 0.04    +1.05% +- 0.13    0.0029 / 0.0140
#   mixtral   2720       1.02        214.6    +0.72% +- 0.11    +2.30% +- 0.22    0.0113 / 0.0422
# 4x the tokens made mini-mixtral ~10x more sensitive. The current recipes' figures are in the README
# (reference models table), measured by the pipeline's own uniform baselines.

_TRAIN_QUICK = {
    **_TRAIN_FULL,
    "vocab_size": 512,
    "tokenizer_chars": 200_000,
    "train_chars": 200_000,
    "seq_len": 64,
    "batch_size": 4,
    "steps": 30,
    "lr": 3e-3,
    "warmup_steps": 5,
    "eval_every": 10,
    "eval_windows": 4,
    "max_position_embeddings": 256,
}

RECIPES = {
    "full": {
        name: {**_TRAIN_FULL, **shape, "steps": _STEPS_FULL[name]} for name, shape in _SHAPES_FULL.items()
    },
    "quick": {
        # Narrower than `full` (hidden 128, 4 heads): the quick profile only has to run, fast.
        name: {**_TRAIN_QUICK, **shape, "hidden_size": 128, "num_heads": 4, "num_kv_heads": 2,
               "num_layers": 2, "expert_intermediate_size": 128,
               "shared_intermediate_size": 128 if shape["shared_intermediate_size"] else 0}
        for name, shape in _SHAPES_FULL.items()
    },
}
PROFILES = tuple(RECIPES)

EOS_TOKEN = "<|endoftext|>"
# Dimensions that are input dims of some weight and must be divisible by the largest group size.
_GROUP_ALIGNED = ("hidden_size", "expert_intermediate_size", "shared_intermediate_size")
_ALIGN = 128


class RecipeError(ValueError):
    """An unknown model, profile or override (a user error)."""


def resolve_recipe(name, profile="full", overrides=None):
    """The recipe of `name` in `profile` with `overrides` applied and checked.

    An unknown key, a value of the wrong type, or a dimension that is not a multiple of 128 fails.

    >>> resolve_recipe("mini-mixtral", "quick", {"steps": 5})["steps"]
    5
    """
    if profile not in RECIPES:
        raise RecipeError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    if name not in RECIPES[profile]:
        raise RecipeError(f"unknown reference model {name!r}; known: {', '.join(MODELS)}")
    recipe = dict(RECIPES[profile][name])
    for key, value in (overrides or {}).items():
        if key not in recipe:
            raise RecipeError(f"unknown recipe key {key!r} for {name}; known: {', '.join(sorted(recipe))}")
        default = recipe[key]
        if default is None and value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise RecipeError(f"recipe key {key!r} wants an int or null, got {value!r}")
        if default is not None and value is not None:
            ok = isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int))
            if not ok or (isinstance(value, bool) and not isinstance(default, bool)):
                raise RecipeError(f"recipe key {key!r} wants {type(default).__name__}, got {value!r}")
            if isinstance(default, float):
                value = float(value)
        recipe[key] = value
    for key in _GROUP_ALIGNED:
        if recipe[key] % _ALIGN:
            raise RecipeError(f"{key}={recipe[key]} must be a multiple of {_ALIGN} (group size 128)")
    if recipe["num_heads"] * recipe["head_dim"] % _ALIGN:
        raise RecipeError("num_heads * head_dim must be a multiple of 128 (o_proj input dim)")
    if name in ("mini-qwen2moe", "mini-llama4") and not recipe["shared_intermediate_size"]:
        raise RecipeError(f"{name} needs shared_intermediate_size > 0")
    if name == "mini-llama4" and recipe["shared_intermediate_size"] != recipe["expert_intermediate_size"]:
        raise RecipeError("mini-llama4: Llama 4 has one intermediate_size for shared and routed experts")
    if not 1 <= recipe["top_k"] <= recipe["num_experts"]:
        raise RecipeError(f"top_k={recipe['top_k']} must be in [1, num_experts={recipe['num_experts']}]")
    return recipe


# ---------------------------------------------------------------------------------------------------
# Tokenizer and data.
# ---------------------------------------------------------------------------------------------------


def _head(text, chars):
    return text if chars is None else text[:chars]


@functools.lru_cache(maxsize=4)
def build_tokenizer(vocab_size=8192, chars=None):
    """Byte-level BPE trained on the Gutenberg corpus + WikiText-2 valid (never test).

    Returns a `PreTrainedTokenizerFast` (so `save_pretrained` writes a folder that
    `AutoTokenizer.from_pretrained` reads), with `<|endoftext|>` as bos, eos and pad.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpora = [_head(data.load_text(s), chars) for s in ("gutenberg-train", "wikitext2-valid")]

    def batches(lines_per_batch=1000):
        for text in corpora:
            lines = text.split("\n")
            for i in range(0, len(lines), lines_per_batch):
                yield "\n".join(lines[i:i + lines_per_batch])

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(batches(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
        model_max_length=1 << 30,
    )


def encode(tokenizer, text, chunk_lines=2000):
    """Token ids of `text` as int64, encoded in batches of lines (exactly the ids of the whole text
    whenever the pre-tokenizer never merges across a line break, which byte-level BPE does not)."""
    lines = text.split("\n")
    chunks = ["\n".join(lines[i:i + chunk_lines]) for i in range(0, len(lines), chunk_lines)]
    # Every chunk but the last lost its trailing "\n" in the split; put it back.
    chunks = [c + "\n" for c in chunks[:-1]] + chunks[-1:]
    backend = tokenizer.backend_tokenizer
    ids = [e.ids for e in backend.encode_batch(chunks, add_special_tokens=False)]
    return np.fromiter((i for chunk in ids for i in chunk), dtype=np.int64)


def _windows(ids, seq_len):
    n = len(ids) // seq_len
    return torch.from_numpy(ids[: n * seq_len].reshape(n, seq_len))


# ---------------------------------------------------------------------------------------------------
# Models.
# ---------------------------------------------------------------------------------------------------


def build_config(name, recipe, tokenizer=None):
    """The transformers config of `name` from a resolved recipe."""
    import transformers

    r = recipe
    eos = tokenizer.eos_token_id if tokenizer is not None else 0
    common = dict(
        vocab_size=len(tokenizer) if tokenizer is not None else r["vocab_size"],
        hidden_size=r["hidden_size"],
        num_hidden_layers=r["num_layers"],
        num_attention_heads=r["num_heads"],
        num_key_value_heads=r["num_kv_heads"],
        head_dim=r["head_dim"],
        max_position_embeddings=r["max_position_embeddings"],
        router_aux_loss_coef=r["router_aux_loss_coef"],
        tie_word_embeddings=False,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
    )
    if name == "mini-mixtral":
        kw = dict(intermediate_size=r["expert_intermediate_size"], num_local_experts=r["num_experts"],
                  num_experts_per_tok=r["top_k"])
    elif name == "mini-qwen2moe":
        kw = dict(intermediate_size=r["shared_intermediate_size"], moe_intermediate_size=r["expert_intermediate_size"],
                  shared_expert_intermediate_size=r["shared_intermediate_size"], num_experts=r["num_experts"],
                  num_experts_per_tok=r["top_k"], norm_topk_prob=False)
        common.pop("head_dim")  # Qwen2-MoE derives it: hidden_size / num_heads
        if r["hidden_size"] != r["num_heads"] * r["head_dim"]:
            raise RecipeError("mini-qwen2moe needs hidden_size == num_heads * head_dim")
    elif name == "mini-qwen3moe":
        kw = dict(intermediate_size=r["expert_intermediate_size"] * r["top_k"],
                  moe_intermediate_size=r["expert_intermediate_size"], num_experts=r["num_experts"],
                  num_experts_per_tok=r["top_k"], norm_topk_prob=True)
    elif name == "mini-llama4":
        kw = dict(intermediate_size=r["expert_intermediate_size"],
                  intermediate_size_mlp=2 * r["expert_intermediate_size"], num_local_experts=r["num_experts"], num_experts_per_tok=r["top_k"], interleave_moe_layer_step=1)
    else:
        raise RecipeError(f"unknown reference model {name!r}")
    return getattr(transformers, ARCHS[name]["config_class"])(**common, **kw)


def build_model(name, recipe, tokenizer=None):
    """A freshly initialised fp32 model (seeded by the caller) for training."""
    import transformers

    config = build_config(name, recipe, tokenizer)
    model_class = getattr(transformers, ARCHS[name]["model_class"])
    if name == "mini-llama4":
        # Llama 4's experts have no selectable kernel; they get the sparse forward below instead.
        model = model_class._from_config(config)
        for module in model.modules():
            if type(module).__name__ == "Llama4TextMoe":
                module.forward = functools.partial(_llama4_sparse_moe_forward, module)
    else:
        model = model_class._from_config(config, experts_implementation=recipe["experts_implementation"])
    return model


def _llama4_sparse_moe_forward(self, hidden_states):
    """Llama4TextMoe.forward computing only the selected experts (training only; same values and grads).

    The stock forward runs every expert on every token with the input scaled by the router score,
    which is 0 for unselected experts; so skipping them changes nothing but time (16x fewer expert
    FLOPs at top-1 of 16). Stores a Switch-style load-balancing loss on `self.aux_loss`, because
    Llama4ForCausalLM has none.
    """
    hidden_states = hidden_states.reshape(-1, self.hidden_dim)
    n_tokens, k = hidden_states.shape[0], self.top_k
    logits = torch.nn.functional.linear(hidden_states, self.router.weight)  # (T, E), before top-k
    top_val, top_idx = torch.topk(logits, k, dim=1)
    scores = torch.sigmoid(top_val.float()).to(hidden_states.dtype)
    flat_expert = top_idx.reshape(-1)
    order = torch.argsort(flat_expert, stable=True)
    token = torch.arange(n_tokens, device=hidden_states.device).repeat_interleave(k)[order]
    experts = self.experts
    x = (hidden_states[token] * scores.reshape(-1)[order, None]).to(experts.gate_up_proj.dtype)
    offs = torch.cumsum(torch.bincount(flat_expert, minlength=self.num_experts), 0).to(torch.int32)
    gate, up = _grouped_mm(x, experts.gate_up_proj, offs).chunk(2, dim=-1)
    routed = _grouped_mm(up * experts.act_fn(gate), experts.down_proj, offs)
    out = self.shared_expert(hidden_states)
    out = out + torch.zeros_like(out).index_add(0, token, routed.to(out.dtype))
    fraction = torch.bincount(flat_expert, minlength=self.num_experts).float() / flat_expert.numel()
    self.aux_loss = self.num_experts * (fraction * torch.softmax(logits.float(), -1).mean(0)).sum()
    return out, logits


def _grouped_mm(x, w, offs):
    """Rows of x sorted by expert times w[e] [E, in, out]: torch's grouped_mm on the CPU, a loop elsewhere
    (CUDA's grouped_mm wants bf16)."""
    if x.device.type == "cpu":
        return torch.nn.functional.grouped_mm(x, w, offs=offs)
    return _grouped_mm_loop(x, w, offs)


def _grouped_mm_loop(x, w, offs):
    starts = [0] + offs.tolist()[:-1]
    return torch.cat([x[a:b] @ w[e] for e, (a, b) in enumerate(zip(starts, offs.tolist()))])


def _aux_loss(model, outputs):
    """The model's load-balancing loss of the last forward (Llama 4: ours, others: transformers')."""
    aux = getattr(outputs, "aux_loss", None)
    if aux is not None:
        return aux
    parts = [m.aux_loss for m in model.modules() if hasattr(m, "aux_loss") and torch.is_tensor(m.aux_loss)]
    return torch.stack(parts).mean() if parts else torch.zeros(())


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def lr_at(step, recipe):
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at the last step."""
    lr, warmup, total = recipe["lr"], recipe["warmup_steps"], recipe["steps"]
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = lr * recipe["min_lr_ratio"]
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _make_optimizer(model, recipe):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe["lr"], betas=(0.9, recipe["beta2"]),
    )


def _autocast(recipe, device_type="cpu"):
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=recipe["autocast_bf16"])


@torch.no_grad()
def validation_loss(model, windows, recipe, batch_size=None):
    """Token-weighted mean next-token cross-entropy (nats) over `windows` [n, seq_len]."""
    model.eval()
    batch_size = batch_size or recipe["batch_size"]
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        x = windows[i:i + batch_size]
        with _autocast(recipe, x.device.type):
            logits = model(input_ids=x).logits
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        total += nll.item()
        count += x[:, 1:].numel()
    model.train()
    return total / count


def _train_step(model, optimizer, x, recipe, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr
    with _autocast(recipe, x.device.type):
        out = model(input_ids=x, labels=x, output_router_logits=True) if not _is_llama4(model) \
            else model(input_ids=x, labels=x)
    aux = _aux_loss(model, out)
    # transformers adds coef * aux to `loss` for the models that have one; Llama 4 gets ours here.
    lm_loss = out.loss - recipe["router_aux_loss_coef"] * aux if not _is_llama4(model) else out.loss
    loss = out.loss if not _is_llama4(model) else out.loss + recipe["router_aux_loss_coef"] * aux
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return lm_loss.item(), float(aux.detach())


def _is_llama4(model):
    return model.config.model_type == "llama4_text"


def _batches(streams, recipe, rng):
    """Endless batches of windows cut at random offsets from the packed token streams.

    Each window comes from WikiText-2 valid's training part with probability `wiki_fraction`,
    else from the Gutenberg corpus (nanoGPT-style sampling with replacement, seeded).
    """
    seq_len, batch_size = recipe["seq_len"], recipe["batch_size"]
    gutenberg, wiki = streams["gutenberg-train"], streams["wikitext2-valid-train"]
    for ids in (gutenberg, wiki):
        if len(ids) <= seq_len:
            raise RecipeError(f"training text too short: {len(ids)} tokens for windows of {seq_len}")
    while True:
        from_wiki = rng.random(batch_size) < recipe["wiki_fraction"]
        rows = []
        for w in from_wiki:
            ids = wiki if w else gutenberg
            start = int(rng.integers(len(ids) - seq_len + 1))
            rows.append(torch.from_numpy(ids[start:start + seq_len]))
        yield torch.stack(rows)


def split_wiki_valid(text, holdout):
    """WikiText-2 valid -> (training part, held-out part): the held-out part is the last articles,
    starting at the first article heading (" = Title = ") at or after fraction 1 - holdout of the lines."""
    lines = text.split("\n")
    start = int(len(lines) * (1 - holdout))
    heading = next((i for i in range(start, len(lines)) if _is_article_heading(lines[i])), None)
    if heading is None:
        raise RecipeError(f"wiki_holdout={holdout} leaves no whole article to hold out")
    # The blank " " line before a heading belongs to the heading.
    cut = heading - 1 if heading > 0 and not lines[heading - 1].strip() else heading
    return "\n".join(lines[:cut]) + "\n", "\n".join(lines[cut:])


def _is_article_heading(line):
    return line.startswith(" = ") and line.endswith(" = ") and not line.startswith(" = =")


def _prepare(name, profile, overrides):
    """Resolved recipe, tokenizer, training streams {name: ids} and the validation windows."""
    recipe = resolve_recipe(name, profile, overrides)
    tokenizer = build_tokenizer(recipe["vocab_size"], recipe["tokenizer_chars"])
    wiki_train, wiki_held = split_wiki_valid(data.load_text("wikitext2-valid"), recipe["wiki_holdout"])
    streams = {
        "gutenberg-train": encode(tokenizer, _head(data.load_text("gutenberg-train"), recipe["train_chars"])),
        "wikitext2-valid-train": encode(tokenizer, wiki_train),
    }
    valid = _windows(encode(tokenizer, wiki_held), recipe["seq_len"])
    pick = np.linspace(0, len(valid) - 1, min(recipe["eval_windows"], len(valid))).round().astype(int)
    return recipe, tokenizer, streams, valid[torch.from_numpy(pick)]


def train_reference(name, out_dir, profile="full", overrides=None, threads=1, progress=True, device="cpu"):
    """Train reference model `name` and save it to `out_dir`.

    Args:
        name: one of MODELS.
        out_dir: folder for the checkpoint (bf16 safetensors), tokenizer, train_log.csv, train_meta.json.
        profile: "full" or "quick" (a few seconds, for tests).
        overrides: dict of recipe keys to change (e.g. from config.yaml).
        threads: torch CPU threads (1 was fastest on the shared 2-core machine).
        device: torch device; the recipes are sized for "cpu" (a GPU run wants
            overrides={"experts_implementation": "eager"} unless its grouped_mm takes fp32).
        progress: show a tqdm bar.
    Returns:
        The train_meta dict.
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    recipe, tokenizer, streams, valid = _prepare(name, profile, overrides)
    torch.set_num_threads(threads)
    torch.manual_seed(recipe["seed"])
    rng = np.random.default_rng(recipe["seed"])
    model = build_model(name, recipe, tokenizer).to(device)
    valid = valid.to(device)
    model.train()
    optimizer = _make_optimizer(model, recipe)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokens_per_step = recipe["batch_size"] * recipe["seq_len"]
    log_rows, losses, auxes = [], [], []
    t_train = time.perf_counter()

    def log(step):
        val = validation_loss(model, valid, recipe)
        row = {
            "step": step, "tokens": step * tokens_per_step, "lr": lr_at(max(step - 1, 0), recipe),
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "aux_loss": float(np.mean(auxes)) if auxes else float("nan"),
            "val_loss": val, "val_ppl": math.exp(val), "elapsed_s": time.perf_counter() - t_train,
        }
        log_rows.append(row)
        losses.clear()
        auxes.clear()
        return row

    log(0)
    batches = _batches(streams, recipe, rng)
    bar = tqdm(range(recipe["steps"]), desc=name, disable=not progress, mininterval=2.0)
    for step in bar:
        loss, aux = _train_step(model, optimizer, next(batches).to(device), recipe, lr_at(step, recipe))
        losses.append(loss)
        auxes.append(aux)
        if (step + 1) % recipe["eval_every"] == 0 or step + 1 == recipe["steps"]:
            row = log(step + 1)
            bar.set_postfix(train=f"{row['train_loss']:.3f}", val=f"{row['val_loss']:.3f}")
    train_s = time.perf_counter() - t_train

    with open(out_dir / "train_log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(log_rows[0]))
        writer.writeheader()
        writer.writerows(log_rows)

    model.config.output_router_logits = False
    model.to("cpu", torch.bfloat16).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

    import transformers

    tokens_seen = recipe["steps"] * tokens_per_step
    meta = {
        "model": name,
        "architecture": ARCHS[name]["model_class"],
        "profile": profile,
        "recipe": recipe,
        "params": count_params(model),
        "train_tokens_available": {k: int(len(v)) for k, v in streams.items()},
        "valid_tokens": int(valid.numel()),
        "tokens_seen": tokens_seen,
        "tokens_per_param": tokens_seen / count_params(model),
        "train_wall_s": train_s,
        "wall_s": time.perf_counter() - t_start,
        "tokens_per_s": tokens_seen / train_s,
        "initial_val_loss": log_rows[0]["val_loss"],
        "final_val_loss": log_rows[-1]["val_loss"],
        "final_val_ppl": log_rows[-1]["val_ppl"],
        # The same for all four models of a profile: BPE training is deterministic.
        "tokenizer_sha256": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
        "threads": threads,
        "device": str(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    (out_dir / "train_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def measure_throughput(name, profile="full", overrides=None, steps=20, warmup=3, threads=1):
    """Training tokens per second of a recipe, timed over `steps` steps after `warmup` steps.

    The short probe that set the `full` steps; rerun it on a new machine before changing them.
    """
    recipe = resolve_recipe(name, profile, overrides)
    torch.set_num_threads(threads)
    torch.manual_seed(recipe["seed"])
    model = build_model(name, recipe)
    optimizer = _make_optimizer(model, recipe)
    x = torch.randint(0, recipe["vocab_size"], (recipe["batch_size"], recipe["seq_len"]))
    for _ in range(warmup):
        _train_step(model, optimizer, x, recipe, 1e-4)
    t0 = time.perf_counter()
    for _ in range(steps):
        _train_step(model, optimizer, x, recipe, 1e-4)
    dt = time.perf_counter() - t0
    return {"model": name, "params": count_params(model), "tokens_per_s": steps * x.numel() / dt,
            "s_per_step": dt / steps}


def _parse_overrides(items):
    """`key=value` strings -> dict, values parsed as JSON when they parse (numbers, true, null)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise RecipeError(f"--set wants key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv=None):
    """`mint train-reference --model mini-mixtral --profile quick --out DIR [--overrides JSON] [--set k=v]`."""
    parser = argparse.ArgumentParser(prog="mint train-reference", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--profile", default="full", choices=PROFILES)
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override one recipe key (repeatable)")
    parser.add_argument("--overrides", dest="overrides_json", metavar="JSON",
                        help='a JSON object of recipe overrides, e.g. \'{"steps": 100}\'')
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device (the recipes are sized for the CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = parser.parse_args(argv)
    try:
        overrides = json.loads(args.overrides_json) if args.overrides_json else {}
        if not isinstance(overrides, dict):
            raise RecipeError("--overrides must be a JSON object")
        overrides.update(_parse_overrides(args.overrides))
        meta = train_reference(args.model, args.out, args.profile, overrides, args.threads,
                               progress=not args.no_progress, device=args.device)
    except json.JSONDecodeError as e:
        print(f"mint train-reference: error: --overrides is not valid JSON: {e}", file=sys.stderr)
        return 2
    except (RecipeError, data.DataError) as e:
        print(f"mint train-reference: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.model}: {meta['params'] / 1e6:.2f}M params, {meta['tokens_seen']:,} tokens in "
          f"{meta['train_wall_s']:.0f} s, val loss {meta['initial_val_loss']:.3f} -> {meta['final_val_loss']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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


def _fan_in(name, param, arch):
    """Input dimension of a weight: Llama-4 stores its fused experts as [E, in, out]."""
    if arch == "llama4" and param.dim() == 3:
        return param.shape[-2]
    return param.shape[-1]


@torch.no_grad()
def randomize(model, arch, seed=0):
    """Refill every parameter of `model` with seeded, well-scaled random values (see INIT_STD)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if p.dim() == 1:
            value = noise * NORM_JITTER + (0.0 if name.endswith(".bias") else 1.0)
        elif "embed_tokens" in name:
            value = noise * INIT_STD
        else:
            value = noise * (INIT_STD / math.sqrt(_fan_in(name, p, arch)))
        p.copy_(value.to(p.dtype))
    return model


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


def write_tiny_bpe_tokenizer(path, vocab=256):
    """A tiny byte-level BPE tokenizer (tokenizer.json, as transformers saves it) in folder `path`.

    llama.cpp's converter identifies a BPE tokenizer's pre-tokenizer by the hash of its output on a
    fixed text; this one is unknown to it (tests answer that check themselves, see test_gguf.py).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # 256 byte symbols + 1 special token + merges: the vocabulary must exceed the alphabet.
    trainer = trainers.BpeTrainer(vocab_size=max(vocab, 260) - 2, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([f"w{i} the a of and x{i % 7}" for i in range(300)], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(path)
    return Path(path)

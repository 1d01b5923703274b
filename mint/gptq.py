"""GPTQ baseline worker: llm-compressor's `GPTQModifier` through `oneshot`, in its own environment.

GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", arXiv:2210.17323) quantizes one Linear layer at a time, column by column, and pushes
each column's rounding error onto the columns not yet quantized through the inverse Hessian
H = X X^T of the layer's calibration inputs X, so it minimizes ||(W - W_q) X|| rather than
||W - W_q||. This module runs llm-compressor's implementation of it and turns the result into what
the rest of the pipeline reads.

llm-compressor pins transformers to an older release than the main environment, so this file runs
under `.venv-gptq/bin/python` (`make gptq-env`) as a subprocess of `mint baseline gptq`, which
prepares the calibration tokens and finishes the result JSON. It imports only what that environment
has (torch, transformers, llmcompressor and its dependencies, safetensors, numpy): nothing of `mint`.

What is quantized (the usual llm-compressor recipe for MoE models): every `nn.Linear` (attention,
dense MLPs, shared experts, and every routed expert, which llm-compressor first splits out of
transformers' fused [E, ...] expert tensors into one Linear per expert and projection), except the
LM head and the routers (`mlp.gate`, `block_sparse_moe.gate`, `shared_expert_gate`,
`feed_forward.router`). Embeddings, the head, routers, norms and biases stay 16-bit.

Scheme: integer, asymmetric (scale and integer zero point), group-wise along the input axis, min-max
observer, 16-bit scales (the checkpoint's 16-bit dtype), static activation ordering, every expert
calibrated on every token (`moe_calibrate_all_experts=True`).

Storage, as compressed-tensors' `pack-quantized` format writes it (`PackedQuantizationCompressor`),
for a quantized [out, in] weight at b bits and group g, with G = ceil(in / g):

    weight_packed       int32 [out, ceil(in*b/32)]        dense b-bit codes, 32 codes per b words
    weight_scale        16-bit [out, G]                    2 bytes per group
    weight_zero_point   int32 [ceil(out*b/32), G]          b-bit zero points, packed along `out`
    weight_shape        int64 [2]                          16 bytes per module

`packed_bytes` computes exactly that, and the worker checks it against the bytes of the tensors
compressed-tensors itself produces for every module. The dequantized weights written out are
decompressed from that packed form (so they are what a runtime rebuilds), in float32.

Per module instead (`mint quantize-gptq`, mint/gptq_rounding.py): `--configs` gives each matrix its
own (bits, group size), keyed by a fingerprint of its weights (`fingerprint`), and `--codes-out`
receives the integer codes, scales and zero points of every quantized matrix, which MINT's exporter
writes in the MLX format.

    .venv-gptq/bin/python mint/gptq.py --checkpoint ckpt/ --calibration calib.safetensors \\
        --bits 4 --group-size 128 --out gptq.json --dequant-out dequant/
    .venv-gptq/bin/python mint/gptq.py --checkpoint ckpt/ --calibration calib.safetensors \\
        --configs configs.json --out gptq.json --codes-out codes.safetensors
"""

import argparse
import hashlib
import json
import math
import os
import re
import resource
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

# Modules GPTQ leaves in 16 bits besides non-Linear ones (embeddings, norms): the LM head and the
# routers, as in llm-compressor's MoE examples. `re:` patterns match a module's full name.
IGNORE = [
    "lm_head",
    r"re:.*mlp\.gate$",
    r"re:.*block_sparse_moe\.gate$",
    r"re:.*shared_expert_gate$",
    r"re:.*feed_forward\.router$",
]
SCALE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
ACTORDERS = ("static", "weight", "none")
# Files a runtime needs beside the weights, copied into the dequantized folder when present.
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
              "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
              "chat_template.jinja", "chat_template.json")
_LAYER_RE = re.compile(r"layers\.(\d+)\.")


def packed_bytes(out_features, in_features, bits, group_size):
    """Bytes of one [out, in] weight in compressed-tensors' asymmetric group pack-quantized format.

    >>> packed_bytes(4096, 4096, 4, 128)   # 4 + 16/128 + 4/128 bits per weight, plus 16 bytes
    8716304
    """
    groups = math.ceil(in_features / group_size)
    codes = 4 * out_features * math.ceil(in_features * bits / 32)
    scales = 2 * out_features * groups
    zero_points = 4 * math.ceil(out_features * bits / 32) * groups
    return codes + scales + zero_points + 16


def peak_rss_mb():
    """Peak resident memory of this process in MiB: VmHWM, which, unlike ru_maxrss, starts afresh
    at exec (so the worker does not inherit the high-water mark of the process that started it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# Calibration


def batches(input_ids, batch_size):
    """Calibration batches as `oneshot` reads them: dicts of input_ids and attention_mask."""
    out = []
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size]
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def _router_indices(module, args, output, top_k):
    """Expert indices [tokens, top_k] a router chose: its own output if it returns them (Mixtral,
    Qwen), else the top-k of its logits (Llama-4's router returns sigmoid scores and logits)."""
    if isinstance(output, tuple):
        for t in output:
            if torch.is_tensor(t) and not t.is_floating_point() and t.dim() == 2:
                return t
    x = args[0].reshape(-1, module.weight.shape[-1])
    logits = torch.nn.functional.linear(x.to(module.weight.dtype), module.weight)
    return torch.topk(logits, top_k, dim=-1).indices


def find_routers(model):
    """{layer: router module} of every MoE layer (a module matching IGNORE's router patterns)."""
    routers = {}
    for name, module in model.named_modules():
        if re.match(r".*(mlp\.gate|block_sparse_moe\.gate|feed_forward\.router)$", name):
            layer = _LAYER_RE.search(name)
            if layer and getattr(module, "weight", None) is not None:
                routers[int(layer.group(1))] = module
    return routers


@torch.no_grad()
def count_routing(model, calibration, top_k):
    """Tokens each expert receives under the model's normal (top-k) routing, per layer.

    Runs the unquantized model over the calibration batches with a hook on every router.
    Returns {layer: [tokens routed to expert 0, 1, ...]}.
    """
    routers = find_routers(model)
    counts = {layer: torch.zeros(r.weight.shape[0], dtype=torch.long) for layer, r in routers.items()}
    handles = []
    for layer, router in routers.items():
        def hook(module, args, output, layer=layer):
            idx = _router_indices(module, args, output, top_k)
            counts[layer] += torch.bincount(idx.reshape(-1), minlength=counts[layer].numel())
        handles.append(router.register_forward_hook(hook))
    try:
        for batch in calibration:
            model(**batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {layer: c.tolist() for layer, c in sorted(counts.items())}


# ---------------------------------------------------------------------------------------------
# GPTQ


def gptq_modifier(targets, scale_dtype, block_size=128, dampening=0.01, actorder="static"):
    """The GPTQModifier: int, asymmetric, group-wise, 16-bit scales, min-max.

    `targets` maps (bits, group_size) to the modules quantized that way: compressed-tensors target
    strings (a class name such as "Linear", or exact module names), one config group per scheme.
    """
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.gptq import GPTQModifier

    groups = {}
    for i, ((bits, group_size), names) in enumerate(sorted(targets.items())):
        weights = QuantizationArgs(num_bits=bits, type="int", symmetric=False, strategy="group",
                                   group_size=group_size, scale_dtype=scale_dtype, observer="memoryless_minmax")
        groups[f"group_{i}"] = QuantizationScheme(targets=list(names), weights=weights)
    return GPTQModifier(config_groups=groups, ignore=IGNORE, block_size=block_size,
                        dampening_frac=dampening, actorder=None if actorder == "none" else actorder)


def quantized_modules(model):
    """(name, module) of every module carrying a weight quantization scheme."""
    return [(n, m) for n, m in model.named_modules()
            if getattr(getattr(m, "quantization_scheme", None), "weights", None) is not None]


@torch.no_grad()
def pack_and_rebuild(module, scale_dtype):
    """Compress one quantized Linear as compressed-tensors stores it, and decompress it again.

    Returns (float32 weight rebuilt from the packed tensors, {tensor name: bytes} of the packed form).
    The rebuilt weight must equal the fake-quantized weight GPTQ left in the module.
    """
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor

    scheme = module.quantization_scheme
    state = {"weight": module.weight.detach().float(),
             "weight_scale": module.weight_scale.detach().to(scale_dtype),
             "weight_zero_point": module.weight_zero_point.detach()}
    packed = PackedQuantizationCompressor.compress(state, scheme)
    sizes = {k: v.numel() * v.element_size() for k, v in packed.items()}
    # Decompress with float32 scales (holding the 16-bit values) so the product is not rounded.
    rebuilt = PackedQuantizationCompressor.decompress({**packed, "weight_scale": packed["weight_scale"].float()},
                                                      scheme)["weight"]
    return rebuilt.float(), sizes


def linearize_llama4_text(model):
    """Split Llama-4's fused experts into Linears ourselves, for a text-only model.

    llm-compressor's Llama-4 converter reads `config.text_config`, which only the multimodal
    Llama4Config has; a Llama4ForCausalLM carries the Llama4TextConfig itself. Returns
    {name: original fused module}, into which `restore_llama4_text` copies the weights back.
    """
    from types import SimpleNamespace

    from llmcompressor.modeling.moe.llama4 import Llama4LinearExperts

    originals = {}
    for name, module in list(model.named_modules()):
        if type(module).__name__ == "Llama4TextExperts" and not hasattr(model.config, "text_config"):
            linear = Llama4LinearExperts.from_experts_module(module, SimpleNamespace(text_config=model.config))
            originals[name] = module
            model.set_submodule(name, linear)
    return originals


@torch.no_grad()
def restore_llama4_text(model, originals):
    """Copy the per-expert Linears back into the fused Llama-4 tensors and put those back."""
    for name, fused in originals.items():
        linear = model.get_submodule(name)
        for e in range(linear.num_experts):
            linear[e].copy_to_experts_module(fused, e)
        model.set_submodule(name, fused)


def run_oneshot(model, calibration, modifier):
    """GPTQ over the calibration batches, every expert seeing every token."""
    from llmcompressor import oneshot
    from torch.utils.data import DataLoader

    # The calibration set is already tokenized and batched (batch_size=None: items are batches), so
    # no processor is needed; oneshot insists on one when given data, but only tokenizes or saves with it.
    oneshot(model=model, dataset=DataLoader(calibration, batch_size=None), recipe=modifier, processor=_NoProcessor(),
            moe_calibrate_all_experts=True, num_calibration_samples=sum(len(b["input_ids"]) for b in calibration),
            pipeline="sequential")
    return model


class _NoProcessor:
    """Stands in for a tokenizer that oneshot never calls on pre-tokenized batches."""


# ---------------------------------------------------------------------------------------------
# Dequantized folder


def read_headers(folder):
    """{tensor name: (dtype, shape)} over the safetensors files of a folder."""
    out = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                out[name] = (sl.get_dtype(), tuple(sl.get_shape()))
    return out


def strip_quantization(model):
    """Remove scales, zero points, schemes and wrapped forwards, and the config's quantization_config."""
    from compressed_tensors.quantization.quant_metadata import QuantizationMetadata

    for _, module in model.named_modules():
        QuantizationMetadata.clear_quantization(module)
        for attr in ("quantization_status", "quantization_enabled"):
            if hasattr(module, attr):
                delattr(module, attr)
    for attr in ("quantization_config", "compression_config"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)


def write_dequantized(model, checkpoint, out, fused_originals=None, dtype=torch.float32):
    """Save the model (weights already rebuilt) with the input checkpoint's tensor names and shapes."""
    from llmcompressor.modeling.moe.linearize import repack_moe

    strip_quantization(model)
    restore_llama4_text(model, fused_originals or {})
    repack_moe(model)
    model.to(dtype)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # The class method, not the instance's: oneshot wraps the instance's save_pretrained to compress.
    type(model).save_pretrained(model, tmp)
    for name in SIDE_FILES:
        if (Path(checkpoint) / name).exists():
            shutil.copy2(Path(checkpoint) / name, tmp / name)
    want, got = read_headers(checkpoint), read_headers(tmp)
    if set(want) != set(got):
        raise RuntimeError(f"dequantized folder has other tensors than the input: missing "
                           f"{sorted(set(want) - set(got))[:5]}, extra {sorted(set(got) - set(want))[:5]}")
    bad = [n for n in want if want[n][1] != got[n][1]]
    if bad:
        raise RuntimeError(f"dequantized tensors with other shapes than the input: {bad[:5]}")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------------------------------------
# Per-module configs (MINT's allocation) and the integer codes


def fingerprint(w):
    """Content key of a weight matrix: a hash of its float32 values and shape.

    It names the same matrix on both sides of the environment boundary (MINT reads the checkpoint
    its way, transformers and llm-compressor theirs, with other module names and expert layouts):
    both read the same stored values, and widening them to float32 is exact.
    """
    w = w.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.blake2b(str(tuple(w.shape)).encode(), digest_size=16)
    digest.update(w.view(torch.uint8).reshape(-1).numpy().data)
    return digest.hexdigest()


def assign_targets(model, configs):
    """{(bits, group_size): [module names]} of the Linears whose original weight `configs` names.

    `configs` is {fingerprint: {"bits", "group_size", "matrix"}} (one entry per matrix MINT gives a
    quantized config; "matrix" names it for messages). Every entry must match exactly one Linear of
    the (linearized) model. Returns the targets and {module name: fingerprint}.
    """
    from llmcompressor.modeling.moe.linearize import linearize_moe

    linearize_moe(model)
    targets, keys = {}, {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        key = fingerprint(module.weight)
        if key not in configs:
            continue
        if key in keys.values():
            raise RuntimeError(f"{name} holds the same weights as another module ({configs[key]['matrix']}); "
                               "their codes could not be told apart")
        keys[name] = key
        targets.setdefault((configs[key]["bits"], configs[key]["group_size"]), []).append(name)
    missing = [c["matrix"] for k, c in configs.items() if k not in keys.values()]
    if missing:
        raise RuntimeError(f"{len(missing)} matrices of the allocation are no Linear of the model as "
                           f"transformers loads it, e.g. {missing[:3]}")
    return targets, keys


@torch.no_grad()
def integer_codes(module, scale_dtype):
    """The affine code GPTQ left in one quantized Linear, as unsigned integers.

    compressed-tensors' "int" type holds signed codes q and zero points z in [-2^(b-1), 2^(b-1)) and
    rebuilds w = s * (q - z); shifting both by 2^(b-1) gives the same w with codes in [0, 2^b), as
    MLX stores them. Returns (codes uint8 [out, in], scales in `scale_dtype` [out, G], zero points
    uint8 [out, G]); raises unless they rebuild the module's (fake-quantized) weight exactly.
    """
    from compressed_tensors.quantization.lifecycle.forward import quantize

    args = module.quantization_scheme.weights
    w = module.weight.detach().float()
    scale, zero = module.weight_scale.detach(), module.weight_zero_point.detach()
    scales = scale.to(scale_dtype)
    if not torch.equal(scales.float(), scale.float()):
        raise RuntimeError("GPTQ's scales are not 16-bit values")
    offset = 2 ** (args.num_bits - 1)
    q = quantize(w, scale.float(), zero, args).round().long() + offset
    z = zero.long() + offset
    rebuilt = (q - z.repeat_interleave(args.group_size, dim=1)).float() * scales.float().repeat_interleave(
        args.group_size, dim=1)
    if not torch.equal(rebuilt, w):
        raise RuntimeError(f"codes rebuild GPTQ's weights only to {(rebuilt - w).abs().max().item()}")
    return q.to(torch.uint8), scales, z.to(torch.uint8)


def gptq_mixed(checkpoint, calibration, configs, out, codes_out, scale_dtype="bfloat16", batch_size=8,
               block_size=128, dampening=0.01, actorder="static", threads=None):
    """GPTQ with one (bits, group_size) per module, as `configs` (a JSON file) gives; writes the codes.

    Args:
        configs: JSON {fingerprint of the original weight: {"bits", "group_size", "matrix"}}.
        codes_out: safetensors file to write: per matrix `<fingerprint>.codes` (uint8 [out, in]),
            `.scales` (`scale_dtype` [out, G]) and `.zero_points` (uint8 [out, G]), w = s * (q - z).
        The rest as `gptq`.
    Returns:
        The result dict written to `out` (per module: name, fingerprint, bits, group size).
    """
    import transformers
    from safetensors.torch import save_file

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    sdtype = SCALE_DTYPES[scale_dtype]
    configs = json.loads(Path(configs).read_text())
    input_ids = load_file(calibration)["input_ids"].long()
    calib = batches(input_ids, batch_size)
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, trust_remote_code=False)
    model.eval()
    linearize_llama4_text(model)
    targets, keys = assign_targets(model, configs)
    modifier = gptq_modifier(targets, sdtype, block_size, dampening, actorder)
    t = time.perf_counter()
    run_oneshot(model, calib, modifier)
    gptq_seconds = time.perf_counter() - t

    codes, modules = {}, []
    for name, module in quantized_modules(model):
        key = keys[name]
        codes[f"{key}.codes"], codes[f"{key}.scales"], codes[f"{key}.zero_points"] = integer_codes(module, sdtype)
        args = module.quantization_scheme.weights
        if (args.num_bits, args.group_size) != (configs[key]["bits"], configs[key]["group_size"]):
            raise RuntimeError(f"{name} was quantized at {args.num_bits} bits g{args.group_size}, "
                               f"the allocation says {configs[key]}")
        modules.append({"name": name, "fingerprint": key, "matrix": configs[key]["matrix"],
                        "bits": args.num_bits, "group_size": args.group_size})
    if len(modules) != len(configs):
        raise RuntimeError(f"GPTQ quantized {len(modules)} modules, the allocation names {len(configs)}")
    Path(codes_out).parent.mkdir(parents=True, exist_ok=True)
    save_file(codes, str(codes_out))
    result = {
        "scheme": {"type": "int", "symmetric": False, "strategy": "group", "observer": "memoryless_minmax",
                   "scale_dtype": scale_dtype, "actorder": actorder, "block_size": block_size,
                   "dampening_frac": dampening, "moe_calibrate_all_experts": True, "ignore": IGNORE},
        "calibration": {"windows": int(input_ids.shape[0]), "seq_len": int(input_ids.shape[1]),
                        "tokens": int(input_ids.numel()), "batch_size": batch_size},
        "quantized_modules": modules,
        "rtn_fallback_modules": list(getattr(modifier, "_rtn_fallback_module_names", [])),
        "gptq_seconds": gptq_seconds,
        "worker_seconds": time.perf_counter() - start,
        "worker_peak_rss_mb": peak_rss_mb(),
        "versions": _versions(),
    }
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return result


# ---------------------------------------------------------------------------------------------


def gptq(checkpoint, calibration, bits, group_size, out, dequant_out, scale_dtype="bfloat16", batch_size=8,
         block_size=128, dampening=0.01, actorder="static", threads=None):
    """Run GPTQ on `checkpoint` with the token windows in `calibration`; write the JSON and the folder.

    Args:
        checkpoint: Hugging Face checkpoint folder.
        calibration: safetensors file holding `input_ids` int64 [windows, seq_len].
        bits, group_size: the scheme.
        out: JSON to write (the worker's part of the result; `mint baseline gptq` completes it).
        dequant_out: folder to write, with the input's tensor names and shapes, in float32.
        scale_dtype: "bfloat16" or "float16", the 16-bit dtype scales are rounded to and stored in.
    Returns:
        The result dict written to `out`.
    """
    import transformers

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    sdtype = SCALE_DTYPES[scale_dtype]
    input_ids = load_file(calibration)["input_ids"].long()
    calib = batches(input_ids, batch_size)
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, trust_remote_code=False)
    model.eval()
    top_k = getattr(model.config, "num_experts_per_tok", None) or getattr(model.config.get_text_config(),
                                                                         "num_experts_per_tok", 1)
    t = time.perf_counter()
    routing = count_routing(model, calib, top_k)
    routing_seconds = time.perf_counter() - t

    modifier = gptq_modifier({(bits, group_size): ["Linear"]}, sdtype, block_size, dampening, actorder)
    t = time.perf_counter()
    fused_originals = linearize_llama4_text(model)
    run_oneshot(model, calib, modifier)
    gptq_seconds = time.perf_counter() - t

    modules = []
    for name, module in quantized_modules(model):
        rebuilt, sizes = pack_and_rebuild(module, sdtype)
        if not torch.equal(rebuilt, module.weight.detach().float()):
            diff = (rebuilt - module.weight.detach().float()).abs().max().item()
            raise RuntimeError(f"{name}: weights rebuilt from the packed form differ from GPTQ's by {diff}")
        out_f, in_f = module.weight.shape
        formula = packed_bytes(out_f, in_f, bits, group_size)
        if formula != sum(sizes.values()):
            raise RuntimeError(f"{name}: packed_bytes {formula} != compressed-tensors' {sizes}")
        module.weight.data = rebuilt
        modules.append({"name": name, "out": out_f, "in": in_f, "packed_bytes": formula})
    rtn_fallback = list(getattr(modifier, "_rtn_fallback_module_names", []))

    t = time.perf_counter()
    write_dequantized(model, checkpoint, dequant_out, fused_originals)
    write_seconds = time.perf_counter() - t

    result = {
        "bits": bits,
        "group_size": group_size,
        "scheme": {"type": "int", "symmetric": False, "strategy": "group", "observer": "memoryless_minmax",
                   "scale_dtype": scale_dtype, "actorder": actorder, "block_size": block_size,
                   "dampening_frac": dampening, "moe_calibrate_all_experts": True,
                   "pack_format": "pack-quantized", "ignore": IGNORE},
        "calibration": {"windows": int(input_ids.shape[0]), "seq_len": int(input_ids.shape[1]),
                        "tokens": int(input_ids.numel()), "batch_size": batch_size},
        "quantized_modules": modules,
        "quantized_weights": sum(m["out"] * m["in"] for m in modules),
        "quantized_bytes": sum(m["packed_bytes"] for m in modules),
        "rtn_fallback_modules": rtn_fallback,
        "tokens_per_expert": {str(k): v for k, v in routing.items()},
        "experts_without_tokens": {str(k): sum(c == 0 for c in v) for k, v in routing.items()},
        "top_k": top_k,
        "routing_seconds": routing_seconds,
        "gptq_seconds": gptq_seconds,
        "write_seconds": write_seconds,
        "worker_seconds": time.perf_counter() - start,
        "worker_peak_rss_mb": peak_rss_mb(),
        "versions": _versions(),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return result


def _versions():
    """The versions that made a result: torch, transformers, llm-compressor, compressed-tensors."""
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "llmcompressor": _version("llmcompressor"), "compressed-tensors": _version("compressed-tensors")}


def _version(dist):
    from importlib.metadata import version

    return version(dist)


def main(argv=None):
    p = argparse.ArgumentParser(prog="mint/gptq.py", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="Hugging Face checkpoint folder")
    p.add_argument("--calibration", required=True, help="safetensors file with input_ids [windows, seq_len]")
    p.add_argument("--bits", type=int, choices=range(2, 9), metavar="{2..8}", help="uniform: every Linear's bits")
    p.add_argument("--group-size", type=int, help="uniform: every Linear's group size")
    p.add_argument("--configs", help="per module instead: JSON {fingerprint: {bits, group_size, matrix}}")
    p.add_argument("--out", required=True, help="JSON to write")
    p.add_argument("--dequant-out", help="uniform: dequantized folder to write")
    p.add_argument("--codes-out", help="per module: safetensors file of integer codes, scales, zero points")
    p.add_argument("--scale-dtype", choices=tuple(SCALE_DTYPES), default="bfloat16")
    p.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward")
    p.add_argument("--block-size", type=int, default=128, help="GPTQ columns per block")
    p.add_argument("--dampening", type=float, default=0.01, help="fraction of the mean Hessian diagonal added")
    p.add_argument("--actorder", choices=ACTORDERS, default="static")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    kwargs = vars(args)
    uniform = {k: kwargs.pop(k) for k in ("bits", "group_size", "dequant_out")}
    mixed = {k: kwargs.pop(k) for k in ("configs", "codes_out")}
    if all(mixed.values()) and not any(uniform.values()):
        gptq_mixed(**kwargs, **mixed)
    elif all(uniform.values()) and not any(mixed.values()):
        gptq(**kwargs, **uniform)
    else:
        p.error("give --bits, --group-size and --dequant-out (uniform), or --configs and --codes-out (per module)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

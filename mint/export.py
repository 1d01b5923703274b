"""Write an allocation out: an MLX folder that mlx-lm loads, and a dequantized folder transformers loads.

The MLX folder holds the weights as mlx-lm's models hold them after `sanitize()` (METHOD.md §1):
routed experts stacked [E, out, in] under their MLX module, quantized modules as `.weight` (uint32,
packed by `mint.quantizer.pack`), `.scales` and `.biases` (16-bit), everything else in 16 bits, and
a config.json with the per-module `quantization` dict. The dequantized folder has the input's tensor
names and layout with every weight replaced by what the MLX folder rebuilds, dequantize(quantize(w))
(16-bit tensors rounded to the 16-bit dtype), so transformers evaluates exactly the exported model.

Both folders are written in one pass over the checkpoint, one matrix (one expert) at a time: output
tensor shapes are known before any weight is read, so every safetensors header is written first and
each matrix's bytes go straight to their offset. Folders are written under a temporary name, checked
(every tensor present with its shape and dtype; written bytes equal to the predicted
`tensor_bytes`), then renamed into place.

    mint quantize --checkpoint ckpt/ --allocation alloc.json --mlx-out model-mlx/ --dequant-out model-hf/
"""

import argparse
import copy
import json
import math
import multiprocessing
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mint import kernels
from mint.checkpoint import MX_BLOCKS, MXFP4, Checkpoint, CheckpointError, default_dtype16, read_header
from mint.layouts import config_value, mlx_supported
from mint.quantizer import FULL, check_config, dequantize, fits, pack, quantize, quantize_mlx, tensor_bytes

GIB = 1024**3
# mlx-lm's own shard limit (utils.MAX_FILE_SIZE_GB).
MAX_SHARD_BYTES = 5 * GIB
# Rows are quantized and packed in blocks of about this many weights: pack() holds 8*bits bytes per
# weight of temporaries, so this bounds them (to 8 MiB at 8 bits) whatever the matrix size.
_BLOCK_WEIGHTS = 1 << 17
# Default (bits, group_size) of an mlx-lm quantization dict when no unit is quantized.
MLX_DEFAULT = (4, 64)
# Files a runtime needs beside the weights, copied when present.
SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
# The 16-bit dtypes the compiled quantize-and-pack rounds scales and biases to.
_DTYPE16 = {torch.float16: kernels.FLOAT16, torch.bfloat16: kernels.BFLOAT16}
ST_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.uint32: "U32"}
ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4, "U32": 4}
DTYPE_NAMES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class ExportError(ValueError):
    """The allocation does not fit the checkpoint, or mlx-lm cannot represent the result."""


# ---------------------------------------------------------------------------------------------
# The allocation


def unit_configs(ckpt, allocation):
    """{unit: (bits, group_size)} for every unit of `ckpt`, FULL = (16, 0) for 16-bit.

    Every quantizable unit must be listed once; norms and other parameters may be omitted (they
    are always 16-bit). Raises ExportError naming the offending unit.
    """
    units = ckpt.units()
    configs = {}
    for entry in allocation.get("units", []):
        if not isinstance(entry, dict) or not {"unit", "bits"} <= set(entry):
            raise ExportError(f"allocation unit entries need `unit` and `bits` (and `group_size`), got {entry!r}")
        unit = entry["unit"]
        if unit not in units:
            raise ExportError(f"allocation unit {unit!r} is not a unit of {ckpt.path}")
        if unit in configs:
            raise ExportError(f"allocation lists unit {unit!r} twice")
        bits = int(entry["bits"])
        config = FULL if bits == 16 else (bits, int(entry.get("group_size") or 0))
        try:
            check_config(*config)
        except ValueError as e:
            raise ExportError(f"unit {unit}: {e}") from None
        ref = units[unit][0]
        if config != FULL and not ref.quantizable:
            raise ExportError(f"unit {unit} ({ref.role}) is always 16-bit, the allocation gives it {bits} bits")
        if not fits(ref.out_in[1], config[1]):
            raise ExportError(f"unit {unit}: input dimension {ref.out_in[1]} is not a multiple of group size {config[1]}")
        expected = predicted_bytes(units[unit], config)
        if entry.get("bytes") is not None and int(entry["bytes"]) != expected:
            raise ExportError(
                f"unit {unit}: the allocation says {entry['bytes']} bytes, this checkpoint gives {expected}; "
                "was the allocation made for another checkpoint?"
            )
        configs[unit] = config
    missing = [u for u, refs in units.items() if refs[0].quantizable and u not in configs]
    if missing:
        raise ExportError(f"the allocation misses {len(missing)} units of the checkpoint, e.g. {missing[:3]}")
    return {u: configs.get(u, FULL) for u in units}


def clipped_units(allocation):
    """Units to quantize with the clip search: each unit's own `clip`, else the allocation's (older
    allocations mark only the whole allocation)."""
    default = bool(allocation.get("clip", False))
    return {e["unit"] for e in allocation.get("units", []) if isinstance(e, dict) and e.get("clip", default)}


def _override(config):
    return False if config == FULL else {"bits": config[0], "group_size": config[1]}


def build_quantization(ckpt, configs):
    """mlx-lm `quantization` dict: the most common quantized config as default, every module listed."""
    units = ckpt.units()
    modules = {u: c for u, c in configs.items() if units[u][0].quantizable}
    counts = Counter(c for c in modules.values() if c != FULL)
    bits, group = max(counts, key=lambda c: (counts[c], c)) if counts else MLX_DEFAULT
    out = {"bits": bits, "group_size": group}
    out.update({u: _override(c) for u, c in modules.items()})
    return dict(sorted(out.items()))


def check_quantization(ckpt, configs, quantization):
    """Raise ExportError unless `quantization` says for every module it names what `configs` says.

    mlx-lm quantizes a module named in the dict as the dict says, and infers any other module from
    the `.scales` we write, so the dict must agree with the allocation where it speaks.
    """
    units = ckpt.units()
    if "bits" not in quantization or "group_size" not in quantization:
        raise ExportError("the quantization dict needs default `bits` and `group_size` (mlx-lm reads them)")
    if quantization.get("mode", "affine") != "affine":
        raise ExportError(f"quantization mode {quantization['mode']!r}: MINT writes affine quantization")
    for key, value in quantization.items():
        if key in ("bits", "group_size", "mode"):
            continue
        if key not in units or not units[key][0].quantizable:
            raise ExportError(f"the quantization dict names {key!r}, which is not a module of this checkpoint")
        if value is not False:
            value = {"bits": value.get("bits"), "group_size": value.get("group_size")}
        if value != _override(configs[key]):
            raise ExportError(f"the quantization dict gives {key} {value}, the allocation units {configs[key]}")


def predicted_bytes(refs, config):
    """Bytes a unit takes in the MLX folder: `tensor_bytes`, 2 bytes per weight in 16 bits."""
    return tensor_bytes(sum(r.numel for r in refs), *config)


# ---------------------------------------------------------------------------------------------
# What gets written


@dataclass(frozen=True)
class OutTensor:
    """A tensor to write: safetensors name, dtype ("BF16", "U32", ...) and shape."""

    name: str
    dtype: str
    shape: tuple

    @property
    def nbytes(self):
        return math.prod(self.shape) * ITEMSIZE[self.dtype]


def mlx_tensors(unit, refs, config, dtype16, family=None):
    """The MLX tensors of one unit: `<unit>.weight` (+ `.scales`, `.biases`), or the parameter itself."""
    d16 = ST_DTYPES[dtype16]
    ref = refs[0]
    if not ref.quantizable:
        shape = tuple(mlx_parameter(family, unit, torch.empty(ref.part_shape, device="meta")).shape)
        return [OutTensor(unit, d16, shape)]
    out, inp = ref.out_in
    if ref.mlx_experts:  # one MLX module per expert (DBRX)
        return [t for e in range(ref.n_experts)
                for t in _module_tensors(ref.mlx_experts.format(expert=e), (), out, inp, config, d16)]
    lead = (sum(r.n_experts for r in refs),) if ref.role == "routed_expert" else ()
    return _module_tensors(unit, lead, out, inp, config, d16)


def _module_tensors(module, lead, out, inp, config, d16):
    """`<module>.weight` (+ `.scales`, `.biases`) of a [*lead, out, inp] weight in `config`."""
    if config == FULL:
        return [OutTensor(f"{module}.weight", d16, (*lead, out, inp))]
    bits, group = config
    return [
        OutTensor(f"{module}.weight", "U32", (*lead, out, inp * bits // 32)),
        OutTensor(f"{module}.scales", d16, (*lead, out, inp // group)),
        OutTensor(f"{module}.biases", d16, (*lead, out, inp // group)),
    ]


def _disk_tensors(ckpt):
    """{name: refs} of every tensor on disk (the parts of a fused tensor together), in disk order."""
    by_name = {}
    for ref in ckpt.refs:
        by_name.setdefault(ref.name, []).append(ref)
    return by_name


def plan_shards(tensors, max_shard_bytes):
    """Split `tensors` into shards of at most `max_shard_bytes` (a larger tensor gets its own)."""
    shards, current, size = [], [], 0
    for t in tensors:
        if current and size + t.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += t.nbytes
    if current or not shards:
        shards.append(current)
    return shards


def shard_names(n):
    """File names of `n` shards, as transformers and mlx-lm name them."""
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


# ---------------------------------------------------------------------------------------------
# Streaming safetensors writer


class ShardWriter:
    """Writes safetensors files whose tensors are known up front; tensor bytes go in at any row.

    Headers are written at once and each file is sized to its final length, so a tensor can be
    filled piece by piece (one expert, one block of rows) in any order, without holding it whole.
    """

    def __init__(self, folder, shards, metadata):
        self.folder = Path(folder)
        self.files, self.where, self.written = {}, {}, {}
        for file_name, tensors in shards.items():
            header, offset = {}, 0
            for t in tensors:
                header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
                offset += t.nbytes
            header["__metadata__"] = metadata
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned
            f = open(self.folder / file_name, "wb")
            f.write(len(raw).to_bytes(8, "little") + raw)
            f.truncate(8 + len(raw) + offset)
            f.flush()  # tensor bytes go in with os.pwrite, past Python's buffer
            self.files[file_name] = f
            for t in tensors:
                start = 8 + len(raw) + header[t.name]["data_offsets"][0]
                self.where[t.name] = (f, start, t)
                self.written[t.name] = 0

    def write(self, name, tensor, first_row=0):
        """Write `tensor` into tensor `name` starting at row `first_row` (rows: all axes but the last)."""
        f, start, t = self.where[name]
        if ST_DTYPES[tensor.dtype] != t.dtype:
            raise TypeError(f"{name}: writing {tensor.dtype} into {t.dtype}")
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
        row_bytes = (t.shape[-1] if t.shape else 1) * ITEMSIZE[t.dtype]
        offset = first_row * row_bytes
        if offset + data.nbytes > t.nbytes:
            raise ValueError(f"{name}: write of {data.nbytes} bytes at {offset} overruns {t.nbytes}")
        # A positioned write: no shared file offset, so forked workers write the same files at once.
        view = memoryview(data).cast("B")
        while view:
            done = os.pwrite(f.fileno(), view, start + offset)
            view, offset = view[done:], offset + done
        self.written[name] += data.nbytes

    def abort(self):
        """Close every file without checking (the folder is about to be removed)."""
        for f in self.files.values():
            f.close()

    def close(self):
        """Close every file; raise unless every tensor got exactly its bytes."""
        for f in self.files.values():
            f.close()
        short = [n for n, (_, _, t) in self.where.items() if self.written[n] != t.nbytes]
        if short:
            raise RuntimeError(f"{len(short)} tensors were not written in full, e.g. {short[:3]}")


def write_index(folder, shards):
    """model.safetensors.index.json for a sharded folder (nothing for a single file)."""
    if len(shards) == 1:
        return
    index = {
        "metadata": {"total_size": sum(t.nbytes for ts in shards.values() for t in ts)},
        "weight_map": {t.name: file for file, ts in shards.items() for t in ts},
    }
    (Path(folder) / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))


def validate_folder(folder, shards):
    """Raise ExportError unless the files in `folder` hold exactly the planned tensors.

    Every planned tensor is present with its name, dtype and shape, and no other; `read_header`
    checks that each one's bytes match its dtype and shape and that they fill the file exactly.
    Returns the bytes of tensor data on disk (the "written bytes" of the manifest).
    """
    on_disk = 0
    for file_name, tensors in shards.items():
        path = Path(folder) / file_name
        try:
            header = read_header(path)
        except CheckpointError as e:
            raise ExportError(f"the written file does not check out: {e}") from None
        want = {t.name: (t.dtype, list(t.shape)) for t in tensors}
        got = {n: (h["dtype"], h["shape"]) for n, h in header.items()}
        if got != want:
            bad = sorted(n for n in set(want) | set(got) if want.get(n) != got.get(n))
            raise ExportError(f"{path}: {len(bad)} tensors differ from the plan in name, shape or dtype, e.g. {bad[:3]}")
        on_disk += sum(h["data_offsets"][1] - h["data_offsets"][0] for h in header.values())
    return on_disk


# ---------------------------------------------------------------------------------------------
# config.json for mlx-lm


def _flatten_rope(cfg):
    """transformers 5 nests rope_theta (and the scaling) in rope_parameters; mlx-lm reads them flat."""
    params = cfg.get("rope_parameters") or {}
    if "rope_theta" not in cfg and "rope_theta" in params:
        cfg["rope_theta"] = params["rope_theta"]
    rope_type = params.get("rope_type", params.get("type", "default"))
    if cfg.get("rope_scaling") is None and rope_type != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        cfg["rope_scaling"] = {**scaling, "type": rope_type, "rope_type": rope_type}


def _mlx_has_module(model_type):
    """Whether the installed mlx-lm has a model module for `model_type` (True when it is absent:
    then nothing here can tell, and the user's own mlx-lm decides)."""
    import importlib.util

    try:
        from mlx_lm.utils import MODEL_REMAPPING
    except ImportError:
        return True
    module = MODEL_REMAPPING.get(model_type, model_type)
    return importlib.util.find_spec(f"mlx_lm.models.{module}") is not None


def check_mlx_support(ckpt):
    """Raise ExportError, before any weight is read, for a checkpoint mlx-lm cannot load as we write it.

    The family table (mint/layouts.py) says which families are refused by design and what mlx-lm's
    model of each assumes; an architecture with no family passes only when mlx-lm has a module of
    that model_type (its tensors were then placed by the user's rules).
    """
    family, mt = ckpt.family, ckpt.model_type
    if family is None:
        if not _mlx_has_module(mt):
            raise ExportError(f"{ckpt.path}: mlx-lm has no model for model_type {mt!r} ({ckpt.architecture}); "
                              f"MINT writes MLX folders for {mlx_supported()}")
        return
    if family.mlx is None:
        raise ExportError(f"{ckpt.path}: no MLX export for {family.name} ({mt}): {family.refused}; "
                          f"MINT writes MLX folders for {mlx_supported()}")
    roles = {r.role for r in ckpt.refs}
    for requirement in family.mlx_requires:
        if not requirement.holds(ckpt.text_config, roles):
            raise ExportError(f"{ckpt.path}: mlx-lm's {family.mlx} model of {family.name} {requirement.reason}")


def mlx_config(ckpt, quantization):
    """The config.json mlx-lm needs for the exported folder: the checkpoint's, with the fields the
    family's mlx-lm ModelArgs reads (Family.mlx_fields, mlx_defaults) and the quantization dict."""
    cfg = copy.deepcopy(ckpt.config)
    text = cfg.get("text_config", cfg)
    _flatten_rope(text)
    family = ckpt.family
    if family is not None:
        for name, key in family.mlx_fields.items():
            if name not in text and config_value(text, key) is not None:
                text[name] = config_value(text, key)
        for name, value in family.mlx_defaults.items():
            if text.get(name) is None:
                text[name] = value(text) if callable(value) else copy.deepcopy(value)
        if family.mlx_wrap_text:
            # mlx-lm has the multimodal model only: the text config goes under text_config.
            top = {k: text[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in text}
            cfg = {"model_type": family.mlx_model_type, "text_config": text, **top}
        elif family.mlx_model_type:
            cfg["model_type"] = family.mlx_model_type
        # mlx-lm's models of multimodal families read no vision config (their sanitize() drops the
        # vision weights).
        cfg.pop("vision_config", None)
    cfg["quantization"] = quantization
    cfg["quantization_config"] = quantization
    return dict(sorted(cfg.items()))


def _shifted_norm(family, name, w):
    """Whether `w` is a norm weight the family's mlx-lm model stores plus one (Family.mlx_norm_shift)."""
    return w.dim() == 1 and any(name.endswith(s) for s in family.mlx_norm_shift)


def _moved_conv(family, name, w, kernel_axis):
    """Whether `w` is a conv1d weight whose axes mlx-lm's model swaps (Family.mlx_conv_axes); a kernel
    of width 1 on `kernel_axis` is the same either way."""
    return family.mlx_conv_axes and name.endswith("conv1d.weight") and w.dim() == 3 and w.shape[kernel_axis] != 1


def mlx_parameter(family, name, w):
    """A 16-bit parameter as the MLX folder stores it: the family's norm shift and conv axes
    (Family.mlx_norm_shift, mlx_conv_axes), which mlx-lm's sanitize() skips on a stacked export."""
    if family is None:
        return w
    if _shifted_norm(family, name, w):
        return w + 1.0
    if _moved_conv(family, name, w, kernel_axis=-1):
        return w.transpose(1, 2)
    return w


def hf_parameter(family, name, w_mlx):
    """Undo `mlx_parameter` on what the MLX folder holds (already rounded to 16 bits): the value the
    dequantized folder must hold for transformers to compute what mlx-lm computes."""
    if family is None:
        return w_mlx
    if _shifted_norm(family, name, w_mlx):
        return w_mlx - 1.0
    if _moved_conv(family, name, w_mlx, kernel_axis=1):
        return w_mlx.transpose(1, 2)
    return w_mlx


# ---------------------------------------------------------------------------------------------
# The export


def _row_blocks(rows, cols):
    step = max(1, _BLOCK_WEIGHTS // max(cols, 1))
    return [(r, min(rows, r + step)) for r in range(0, rows, step)]


def _matrix(ckpt, ref, e):
    """One matrix of `ref`: expert `e` of a fused stack, else the whole tensor."""
    return ckpt.read(ref) if e is None else ckpt.read_expert(ref, e)


def _write_mlx(writer, ref, w, expert, config, dtype16, want_dequant, clip=False, family=None, rounding="minmax",
               codes=None):
    """Write matrix `w` of `ref` (expert index `expert`) into its unit; return what MLX rebuilds
    (for a parameter the family stores otherwise, in the checkpoint's convention). `rounding` "mlx"
    quantizes as mx.quantize does (mlx-lm's own files, for its recipes as a baseline). `codes`, when
    given, may hold the matrix already rounded by another quantizer (see `export`)."""
    unit = ref.unit
    if not ref.quantizable:
        w16 = mlx_parameter(family, unit, w.float()).to(dtype16)
        writer.write(unit, w16)
        return hf_parameter(family, unit, w16.float()) if want_dequant else None
    out, inp = ref.out_in
    row0 = expert * out
    if ref.mlx_experts:  # one MLX module per expert (DBRX)
        unit, row0 = ref.mlx_experts.format(expert=expert), 0
    if config == FULL:
        w16 = w.to(dtype16)
        writer.write(f"{unit}.weight", w16, row0)
        return w16.float() if want_dequant else None
    bits, group = config
    external = codes.lookup(w, bits, group, dtype16) if codes is not None else None
    if external is not None:
        q, scales, biases = external
        writer.write(f"{unit}.weight", pack(q, bits), row0)
        writer.write(f"{unit}.scales", scales, row0)
        writer.write(f"{unit}.biases", biases, row0)
        # The twin from the stored 16-bit scales and biases, as MLX rebuilds the weights.
        return dequantize(q, scales, biases, group) if want_dequant else None
    fused = not (want_dequant or clip) and rounding == "minmax" and dtype16 in _DTYPE16
    w_hat = torch.empty(out, inp) if want_dequant else None
    for r0, r1 in _row_blocks(out, inp):
        if fused:
            packed, scales, biases = _quantize_pack(w[r0:r1], bits, group, dtype16)
        else:
            if rounding == "mlx":
                q, scales, biases = quantize_mlx(w[r0:r1], bits, group, dtype16)
            else:
                q, scales, biases = quantize(w[r0:r1], bits, group, dtype16, clip=clip)
            packed = pack(q, bits)
        writer.write(f"{unit}.weight", packed, row0 + r0)
        writer.write(f"{unit}.scales", scales, row0 + r0)
        writer.write(f"{unit}.biases", biases, row0 + r0)
        if want_dequant:
            w_hat[r0:r1] = dequantize(q, scales, biases, group)
    return w_hat


def _quantize_pack(w, bits, group, dtype16):
    """`pack(*quantize(w, ...))` through the compiled kernel: the same words, scales and biases."""
    rows, cols = w.shape
    # bfloat16 goes in as its bit patterns (widened in the kernel): one pass less over the tensor.
    x = (w.contiguous().view(torch.int16).numpy().view(np.uint16) if w.dtype == torch.bfloat16
         else w.float().contiguous().numpy())
    words = np.empty((rows, cols * bits // 32), dtype=np.uint32)
    scales = np.empty((rows, cols // group), dtype=np.float32)
    biases = np.empty((rows, cols // group), dtype=np.float32)
    kernels.quantize_pack(x, group, bits, *_DTYPE16[dtype16], words, scales, biases)
    # The kernel rounded scales and biases to the 16-bit dtype already: this conversion is exact.
    return (torch.from_numpy(words), torch.from_numpy(scales).to(dtype16), torch.from_numpy(biases).to(dtype16))


def write_weights(ckpt, configs, dtype16, mlx_writer, hf_writer=None, dequant_dtype=torch.float32, clip=None,
                  progress=False, workers=1, rounding="minmax", codes=None):
    """Read every tensor once, one matrix at a time; write its MLX unit and its dequantized copy.

    Units in the set `clip` take the clip-search range (`quantizer.quantize(clip=True)`); `rounding`
    "mlx" rounds as mx.quantize does (`quantizer.quantize_mlx`), for mlx-lm's recipes. With
    `workers` > 1, tensors are shared out to that many forked processes, largest first, each writing
    its tensors' bytes at their offsets (os.pwrite): the files are the same bytes as with one.
    """
    job = (ckpt, configs, dtype16, mlx_writer, hf_writer, dequant_dtype, clip or set(), rounding, codes)
    tensors = _disk_tensors(ckpt)
    # MLX's own quantizer (rounding "mlx") runs MLX's thread pool, which a forked child inherits
    # locked: those exports stay in this process.
    if workers > 1 and len(tensors) > 1 and rounding == "minmax" and "fork" in multiprocessing.get_all_start_methods():
        _write_forked(job, tensors, workers, progress)
        return
    # One torch thread, as in each forked worker (kernels.one_torch_thread says why).
    with kernels.one_torch_thread():
        for name in tqdm(tensors, total=len(tensors), desc="export", unit="tensor", disable=not progress):
            _write_tensor(job, name, tensors[name])


def _write_tensor(job, name, refs):
    """Write one tensor on disk (every expert of a fused stack, every part of a split one)."""
    ckpt, configs, dtype16, mlx_writer, hf_writer, dequant_dtype, clip, rounding, codes = job
    fused = refs[0].n_experts > 1
    for e in range(refs[0].n_experts) if fused else [None]:
        parts = []  # the dequantized parts of a fused tensor, to put back together for transformers
        for ref in refs:
            w = _matrix(ckpt, ref, e)
            expert = e if fused else (ref.expert or 0)
            parts.append(_write_mlx(mlx_writer, ref, w, expert, configs[ref.unit], dtype16,
                                    hf_writer is not None, ref.unit in clip, ckpt.family, rounding, codes))
        if hf_writer is not None:
            twin_name, twin_shape, flip = twin_tensor(ckpt, name, refs)
            w = _disk_layout(refs, parts)
            w = w.transpose(-1, -2) if flip else w
            first_row = 0 if e is None else e * (math.prod(twin_shape[:-1]) // refs[0].n_experts)
            hf_writer.write(twin_name, w.to(dequant_dtype), first_row)


# The export a forked worker does: set in the parent just before the fork, inherited by the workers.
_FORK_JOB = None


def _forked_worker_start():
    torch.set_num_threads(1)  # one process per core does the parallelism
    for writer in _FORK_JOB[0][3:5]:
        if writer is not None:
            writer.written = Counter()


def _forked_write(name):
    """In a worker: write one tensor; return the bytes it wrote per tensor name, per writer."""
    job, tensors = _FORK_JOB
    _write_tensor(job, name, tensors[name])
    counts = []
    for writer in job[3:5]:
        counts.append(dict(writer.written) if writer is not None else {})
        if writer is not None:
            writer.written.clear()
    return counts


def _write_forked(job, tensors, workers, progress):
    """`write_weights` over `workers` forked processes, tensors handed out largest first."""
    global _FORK_JOB
    order = sorted(tensors, key=lambda n: -sum(r.numel for r in tensors[n]))
    # Load the compiled kernel here, once: each worker would otherwise pay numba's first-call set-up
    # (about a second of CPU) on its own; both inputs it takes (bfloat16 bits, float32).
    for dtype in (torch.bfloat16, torch.float32):
        _quantize_pack(torch.zeros(1, 64, dtype=dtype), 4, 64, torch.bfloat16)
    _FORK_JOB = (job, tensors)
    try:
        context = multiprocessing.get_context("fork")
        with context.Pool(min(workers, len(order)), initializer=_forked_worker_start) as pool:
            results = pool.imap_unordered(_forked_write, order, chunksize=1)
            for counts in tqdm(results, total=len(order), desc="export", unit="tensor", disable=not progress):
                for writer, written in zip(job[3:5], counts):
                    for name, nbytes in written.items():
                        writer.written[name] += nbytes
    finally:
        _FORK_JOB = None


def default_workers():
    """Export processes: one per usable core, at most 8 (each holds one tensor and its temporaries)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores))


def _disk_layout(refs, parts):
    """Undo split and transpose: the matrices of `refs` (one per part) as stored on disk."""
    if len(parts) == 1:
        w = parts[0]
    elif refs[0].interleave:
        # GPT-OSS: row (or bias entry) k of part i is row k * parts + i of the fused tensor
        axis = -1 if refs[0].role == "other" else -2
        w = torch.stack(parts, dim=axis).flatten(axis - 1, axis)
    else:
        w = torch.cat(parts, dim=-1 if refs[0].role == "other" else -2)
    return w.transpose(-1, -2) if refs[0].transpose else w


def twin_tensor(ckpt, name, refs):
    """(name, shape, transpose) of tensor `name` in the dequantized folder: as on disk, except an
    MXFP4 `<name>_blocks` tensor, which transformers loads as the float `<name>` in the orientation
    the family's rule for that float name reads (GPT-OSS: [E, in, out])."""
    ref = refs[0]
    if ref.dtype != MXFP4:
        return name, ref.disk_shape, False
    float_name = name.removesuffix(MX_BLOCKS)
    rule, _ = ckpt.layout.match(float_name)
    flip = bool(rule is not None and rule.transpose)
    return float_name, ((*ref.shape[:-2], ref.shape[-1], ref.shape[-2]) if flip else ref.shape), flip


def _staging(outs, overwrite):
    """[(final folder, temporary sibling folder)] for each output; checks all before creating any."""
    outs = [Path(o) for o in outs]
    if len({o.resolve() for o in outs}) < len(outs):
        raise ExportError("the MLX and dequantized outputs must be different folders")
    for out in outs:
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
            raise ExportError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    pairs = [(out, out.parent / f".{out.name}.tmp-{os.getpid()}") for out in outs]
    for out, tmp in pairs:
        _remove_stale(out)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    return pairs


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _remove_stale(out):
    """Remove the temporary folders of earlier exports to `out` that were killed before publishing."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        pid = tmp.name.rpartition("-")[2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp, out):
    """Move `tmp` to `out`; an old `out` is moved aside first and deleted last, so a crash at any
    point leaves either the old folder or the new one under a name the user can find."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.rename(out, old)
    os.rename(tmp, out)
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()


def _copy_side_files(src, dst):
    for name in SIDE_FILES:
        if (Path(src) / name).exists():
            shutil.copy2(Path(src) / name, Path(dst) / name)


def export(
    ckpt,
    allocation,
    mlx_out,
    dequant_out=None,
    *,
    dtype16=None,
    dequant_dtype=torch.float32,
    max_shard_bytes=MAX_SHARD_BYTES,
    overwrite=False,
    progress=False,
    workers=None,
    codes=None,
):
    """Write the MLX folder (and optionally the dequantized HF folder) of `allocation` for `ckpt`.

    Args:
        ckpt: a Checkpoint.
        allocation: dict with `units` [{unit, bits, group_size}] (bits 16 = keep 16-bit) and optionally
            the mlx-lm `quantization` dict, which is checked against the units (built when absent),
            and `clip` per unit (true: quantize with the per-group clip search, as its curve was measured).
        mlx_out: folder for mlx-lm.
        dequant_out: folder for transformers (same names and layout as the checkpoint), or None.
        dtype16: dtype of scales, biases and 16-bit tensors; default the checkpoint's 16-bit dtype
            (bfloat16 for a float32 checkpoint).
        dequant_dtype: dtype of the dequantized folder.
        max_shard_bytes: largest MLX shard.
        overwrite: replace existing non-empty output folders.
        progress: show a progress bar over the checkpoint's tensors.
        workers: processes that quantize and write (default `default_workers()`); the bytes written
            do not depend on it.
        codes: codes made by another quantizer (GPTQ, mint/gptq_rounding.py): an object whose
            `lookup(w, bits, group_size, dtype16)` gives (codes, scales, biases) of a matrix it rounded
            at that config, as `quantizer.quantize` returns them, else None (the matrix is rounded
            here). The folders and their bytes are the same; only the rounding differs.
    Returns:
        The manifest (also written to `<mlx_out>/manifest.json`): predicted and written bytes per unit.
    """
    dtype16 = dtype16 or default_dtype16(ckpt)
    if dtype16 not in (torch.bfloat16, torch.float16):
        raise ExportError(f"dtype16 must be bfloat16 or float16, got {dtype16}")
    check_mlx_support(ckpt)
    configs = unit_configs(ckpt, allocation)
    quantization = allocation.get("quantization") or build_quantization(ckpt, configs)
    check_quantization(ckpt, configs, quantization)
    units = ckpt.units()

    planned = {u: mlx_tensors(u, refs, configs[u], dtype16, ckpt.family) for u, refs in units.items()}
    plan = plan_shards([t for ts in planned.values() for t in ts], max_shard_bytes)
    mlx_shards = dict(zip(shard_names(len(plan)), plan))
    hf_dtype = ST_DTYPES[dequant_dtype]
    hf_shards = {}
    for name, refs in _disk_tensors(ckpt).items():
        twin_name, twin_shape, _ = twin_tensor(ckpt, name, refs)
        hf_shards.setdefault(refs[0].shard, []).append(OutTensor(twin_name, hf_dtype, twin_shape))

    staged = _staging([mlx_out] if dequant_out is None else [mlx_out, dequant_out], overwrite)
    (mlx_out, mlx_tmp), (hf_out, hf_tmp) = staged[0], (staged[1] if len(staged) > 1 else (None, None))
    writers = []
    try:
        writers.append(ShardWriter(mlx_tmp, mlx_shards, {"format": "mlx"}))
        if hf_tmp is not None:
            writers.append(ShardWriter(hf_tmp, hf_shards, {"format": "pt"}))
        # An allocation made from clip-search curves is exported with clip search: the weights
        # written are the weights that were measured.
        # mlx-lm's own recipes (mint baseline mlx-recipe) are written as mlx-lm writes them.
        write_weights(ckpt, configs, dtype16, *writers, dequant_dtype=dequant_dtype,
                      clip=clipped_units(allocation), progress=progress,
                      workers=default_workers() if workers is None else workers,
                      rounding=allocation.get("rounding", "minmax"), codes=codes)
        for writer in writers:
            writer.close()

        write_index(mlx_tmp, mlx_shards)
        on_disk = validate_folder(mlx_tmp, mlx_shards)
        (mlx_tmp / "config.json").write_text(json.dumps(mlx_config(ckpt, quantization), indent=4))
        _copy_side_files(ckpt.path, mlx_tmp)
        manifest = build_manifest(ckpt, configs, planned, mlx_shards, dtype16)
        (mlx_tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if not on_disk == manifest["written_bytes"] == manifest["predicted_bytes"]:
            raise ExportError(f"wrote {on_disk} bytes of tensors (planned {manifest['written_bytes']}), "
                              f"predicted {manifest['predicted_bytes']}")
        if hf_tmp is not None:
            _write_hf_meta(ckpt, hf_tmp, hf_shards, dequant_dtype)
            validate_folder(hf_tmp, hf_shards)
    except BaseException:
        for writer in writers:
            writer.abort()
        for _, tmp in staged:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(mlx_tmp, mlx_out)
    if hf_tmp is not None:
        _publish(hf_tmp, hf_out)
    return manifest


def _write_hf_meta(ckpt, folder, shards, dtype):
    """config.json (dtype updated), the index when the input had one, and the side files."""
    config = dict(ckpt.config)
    # The folder holds plain floats: an fp8 source's quantization_config would make transformers
    # look for block scales.
    config.pop("quantization_config", None)
    if ckpt.family is not None and ckpt.family.hf_model_type:
        config["model_type"] = ckpt.family.hf_model_type
    dtype_name = str(dtype).removeprefix("torch.")
    config["dtype"] = dtype_name
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype_name
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    if (ckpt.path / "model.safetensors.index.json").exists() or len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for ts in shards.values() for t in ts)},
            "weight_map": {t.name: file for file, ts in shards.items() for t in ts},
        }
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    _copy_side_files(ckpt.path, folder)


def build_manifest(ckpt, configs, planned, shards, dtype16):
    """Predicted (`tensor_bytes`) and written (numel * itemsize) bytes, per unit and in total."""
    units = ckpt.units()
    rows = []
    for unit, refs in units.items():
        bits, group = configs[unit]
        rows.append(
            {
                "unit": unit,
                "role": refs[0].role,
                "bits": bits,
                "group_size": group,
                "n_params": sum(r.numel for r in refs),
                "predicted_bytes": predicted_bytes(refs, configs[unit]),
                "written_bytes": sum(t.nbytes for t in planned[unit]),
                "tensors": [t.name for t in planned[unit]],
            }
        )
    written = sum(t.nbytes for ts in shards.values() for t in ts)
    n_params = ckpt.n_params()
    return {
        "checkpoint": str(ckpt.path),
        "architecture": ckpt.architecture,
        "dtype16": str(dtype16).removeprefix("torch."),
        "n_params": n_params,
        "predicted_bytes": sum(r["predicted_bytes"] for r in rows),
        "written_bytes": written,
        "size_gib": written / GIB,
        "bits_per_weight": 8 * written / n_params,
        "files": list(shards),
        "units": rows,
    }


# ---------------------------------------------------------------------------------------------
# CLI


def _size(text):
    """Bytes from "5GB", "500MB", "64KB" (binary units) or a plain number."""
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
    try:
        for suffix, mult in units.items():
            if text.upper().endswith(suffix):
                return int(float(text[: -len(suffix)]) * mult)
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB)") from None


def quantize_files(checkpoint, allocation, mlx_out, dequant_out=None, rules=None, dtype="auto",
                   dequant_dtype="float32", max_shard_size=MAX_SHARD_BYTES, overwrite=False, workers=None):
    """`mint quantize`: read the files the flags name and export."""
    rules = json.loads(Path(rules).read_text()) if rules else None
    ckpt = Checkpoint(checkpoint, rules=rules)
    alloc = json.loads(Path(allocation).read_text())
    return export(
        ckpt,
        alloc,
        mlx_out,
        dequant_out,
        dtype16=None if dtype == "auto" else DTYPE_NAMES[dtype],
        dequant_dtype=DTYPE_NAMES[dequant_dtype],
        max_shard_bytes=max_shard_size,
        overwrite=overwrite,
        workers=workers,
    )


def _quantize_gguf(checkpoint, allocation, out, overwrite, parser, pretokenizer=None):
    """`mint quantize --format gguf`: mint/gguf.py writes and checks the file."""
    from mint import gguf

    if not out:
        parser.error("--gguf-out is required with --format gguf")
    try:
        written = gguf.quantize_checkpoint(checkpoint, json.loads(Path(allocation).read_text()), out, overwrite,
                                           pretokenizer=pretokenizer)
    except (gguf.GGUFError, OSError, json.JSONDecodeError, RuntimeError) as e:
        print(f"mint quantize: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{out}: {written / GIB:.4f} GiB; written bytes = predicted bytes = {written}\n"
          f"run it: llama-server -m {out}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mint quantize", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="Hugging Face checkpoint folder (safetensors)")
    parser.add_argument("--allocation", required=True, help="allocation JSON (units + quantization dict)")
    parser.add_argument("--format", dest="fmt", choices=("mlx", "gguf"), default="mlx",
                        help="mlx: an MLX folder (--mlx-out); gguf: a GGUF file for llama.cpp (--gguf-out), from an "
                             "allocation made with `mint convert --format gguf` (its work folder's allocations/)")
    parser.add_argument("--mlx-out", help="MLX folder to write (mlx_lm.load opens it); required with --format mlx")
    parser.add_argument("--gguf-out", help="GGUF file to write (llama-server -m opens it); required with --format gguf")
    parser.add_argument("--pretokenizer", help="gguf: llama.cpp's name of a BPE pre-tokenizer its converter cannot "
                                               "detect by hash (e.g. gpt-2)")
    parser.add_argument("--dequant-out", help="dequantized Hugging Face folder to write, for evaluation")
    parser.add_argument("--rules", help="JSON list of extra naming rules (see mint/layouts.py)")
    parser.add_argument("--dtype", choices=("auto", "bfloat16", "float16"), default="auto",
                        help="16-bit dtype of scales, biases and 16-bit tensors (auto: the checkpoint's)")
    parser.add_argument("--dequant-dtype", choices=tuple(DTYPE_NAMES), default="float32")
    parser.add_argument("--max-shard-size", type=_size, default="5GB", help="largest MLX shard, e.g. 5GB or 500MB")
    parser.add_argument("--overwrite", action="store_true", help="replace non-empty output folders")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes that quantize and write (default: one per core, at most 8); same bytes out")
    args = parser.parse_args(argv)
    fmt, gguf_out, pretokenizer = (args.__dict__.pop(k) for k in ("fmt", "gguf_out", "pretokenizer"))
    if fmt == "gguf":
        return _quantize_gguf(args.checkpoint, args.allocation, gguf_out, args.overwrite, parser, pretokenizer)
    if not args.mlx_out:
        parser.error("--mlx-out is required with --format mlx")
    try:
        manifest = quantize_files(**vars(args))
    except (CheckpointError, ExportError, OSError, json.JSONDecodeError) as e:
        print(f"mint quantize: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(
        f"{args.mlx_out}: {manifest['size_gib']:.4f} GiB, {manifest['bits_per_weight']:.3f} bits/weight, "
        f"{len(manifest['files'])} file(s); written bytes = predicted bytes = {manifest['written_bytes']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

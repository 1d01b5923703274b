"""GGUF export: a budget-exact, data-free mixed-precision GGUF file for llama.cpp.

    mint convert path/to/hf-model --budget 16GiB --out model.gguf --format gguf

Three steps, each done by llama.cpp's own code:
  1. llama.cpp's converter (convert_hf_to_gguf.py and its gguf-py, from the pinned llama-cpp-python
     source package, installed by the Makefile into resources/llama.cpp) writes the model in its
     16-bit dtype (norms, routers and 1-D tensors in F32): llama.cpp's tensor names, layouts (a
     layer's experts stacked in one 3-D tensor per projection) and metadata, for every architecture
     the converter knows. This is the one temporary full-size copy; it is deleted at the end.
  2. Every tensor of that file is measured with libggml's own quantizers (mint/ggml.py): for each
     ggml type llama.cpp would write as such for its rows, the NRMSE/SQNR of quantize + to_float, the
     reconstruction the file will hold. A GGUF tensor is an allocation unit (one type per expert
     stack); its experts are measured one by one, or clustered above 32 (mint/experts.py), and
     aggregated like the MLX path's units; mint/allocate.py chooses one type per tensor.
  3. llama.cpp's quantizer (`llama_model_quantize`, with one exact-name override per tensor)
     writes the final file; its types and bytes are checked against the plan.

Bytes: a GGUF file is its header (metadata, tokenizer, tensor infos, padded to the alignment) plus
every tensor's data padded to the alignment. The header of the final file is the temporary file's
plus the keys llama.cpp's quantizer adds, so the whole file size is known before it is written.
"""

import collections
import ctypes
import functools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mint import allocate as alloc
from mint import ggml, quantizer
from mint.analyze import light_stats, write_parquet
from mint.experts import CLUSTERS_PER_UNIT, aggregate_units, cluster_experts
from mint.layouts import family_for, gguf_supported

CLUSTER_THRESHOLD = 32
# The keys llama.cpp's quantizer sets in every file it writes (src/llama-quant.cpp), both uint32.
QUANTIZER_KEYS = ("general.quantization_version", "general.file_type")
# The default type of the request to llama_model_quantize: any quantized ftype makes llama.cpp read
# the per-tensor overrides (it ignores them for float ftypes); every quantizable tensor has one.
_REQUEST_FTYPE = 7  # LLAMA_FTYPE_MOSTLY_Q8_0
# Name parts llama.cpp never quantizes (tensor_allows_quantization in src/llama-quant.cpp).
_NEVER_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
                    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
                    "indexer.q_proj.weight", "time_mix_", "attn_rel_b.weight", ".position_embd", ".rel_pos",
                    ".patch_embd", ".patch_merger")
_NEVER_QUANTIZED_NAMES = ("position_embd.weight", "token_types.weight")


class GGUFError(ValueError):
    """A GGUF request that cannot be met; the message is one line and says what to do."""


# ---------------------------------------------------------------------------------------------
# llama.cpp's Python side (converter, gguf-py)


def llama_cpp_dir():
    """The converter folder: $MINT_LLAMA_CPP, else resources/llama.cpp beside the package."""
    folder = Path(os.environ.get("MINT_LLAMA_CPP") or Path(__file__).resolve().parents[1] / "resources" / "llama.cpp")
    if not (folder / "convert_hf_to_gguf.py").exists() or not (folder / "gguf-py" / "gguf").is_dir():
        raise GGUFError(f"llama.cpp's converter is not in {folder}: run `make llama-cpp` (or set MINT_LLAMA_CPP "
                        "to a folder with convert_hf_to_gguf.py, conversion/ and gguf-py/)")
    return folder


def import_gguf():
    """gguf-py of the same llama.cpp as the converter (not the registry's `gguf` wheel)."""
    path = str(llama_cpp_dir() / "gguf-py")
    if path not in sys.path:
        sys.path.insert(0, path)
    import gguf

    return gguf


def check_architecture(checkpoint):
    """The checkpoint's architecture, if MINT exports its family to GGUF (mint.layouts.FAMILIES) or,
    for a model_type MINT has no family for, llama.cpp's converter registers it; else GGUFError."""
    try:
        config = json.loads((Path(checkpoint) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GGUFError(f"{checkpoint}: no readable config.json ({e})") from None
    arch = (config.get("architectures") or [None])[0]
    family = family_for(config)
    if family is not None:
        model_type = config["model_type"]
        if family.gguf is None:
            raise GGUFError(f"{checkpoint}: {family.name} ({model_type}) is not exported to GGUF: {family.gguf_refused}; "
                            f"MINT writes GGUF files for {gguf_supported()}")
        text = config.get("text_config") or config
        for requirement in family.gguf_requires:
            if not requirement.holds(text, set()):
                raise GGUFError(f"{checkpoint}: llama.cpp's {family.name} {requirement.reason}")
        return arch
    folder = str(llama_cpp_dir())
    import_gguf()
    if folder not in sys.path:
        sys.path.append(folder)  # last: its `conversion` package must not shadow anything
    from conversion import TEXT_MODEL_MAP

    if arch not in TEXT_MODEL_MAP:
        raise GGUFError(f"{checkpoint}: architecture {arch!r} cannot be converted by llama.cpp's converter "
                        "(convert_hf_to_gguf.py --print-supported-models lists those it can)")
    return arch


def converter_args(checkpoint):
    """The converter's flags for `checkpoint` beyond the paths and output type (its family's)."""
    family = family_for(json.loads((Path(checkpoint) / "config.json").read_text()))
    return list(family.gguf_converter_args) if family is not None else []


def outtype(checkpoint):
    """The converter's 16-bit output type: the checkpoint's own 16-bit dtype, bf16 for float32."""
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    dtype = config.get("dtype") or config.get("torch_dtype") or "bfloat16"
    return "f16" if dtype == "float16" else "bf16"


# Runs the converter with its pre-tokenizer detection answered by the user (see convert_to_gguf).
_CONVERT_WITH_PRETOKENIZER = (
    "import sys, runpy; sys.path[:0] = [{d!r}, {d!r} + '/gguf-py']; import conversion.base as b; "
    "b.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre!r}; sys.argv = {argv!r}; "
    "runpy.run_path({d!r} + '/convert_hf_to_gguf.py', run_name='__main__')")


def convert_to_gguf(checkpoint, out_path, progress=True, pretokenizer=None, out_type=None):
    """Run llama.cpp's converter: `checkpoint` -> a 16-bit GGUF at `out_path` (full size).

    llama.cpp names a BPE tokenizer's pre-tokenizer (tokenizer.ggml.pre) by the hash of its output on
    a fixed text, and stops on a tokenizer it has not seen. `pretokenizer` (e.g. "gpt-2" for a
    byte-level BPE with GPT-2's split, as the reference models' tokenizer) names it instead; it
    decides how llama.cpp splits text, not the weights. `out_type` (e.g. "f32") replaces the
    converter's output type, by default the checkpoint's own 16-bit dtype.
    """
    check_architecture(checkpoint)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(llama_cpp_dir() / "convert_hf_to_gguf.py"), str(checkpoint),
            "--outfile", str(out_path), "--outtype", out_type or outtype(checkpoint), *converter_args(checkpoint)]
    cmd = [sys.executable, *argv]
    if pretokenizer:
        cmd = [sys.executable, "-c",
               _CONVERT_WITH_PRETOKENIZER.format(d=str(llama_cpp_dir()), pre=pretokenizer, argv=argv)]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [l for l in (done.stderr + done.stdout).splitlines() if l.strip()]
        raise GGUFError(f"llama.cpp's converter failed on {checkpoint}: {lines[-1] if lines else done.returncode}")
    if progress:
        print(f"converted {checkpoint} -> {out_path} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return out_path


# ---------------------------------------------------------------------------------------------
# Tensors of a GGUF file: names, roles, values


def read_gguf(path):
    """gguf-py's reader of `path`; GGUFError (one line) for a file that is not a readable GGUF."""
    gguf = import_gguf()
    try:
        return gguf.GGUFReader(path)
    except FileNotFoundError:
        raise GGUFError(f"{path}: no such file") from None
    except (ValueError, OSError, KeyError, IndexError, TypeError) as e:
        reason = " ".join(str(e).split())[:200]
        raise GGUFError(f"{path}: not a readable GGUF file ({type(e).__name__}: {reason})") from None


def type_name(tensor):
    return tensor.tensor_type.name


def numpy_shape(tensor):
    """Shape with rows along the last axis (GGUF lists ne[0], the row length, first)."""
    return tuple(int(d) for d in reversed(tensor.shape.tolist()))


def n_dims(tensor):
    """ggml's count of dimensions (ggml_n_dims): trailing sizes of 1 do not count, so a [1, H] gate
    stored by the converter as 2-D is 1-D to llama.cpp (never quantized, and written with one dim)."""
    ne = [int(d) for d in tensor.shape.tolist()]
    while len(ne) > 1 and ne[-1] == 1:
        ne.pop()
    return len(ne)


def allows_quantization(name, n_dims):
    """Whether llama.cpp's quantizer quantizes this tensor (tensor_allows_quantization, the names
    that occur in text models); the written file's types are checked against the plan anyway."""
    if n_dims < 2 or not name.endswith("weight") or name in _NEVER_QUANTIZED_NAMES:
        return False
    return not any(part in name for part in _NEVER_QUANTIZED)


def tensor_role(name):
    """The allocator's role of a GGUF tensor name (llama.cpp's naming, gguf-py constants.py)."""
    parts = name.split(".")
    kind = parts[2] if parts[0] == "blk" and len(parts) > 2 else parts[0]
    if kind.endswith("norm") or "_norm" in kind:
        return "norm"
    if kind == "token_embd":
        return "embedding"
    if kind == "output":
        return "lm_head"
    if kind.startswith("ffn_gate_inp") or kind == "exp_probs_b":
        return "router"
    if kind.endswith("_exps") or kind.endswith("_chexps"):
        return "routed_expert"
    if kind.endswith("_shexp"):
        return "shared_expert"
    if kind.startswith("attn_"):
        return "attention"
    if kind in ("ffn_gate", "ffn_up", "ffn_down", "ffn_gate_up"):
        return "dense_mlp"
    return "other"


def tensor_layer(name):
    match = re.match(r"blk\.(\d+)\.", name)
    return int(match.group(1)) if match else -1


def tensor_values(tensor):
    """float32 values of a tensor (numpy shape), decoded by ggml's own to_float."""
    raw = np.asarray(tensor.data).reshape(-1).view(np.uint8)
    return ggml.dequantize(raw, type_name(tensor), numpy_shape(tensor))


def aligned(n_bytes, alignment):
    return (n_bytes + alignment - 1) // alignment * alignment


# ---------------------------------------------------------------------------------------------
# Measurement: RD curves in ggml types


# Plain tensors are decoded and measured in blocks of rows of about this many weights, so that a
# 151,936 x 2048 embedding needs tens of megabytes of float32, not 1.2 GB (and its error
# temporaries several times that).
_MEASURE_BLOCK_ELEMENTS = 1 << 22


class TensorRows:
    """A GGUF tensor as float32 rows [n_rows, n] on demand: the bytes of the rows asked for are read
    with one pread and decoded by ggml. Not through gguf-py's memory map, whose pages would stay in
    the resident set until the file is closed (a whole 16-bit model by the end)."""

    def __init__(self, path, tensor):
        self.path, self.type = path, type_name(tensor)
        shape = numpy_shape(tensor)
        self.n = shape[-1]
        self.n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        self.row_bytes = ggml.row_bytes(self.type, self.n)
        self.offset = int(tensor.data_offset)

    def read(self, start, stop):
        raw = np.empty((stop - start) * self.row_bytes, dtype=np.uint8)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset + start * self.row_bytes)
            if f.readinto(raw) != raw.size:
                raise GGUFError(f"{self.path}: file ends inside a tensor's data")
        return ggml.dequantize(raw, self.type, (stop - start, self.n))

    def blocks(self):
        """Consecutive float32 blocks of whole rows, every row once."""
        step = max(1, _MEASURE_BLOCK_ELEMENTS // max(self.n, 1))
        for i in range(0, self.n_rows, step):
            yield self.read(i, min(i + step, self.n_rows))


def rd_points(blocks, types):
    """[(type, sum of squared errors)] of a matrix given as blocks of rows, for each ggml type, and ||w||^2."""
    errors, energy = dict.fromkeys(types, 0.0), 0.0
    for w in blocks:
        energy += ggml.sum_squares(w)
        for t in types:
            errors[t] += ggml.squared_error(w, t)[0]
    return list(errors.items()), energy


def _rows(ident, blocks, shape, types, own_type):
    points, energy = rd_points(blocks, types)
    rows = []
    for t, err in points:
        nrmse, sqnr = quantizer.nrmse_sqnr(err, energy)
        rows.append(dict(ident, ggml_type=t, bits=ggml.NOMINAL_BITS[t], group_size=ggml.block_size(t),
                         bytes=ggml.tensor_bytes(t, shape), nrmse=nrmse, sqnr_db=sqnr))
    rows.append(dict(ident, ggml_type=own_type, bits=ggml.NOMINAL_BITS[own_type], group_size=0,
                     bytes=ggml.tensor_bytes(own_type, shape), nrmse=0.0, sqnr_db=quantizer.EXACT_SQNR_DB))
    return rows


def measure_tensor(path, tensor, cluster_threshold=CLUSTER_THRESHOLD, k=CLUSTERS_PER_UNIT, seed=0):
    """RD rows of one tensor of the GGUF at `path`: one row per (expert, ggml type); expert -1 for a
    plain tensor.

    The unquantized option is the type the converter stored (16-bit, or F32 where llama.cpp keeps
    F32). A routed-expert stack of more than `cluster_threshold` experts is clustered on light
    statistics and only its representatives are measured (METHOD.md §3). Weights are decoded a
    block of rows (or an expert) at a time.
    """
    name, own = tensor.name, type_name(tensor)
    if own not in ggml.TYPE_IDS:
        raise GGUFError(f"tensor {name} is stored as {own}, which MINT does not handle")
    shape = numpy_shape(tensor)
    role = tensor_role(name)
    ident = dict(unit=name, tensor=name, role=role, layer=tensor_layer(name), proj="")
    types = ggml.offered_types(shape[-1]) if allows_quantization(name, n_dims(tensor)) else ()
    rows = TensorRows(path, tensor)
    if role != "routed_expert" or len(shape) != 3:
        n_params = int(np.prod(shape, dtype=np.int64))
        return _rows(dict(ident, expert=-1, n_params=n_params), rows.blocks(), shape, types, own), None
    n_experts, per = shape[0], shape[1]
    ident = dict(ident, n_params=per * shape[2])

    def expert(e):
        return rows.read(e * per, (e + 1) * per)

    if n_experts <= cluster_threshold or not types:
        return [r for e in range(n_experts) for r in _rows(dict(ident, expert=e), [expert(e)], shape[1:], types, own)], None
    stats = pd.DataFrame([dict(expert=e, **light_stats(torch.from_numpy(expert(e)))) for e in range(n_experts)])
    labels, reps, distance = cluster_experts(stats, k, seed)
    curves = {label: _rows(dict(ident, expert=pos), [expert(pos)], shape[1:], types, own) for label, pos in reps.items()}
    rows = [dict(r, expert=e) for e in range(n_experts) for r in curves[int(labels[e])]]
    clusters = pd.DataFrame(dict(unit=name, expert=np.arange(n_experts), cluster=labels,
                                 representative=[reps[int(l)] for l in labels], distance=distance))
    return rows, clusters


def header_bytes(reader):
    """Bytes before the tensor data in the file llama.cpp's quantizer writes from `reader`'s file:
    the same metadata and tensor infos, plus the quantizer's keys where absent, padded. ggml writes
    a tensor's dims without trailing 1s (8 bytes each), which gguf-py's writer keeps."""
    last = reader.tensors[-1].field if reader.tensors else None
    fields = list(reader.fields.values())
    end = max(f.offset + sum(int(p.nbytes) for p in f.parts) for f in ([last] if last else fields))
    end -= 8 * sum(len(t.shape) - n_dims(t) for t in reader.tensors)
    for key in QUANTIZER_KEYS:
        if key not in reader.fields:
            end += 8 + len(key.encode()) + 4 + 4  # key length, key, value type, uint32 value
    return aligned(end, reader.alignment)


def measure_gguf(path, cluster_threshold=CLUSTER_THRESHOLD, k=CLUSTERS_PER_UNIT, seed=0, aggregation="max",
                 progress=True):
    """Measure every tensor of a 16-bit GGUF. Returns (units, experts rd rows, clusters, header bytes).

    `units` is the allocator's table (mint/allocate.py) with a ggml_type column; each unit's bytes
    include the padding of its tensor in the file, so the units' bytes plus the header are the file.
    """
    reader = read_gguf(path)
    rows, clusters = [], []
    for tensor in tqdm(reader.tensors, desc="measure (ggml)", unit="tensor", disable=not progress):
        r, c = measure_tensor(path, tensor, cluster_threshold, k, seed)
        rows += r
        if c is not None:
            clusters.append(c)
    rd = pd.DataFrame(rows)
    units = aggregate_units(rd, aggregation)
    units["bytes"] = [aligned(int(b), reader.alignment) for b in units["bytes"]]
    clusters = pd.concat(clusters, ignore_index=True) if clusters else pd.DataFrame()
    return units, rd, clusters, header_bytes(reader)


# ---------------------------------------------------------------------------------------------
# Allocation: the shared knapsack, with the header counted


def allocate_gguf(units, header, budget, solver="exact", sqnr_floor_db=alloc.SQNR_FLOOR_DB, priors=None,
                  raised_floor_db=None, time_limit_s=alloc.TIME_LIMIT_S):
    """One ggml type per tensor such that the whole file (header + padded tensors) fits `budget`.

    Budget forms are those of `allocate.parse_budget`, applied to the file: bits per weight count
    every byte of the file, a fraction is of the 16-bit file. A budget below the smallest file the
    floor allows raises BudgetError naming that size.
    """
    codes, first = alloc.unit_codes(units)
    n_params = int(units["n_params"].to_numpy()[first].sum())
    size16 = alloc.size16_bytes(units) + header
    min_safe = alloc.min_safe_bytes(units, sqnr_floor_db, priors) + header
    total = alloc.parse_budget(budget, n_params, size16, min_safe)
    if total < min_safe:
        raise alloc.BudgetError(f"budget {budget!r} = {total} bytes is below the smallest possible GGUF of this "
                                f"model, {min_safe} bytes ({min_safe / alloc.GIB:.3f} GiB) at a {sqnr_floor_db:g} dB "
                                "SQNR floor")
    result = alloc.allocate(units, total - header, solver, sqnr_floor_db, priors, time_limit_s,
                            raised_floor_db=raised_floor_db)
    result.update(budget=str(budget), budget_bytes=min(total, size16), header_bytes=header,
                  tensor_bytes=result["total_bytes"], total_bytes=result["total_bytes"] + header,
                  size16_bytes=size16, min_safe_bytes=min_safe,
                  avg_bits=8 * (result["total_bytes"] + header) / n_params)
    return result


# ---------------------------------------------------------------------------------------------
# Writing: llama.cpp's quantizer with one override per tensor

# llama.cpp's last log lines: kept quiet, and quoted when a call fails.
_LLAMA_LOG = collections.deque(maxlen=64)


@functools.cache
def _quiet_llama():
    """Route llama.cpp's log into _LLAMA_LOG (llama-cpp-python prints all of it to stderr)."""
    import llama_cpp

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        _LLAMA_LOG.append(text.decode("utf-8", errors="replace").strip())

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    return collect  # cached, so the callback outlives every call into llama.cpp


def _llama_reason():
    """The last error-looking line of llama.cpp's log."""
    return next((l for l in reversed(_LLAMA_LOG) if "fail" in l or "error" in l), "see llama.cpp's log")


def quantize_file(source, out, types, threads=None, ftype=_REQUEST_FTYPE):
    """Run llama.cpp's `llama_model_quantize` on `source` (a GGUF) into `out`.

    `types` maps exact tensor names to ggml type names (tensors llama.cpp does not quantize are
    copied whatever is asked); None applies `ftype`'s own mix (llama.cpp's presets).
    """
    import llama_cpp

    _quiet_llama()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or (os.cpu_count() or 1)
    keep = []  # the C strings must outlive the call
    if types:
        overrides = (llama_cpp.llama_model_tensor_override * (len(types) + 1))()
        for i, (name, t) in enumerate(sorted(types.items())):
            pattern = ("^" + re.escape(name) + "$").encode()
            keep.append(pattern)
            overrides[i].pattern = pattern
            overrides[i].type = ggml.type_id(t)
        overrides[len(types)].pattern = None
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if code != 0:
        raise GGUFError(f"llama.cpp's quantizer failed on {source}: {_llama_reason()}")
    return out


def file_types(path):
    """{tensor name: ggml type name} of a GGUF file."""
    return {t.name: type_name(t) for t in read_gguf(path).tensors}


def check_written(path, allocation):
    """GGUFError unless the file at `path` holds exactly the allocation's types and bytes."""
    written = file_types(path)
    planned = allocation["ggml_types"]
    wrong = [f"{n}: {written.get(n)} (planned {t})" for n, t in planned.items() if written.get(n) != t]
    extra = sorted(set(written) - set(planned))
    if wrong or extra:
        raise GGUFError(f"{path}: the file's types differ from the plan: {'; '.join(wrong[:3] + extra[:3])}")
    size = Path(path).stat().st_size
    if size != allocation["total_bytes"]:
        raise GGUFError(f"{path}: {size} bytes written, {allocation['total_bytes']} predicted")
    return size


def _check_output(out, allocation, overwrite):
    """`out` as a Path, once it may be written and `allocation` is one for a GGUF file."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise GGUFError(f"{out} exists (pass --overwrite to replace it)")
    if allocation.get("format") != "gguf":
        raise GGUFError("the allocation is not a GGUF allocation (it has no ggml_types): make it with "
                        "`mint convert --format gguf`")
    return out


def write_gguf(source, allocation, out, overwrite=False, threads=None):
    """Write the final GGUF for a GGUF allocation from the 16-bit GGUF `source`; check it."""
    out = _check_output(out, allocation, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    reader = read_gguf(source)
    requested = {t.name: allocation["ggml_types"][t.name] for t in reader.tensors
                 if allows_quantization(t.name, n_dims(t)) and t.name in allocation["ggml_types"]}
    del reader
    quantize_file(source, tmp, requested, threads)
    try:
        size = check_written(tmp, allocation)
    except GGUFError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return size


def quantize_checkpoint(checkpoint, allocation, out, overwrite=False, progress=True, pretokenizer=None):
    """`mint quantize --format gguf`: convert `checkpoint` (a temporary 16-bit GGUF beside `out`) and
    write it with a GGUF allocation's types. Returns the bytes written (= the allocation's)."""
    out = _check_output(out, allocation, overwrite)
    temp = out.with_name(out.name + ".16bit.tmp")
    try:
        convert_to_gguf(checkpoint, temp, progress, pretokenizer)
        reader = read_gguf(temp)
        same = {t.name for t in reader.tensors} == set(allocation["ggml_types"])
        if not same or header_bytes(reader) != allocation["header_bytes"]:
            raise GGUFError(f"the allocation was made for another model than {checkpoint} (tensors or metadata differ)")
        del reader
        return write_gguf(temp, allocation, out, overwrite=overwrite)
    finally:
        temp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# One command


def convert_gguf(path, budget, out, preset, work_folder, overwrite=False, progress=True, threads=None,
                 pretokenizer=None):
    """Checkpoint folder -> GGUF file of `budget`. The measurement is cached in `work_folder`.

    Returns (allocation, reused): `reused` tells whether the measurement was found in the cache.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise GGUFError(f"{out} exists (pass --overwrite to replace it)")
    check_architecture(path)
    work_folder = Path(work_folder)
    units_file, meta_file = work_folder / "units.parquet", work_folder / "gguf.json"
    temp = work_folder / "model-16bit.gguf"
    reused = units_file.exists() and meta_file.exists()

    def plan(units, header):
        return allocate_gguf(units, header, budget, preset["solver"], preset["sqnr_floor_db"],
                             raised_floor_db=preset["raised_floor_db"])

    # With a cached measurement, a budget that cannot be met fails before any conversion.
    allocation = plan(alloc.load_units(units_file), json.loads(meta_file.read_text())["header_bytes"]) if reused else None
    try:
        convert_to_gguf(path, temp, progress, pretokenizer)
        if not reused:
            units, rd, clusters, header = measure_gguf(temp, progress=progress)
            write_parquet(rd, work_folder / "experts.parquet")
            write_parquet(units, units_file)
            meta_file.write_text(json.dumps({"header_bytes": header, "checkpoint": str(Path(path).resolve())}, indent=1))
            allocation = plan(units, header)
        alloc.write_allocation(allocation, work_folder / "allocations" / f"gguf-{allocation['budget_bytes']}.json",
                               drop=alloc.RUN_KEYS)
        write_gguf(temp, allocation, out, overwrite=overwrite, threads=threads)
    finally:
        temp.unlink(missing_ok=True)  # the one temporary full-size copy
    return allocation, reused


def type_shares(params_per_type):
    """{"Q4_K": 610, "Q6_K": 300, "F32": 4} -> "Q4_K 67%, Q6_K 33%, F32 0%" (shares of parameters)."""
    total = sum(params_per_type.values())
    return ", ".join(f"{t} {100 * n / total:.0f}%" for t, n in sorted(params_per_type.items(), key=lambda x: -x[1]))


def describe_types(allocation):
    """Share of parameters per ggml type of an allocation, e.g. 'Q4_K 61%, Q6_K 30%, F32 0%'."""
    per_type = {}
    for u in allocation["units"]:
        per_type[u["ggml_type"]] = per_type.get(u["ggml_type"], 0) + int(u["n_params"])
    return type_shares(per_type)


def file_params(path):
    """{ggml type name: number of weights} over the tensors of the GGUF file at `path`."""
    per_type = {}
    for t in read_gguf(path).tensors:
        per_type[type_name(t)] = per_type.get(type_name(t), 0) + int(t.n_elements)
    return per_type


# ---------------------------------------------------------------------------------------------
# Reading a file back through llama.cpp


def open_llama(path, n_ctx, threads=None):
    """llama.cpp's model and context for the GGUF at `path`, every position's logits kept.

    The CPU backend's extra buffer types (repacked / AMX weights) are turned off, as llama-server's
    --no-repack does: on a machine that reports AMX (this project's CI), they crash on the types
    they handle (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_XS); plain buffers compute the same model.
    """
    import llama_cpp

    read_gguf(path)  # a damaged file is a one-line error, not a crash inside llama.cpp
    _quiet_llama()
    low = llama_cpp.llama_cpp
    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        return llama_cpp.Llama(str(path), logits_all=True, n_ctx=max(16, n_ctx), n_batch=max(16, n_ctx),
                               n_threads=threads or (os.cpu_count() or 1), verbose=False)
    except ValueError:
        raise GGUFError(f"{path}: llama.cpp cannot load it ({_llama_reason()})") from None
    finally:
        low.llama_model_default_params = default


def window_logits(llm, tokens):
    """float32 logits [len(tokens), vocab] of one window, from an empty cache."""
    llm.reset()
    llm.eval(list(map(int, tokens)))
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def llama_logits(path, tokens, threads=None):
    """llama.cpp's logits [len(tokens), vocab] for `tokens` run through the GGUF at `path`."""
    llm = open_llama(path, len(tokens), threads)
    try:
        return window_logits(llm, tokens)
    finally:
        llm.close()


def evaluate_gguf(path, tokenizer_dir, reference=None, seq_len=512, windows=None, text="wikitext2-test",
                  seed=42, threads=None, progress=True):
    """METHOD.md §5 on a GGUF file, with llama.cpp's own logits: the same windows as `mint evaluate`
    (tokenized by the source checkpoint's tokenizer), and against a `reference` GGUF (the 16-bit
    conversion) the KLD and the paired comparison. Returns a JSON-ready dict plus "windows"."""
    return evaluate_ggufs([path], tokenizer_dir, reference, seq_len, windows, text, seed, threads, progress)[0]


def evaluate_ggufs(paths, tokenizer_dir, reference=None, seq_len=512, windows=None, text="wikitext2-test",
                   seed=42, threads=None, progress=True):
    """`evaluate_gguf` of several files on the same windows, one result each. The reference's logits of
    a window are computed once and scored against every file (all files are open at once), so n files
    cost n + 1 passes rather than 2n."""
    from transformers import AutoTokenizer

    from mint import data
    from mint.evaluate import empty_scores, log_probs, make_windows, reference_statistics, score_window, summarize

    models = [open_llama(path, seq_len, threads) for path in paths]
    ref = open_llama(reference, seq_len, threads) if reference else None
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    ids = tokenizer(data.load_eval_text(text), add_special_tokens=False)["input_ids"]
    x, index, total = make_windows(ids, seq_len, windows, seed)
    n = len(x)
    scores = [empty_scores(n, seq_len, ref is not None) for _ in paths]
    for i in tqdm(range(n), desc="windows (llama.cpp)", disable=not progress, mininterval=5):
        ref_logp = (log_probs(torch.from_numpy(window_logits(ref, x[i].tolist())), torch.float64)
                    if ref is not None else None)
        for model, score in zip(models, scores):
            logp = log_probs(torch.from_numpy(window_logits(model, x[i].tolist())), torch.float64)
            score_window(score, i, x[i], logp, ref_logp)
    for model in models + ([ref] if ref is not None else []):
        model.close()
    results = []
    for path, score in zip(paths, scores):
        per_window = {"window_index": index, "window_start": index * seq_len, **score}
        size = Path(path).stat().st_size
        result = {"gguf": str(path), "reference_gguf": str(reference) if reference else None, "text": text,
                  "seq_len": seq_len, "seed": seed, "text_tokens": len(ids), "windows_available": int(total),
                  **summarize(score["nll_sum"], score["n_tokens"]),
                  "weights_size_bytes": size, "weights_size_gib": size / 1024**3}
        if ref is not None:
            result.update(reference_statistics(score, per_window))
        result["windows"] = per_window
        results.append(result)
    return results


# ---------------------------------------------------------------------------------------------
# llama.cpp's own mixes, for comparisons at equal bytes

# llama_ftype values of llama.cpp's presets (include/llama.h).
PRESET_FTYPES = {"Q2_K": 10, "Q3_K_M": 12, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}


def preset_objective(units, types, priors=None):
    """The allocator's objective (sum of prior x NRMSE) of a {tensor: ggml type} mix, measured on
    `units`: how a llama.cpp preset scores on what MINT minimises. KeyError for a type not measured."""
    options = alloc.candidate_options(units, sqnr_floor_db=0, priors=priors).set_index(["unit", "ggml_type"])
    return float(sum(options.loc[(name, t), "cost"] for name, t in types.items()))


def compare_presets(f16, units, header, out_dir, presets=tuple(PRESET_FTYPES), sqnr_floor_db=0.0, threads=None):
    """For each llama.cpp preset: its file (the library call with that ftype, no importance matrix),
    then MINT-GGUF at exactly that file's bytes. Returns one row per preset (bytes, objectives, types).

    The default floor is 0 so that both solve the same problem: with the floor, a preset's mix may
    not be a feasible point of MINT's knapsack.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for preset in presets:
        preset_file = quantize_file(f16, out_dir / f"{preset}.gguf", None, threads, ftype=PRESET_FTYPES[preset])
        preset_bytes = Path(preset_file).stat().st_size
        allocation = allocate_gguf(units, header, preset_bytes, sqnr_floor_db=sqnr_floor_db)
        mint_bytes = write_gguf(f16, allocation, out_dir / f"mint-{preset}.gguf", overwrite=True, threads=threads)
        params = file_params(preset_file)
        rows.append(dict(preset=preset, preset_bytes=preset_bytes, mint_bytes=mint_bytes,
                         n_params=sum(params.values()),
                         preset_objective=preset_objective(units, file_types(preset_file)),
                         mint_objective=allocation["objective"], preset_types=type_shares(params),
                         mint_types=describe_types(allocation)))
    return pd.DataFrame(rows)

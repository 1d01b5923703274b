"""Read a Hugging Face MoE checkpoint one tensor at a time, each tensor tagged with its role and MLX unit.

A checkpoint folder holds config.json and one or more *.safetensors shards (with or without
model.safetensors.index.json). We parse the shard headers ourselves (8-byte length + JSON), so
listing a 100 GB model reads a few kilobytes, and read each tensor (or one expert of a fused stack)
with one read at its offset, one at a time, so the working set is one tensor (one expert with
`read_expert`), never the model.
Pickled .bin checkpoints are refused, never unpickled.

Where each tensor belongs comes from the rules in mint/layouts.py. For example, on Mixtral-8x7B:

    ckpt = Checkpoint("path/to/Mixtral-8x7B")
    refs = ckpt.units()["model.layers.0.block_sparse_moe.switch_mlp.gate_proj"]
    refs[1].name                     # 'model.layers.0.block_sparse_moe.experts.1.w1.weight'
    ckpt.read(refs[1]).shape         # torch.Size([14336, 4096])
"""

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from mint import kernels
from mint.layouts import HOW_TO_ADD_RULES, PARAMETER_ROLES, LayoutError, family_for, layout_for

# Dtypes on disk we read; anything else (int, fp8 without scales) is a quantized or non-float format.
DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
# fp8 weights with block scales (DeepSeek-V3, Kimi-K2, MiniMax-M2, Qwen3 -FP8 releases): `<name>` in
# e4m3 and `<name>_scale_inv` [ceil(rows/b), ceil(cols/b)] in float, w = fp8 * scale_inv per b x b block.
# They are dequantized on read: analysis and export see the real values.
SCALED_DTYPES = {"F8_E4M3": torch.float8_e4m3fn}
SCALE_SUFFIX = "_scale_inv"
# MXFP4 (OCP microscaling, GPT-OSS's expert weights): `<name>_blocks` uint8 [..., rows, cols/32, 16],
# two e2m1 values per byte (low nibble first), and `<name>_scales` uint8 [..., rows, cols/32], the
# power-of-two exponent of each block of 32 with bias 127: w = e2m1 * 2^(scale - 127). Dequantized on
# read; the ref's shape is the matrix's [..., rows, cols] and its dtype "MXFP4".
MXFP4, MX_BLOCKS, MX_SCALES, MX_BLOCK = "MXFP4", "_blocks", "_scales", 32
# The 16 e2m1 values by 4-bit code: sign bit 3, exponent bits 1-2 (bias 1), mantissa bit 0.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
# Bytes per element of every safetensors dtype, to check a header against its file before reading.
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
            "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
INDEX_FILE = "model.safetensors.index.json"
# A safetensors header longer than this is corrupt, not large (headers are ~100 bytes per tensor).
_MAX_HEADER_BYTES = 100 << 20
# config.json keys holding the number of routed experts per layer, by architecture.
_EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


# The layer index of a decoder-layer tensor name.
_LAYER_INDEX = re.compile(r"^(?:model\.|language_model\.model\.|model\.language_model\.)?layers\.(\d+)\.")


class CheckpointError(ValueError):
    """The folder is not a checkpoint we can read; the message says why and what to do."""


# Appended to every error about a damaged file: the only remedy we can suggest.
_CORRUPT = "the file is damaged or truncated: download or copy it again"


def read_json(path, what):
    """A JSON object (dict) from `path`; CheckpointError naming the file when it is not one."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable {what}: {e}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class TensorRef:
    """One tensor on disk (or one part of a fused tensor), where it lives and what it is."""

    name: str  # as on disk
    shard: str  # file name inside the checkpoint folder
    shape: tuple  # as on disk
    dtype: str  # as on disk: "BF16", "F16" or "F32"
    role: str
    layer: int | None
    expert: int | None  # expert index of a per-expert tensor; None for a fused stack
    proj: str | None  # projection as MLX names it (gate_proj, up_proj, down_proj, q_proj, ...)
    unit: str  # MLX module path (a parameter path for 1-D tensors)
    split: tuple[int, int] | None = None  # (index, parts) of a fused tensor along its out axis
    transpose: bool = False  # stored [..., in, out] on disk
    interleave: bool = False  # the parts alternate along the split axis
    expert_rows: bool = False  # a 2-D [E * rows, cols] tensor on disk, read as the stack `shape`
    mlx_experts: str = ""  # MLX module of each expert ({expert}) when mlx-lm builds one per expert

    @property
    def disk_shape(self) -> tuple:
        """Shape of the tensor on disk (`shape` is the stack [E, rows, cols] for expert_rows)."""
        return (self.shape[0] * self.shape[1], *self.shape[2:]) if self.expert_rows else self.shape

    @property
    def split_axis(self) -> int:
        """Axis of the tensor on disk the parts are cut from: the out axis, or the last axis of a
        split "other" tensor (a stack of per-expert vectors)."""
        return -1 if self.transpose or self.role == "other" else -2

    @property
    def part_shape(self) -> tuple:
        """Shape on disk of this ref's part (the whole shape when not split)."""
        shape = list(self.shape)
        if self.split is not None:
            shape[self.split_axis] //= self.split[1]
        return tuple(shape)

    @property
    def n_experts(self) -> int:
        """E for a fused 3-D stack of experts, else 1."""
        return self.shape[0] if len(self.shape) == 3 and self.role == "routed_expert" else 1

    @property
    def out_in(self) -> tuple[int, int]:
        """Matrix shape [out, in] of one expert after split/transpose; (n, 1) for a 1-D tensor."""
        if len(self.shape) <= 1:
            return (self.shape[0] if self.shape else 1, 1)
        if len(self.shape) > 3 or (len(self.shape) == 3 and self.n_experts == 1) or self.role == "other":
            shape = self.part_shape
            return (shape[0], math.prod(shape[1:]))
        rows, cols = self.shape[-2:]
        out, inp = (cols, rows) if self.transpose else (rows, cols)
        if self.split is not None:
            out //= self.split[1]
        return out, inp

    @property
    def numel(self) -> int:
        """Weights in this ref (this part only, for a fused tensor)."""
        out, inp = self.out_in
        return self.n_experts * out * inp

    @property
    def quantizable(self) -> bool:
        """False for tensors that always stay 16-bit (norms, biases, "other")."""
        return self.role not in PARAMETER_ROLES


def read_header(path):
    """The tensors of one safetensors file: {name: {"dtype", "shape", "data_offsets"}}, file order.

    The header is checked against the file as safetensors itself would at load time (every entry
    well formed, its bytes matching dtype and shape, tensors tiling the data exactly), so that a
    damaged shard is a CheckpointError naming the file and tensor, never a crash mid-analysis.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= _MAX_HEADER_BYTES:
                raise CheckpointError(f"{path}: not a safetensors file (header length {size}); {_CORRUPT}")
            header = json.loads(f.read(size))
        data_bytes = path.stat().st_size - 8 - size
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors header: {e}; {_CORRUPT}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object; {_CORRUPT}")
    header.pop("__metadata__", None)
    for name, info in header.items():
        _check_entry(path, name, info)
    tensors = dict(sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]))
    _check_tiling(path, tensors, data_bytes)
    return tensors


def _is_count(x):
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_entry(path, name, info):
    """Raise CheckpointError unless one header entry has a dtype, a shape and offsets that agree."""
    ok = (isinstance(info, dict) and isinstance(info.get("dtype"), str) and isinstance(info.get("shape"), list)
          and all(_is_count(d) for d in info["shape"]) and isinstance(info.get("data_offsets"), list)
          and len(info["data_offsets"]) == 2 and all(_is_count(o) for o in info["data_offsets"]))
    if not ok:
        raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry {info!r}; {_CORRUPT}")
    begin, end = info["data_offsets"]
    itemsize = ITEMSIZE.get(info["dtype"])
    if end < begin or (itemsize is not None and end - begin != itemsize * math.prod(info["shape"])):
        raise CheckpointError(
            f"{path}: tensor {name!r} ({info['dtype']} {info['shape']}) has {end - begin} bytes in the header; {_CORRUPT}"
        )


def _check_tiling(path, tensors, data_bytes):
    """Raise CheckpointError unless the tensors cover the data section once, in order, to its end."""
    position = 0
    for name, info in tensors.items():
        begin, end = info["data_offsets"]
        if begin != position:
            raise CheckpointError(f"{path}: tensor {name!r} starts at byte {begin}, expected {position}; {_CORRUPT}")
        position = end
    if position != data_bytes:
        raise CheckpointError(
            f"{path}: the header describes {position} bytes of tensor data, the file holds {data_bytes}; {_CORRUPT}"
        )


def _find_shards(path):
    """Shard file names in order, and {tensor name: shard} from the index when there is one."""
    index = path / INDEX_FILE
    if index.exists():
        weight_map = read_json(index, "index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(s, str) for s in weight_map.values()):
            raise CheckpointError(f"{index}: `weight_map` must map tensor names to shard file names; {_CORRUPT}")
        shards = sorted(set(weight_map.values()))
        # A shard is a file in this folder: an index pointing elsewhere ("../x") is refused, not followed.
        outside = [s for s in shards if Path(s).name != s or not s.endswith(".safetensors")]
        if outside:
            raise CheckpointError(f"{index}: shard names must be *.safetensors files in the folder, got {outside[:3]}")
        missing = [s for s in shards if not (path / s).exists()]
        if missing:
            raise CheckpointError(f"{path}: {INDEX_FILE} names shards that are missing: {missing}")
        return shards, weight_map
    # Without an index, model*.safetensors are the weights (Mistral repos also ship consolidated.*).
    files = sorted(p.name for p in path.glob("model*.safetensors")) or sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickles:
            raise CheckpointError(
                f"{path}: only pickled weights ({', '.join(pickles[:3])}); MINT reads safetensors only and "
                "never unpickles. Convert the checkpoint to safetensors first (e.g. load it in transformers "
                "and save_pretrained)."
            )
        raise CheckpointError(f"{path}: no *.safetensors weight files")
    return files, None


def _classify(name, info, shard, layout, n_experts=None):
    """TensorRefs of one tensor on disk (two or more for a fused tensor). Raises LayoutError.

    `n_experts` (config.json's count) splits the rows of an `expert_rows` tensor into experts."""
    shape, dtype = tuple(info["shape"]), info["dtype"]
    rule, m = layout.match(name)
    if rule is not None and rule.expert_rows and len(shape) == 2:
        if not n_experts or shape[0] % n_experts:
            raise LayoutError(f"{name}: {shape[0]} rows do not split into the {n_experts} experts config.json names")
        shape = (n_experts, shape[0] // n_experts, shape[1])
    common = dict(name=name, shard=shard, shape=shape, dtype=dtype)
    if len(shape) <= 1 and (rule is None or rule.role != "other"):
        # Norm weights and biases: always 16-bit, stored under their own parameter path.
        return [TensorRef(**common, role="norm", layer=None, expert=None, proj=None, unit=layout.mlx_path(name))]
    if rule is None:
        return []
    groups = m.groupdict()
    layer = int(groups["layer"]) if groups.get("layer") is not None else None
    expert = int(groups["expert"]) if groups.get("expert") is not None else None
    proj = groups.get("proj")
    proj = rule.proj_map.get(proj, proj)
    if rule.role == "other" and rule.parts:
        if shape[-1] % len(rule.parts):
            raise LayoutError(f"{name}: last axis {shape[-1]} does not split into {len(rule.parts)} parts")
        return [TensorRef(**common, role="other", layer=layer, expert=expert, proj=part,
                          unit=rule.unit_for(name, groups, part), split=(i, len(rule.parts)), interleave=rule.interleave)
                for i, part in enumerate(rule.parts)]
    if rule.role == "other":
        return [TensorRef(**common, role="other", layer=layer, expert=expert, proj=proj, unit=rule.unit_for(name, groups, proj))]
    if len(shape) == 3 and (rule.role != "routed_expert" or expert is not None):
        raise LayoutError(f"{name}: a 3-D tensor can only be a fused stack of routed experts (rule {rule.pattern.pattern!r})")
    if len(shape) > 3:
        raise LayoutError(f"{name}: {len(shape)}-D tensor with role {rule.role}")
    if not rule.parts:
        unit = rule.unit_for(name, groups, proj)
        mlx_experts = rule.mlx_experts and rule.mlx_experts.format(
            **{**{k: v for k, v in groups.items() if v is not None}, "proj": proj, "expert": "{expert}"})
        return [TensorRef(**common, role=rule.role, layer=layer, expert=expert, proj=proj, unit=unit,
                          transpose=rule.transpose, expert_rows=rule.expert_rows and len(shape) == 3,
                          mlx_experts=mlx_experts)]
    out = shape[-1] if rule.transpose else shape[-2]
    if out % len(rule.parts):
        raise LayoutError(f"{name}: out axis {out} does not split into {len(rule.parts)} parts")
    return [
        TensorRef(
            **common, role=rule.role, layer=layer, expert=expert, proj=part,
            unit=rule.unit_for(name, groups, part), split=(i, len(rule.parts)), transpose=rule.transpose,
            interleave=rule.interleave,
        )
        for i, part in enumerate(rule.parts)
    ]


def _check_units(units, expected_experts):
    """Raise CheckpointError unless every unit is consistent (one tensor, or a full expert stack)."""
    for unit, refs in units.items():
        if refs[0].role != "routed_expert":
            if len(refs) > 1:
                raise CheckpointError(f"unit {unit} gets {len(refs)} tensors ({refs[0].name}, {refs[1].name}, ...); fix the rules")
            continue
        if len({(r.out_in, r.dtype) for r in refs}) > 1:
            raise CheckpointError(f"experts of {unit} differ in shape or dtype")
        fused = [r for r in refs if r.expert is None]
        if fused and len(refs) > 1:
            raise CheckpointError(f"unit {unit} mixes a fused expert stack with other tensors")
        if not fused and [r.expert for r in refs] != list(range(len(refs))):
            raise CheckpointError(f"unit {unit}: expert indices {[r.expert for r in refs]} are not 0..{len(refs) - 1}")
        n = sum(r.n_experts for r in refs)
        if expected_experts and n != expected_experts:
            raise CheckpointError(f"unit {unit} has {n} experts, config.json says {expected_experts}")


def default_dtype16(ckpt):
    """The checkpoint's 16-bit dtype (by parameter count); bfloat16 for a float32 checkpoint.

    Scales, biases and unquantized tensors are stored in it, so analysis measures with it too.
    """
    counts = Counter()
    for ref in ckpt.refs:
        counts[ref.dtype] += ref.numel
    return torch.float16 if counts["F16"] > counts["BF16"] else torch.bfloat16


class Checkpoint:
    """A Hugging Face checkpoint folder, classified tensor by tensor; tensors are read on demand.

    Args:
        path: folder with config.json and *.safetensors.
        rules: extra naming rules (dicts, see mint/layouts.py), tried before the built-in ones.
    """

    def __init__(self, path, rules=None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a folder")
        config_file = self.path / "config.json"
        if not config_file.exists():
            raise CheckpointError(f"{self.path}: no config.json (a Hugging Face checkpoint folder has one)")
        self.config = read_json(config_file, "config.json")
        self.model_type = self.config.get("model_type", "")
        if not isinstance(self.model_type, str) or not isinstance(self.text_config, dict):
            raise CheckpointError(f"{config_file}: `model_type` must be a string and `text_config` an object")
        self.architecture = (self.config.get("architectures") or [self.model_type or "unknown"])[0]
        self.family = family_for(self.config)
        try:
            self.layout = layout_for(self.config, rules)
        except LayoutError as e:
            raise CheckpointError(str(e)) from None
        self.shards, weight_map = _find_shards(self.path)
        self._spans = {}  # shard -> (offset of its data, {tensor: (begin, end)}), filled on first read
        self.refs = self._classify_all(weight_map)
        self._units = {}
        for ref in self.refs:
            self._units.setdefault(ref.unit, []).append(ref)
        for refs in self._units.values():
            refs.sort(key=lambda r: -1 if r.expert is None else r.expert)
        _check_units(self._units, self._expected_experts())
        _check_config_shapes(self.refs, self.text_config, config_file)

    @property
    def text_config(self) -> dict:
        """The language model's config (nested under `text_config` in multimodal configs)."""
        return self.config.get("text_config", self.config)

    def _expected_experts(self):
        # DBRX nests its MoE settings in ffn_config.
        for config in (self.text_config, self.text_config.get("ffn_config") or {}):
            for key in _EXPERT_COUNT_KEYS:
                if isinstance(config.get(key), int):
                    return config[key]
        return None

    @property
    def tied(self) -> bool:
        """True when config.json says the head is the embedding (tie_word_embeddings: true)."""
        return self.text_config.get("tie_word_embeddings", self.config.get("tie_word_embeddings")) is True

    def _classify_all(self, weight_map):
        refs, seen, unmatched = [], {}, []
        headers = {shard: read_header(self.path / shard) for shard in self.shards}
        dtypes = {n: info["dtype"] for shard, h in headers.items() for n, info in h.items()
                  if weight_map is None or weight_map.get(n) == shard}
        # Block scales belong to their fp8 weight: {weight name: ref of its scales}.
        self.scales = {
            n.removesuffix(SCALE_SUFFIX): TensorRef(name=n, shard=s, shape=tuple(info["shape"]), dtype=info["dtype"],
                                                    role="norm", layer=None, expert=None, proj=None, unit=n)
            for s, h in headers.items() for n, info in h.items()
            if n.endswith(SCALE_SUFFIX) and dtypes.get(n.removesuffix(SCALE_SUFFIX)) in SCALED_DTYPES
            and (weight_map is None or weight_map.get(n) == s)
        }
        # MXFP4 block scales belong to their `_blocks` tensor: {blocks name: ref of its scales}.
        self.mx_scales = {
            n.removesuffix(MX_SCALES) + MX_BLOCKS: TensorRef(name=n, shard=s, shape=tuple(info["shape"]), dtype="U8",
                                                            role="norm", layer=None, expert=None, proj=None, unit=n)
            for s, h in headers.items() for n, info in h.items()
            if n.endswith(MX_SCALES) and info["dtype"] == "U8"
            and dtypes.get(n.removesuffix(MX_SCALES) + MX_BLOCKS) == "U8"
            and (weight_map is None or weight_map.get(n) == s)
        }
        companions = {r.name for r in self.scales.values()} | {r.name for r in self.mx_scales.values()}
        for shard in self.shards:
            for name, info in headers[shard].items():
                if weight_map is not None and weight_map.get(name) != shard:
                    continue  # the index is the truth about which copy transformers loads
                if name in seen:
                    raise CheckpointError(f"{name} is in both {seen[name]} and {shard}")
                seen[name] = shard
                if name in companions or self._is_mtp(name):
                    continue
                scaled = info["dtype"] in SCALED_DTYPES and name in self.scales
                if name in self.mx_scales:
                    info = _mxfp4_info(self.path / shard, name, info, self.mx_scales[name])
                    scaled = True
                if info["dtype"] not in DTYPES and not scaled:
                    raise CheckpointError(_dtype_message(self.path / shard, name, info["dtype"]))
                try:
                    found = _classify(name, info, shard, self.layout, self._expected_experts())
                except LayoutError as e:
                    raise CheckpointError(f"{self.path}: {e}") from None
                if not found:
                    unmatched.append(name)
                if self.tied and any(r.role == "lm_head" for r in found):
                    # transformers and mlx-lm both use the embedding as the head and ignore a stored
                    # copy, so quantizing (and paying for) it would change nothing.
                    continue
                refs.extend(found)
        if weight_map is not None and set(weight_map) - set(seen):
            missing = sorted(set(weight_map) - set(seen))
            raise CheckpointError(f"{self.path}: {len(missing)} tensors of the index are not in their shards, e.g. {missing[:3]}")
        if unmatched:
            raise CheckpointError(
                f"{self.path}: {len(unmatched)} tensors of {self.architecture} (model_type {self.model_type!r}) "
                f"match no rule of layout {self.layout.name!r}, e.g. {unmatched[:4]}. To read this checkpoint, "
                + HOW_TO_ADD_RULES
            )
        return refs

    def _is_mtp(self, name):
        """True for a tensor of a multi-token-prediction layer (Family.mtp_layers): stored as layers
        num_hidden_layers.. after the decoder, run by neither transformers nor mlx-lm, so left out."""
        if self.family is None or self.family.mtp_layers is None:
            return False
        m = _LAYER_INDEX.match(name)
        layers = self.text_config.get("num_hidden_layers")
        return bool(m) and _is_count(layers) and int(m.group(1)) >= layers

    def units(self) -> dict[str, list[TensorRef]]:
        """unit -> its refs (experts in index order), in the order units first appear on disk."""
        return dict(self._units)

    def refs_in_shard(self, shard) -> list[TensorRef]:
        """Refs stored in one shard file, in file order."""
        return [r for r in self.refs if r.shard == shard]

    def num_experts(self, unit) -> int:
        """Routed experts in a unit (1 for any other unit)."""
        return sum(r.n_experts for r in self._units[unit])

    def n_params(self) -> int:
        """Number of weights in the checkpoint (every tensor counted)."""
        return sum(r.numel for r in self.refs)

    def size16_bytes(self) -> int:
        """Bytes of the whole model stored in 16 bits."""
        return 2 * self.n_params()

    def read(self, ref) -> torch.Tensor:
        """The tensor of `ref` in its dtype on disk, split and transposed: [out, in], [E, out, in] or 1-D."""
        return self._read(ref, None)

    def read_expert(self, ref, e) -> torch.Tensor:
        """Expert `e` [out, in] of a fused stack, reading only that expert's bytes.

        A per-expert ref (n_experts 1) is the expert itself: `e` must be its index (or 0).
        """
        if ref.n_experts == 1:
            if e not in (0, ref.expert):
                raise IndexError(f"{ref.name} holds expert {ref.expert}, not {e}")
            return self._read(ref, None)
        if not 0 <= e < ref.n_experts:
            raise IndexError(f"{ref.name} has {ref.n_experts} experts, asked for {e}")
        return self._read(ref, e)

    def _read(self, ref, expert):
        path = self.path / ref.shard
        try:
            t = self._read_bytes(ref, expert)
        except (OSError, SafetensorError) as e:
            # The file changed or broke after the checkpoint was opened (headers are checked then).
            raise CheckpointError(f"{path}: cannot read tensor {ref.name!r}: {e}; {_CORRUPT}") from None
        # One NaN or Inf makes every statistic and every quantization scale of its group meaningless;
        # it means a damaged file or a diverged model, and no bit width can fix either.
        if not _all_finite(t):
            bad = int((~torch.isfinite(t)).sum())
            which = "" if expert is None else f" (expert {expert})"
            raise CheckpointError(
                f"{path}: tensor {ref.name!r}{which} has {bad} NaN or Inf values; the weights are damaged "
                "(download the checkpoint again) or come from a diverged run (use an earlier checkpoint)"
            )
        if ref.transpose:
            t = t.transpose(-1, -2)
        return t.contiguous()

    def _read_bytes(self, ref, expert):
        """The tensor (or one expert's slab of a fused stack) read with one pread into its own buffer.

        Not safe_open: opening a shard costs tens of milliseconds (mmap and a header of every tensor),
        which is the whole cost of reading an expert of a 128-expert model; and the pages of an mmap
        would stay in the resident set until it is closed. Split and transposed parts are sliced after.
        """
        path = self.path / ref.shard
        if ref.shard not in self._spans:
            with open(path, "rb") as f:
                start = 8 + int.from_bytes(f.read(8), "little")
            # This file's own offsets and dtypes: a ref of another checkpoint with the same tensor names
            # (a dequantized copy in float32, say) reads what this file holds.
            self._spans[ref.shard] = (start, {k: (*v["data_offsets"], v["dtype"])
                                              for k, v in read_header(path).items()})
        start, spans = self._spans[ref.shard]
        begin, end, dtype = spans[ref.name]
        shape = list(ref.shape)
        if ref.dtype == MXFP4:
            dtype, shape = "U8", [*shape[:-1], shape[-1] // MX_BLOCK, MX_BLOCK // 2]
        if expert is not None:
            slab = (end - begin) // shape[0]
            begin, end, shape = begin + expert * slab, begin + (expert + 1) * slab, shape[1:]
        buf = torch.empty(end - begin, dtype=torch.uint8)  # not zeroed first: every byte is read into it
        with open(path, "rb", buffering=0) as f:
            f.seek(start + begin)
            if f.readinto(buf.numpy()) != len(buf):
                raise OSError(f"file ends before the {end - begin} bytes of {ref.name!r}")
        t = buf.view(DTYPES.get(dtype) or SCALED_DTYPES.get(dtype) or torch.uint8)
        t = t.reshape(shape)
        if dtype in SCALED_DTYPES:
            t = dequantize_blocks(t, self._block_scales(ref, expert), self._block_size())
        if ref.dtype == MXFP4:
            t = dequantize_mxfp4(t, self._read_bytes(self.mx_scales[ref.name], expert))
        if ref.split is not None:
            index = _slices(ref, None)
            t = t[index[1:] if expert is not None else index]
        return t


    def _block_size(self):
        """(rows, cols) of an fp8 block from config.json, or None to infer it."""
        size = (self.config.get("quantization_config") or {}).get("weight_block_size")
        return tuple(int(b) for b in size) if isinstance(size, (list, tuple)) and len(size) == 2 else None

    def _block_scales(self, ref, expert):
        """The float32 block scales of an fp8 tensor (of one expert of a fused stack), read like a tensor."""
        scale_ref = self.scales[ref.name]
        if scale_ref.dtype not in DTYPES or len(scale_ref.shape) != len(ref.shape):
            raise CheckpointError(f"{self.path / scale_ref.shard}: block scales {scale_ref.name!r} ({scale_ref.dtype} "
                                  f"{list(scale_ref.shape)}) are not float scales per 2-D block of {ref.name!r} "
                                  f"{list(ref.shape)}")
        return self._read_bytes(scale_ref, expert).float()


def _mxfp4_info(path, name, info, scales):
    """The header entry of an MXFP4 `_blocks` tensor as the matrix it encodes: dtype MXFP4, shape
    [..., rows, cols]. Raises CheckpointError when blocks and scales do not fit together."""
    shape = info["shape"]
    if len(shape) < 3 or shape[-1] != MX_BLOCK // 2 or list(scales.shape) != shape[:-1]:
        raise CheckpointError(f"{path}: MXFP4 tensor {name!r} {shape} and its scales {scales.name!r} "
                              f"{list(scales.shape)} are not [..., rows, cols/32, 16] and [..., rows, cols/32]")
    return {**info, "dtype": MXFP4, "shape": [*shape[:-2], shape[-2] * MX_BLOCK]}


def dequantize_mxfp4(blocks, scales):
    """MXFP4 blocks uint8 [..., rows, cols/32, 16] with exponents uint8 [..., rows, cols/32] -> float32
    [..., rows, cols]: byte j of a block holds elements 2j (low nibble) and 2j + 1 (high nibble),
    each the e2m1 value of its code times 2^(exponent - 127)."""
    lut = torch.tensor(E2M1_VALUES, dtype=torch.float32)
    codes = torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).long()  # [..., rows, cols/32, 16, 2]
    values = lut[codes].flatten(-2)  # [..., rows, cols/32, 32]
    scale = torch.exp2(scales.float() - 127.0)[..., None]
    return (values * scale).flatten(-2)


def dequantize_blocks(w, scales, block=None):
    """fp8 matrix `w` [rows, cols] times its block scales [ceil(rows/b), ceil(cols/b)], in float32.

    `block` is (b_rows, b_cols), config.json's `quantization_config.weight_block_size`; without it,
    the power of two that tiles `w` with that many scales (DeepSeek-V3's blocks are 128 x 128)."""
    rows, cols = w.shape[-2:]
    tiles = tuple(scales.shape)

    def tiled(b):
        return (-(-rows // b[0]), -(-cols // b[1])) == tiles

    if block is None:
        block = next(((b, b) for b in (2**k for k in range(4, 13)) if tiled((b, b))), None)
    if block is None or not tiled(block):
        raise CheckpointError(f"block scales {list(tiles)} do not tile a [{rows}, {cols}] matrix"
                              + (f" in blocks of {list(block)}" if block else ""))
    full = scales.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return w.float() * full


# The exponent bits of the float dtypes (all set: NaN or Inf), and the unsigned view that holds them.
_EXPONENT_BITS = {torch.bfloat16: (torch.int16, np.uint16, 0x7F80), torch.float16: (torch.int16, np.uint16, 0x7C00),
                  torch.float32: (torch.int32, np.uint32, 0x7F800000)}


def _all_finite(t):
    """True when no value of `t` is NaN or Inf.

    From the bit patterns, in one compiled pass (no float copy: a float32 sum per piece had cost as
    much as reading the tensor); other dtypes and non-contiguous tensors take torch.isfinite.
    """
    if t.dtype in _EXPONENT_BITS and t.is_contiguous():
        view, unsigned, mask = _EXPONENT_BITS[t.dtype]
        return kernels.no_exponent_all_ones(t.reshape(-1).view(view).numpy().view(unsigned), unsigned(mask))
    return t.numel() == 0 or bool(torch.isfinite(t).all())


def _dtype_message(path, name, dtype):
    """Why a tensor of `dtype` cannot be read, and what to do instead."""
    base = f"{path}: tensor {name!r} has dtype {dtype}; MINT reads 16/32-bit float checkpoints ({', '.join(DTYPES)})"
    if dtype.startswith("F8"):
        return (f"{base}, and fp8 e4m3 with block scales (`{name}{SCALE_SUFFIX}`, as DeepSeek-V3 and -FP8 "
                "releases store them). This fp8 tensor has no such scales: dequantize it to bf16 first or use "
                "the bf16 release")
    return f"{base}; an integer tensor here means an already quantized checkpoint: use the original 16-bit one"


def _check_config_shapes(refs, text_config, config_file):
    """Raise CheckpointError when a tensor's shape contradicts config.json (hidden and vocab sizes,
    layer count): weights and config from different models would load nowhere."""
    hidden, vocab, layers = (text_config.get(k) for k in ("hidden_size", "vocab_size", "num_hidden_layers"))
    for ref in refs:
        where = f"{ref.shard}: tensor {ref.name!r} {list(ref.shape)}"
        if ref.role == "embedding" and _is_count(vocab) and _is_count(hidden) and ref.out_in != (vocab, hidden):
            raise CheckpointError(f"{where} is not [vocab_size {vocab}, hidden_size {hidden}] as {config_file} says; "
                                  "the config and the weights come from different models")
        # Every expert, router and head matrix reads or writes the hidden state.
        if ref.role in ("routed_expert", "router", "lm_head") and _is_count(hidden) and hidden not in ref.out_in:
            raise CheckpointError(f"{where} has no axis of hidden_size {hidden} as {config_file} says; "
                                  "the config and the weights come from different models")
        if ref.layer is not None and _is_count(layers) and ref.layer >= layers:
            raise CheckpointError(f"{where} is in layer {ref.layer}, but {config_file} says num_hidden_layers {layers}")


def _slices(ref, expert):
    """Index tuple selecting one expert and/or one part of a fused tensor on disk."""
    index = [slice(None)] * len(ref.shape)
    if expert is not None:
        index[0] = expert
    if ref.split is not None:
        i, parts = ref.split
        axis = len(ref.shape) + ref.split_axis
        size = ref.shape[axis] // parts
        index[axis] = slice(i, None, parts) if ref.interleave else slice(i * size, (i + 1) * size)
    return tuple(index)

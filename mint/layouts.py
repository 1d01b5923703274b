"""Where every tensor of a Hugging Face MoE checkpoint belongs: its role and its MLX module.

A layout is an ordered list of rules. A rule is a regex over the tensor name on disk with the named
groups `layer`, `expert` and `proj`, a role, and a `unit` template naming the MLX module the tensor
becomes after mlx-lm's `sanitize()` (METHOD.md §3: one allocation unit per MLX module, so every
expert of a (layer, projection) stack shares one unit). The first matching rule wins.

Templates may use {layer}, {expert}, {proj} (after `proj_map`), {name} (the tensor name) and
{module} (the name without its trailing ".weight"). Optional rule keys:
    proj_map   renames the matched projection, e.g. Mixtral's w1 -> gate_proj
    parts      a tensor fused along its out axis, e.g. ["gate_proj", "up_proj"]; one ref per part,
               and {proj} takes the part's name
    transpose  true when the tensor is stored [..., in, out] (Llama-4's fused experts)
    interleave true when the parts alternate along the axis (GPT-OSS: even rows gate, odd rows up)
               rather than follow each other
    expert_rows  true for a 2-D tensor holding every expert's matrix one after the other along its
               rows (DBRX: [E * I, H]); the checkpoint reads it as the stack [E, I, H]
    mlx_experts  MLX module template with {expert} when mlx-lm builds one module per expert instead
               of a stacked switch layer (DBRX); the unit stays one allocation unit
A tensor of role "other" with `parts` (GPT-OSS's fused expert biases [E, 2I]) is split along its
last axis.

Roles: embedding, lm_head, norm (every 1-D tensor), router, attention, dense_mlp, shared_expert,
routed_expert, other. 1-D tensors and "other" tensors are kept in 16 bits and their unit id is the
MLX parameter path itself; the others are modules whose parameters are `<unit>.weight` (+ scales,
biases once quantized).

A checkpoint of an architecture we do not know can be read by adding rules, e.g.

>>> rules = [{"pattern": r"^h\\.(?P<layer>\\d+)\\.moe\\.(?P<expert>\\d+)\\.(?P<proj>fc[12])\\.weight$",
...           "role": "routed_expert", "unit": "model.layers.{layer}.mlp.switch_mlp.{proj}"}]
>>> layout_for({"model_type": "toy"}, rules).rules[0].role
'routed_expert'
"""

import re
from dataclasses import dataclass, field

ROLES = (
    "embedding",
    "lm_head",
    "norm",
    "router",
    "attention",
    "dense_mlp",
    "shared_expert",
    "routed_expert",
    "other",
)
# Roles whose unit is a parameter path kept in 16 bits rather than a module that can be quantized.
PARAMETER_ROLES = ("norm", "other")

_RULE_KEYS = {"pattern", "role", "unit", "proj_map", "parts", "transpose", "interleave", "expert_rows", "mlx_experts"}

HOW_TO_ADD_RULES = (
    "add rules for it: Checkpoint(path, rules=[...]) or a `rules` list in the model's config entry, "
    'each {"pattern": regex with named groups layer/expert/proj, "role": one of '
    f"{', '.join(ROLES)}, \"unit\": MLX module template such as "
    '"model.layers.{layer}.mlp.switch_mlp.{proj}"} (see mint/layouts.py)'
)


class LayoutError(ValueError):
    """A rule is malformed."""


@dataclass(frozen=True)
class Rule:
    """One naming rule: the regex over disk names and what a match becomes."""

    pattern: re.Pattern
    role: str
    unit: str
    proj_map: dict = field(default_factory=dict)
    parts: tuple = ()
    transpose: bool = False
    interleave: bool = False
    expert_rows: bool = False
    mlx_experts: str = ""

    @classmethod
    def from_dict(cls, d):
        """Build a rule from a plain dict (as written in a config), checking every key."""
        if not isinstance(d, dict):
            raise LayoutError(f"a rule must be a mapping, got {d!r}")
        unknown = set(d) - _RULE_KEYS
        missing = {"pattern", "role", "unit"} - set(d)
        if unknown or missing:
            raise LayoutError(f"rule {d!r}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        if d["role"] not in ROLES:
            raise LayoutError(f"rule {d!r}: role must be one of {ROLES}")
        try:
            pattern = re.compile(d["pattern"])
        except re.error as e:
            raise LayoutError(f"rule {d!r}: bad pattern: {e}") from None
        parts = tuple(d.get("parts", ()))
        if len(parts) == 1:
            raise LayoutError(f"rule {d!r}: `parts` needs at least two names")
        return cls(pattern, d["role"], d["unit"], dict(d.get("proj_map", {})), parts, bool(d.get("transpose", False)),
                   bool(d.get("interleave", False)), bool(d.get("expert_rows", False)), d.get("mlx_experts", ""))

    def unit_for(self, name, groups, proj):
        """The unit id for a tensor `name` matched with `groups`, `proj` already mapped."""
        values = {k: v for k, v in groups.items() if v is not None}
        values.update(name=name, module=name.removesuffix(".weight"))
        if proj is not None:
            values["proj"] = proj
        try:
            return self.unit.format(**values)
        except (KeyError, IndexError) as e:
            raise LayoutError(f"unit template {self.unit!r} uses {e} that pattern {self.pattern.pattern!r} lacks")


@dataclass(frozen=True)
class Layout:
    """A named, ordered rule set, plus the prefix mlx-lm puts before every parameter path."""

    name: str
    rules: tuple
    mlx_prefix: str = ""
    mlx_renames: tuple = ()  # (disk prefix, MLX prefix) pairs, tried before mlx_prefix

    def mlx_path(self, name):
        """MLX parameter path of a tensor kept as is (1-D tensors)."""
        for disk, mlx in self.mlx_renames:
            if name.startswith(disk):
                return mlx + name.removeprefix(disk)
        return name if name.startswith(self.mlx_prefix) else self.mlx_prefix + name

    def match(self, name):
        """(rule, match) of the first rule matching `name`, or (None, None)."""
        for rule in self.rules:
            m = rule.pattern.match(name)
            if m:
                return rule, m
        return None, None


def _rules(*dicts):
    return tuple(Rule.from_dict(d) for d in dicts)


_L = r"model\.layers\.(?P<layer>\d+)"

# Names most decoder-only models on the Hub share (Llama/Qwen style); Qwen2-MoE and Qwen3-MoE use
# exactly these, and an unknown architecture is tried against them before giving up.
_GENERIC = (
    {"pattern": r"^model\.embed_tokens\.weight$", "role": "embedding", "unit": "model.embed_tokens"},
    {"pattern": r"^lm_head\.weight$", "role": "lm_head", "unit": "lm_head"},
    {"pattern": rf"^{_L}\.self_attn\.(?P<proj>\w+)\.weight$", "role": "attention", "unit": "{module}"},
    {
        "pattern": rf"^{_L}\.mlp\.experts\.(?P<expert>\d+)\.(?P<proj>\w+)\.weight$",
        "role": "routed_expert",
        "unit": "model.layers.{layer}.mlp.switch_mlp.{proj}",
    },
    {
        # transformers' in-memory MoE format, [E, 2*intermediate, hidden] with gate before up, in case a
        # checkpoint was written that way
        "pattern": rf"^{_L}\.mlp\.experts\.(?P<proj>gate_up_proj)$",
        "role": "routed_expert",
        "unit": "model.layers.{layer}.mlp.switch_mlp.{proj}",
        "parts": ["gate_proj", "up_proj"],
    },
    {
        "pattern": rf"^{_L}\.mlp\.experts\.(?P<proj>down_proj)$",
        "role": "routed_expert",
        "unit": "model.layers.{layer}.mlp.switch_mlp.{proj}",
    },
    {"pattern": rf"^{_L}\.mlp\.shared_experts?\.(?P<proj>\w+)\.weight$", "role": "shared_expert", "unit": "{module}"},
    {"pattern": rf"^{_L}\.mlp\.shared_expert_gate\.weight$", "role": "router", "unit": "{module}"},
    {"pattern": rf"^{_L}\.mlp\.(gate|router)\.weight$", "role": "router", "unit": "{module}"},
    {"pattern": rf"^{_L}\.mlp\.(?P<proj>\w+)\.weight$", "role": "dense_mlp", "unit": "{module}"},
)

GENERIC = Layout("generic", _rules(*_GENERIC))
QWEN2_MOE = Layout("qwen2_moe", _rules(*_GENERIC))
QWEN3_MOE = Layout("qwen3_moe", _rules(*_GENERIC))

MIXTRAL = Layout(
    "mixtral",
    _rules(
        *_GENERIC[:3],  # embedding, head and attention are named as in the generic layout
        {"pattern": rf"^{_L}\.block_sparse_moe\.gate\.weight$", "role": "router", "unit": "{module}"},
        {
            "pattern": rf"^{_L}\.block_sparse_moe\.experts\.(?P<expert>\d+)\.(?P<proj>w[123])\.weight$",
            "role": "routed_expert",
            "unit": "model.layers.{layer}.block_sparse_moe.switch_mlp.{proj}",
            # mixtral.py sanitize(): w1 -> gate_proj, w2 -> down_proj, w3 -> up_proj
            "proj_map": {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"},
        },
    ),
)

# Llama-4 text weights sit under "model." (Llama4ForCausalLM) or "language_model.model."
# (Llama4ForConditionalGeneration); mlx-lm's llama4.py wants the latter and drops the vision tower.
_LL = r"(?:language_model\.)?model\.layers\.(?P<layer>\d+)"
_LP = "language_model.model.layers.{layer}"
LLAMA4 = Layout(
    "llama4",
    _rules(
        {"pattern": r"^(vision_model|multi_modal_projector)\.", "role": "other", "unit": "{name}"},
        {
            "pattern": r"^(?:language_model\.)?model\.embed_tokens\.weight$",
            "role": "embedding",
            "unit": "language_model.model.embed_tokens",
        },
        {"pattern": r"^(?:language_model\.)?lm_head\.weight$", "role": "lm_head", "unit": "language_model.lm_head"},
        {
            "pattern": rf"^{_LL}\.self_attn\.(?P<proj>\w+)\.weight$",
            "role": "attention",
            "unit": _LP + ".self_attn.{proj}",
        },
        {"pattern": rf"^{_LL}\.feed_forward\.router\.weight$", "role": "router", "unit": _LP + ".feed_forward.router"},
        {
            # [E, hidden, 2*intermediate], i.e. [in, out] per expert with gate before up (modeling_llama4.py
            # chunks the bmm output in two along its last axis)
            "pattern": rf"^{_LL}\.feed_forward\.experts\.(?P<proj>gate_up_proj)$",
            "role": "routed_expert",
            "unit": _LP + ".feed_forward.experts.{proj}",
            "parts": ["gate_proj", "up_proj"],
            "transpose": True,
        },
        {
            "pattern": rf"^{_LL}\.feed_forward\.experts\.(?P<proj>down_proj)$",
            "role": "routed_expert",
            "unit": _LP + ".feed_forward.experts.{proj}",
            "transpose": True,
        },
        {
            "pattern": rf"^{_LL}\.feed_forward\.shared_expert\.(?P<proj>\w+)\.weight$",
            "role": "shared_expert",
            "unit": _LP + ".feed_forward.shared_expert.{proj}",
        },
        {
            "pattern": rf"^{_LL}\.feed_forward\.(?P<proj>\w+)\.weight$",
            "role": "dense_mlp",
            "unit": _LP + ".feed_forward.{proj}",
        },
    ),
    mlx_prefix="language_model.",
)


def _kept_float(pattern):
    """A rule for a matrix the runtime cannot quantize: role "other", so it stays in 16 bits under
    its own parameter path (mlx-lm loads `<module>.weight` into the float module as it is)."""
    return {"pattern": pattern, "role": "other", "unit": "{name}"}


# DeepSeek-V2/V3 (and Kimi-K2, GLM-4-MoE): per-expert keys under mlp.experts, shared experts under
# mlp.shared_experts, the first `first_k_dense_replace` layers dense (mlp.gate_proj, ...).
# mlx-lm's router there is `MoEGate`, a module with a bare `weight` and no `to_quantized`: a
# quantized router makes load_model fail ("Unable to quantize model of type MoEGate").
_DEEPSEEK_ROUTER = _kept_float(rf"^{_L}\.mlp\.gate\.weight$")
DEEPSEEK_V2 = Layout("deepseek_v2", _rules(_DEEPSEEK_ROUTER, *_GENERIC))
DEEPSEEK_V3 = Layout(
    "deepseek_v3",
    _rules(
        _DEEPSEEK_ROUTER,
        # deepseek_v3.py sanitize() splits kv_b_proj per head into embed_q (transposed) and
        # unembed_out and, when it was quantized, dequantizes and quantizes both again along their new
        # input axes: other groups than the ones we chose, so the file would not be the model we
        # measured. Kept in 16 bits, the split is exact.
        _kept_float(rf"^{_L}\.self_attn\.kv_b_proj\.weight$"),
        *_GENERIC,
    ),
)
GLM4_MOE = Layout("glm4_moe", _rules(_DEEPSEEK_ROUTER, *_GENERIC))
OLMOE = Layout("olmoe", _rules(*_GENERIC))
# ERNIE-4.5-MoE's routing-score correction is a [1, E] matrix, not a router: kept as it is.
ERNIE4_5_MOE = Layout(
    "ernie4_5_moe", _rules(_kept_float(rf"^{_L}\.mlp\.moe_statics\.e_score_correction_bias$"), *_GENERIC)
)
# Phi-MoE and MiniMax-M2 name their experts as Mixtral does (w1/w2/w3 under block_sparse_moe).
PHIMOE = Layout("phimoe", MIXTRAL.rules)
MINIMAX_M2 = Layout("minimax_m2", MIXTRAL.rules)

# Granite-MoE fuses each layer's experts: input_linear [E, 2I, H] (gate before up, granitemoe.py
# sanitize() splits it in two halves along axis 1) and output_linear [E, H, I].
_GRANITE_MOE = rf"{_L}\.block_sparse_moe"
GRANITEMOE = Layout(
    "granitemoe",
    _rules(
        *_GENERIC[:3],
        {"pattern": rf"^{_GRANITE_MOE}\.router\.layer\.weight$", "role": "router", "unit": "{module}"},
        {
            "pattern": rf"^{_GRANITE_MOE}\.(?P<proj>input_linear)\.weight$",
            "role": "routed_expert",
            "unit": "model.layers.{layer}.block_sparse_moe.switch_mlp.{proj}",
            "parts": ["gate_proj", "up_proj"],
        },
        {
            "pattern": rf"^{_GRANITE_MOE}\.(?P<proj>output_linear)\.weight$",
            "role": "routed_expert",
            "unit": "model.layers.{layer}.block_sparse_moe.switch_mlp.{proj}",
            "proj_map": {"output_linear": "down_proj"},
        },
    ),
)

# Jamba: experts under feed_forward (MoE every `expert_layer_period` layers, dense feed_forward in
# the others), Mamba mixers in most layers. The Mamba projections are linear layers like attention;
# conv1d [C, 1, K] and A_log stay as they are (jamba.py sanitize() moves the conv axes itself).
_JF = rf"{_L}\.feed_forward"
JAMBA = Layout(
    "jamba",
    _rules(
        *_GENERIC[:3],
        _kept_float(rf"^{_L}\.mamba\.(conv1d\.weight|A_log)$"),
        {"pattern": rf"^{_L}\.mamba\.(?P<proj>\w+)\.weight$", "role": "attention", "unit": "{module}"},
        {"pattern": rf"^{_JF}\.router\.weight$", "role": "router", "unit": "{module}"},
        {
            "pattern": rf"^{_JF}\.experts\.(?P<expert>\d+)\.(?P<proj>\w+)\.weight$",
            "role": "routed_expert",
            "unit": "model.layers.{layer}.feed_forward.switch_mlp.{proj}",
        },
        {"pattern": rf"^{_JF}\.(?P<proj>\w+)\.weight$", "role": "dense_mlp", "unit": "{module}"},
    ),
)

# Qwen3-Next: full attention every `full_attention_interval` layers, Gated DeltaNet (linear_attn) in
# the others; experts per expert plus a shared expert with its gate, as Qwen2-MoE.
QWEN3_NEXT = Layout(
    "qwen3_next",
    _rules(
        _kept_float(rf"^{_L}\.linear_attn\.(conv1d\.weight|A_log)$"),
        {"pattern": rf"^{_L}\.linear_attn\.(?P<proj>\w+)\.weight$", "role": "attention", "unit": "{module}"},
        *_GENERIC,
    ),
)

# DBRX stores each layer's experts as three 2-D matrices [E * I, H], read as stacks [E, I, H]; w2
# holds the down projections transposed (x @ w2 per expert). mlx-lm's dbrx.py builds one linear
# layer per expert (transformer.blocks.N.ffn.experts.E.{w1,v1,w2}, w2 as [H, I]); its sanitize()
# splits only the fused `experts.mlp.*` keys, so per-expert modules written by us load as they are.
_DBRX_EXPERTS = "transformer.blocks.{layer}.ffn.experts.{expert}.{proj}"
DBRX = Layout(
    "dbrx",
    _rules(
        {"pattern": r"^transformer\.wte\.weight$", "role": "embedding", "unit": "transformer.wte"},
        {"pattern": r"^lm_head\.weight$", "role": "lm_head", "unit": "lm_head"},
        {
            "pattern": r"^transformer\.blocks\.(?P<layer>\d+)\.norm_attn_norm\.attn\.(?P<proj>\w+)\.weight$",
            "role": "attention",
            "unit": "{module}",
        },
        {"pattern": r"^transformer\.blocks\.(?P<layer>\d+)\.ffn\.router\.layer\.weight$", "role": "router",
         "unit": "{module}"},
        {"pattern": r"^transformer\.blocks\.(?P<layer>\d+)\.ffn\.experts\.mlp\.(?P<proj>w1|v1)$",
         "role": "routed_expert", "unit": "{name}", "expert_rows": True, "mlx_experts": _DBRX_EXPERTS},
        {"pattern": r"^transformer\.blocks\.(?P<layer>\d+)\.ffn\.experts\.mlp\.(?P<proj>w2)$",
         "role": "routed_expert", "unit": "{name}", "expert_rows": True, "mlx_experts": _DBRX_EXPERTS,
         "transpose": True},
    ),
)


# GPT-OSS: each layer's experts fused, gate and up interleaved along the output (even rows gate) with
# per-expert biases. The hub stores the expert matrices in MXFP4 (`*_blocks` [E, out, in/32, 16],
# dequantized on read as [E, out, in]); transformers saves them in bf16 as [E, in, out]. mlx-lm's
# gpt_oss.py holds them as separate gate_proj / up_proj / down_proj stacks with biases, and takes
# an export already in that form as it is.
_GE = rf"{_L}\.mlp\.experts"
_GPT_OSS_EXPERTS = "model.layers.{layer}.mlp.experts.{proj}"
GPT_OSS = Layout(
    "gpt_oss",
    _rules(
        *_GENERIC[:3],
        {"pattern": rf"^{_L}\.mlp\.router\.weight$", "role": "router", "unit": "{module}"},
        {"pattern": rf"^{_GE}\.(?P<proj>gate_up_proj)_blocks$", "role": "routed_expert", "unit": _GPT_OSS_EXPERTS,
         "parts": ["gate_proj", "up_proj"], "interleave": True},
        {"pattern": rf"^{_GE}\.(?P<proj>down_proj)_blocks$", "role": "routed_expert", "unit": _GPT_OSS_EXPERTS},
        {"pattern": rf"^{_GE}\.(?P<proj>gate_up_proj)$", "role": "routed_expert", "unit": _GPT_OSS_EXPERTS,
         "parts": ["gate_proj", "up_proj"], "interleave": True, "transpose": True},
        {"pattern": rf"^{_GE}\.(?P<proj>down_proj)$", "role": "routed_expert", "unit": _GPT_OSS_EXPERTS,
         "transpose": True},
        {"pattern": rf"^{_GE}\.gate_up_proj_bias$", "role": "other", "unit": _GPT_OSS_EXPERTS + ".bias",
         "parts": ["gate_proj", "up_proj"], "interleave": True},
        {"pattern": rf"^{_GE}\.(?P<proj>down_proj)_bias$", "role": "other", "unit": _GPT_OSS_EXPERTS + ".bias"},
    ),
)


# Qwen3.5-MoE (a multimodal model): the text model under model.language_model, Gated DeltaNet and
# full attention layers as Qwen3-Next. transformers saves the experts per expert; the hub stores them
# fused, experts.gate_up_proj [E, 2I, H] (gate rows first) and experts.down_proj [E, H, I], with no
# `.weight`. mlx-lm's qwen3_5_moe.py reads the text model as language_model.model.* and drops the
# vision tower.
_Q5 = r"model\.language_model\.layers\.(?P<layer>\d+)"
_Q5P = "language_model.model.layers.{layer}"
QWEN3_5_MOE = Layout(
    "qwen3_5_moe",
    _rules(
        {"pattern": r"^model\.visual\.", "role": "other", "unit": "{name}"},
        {"pattern": r"^model\.language_model\.embed_tokens\.weight$", "role": "embedding",
         "unit": "language_model.model.embed_tokens"},
        {"pattern": r"^lm_head\.weight$", "role": "lm_head", "unit": "language_model.lm_head"},
        {"pattern": rf"^{_Q5}\.linear_attn\.(?P<param>conv1d\.weight|A_log)$", "role": "other",
         "unit": _Q5P + ".linear_attn.{param}"},
        {"pattern": rf"^{_Q5}\.(?P<mixer>linear_attn|self_attn)\.(?P<proj>\w+)\.weight$", "role": "attention",
         "unit": _Q5P + ".{mixer}.{proj}"},
        {"pattern": rf"^{_Q5}\.mlp\.experts\.(?P<expert>\d+)\.(?P<proj>\w+)\.weight$", "role": "routed_expert",
         "unit": _Q5P + ".mlp.switch_mlp.{proj}"},
        {"pattern": rf"^{_Q5}\.mlp\.experts\.(?P<proj>gate_up_proj)$", "role": "routed_expert",
         "unit": _Q5P + ".mlp.switch_mlp.{proj}", "parts": ["gate_proj", "up_proj"]},
        {"pattern": rf"^{_Q5}\.mlp\.experts\.(?P<proj>down_proj)$", "role": "routed_expert",
         "unit": _Q5P + ".mlp.switch_mlp.{proj}"},
        {"pattern": rf"^{_Q5}\.mlp\.shared_expert\.(?P<proj>\w+)\.weight$", "role": "shared_expert",
         "unit": _Q5P + ".mlp.shared_expert.{proj}"},
        {"pattern": rf"^{_Q5}\.mlp\.(?P<proj>gate|shared_expert_gate)\.weight$", "role": "router",
         "unit": _Q5P + ".mlp.{proj}"},
    ),
    mlx_prefix="language_model.",
    mlx_renames=(("model.language_model.", "language_model.model."),),
)


def config_value(text, key, default=None):
    """`key` of a (text) config, else of its rope_parameters (transformers 5 nests rope settings there)."""
    return text.get(key, (text.get("rope_parameters") or {}).get(key, default))


@dataclass(frozen=True)
class Requirement:
    """Something mlx-lm's model of a family assumes: `holds(text_config, roles)` must be true, else
    the export is refused with `reason` before any weight is read."""

    holds: object  # callable(text_config: dict, roles: set[str]) -> bool
    reason: str


@dataclass(frozen=True)
class Family:
    """What MINT knows about one MoE family: its layout on disk and what mlx-lm needs of an export.

    mlx: the mlx-lm module (mlx_lm/models/<mlx>.py) that loads it, or None when the MLX export is
        refused by design, `refused` saying why (inspect, analyze and allocate still read it).
    mlx_model_type: model_type written into the MLX config.json when mlx-lm calls it otherwise.
    mlx_wrap_text: mlx-lm has only the multimodal model: the text config goes under `text_config`
        of a config whose model_type is `mlx_model_type`.
    mlx_fields: {mlx-lm ModelArgs field: transformers config key} copied when the field is absent;
        the key is looked up in the config, then in its `rope_parameters` (transformers 5 nests rope
        settings there, mlx-lm reads them flat).
    mlx_defaults: ModelArgs fields set when absent (fields mlx-lm requires that transformers omits);
        a callable value is computed from the (text) config.
    mlx_requires: Requirements of mlx-lm's model (e.g. Llama-4 routes to one expert).
    mlx_norm_shift: suffixes of the 1-D norm weights written +1: the runtime's RMSNorm multiplies by
        w where transformers multiplies by 1 + w, and its sanitize() adds the 1 only when it sees
        per-expert keys, which a stacked, quantized export has not.
    mlx_conv_axes: write conv1d weights [C, 1, K] as [C, K, 1], for the same reason.
    hf_model_type: model_type written into the dequantized folder's config.json when transformers
        knows the architecture under another name (Kimi-K2 is transformers' deepseek_v3).
    dense_first: config key counting the leading dense layers (their MLP is role dense_mlp).
    mtp_layers: config key counting multi-token-prediction layers, stored after the last decoder
        layer; neither mlx-lm nor transformers runs them, so they are left out (read, measured and
        written by nobody).
    gguf: llama.cpp's architecture name (general.architecture) its converter (convert_hf_to_gguf.py
        of the vendored llama.cpp) writes for the family, or None when the GGUF export is refused by
        design, `gguf_refused` saying why.
    gguf_converter_args: flags the converter needs for a checkpoint as MINT reads it.
    gguf_requires: Requirements of llama.cpp's model, checked on the (text) config before conversion
        (the roles are not known then: `holds` gets an empty set).
    """

    name: str
    layout: Layout
    mlx: str | None
    refused: str = ""
    mlx_model_type: str | None = None
    mlx_wrap_text: bool = False
    mlx_fields: dict = field(default_factory=dict)
    mlx_defaults: dict = field(default_factory=dict)
    mlx_requires: tuple = ()
    mlx_norm_shift: tuple = ()
    mlx_conv_axes: bool = False
    hf_model_type: str | None = None
    dense_first: str | None = None
    mtp_layers: str | None = None
    gguf: str | None = None
    gguf_refused: str = ""
    gguf_converter_args: tuple = ()
    gguf_requires: tuple = ()


# DeepSeek-V2's attention always builds a YaRN rope from rope_scaling["factor"]: with no scaling in
# the config, YaRN of factor 1 is the plain rope transformers computes.
_UNSCALED_YARN = {"rope_scaling": {"type": "yarn", "rope_type": "yarn", "factor": 1.0}}
_NEEDS_HEAD = Requirement(lambda text, roles: "lm_head" in roles,
                          "needs an lm_head; this checkpoint ties it to the embedding")
_LLAMA4_REQUIRES = (
    _NEEDS_HEAD,
    Requirement(lambda text, roles: text.get("num_experts_per_tok", 1) == 1,
                "routes each token to one expert (num_experts_per_tok must be 1)"),
    Requirement(lambda text, roles: text.get("moe_layers") is None or list(text["moe_layers"]) == list(
        range(text.get("interleave_moe_layer_step", 1) - 1, text["num_hidden_layers"],
              text.get("interleave_moe_layer_step", 1))),
        "places MoE layers every interleave_moe_layer_step layers only"),
    Requirement(lambda text, roles: text["num_hidden_layers"] >= 4,
                "needs at least 4 layers (it indexes the 4th layer's cache)"),
)
_HEAD_DIM_FROM_HIDDEN = Requirement(
    lambda text, roles: text.get("head_dim") in (None, text["hidden_size"] // text["num_attention_heads"]),
    "derives head_dim from hidden_size / num_attention_heads; this config sets another head_dim")
# MINT leaves multi-token-prediction layers out; GLM-4-MoE's converter exports them unless told not to
# (Qwen3-Next's and Qwen3.5-MoE's even expect them when the config counts none).
_NO_MTP = ("--no-mtp",)
# llama.cpp's OLMoE normalizes k over n_embd (attn_k_norm [hidden]), as the released OLMoE (16 heads,
# 16 key/value heads) has it; transformers' OLMoE norms k over its key/value width.
_OLMOE_FULL_WIDTH_K_NORM = Requirement(
    lambda text, roles: text.get("num_key_value_heads", text["num_attention_heads"]) == text["num_attention_heads"],
    "needs as many key/value heads as attention heads (its k-norm spans the hidden size)")
# llama.cpp's Qwen2-MoE takes head_dim = hidden_size / num_attention_heads (the converter writes no
# key_length), as transformers does only when the division is exact.
_HEADS_DIVIDE_HIDDEN = Requirement(
    lambda text, roles: text["hidden_size"] % text["num_attention_heads"] == 0,
    "needs num_attention_heads to divide hidden_size (it takes head_dim = hidden_size / num_attention_heads)")
# Measured by the family matrix, where (with --no-mtp, and linear_key_head_dim == linear_value_head_dim,
# which llama.cpp's gated delta net assumes) the f32 GGUF gives transformers' logits within 1.5e-3.
_GATED_DELTA_NET_GGUF = (
    "llama.cpp's logits from a quantized GGUF differ from the ggml-dequantized model's (2.8 max on the family "
    "test model's mixed allocation, 1.5 with every weight Q8_0, at 0.2 tolerance, where the f32 GGUF agrees "
    "within 1.5e-3; cause not located), so no GGUF export of it can be verified")
# The converter writes the shared experts' width as intermediate_size // num_key_value_heads (true of
# the released ERNIE-4.5 MoE models); transformers' is moe_intermediate_size x moe_num_shared_experts.
_ERNIE_SHARED_WIDTH = Requirement(
    lambda text, roles: not text.get("moe_num_shared_experts") or text["intermediate_size"] // text[
        "num_key_value_heads"] == text["moe_intermediate_size"] * text["moe_num_shared_experts"],
    "needs intermediate_size // num_key_value_heads == moe_intermediate_size x moe_num_shared_experts "
    "(the converter derives the shared experts' width so)")
# llama.cpp's DeepSeek-V2 picks the top-k over all experts; group-limited routing it has only for V3.
_GREEDY_ROUTING = Requirement(
    lambda text, roles: text.get("topk_method", "greedy") == "greedy",
    "routes greedily over all experts (topk_method 'greedy'); it has no group_limited_greedy")


def _needs_config_key(key, why):
    """The converter reads `key`, which released configs carry and transformers 5 does not write."""
    return Requirement(lambda text, roles: key in text, f"needs {key!r} in config.json ({why})")


# Without scoring_func the converter writes no gating function: DeepSeek-V3's router would become a
# softmax (a silently different model), MiniMax-M2's aborts llama.cpp.
_SCORING_FUNC = _needs_config_key("scoring_func", "the router's activation, as the released config has it")
_DEEPSEEK_V3 = dict(dense_first="first_k_dense_replace", mtp_layers="num_nextn_predict_layers")

# config.json `model_type` -> family. One place for every fact about a family.
FAMILIES = {
    "mixtral": Family("Mixtral", MIXTRAL, "mixtral", mlx_requires=(_HEAD_DIM_FROM_HIDDEN,), gguf="llama"),
    "qwen2_moe": Family("Qwen2-MoE", QWEN2_MOE, "qwen2_moe", mlx_requires=(
        _NEEDS_HEAD,
        Requirement(lambda text, roles: "dense_mlp" not in roles,
                    "has no dense MLP layers (decoder_sparse_step/mlp_only_layers)"),
    ), gguf="qwen2moe", gguf_requires=(_HEADS_DIVIDE_HIDDEN,)),
    "qwen3_moe": Family("Qwen3-MoE", QWEN3_MOE, "qwen3_moe", mlx_fields={"num_experts": "num_local_experts"}, gguf="qwen3moe"),
    "llama4": Family("Llama-4", LLAMA4, "llama4", mlx_defaults={"rope_scaling": None},
                     mlx_requires=_LLAMA4_REQUIRES, gguf="llama4"),
    # mlx-lm's llama4_text is a dense model: the MoE text model goes into the multimodal wrapper.
    "llama4_text": Family("Llama-4 (text-only)", LLAMA4, "llama4", mlx_model_type="llama4", mlx_wrap_text=True,
                          mlx_defaults={"rope_scaling": None}, mlx_requires=_LLAMA4_REQUIRES, gguf="llama4"),
    "deepseek_v2": Family("DeepSeek-V2", DEEPSEEK_V2, "deepseek_v2", mlx_defaults=_UNSCALED_YARN,
                          dense_first="first_k_dense_replace", gguf="deepseek2",
                          gguf_requires=(_GREEDY_ROUTING,)),
    "deepseek_v3": Family("DeepSeek-V3", DEEPSEEK_V3, "deepseek_v3", **_DEEPSEEK_V3, gguf="deepseek2",
                          gguf_requires=(_SCORING_FUNC,)),
    # Kimi-K2's own config says kimi_k2; mlx-lm maps it to deepseek_v3 (utils.MODEL_REMAPPING).
    "kimi_k2": Family("Kimi-K2", DEEPSEEK_V3, "deepseek_v3", hf_model_type="deepseek_v3", **_DEEPSEEK_V3, gguf="deepseek2",
                      gguf_requires=(_SCORING_FUNC,)),
    "glm4_moe": Family("GLM-4-MoE", GLM4_MOE, "glm4_moe", mlx_fields={"partial_rotary_factor": "partial_rotary_factor"},
                       mlx_defaults={"rope_scaling": None}, **_DEEPSEEK_V3, gguf="glm4moe",
                       gguf_converter_args=_NO_MTP),
    "olmoe": Family("OLMoE", OLMOE, "olmoe", gguf="olmoe", gguf_requires=(_OLMOE_FULL_WIDTH_K_NORM,)),
    "phimoe": Family("Phi-MoE", PHIMOE, "phimoe", gguf_refused=(
        "llama.cpp's converter registers no PhimoeForCausalLM (nor does llama.cpp have a Phi-MoE model)")),
    # Released MiniMax-M2 configs carry rotary_dim; transformers 5 turns it into partial_rotary_factor.
    # shared_intermediate_size is a field mlx-lm's minimax requires and never uses.
    "minimax_m2": Family("MiniMax-M2", MINIMAX_M2, "minimax", mlx_defaults={
        "rotary_dim": lambda text: int(text["head_dim"] * config_value(text, "partial_rotary_factor", 1.0)),
        "shared_intermediate_size": 0}, gguf="minimax-m2", gguf_requires=(
            _SCORING_FUNC, _needs_config_key("rotary_dim", "the rope's width, as the released config has it"))),
    "granitemoe": Family("Granite-MoE", GRANITEMOE, "granitemoe", gguf="granitemoe"),
    "jamba": Family("Jamba", JAMBA, None, refused=(
        "mlx-lm's jamba renormalizes the top-k routing weights (softmax over the chosen experts) where "
        "transformers' Jamba weights them by the softmax over all experts: the MLX model is another function"), gguf="jamba"),
    "qwen3_next": Family("Qwen3-Next", QWEN3_NEXT, "qwen3_next", mlx_conv_axes=True,
                         mlx_fields={"partial_rotary_factor": "partial_rotary_factor"}, mlx_norm_shift=(
        ".input_layernorm.weight", ".post_attention_layernorm.weight", "model.norm.weight", ".q_norm.weight",
        ".k_norm.weight"), gguf_refused=_GATED_DELTA_NET_GGUF),
    # Were it exported, conv1d would be written as on disk ([C, 1, K]): qwen3_5.py's sanitize() then
    # moves its axes and shifts the norms by +1 itself (it decides by the conv1d shape). The MLX folder
    # written so equals what mlx-lm loads from the hub layout itself, but that is not transformers' model.
    "qwen3_5_moe": Family("Qwen3.5-MoE", QWEN3_5_MOE, None, refused=(
        "mlx-lm's qwen3_5_moe computes other logits than transformers' Qwen3.5-MoE even from the hub's own "
        "unquantized weights (0.26 max difference on the family test model, cause not located), so no MLX "
        "export of it can be verified"), gguf_refused=_GATED_DELTA_NET_GGUF),
    "ernie4_5_moe": Family("ERNIE-4.5-MoE", ERNIE4_5_MOE, None, refused=(
        "mlx-lm's ernie4_5_moe drops moe_statics.e_score_correction_bias, which transformers adds to the "
        "routing scores: the MLX model would route tokens to other experts than the checkpoint does"), gguf="ernie4_5-moe",
        gguf_requires=(_ERNIE_SHARED_WIDTH,)),
    # mlx-lm's YaRN ignores rope `truncate: false` (released GPT-OSS configs): its rope then differs
    # slightly from transformers' whatever the export; mint verify measures it.
    "gpt_oss": Family("GPT-OSS", GPT_OSS, "gpt_oss", gguf="gpt-oss"),
    "dbrx": Family("DBRX", DBRX, "dbrx", gguf="dbrx"),
}
LAYOUTS = {model_type: family.layout for model_type, family in FAMILIES.items()}


def family_for(config):
    """The Family of a config.json dict, or None for a model_type MINT has no family for."""
    return FAMILIES.get(config.get("model_type"))


def mlx_supported():
    """"Name (model_type)" of every family an MLX export is written for, for error messages."""
    return ", ".join(f"{f.name} ({t})" for t, f in FAMILIES.items() if f.mlx is not None)


def gguf_supported():
    """"Name (model_type)" of every family a GGUF export is written for, for error messages."""
    return ", ".join(f"{f.name} ({t})" for t, f in FAMILIES.items() if f.gguf is not None)


def layout_for(config, rules=None):
    """The layout for a config.json dict; `rules` (dicts, see module doc) are tried first.

    Unknown model types get the generic rules; whether they cover the checkpoint is checked when the
    checkpoint is classified.
    """
    base = LAYOUTS.get(config.get("model_type"), GENERIC)
    if not rules:
        return base
    extra = _rules(*rules)
    return Layout(f"{base.name}+custom", extra + base.rules, base.mlx_prefix, base.mlx_renames)

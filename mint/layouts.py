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

_RULE_KEYS = {"pattern", "role", "unit", "proj_map", "parts", "transpose"}

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
        return cls(pattern, d["role"], d["unit"], dict(d.get("proj_map", {})), parts, bool(d.get("transpose", False)))

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

    def mlx_path(self, name):
        """MLX parameter path of a tensor kept as is (1-D tensors)."""
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

# config.json `model_type` -> layout
LAYOUTS = {
    "mixtral": MIXTRAL,
    "qwen2_moe": QWEN2_MOE,
    "qwen3_moe": QWEN3_MOE,
    "llama4": LLAMA4,
    "llama4_text": LLAMA4,
}


def layout_for(config, rules=None):
    """The layout for a config.json dict; `rules` (dicts, see module doc) are tried first.

    Unknown model types get the generic rules; whether they cover the checkpoint is checked when the
    checkpoint is classified.
    """
    base = LAYOUTS.get(config.get("model_type"), GENERIC)
    if not rules:
        return base
    extra = _rules(*rules)
    return Layout(f"{base.name}+custom", extra + base.rules, base.mlx_prefix)

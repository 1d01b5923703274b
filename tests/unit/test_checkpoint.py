"""Checkpoint reading: roles and units of the four architectures as transformers writes them, sharded
reading, bounded memory, custom rules, and clear errors."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mint.checkpoint import Checkpoint, CheckpointError
from mint.layouts import ROLES
from mint.testing import ARCHITECTURES, make_tiny_checkpoint

E = 4  # routed experts in the tiny models
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def tiny(request, tmp_path_factory):
    """(arch, sharded checkpoint, same model unsharded) for each architecture."""
    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    sharded = make_tiny_checkpoint(arch, root / "sharded", num_experts=E, max_shard_size="100KB")
    single = make_tiny_checkpoint(arch, root / "single", num_experts=E)
    return arch, Checkpoint(sharded), Checkpoint(single)


# Units of one MoE layer (layer 1 in every tiny model), by role, as mlx-lm names its modules.
def expected_layer_units(arch, L=1):
    if arch == "mixtral":
        p = f"model.layers.{L}"
        return {
            "attention": {f"{p}.self_attn.{x}_proj" for x in "qkvo"},
            "router": {f"{p}.block_sparse_moe.gate"},
            "routed_expert": {f"{p}.block_sparse_moe.switch_mlp.{x}_proj" for x in ("gate", "up", "down")},
            "norm": {f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"},
        }
    if arch in ("qwen2_moe", "qwen3_moe"):
        p = f"model.layers.{L}"
        units = {
            "attention": {f"{p}.self_attn.{x}_proj" for x in "qkvo"},
            "router": {f"{p}.mlp.gate"},
            "routed_expert": {f"{p}.mlp.switch_mlp.{x}_proj" for x in ("gate", "up", "down")},
            "norm": {f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"},
        }
        if arch == "qwen2_moe":
            units["router"].add(f"{p}.mlp.shared_expert_gate")
            units["shared_expert"] = {f"{p}.mlp.shared_expert.{x}_proj" for x in ("gate", "up", "down")}
            units["norm"] |= {f"{p}.self_attn.{x}_proj.bias" for x in "qkv"}
        else:
            units["norm"] |= {f"{p}.self_attn.q_norm.weight", f"{p}.self_attn.k_norm.weight"}
        return units
    p = f"language_model.model.layers.{L}"
    return {
        "attention": {f"{p}.self_attn.{x}_proj" for x in "qkvo"},
        "router": {f"{p}.feed_forward.router"},
        "routed_expert": {f"{p}.feed_forward.experts.{x}_proj" for x in ("gate", "up", "down")},
        "shared_expert": {f"{p}.feed_forward.shared_expert.{x}_proj" for x in ("gate", "up", "down")},
        "norm": {f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"},
    }


def layer_units(ckpt, L):
    by_role = {}
    for unit, refs in ckpt.units().items():
        if refs[0].layer == L or (refs[0].role == "norm" and f"layers.{L}." in unit):
            by_role.setdefault(refs[0].role, set()).add(unit)
    return by_role


def test_every_tensor_classified(tiny):
    arch, ckpt, _ = tiny
    assert all(r.role in ROLES for r in ckpt.refs)
    assert {r.name for r in ckpt.refs} >= {"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"}
    top = {refs[0].role for u, refs in ckpt.units().items() if refs[0].layer is None and "layers" not in u}
    assert top == {"embedding", "lm_head", "norm"}
    assert ckpt.layout.name == arch


def test_units_of_a_moe_layer(tiny):
    arch, ckpt, _ = tiny
    assert layer_units(ckpt, 1) == expected_layer_units(arch)
    for unit in expected_layer_units(arch)["routed_expert"]:
        assert ckpt.num_experts(unit) == E
        refs = ckpt.units()[unit]
        if arch == "llama4":  # one fused [E, in, out] tensor per unit
            assert len(refs) == 1 and refs[0].transpose and refs[0].n_experts == E
        else:  # one tensor per expert, in expert order
            assert [r.expert for r in refs] == list(range(E))


def test_reads_match_disk_and_shapes(tiny):
    arch, ckpt, _ = tiny
    torch_dtype = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    for ref in ckpt.refs:
        t = ckpt.read(ref)
        assert t.dtype == torch_dtype[ref.dtype]
        if len(ref.shape) == 1:
            assert t.shape == ref.shape
        elif ref.n_experts > 1:
            assert t.shape == (ref.n_experts, *ref.out_in)
            for e in (0, ref.n_experts - 1):
                assert torch.equal(ckpt.read_expert(ref, e), t[e])
        else:
            assert t.shape == ref.out_in
    assert ckpt.n_params() == sum(r.numel for r in ckpt.refs)
    assert ckpt.size16_bytes() == 2 * ckpt.n_params()


def test_multi_shard_equals_single_file(tiny):
    arch, sharded, single = tiny
    assert len(sharded.shards) > 1 and (sharded.path / "model.safetensors.index.json").exists()
    assert single.shards == ["model.safetensors"]
    assert [r for s in sharded.shards for r in sharded.refs_in_shard(s)] == sharded.refs
    assert {r.unit for r in sharded.refs} == {r.unit for r in single.refs}
    by_key = {(r.name, r.split): r for r in single.refs}
    for ref in sharded.refs:
        assert torch.equal(sharded.read(ref), single.read(by_key[(ref.name, ref.split)]))


def test_n_params_match_transformers(tiny):
    import transformers

    _, _, ckpt = tiny
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt.path)
    assert ckpt.n_params() == sum(p.numel() for p in model.parameters())


def test_units_hold_the_weights_transformers_computes_with(tiny):
    """Unit members equal the weights of the transformers module they come from (w1 is the gate, ...)."""
    import transformers

    arch, _, ckpt = tiny
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=torch.bfloat16)
    units = ckpt.units()
    prefix = "language_model.model" if arch == "llama4" else "model"
    block = {"mixtral": "block_sparse_moe.switch_mlp", "llama4": "feed_forward.experts"}.get(arch, "mlp.switch_mlp")
    layer = model.model.layers[1]
    experts = layer.feed_forward.experts if arch == "llama4" else layer.mlp.experts
    gate_up, down = experts.gate_up_proj.data, experts.down_proj.data
    if arch == "llama4":  # transformers keeps Llama-4's [E, in, out] layout in memory
        gate_up, down = gate_up.transpose(1, 2), down.transpose(1, 2)
    inter = gate_up.shape[1] // 2
    want = {"gate_proj": gate_up[:, :inter], "up_proj": gate_up[:, inter:], "down_proj": down}
    for proj, w in want.items():
        refs = units[f"{prefix}.layers.1.{block}.{proj}"]
        got = ckpt.read(refs[0]) if len(refs) == 1 else torch.stack([ckpt.read(r) for r in refs])
        assert torch.equal(got, w), proj


def test_llama4_split_transpose_computes_like_transformers(tmp_path):
    """Our [E, out, in] gate/up/down, used as nn.Linear weights, give Llama4TextExperts' output."""
    import transformers

    path = make_tiny_checkpoint("llama4", tmp_path / "l4", num_experts=E, dtype=torch.float32)
    ckpt = Checkpoint(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    experts = model.model.layers[1].feed_forward.experts
    x = torch.randn(E * 5, ckpt.config["hidden_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = experts(x).reshape(E, 5, -1)
    p = "language_model.model.layers.1.feed_forward.experts"
    gate, up, down = (ckpt.read(ckpt.units()[f"{p}.{n}"][0]) for n in ("gate_proj", "up_proj", "down_proj"))
    xs = x.reshape(E, 5, -1)
    got = torch.stack([
        torch.nn.functional.silu(xs[e] @ gate[e].T) * (xs[e] @ up[e].T) @ down[e].T for e in range(E)
    ])
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    # Dense layers 0 and 2 sit beside MoE layers 1 and 3.
    roles = {L: {r.role for r in ckpt.refs if r.layer == L} for L in range(4)}
    assert roles[0] == roles[2] == {"attention", "dense_mlp"}
    assert roles[1] == roles[3] == {"attention", "router", "routed_expert", "shared_expert"}
    assert ckpt.units()["language_model.model.layers.0.feed_forward.gate_proj"][0].out_in == (128, 64)


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from mint.checkpoint import Checkpoint

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    ckpt = Checkpoint(sys.argv[1])
    ckpt.read(ckpt.refs[0])  # warm up lazy imports and allocator pools
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    base = status("VmRSS")
    largest = total = 0
    for ref in ckpt.refs:
        t = ckpt.read(ref)
        nbytes = t.numel() * t.element_size()
        largest, total = max(largest, nbytes), total + nbytes
        t.sum()
        del t
    print(json.dumps(dict(growth=status("VmHWM") - base, largest=largest, total=total)))
    """
)


def test_peak_memory_stays_near_the_largest_tensor(tmp_path):
    """Iterating a ~60 MB sharded checkpoint raises peak RSS by a few tensors, never the model."""
    try:
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS on this system")
    path = make_tiny_checkpoint(
        "mixtral", tmp_path / "big", hidden=512, intermediate=1024, vocab=1024,
        dtype=torch.float32, max_shard_size="8MB",
    )
    assert len(Checkpoint(path).shards) > 4
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True, text=True, env=env, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["total"] > 50e6 and m["largest"] == 2 * 2**20
    # One tensor in memory plus its mapped file pages, and allocator slack: far below the model.
    bound = 4 * m["largest"] + 8 * 2**20
    assert m["growth"] < bound, m
    assert m["growth"] < m["total"] / 3, m


def write_toy(path, tensors, config):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(path / "model.safetensors"))
    return path


TOY_RULES = [
    {"pattern": r"^wte\.weight$", "role": "embedding", "unit": "model.embed_tokens"},
    {"pattern": r"^head\.weight$", "role": "lm_head", "unit": "lm_head"},
    {"pattern": r"^h\.(?P<layer>\d+)\.attn\.(?P<proj>\w+)\.weight$", "role": "attention", "unit": "model.layers.{layer}.self_attn.{proj}"},
    {"pattern": r"^h\.(?P<layer>\d+)\.moe\.router\.weight$", "role": "router", "unit": "model.layers.{layer}.mlp.gate"},
    {
        "pattern": r"^h\.(?P<layer>\d+)\.moe\.(?P<expert>\d+)\.(?P<proj>fc[12])\.weight$",
        "role": "routed_expert",
        "unit": "model.layers.{layer}.mlp.switch_mlp.{proj}",
        "proj_map": {"fc1": "up_proj", "fc2": "down_proj"},
    },
    {
        "pattern": r"^h\.(?P<layer>\d+)\.moe\.fused_in$",
        "role": "routed_expert",
        "unit": "model.layers.{layer}.mlp.fused.{proj}",
        "parts": ["a", "b"],
        "transpose": True,
    },
]


def toy_tensors():
    g = torch.Generator().manual_seed(0)
    t = {
        "wte.weight": torch.randn(32, 16, generator=g),
        "head.weight": torch.randn(32, 16, generator=g),
        "h.0.ln.weight": torch.ones(16),
        "h.0.attn.qkv.weight": torch.randn(48, 16, generator=g),
        "h.0.moe.router.weight": torch.randn(2, 16, generator=g),
        "h.0.moe.fused_in": torch.randn(2, 16, 24, generator=g),  # [E, in, 2*out]
    }
    for e in range(2):
        t[f"h.0.moe.{e}.fc1.weight"] = torch.randn(8, 16, generator=g)
        t[f"h.0.moe.{e}.fc2.weight"] = torch.randn(16, 8, generator=g)
    return t


def test_unknown_architecture_needs_rules(tmp_path):
    path = write_toy(tmp_path / "toy", toy_tensors(), {"model_type": "toy", "architectures": ["ToyForCausalLM"]})
    with pytest.raises(CheckpointError, match=r"match no rule.*add rules.*pattern"):
        Checkpoint(path)
    ckpt = Checkpoint(path, rules=TOY_RULES)
    units = ckpt.units()
    assert [r.expert for r in units["model.layers.0.mlp.switch_mlp.up_proj"]] == [0, 1]
    assert ckpt.num_experts("model.layers.0.mlp.switch_mlp.down_proj") == 2
    assert units["model.layers.0.self_attn.qkv"][0].role == "attention"
    assert units["h.0.ln.weight"][0].role == "norm"
    a, b = units["model.layers.0.mlp.fused.a"][0], units["model.layers.0.mlp.fused.b"][0]
    raw = toy_tensors()["h.0.moe.fused_in"]
    assert a.out_in == (12, 16) and ckpt.num_experts(a.unit) == 2
    assert torch.equal(ckpt.read(a), raw[..., :12].transpose(1, 2))
    assert torch.equal(ckpt.read_expert(b, 1), raw[1, :, 12:].T)


@pytest.mark.parametrize(
    "rule,match",
    [
        ({"pattern": "x", "role": "bogus", "unit": "u"}, "role must be one of"),
        ({"pattern": "(", "role": "other", "unit": "u"}, "bad pattern"),
        ({"pattern": "x", "role": "other"}, "missing keys"),
    ],
)
def test_bad_rules(tmp_path, rule, match):
    path = write_toy(tmp_path / "toy", toy_tensors(), {"model_type": "toy"})
    with pytest.raises(CheckpointError, match=match):
        Checkpoint(path, rules=[rule])


def test_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a folder"):
        Checkpoint(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        Checkpoint(empty)
    (empty / "config.json").write_text('{"model_type": "mixtral"}')
    with pytest.raises(CheckpointError, match=r"no \*.safetensors"):
        Checkpoint(empty)
    # A pickle is refused by its name alone: this one would run code if it were ever unpickled.
    (empty / "pytorch_model.bin").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(CheckpointError, match="never unpickles"):
        Checkpoint(empty)


def test_unsupported_dtype_and_broken_index(tmp_path):
    tensors = toy_tensors()
    tensors["wte.weight"] = tensors["wte.weight"].to(torch.int32)
    path = write_toy(tmp_path / "int", tensors, {"model_type": "toy"})
    with pytest.raises(CheckpointError, match="dtype I32"):
        Checkpoint(path, rules=TOY_RULES)
    path = write_toy(tmp_path / "idx", toy_tensors(), {"model_type": "toy"})
    index = {"metadata": {}, "weight_map": {"wte.weight": "model-00002-of-00002.safetensors"}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="missing"):
        Checkpoint(path, rules=TOY_RULES)


def test_expert_count_checked_against_config(tmp_path):
    tensors = toy_tensors()
    path = write_toy(tmp_path / "toy", tensors, {"model_type": "toy", "num_local_experts": 3})
    with pytest.raises(CheckpointError, match="config.json says 3"):
        Checkpoint(path, rules=TOY_RULES)
    del tensors["h.0.moe.0.fc1.weight"]
    path = write_toy(tmp_path / "gap", tensors, {"model_type": "toy"})
    with pytest.raises(CheckpointError, match=r"expert indices \[1\]"):
        Checkpoint(path, rules=TOY_RULES)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_finite_check_equals_torch_isfinite(dtype):
    """The NaN/Inf check from the exponent bits against torch.isfinite: the extremes of each dtype
    (largest finite, smallest subnormal, -0) pass, one NaN or +-Inf anywhere fails, and a
    non-contiguous view takes the torch path."""
    from mint.checkpoint import _all_finite

    info = torch.finfo(dtype)
    torch.manual_seed(0)
    w = torch.randn(33, 70).to(dtype)
    w[0, :4] = torch.tensor([info.max, -info.max, info.smallest_normal * info.eps, -0.0], dtype=dtype)
    assert _all_finite(w) and bool(torch.isfinite(w).all())
    for bad in (float("nan"), float("inf"), -float("inf")):
        for position in [(0, 0), (16, 35), (32, 69)]:
            broken = w.clone()
            broken[position] = bad
            assert _all_finite(broken) == bool(torch.isfinite(broken).all()) is False
            assert _all_finite(broken.t()) is False  # non-contiguous
    assert _all_finite(w[:, ::2]) and _all_finite(w[:0])

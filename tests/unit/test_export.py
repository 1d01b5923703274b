"""Export: mixed allocations of the four architectures load in mlx-lm and compute what transformers
computes on the dequantized folder; written bytes equal predicted bytes; user errors are clear."""

import json

import numpy as np
import pytest
import torch

from mint import export as ex
from mint.checkpoint import Checkpoint, read_header
from mint.quantizer import FULL, tensor_bytes
from mint.testing import ARCHITECTURES, make_tiny_checkpoint

E = 4
# Quantized configs cycled over the units, and over the expert stacks (which start at 16-bit).
CYCLE = [(4, 64), (3, 32), (8, 128), (16, 0), (2, 32), (5, 64), (6, 128), (4, 32)]
EXPERT_CYCLE = [(16, 0), (4, 64), (3, 128), (2, 32), (8, 64), (6, 32)]
# Routers, embedding and head quantized too.
BY_ROLE = {"embedding": (8, 64), "lm_head": (6, 32), "router": (8, 32)}
TOL = 1e-4


def mixed_allocation(ckpt, with_quantization=True):
    """An allocation with several widths, group sizes and 16-bit units, as mint allocate writes it."""
    units, i, j = [], 0, 0
    for unit, refs in ckpt.units().items():
        role = refs[0].role
        if not refs[0].quantizable:
            config = FULL
        elif role in BY_ROLE:
            config = BY_ROLE[role]
        elif role == "routed_expert":
            config, j = EXPERT_CYCLE[j % len(EXPERT_CYCLE)], j + 1
        else:
            config, i = CYCLE[i % len(CYCLE)], i + 1
        n = sum(r.numel for r in refs)
        units.append({"unit": unit, "role": role, "bits": config[0], "group_size": config[1],
                      "bytes": tensor_bytes(n, *config)})
    alloc = {"units": units}
    if with_quantization:
        configs = {u["unit"]: FULL if u["bits"] == 16 else (u["bits"], u["group_size"]) for u in units}
        alloc["quantization"] = ex.build_quantization(ckpt, configs)
    return alloc


# One exported model per architecture. Qwen2-MoE also reads a sharded checkpoint (the dequantized
# folder keeps its shards), Qwen3-MoE a float32 one (16-bit parts become bfloat16).
FIXTURE_OPTIONS = {
    "mixtral": dict(),
    "qwen2_moe": dict(max_shard_size="200KB"),
    "qwen3_moe": dict(dtype=torch.float32),
    "llama4": dict(),
}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def exported(request, tmp_path_factory):
    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    path = make_tiny_checkpoint(arch, root / "ckpt", num_experts=E, hidden=128, intermediate=128,
                                **FIXTURE_OPTIONS[arch])
    (path / "tokenizer.json").write_text('{"stand-in": true}')
    ckpt = Checkpoint(path)
    alloc = mixed_allocation(ckpt, with_quantization=arch != "mixtral")
    manifest = ex.export(ckpt, alloc, root / "mlx", root / "hf", max_shard_bytes=150_000)
    return arch, ckpt, alloc, manifest, root / "mlx", root / "hf"


def test_allocation_is_mixed(exported):
    _, ckpt, alloc, *_ = exported
    units = {u["unit"]: u for u in alloc["units"]}
    configs = {(u["bits"], u["group_size"]) for u in units.values()}
    assert len({b for b, _ in configs}) >= 5 and {32, 64, 128} <= {g for _, g in configs}
    expert = [u for u in units.values() if u["role"] == "routed_expert"]
    assert {u["bits"] for u in expert} >= {16, 4}
    for role in ("embedding", "lm_head", "router"):
        assert all(u["bits"] < 16 for u in units.values() if u["role"] == role)


def test_written_bytes_equal_predicted(exported):
    _, ckpt, alloc, manifest, mlx, _ = exported
    written = 0
    for f in manifest["files"]:
        for h in read_header(mlx / f).values():
            written += int(np.prod(h["shape"])) * ex.ITEMSIZE[h["dtype"]]
    predicted = sum(u["bytes"] for u in alloc["units"])
    # Norms and biases are units too (16-bit, 2 bytes per weight): every tensor is counted.
    assert {u["unit"] for u in alloc["units"]} == set(ckpt.units())
    assert written == predicted == manifest["written_bytes"] == manifest["predicted_bytes"]
    assert json.loads((mlx / "manifest.json").read_text())["written_bytes"] == written
    assert len(manifest["files"]) > 1 and (mlx / "model.safetensors.index.json").exists()


def test_mlx_tensor_layout(exported):
    arch, ckpt, alloc, manifest, mlx, _ = exported
    tensors = {}
    for f in manifest["files"]:
        tensors.update(read_header(mlx / f))
    d16 = "BF16"  # bf16 checkpoints, and the float32 one gets bfloat16
    for u in alloc["units"]:
        refs = ckpt.units()[u["unit"]]
        out, inp = refs[0].out_in
        lead = [E] if u["role"] == "routed_expert" else []
        if not refs[0].quantizable:
            assert tensors[u["unit"]]["dtype"] == d16
        elif u["bits"] == 16:
            w = tensors[u["unit"] + ".weight"]
            assert (w["dtype"], w["shape"]) == (d16, lead + [out, inp])
        else:
            w, s, b = (tensors[f"{u['unit']}.{k}"] for k in ("weight", "scales", "biases"))
            assert (w["dtype"], w["shape"]) == ("U32", lead + [out, inp * u["bits"] // 32])
            assert (s["dtype"], s["shape"]) == (b["dtype"], b["shape"]) == (d16, lead + [out, inp // u["group_size"]])
    if arch == "mixtral":
        assert "model.layers.1.block_sparse_moe.switch_mlp.gate_proj.weight" in tensors
    if arch == "llama4":
        assert all(n.startswith("language_model.") for n in tensors)


def test_dequantized_folder_has_the_input_layout(exported):
    arch, ckpt, _, _, _, hf = exported
    out = Checkpoint(hf)
    assert out.shards == ckpt.shards
    assert [(r.name, r.shape, r.unit, r.split) for r in out.refs] == [(r.name, r.shape, r.unit, r.split) for r in ckpt.refs]
    assert {r.dtype for r in out.refs} == {"F32"}
    assert json.loads((hf / "config.json").read_text())["dtype"] == "float32"
    assert (hf / "tokenizer.json").exists()


def test_mlx_config(exported):
    arch, ckpt, alloc, _, mlx, _ = exported
    cfg = json.loads((mlx / "config.json").read_text())
    assert cfg["quantization"] == cfg["quantization_config"]
    assert cfg["quantization"] == ex.build_quantization(
        ckpt, {u["unit"]: FULL if u["bits"] == 16 else (u["bits"], u["group_size"]) for u in alloc["units"]})
    text = cfg.get("text_config", cfg)
    assert text["rope_theta"] == ckpt.text_config["rope_parameters"]["rope_theta"]
    if arch == "qwen3_moe":
        assert text["num_experts"] == E
    if arch == "llama4":
        assert cfg["model_type"] == "llama4" and "rope_scaling" in text and text["model_type"] == "llama4_text"
    assert (mlx / "tokenizer.json").exists()


@pytest.mark.mlx
def test_mlx_logits_equal_transformers_on_the_dequantized_folder(exported):
    from mlx_lm.utils import load_model

    from mint.verify import fixed_tokens, torch_logits, verify

    arch, ckpt, alloc, _, mlx, hf = exported
    model, _ = load_model(mlx)
    # The modules are quantized as allocated (16-bit ones stay plain).
    modules = dict(model.named_modules())
    quantizable = [u for u in alloc["units"] if ckpt.units()[u["unit"]][0].quantizable]
    for u in quantizable:
        m = modules[u["unit"]]
        assert (getattr(m, "bits", 16), getattr(m, "group_size", u["group_size"])) == (u["bits"], u["group_size"]), u
    report = verify(mlx, hf, tolerance=TOL)
    assert report["verified"] and report["max_abs_logit"] > 1, report  # and not a degenerate model
    # And quantization did change the model: the original checkpoint computes something else.
    tokens = fixed_tokens(256)
    assert np.abs(torch_logits(ckpt.path, tokens) - torch_logits(hf, tokens)).max() > 100 * TOL


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = make_tiny_checkpoint("qwen3_moe", tmp_path_factory.mktemp("small") / "ckpt", num_experts=2,
                                hidden=128, intermediate=128)
    return Checkpoint(path)


def uniform_allocation(ckpt, config):
    return {"units": [{"unit": u, "bits": config[0] if refs[0].quantizable else 16, "group_size": config[1]}
                      for u, refs in ckpt.units().items()]}


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: a["units"].pop(1), "misses 1 units"),
        (lambda a: a["units"].append({"unit": "nope", "bits": 4, "group_size": 64}), "not a unit"),
        (lambda a: a["units"].append(dict(a["units"][0])), "twice"),
        (lambda a: a["units"][0].update(bits=7), "bits must be one of"),
        (lambda a: a["units"][0].update(bytes=1), "another checkpoint"),
        (lambda a: a["quantization"].update({"model.layers.0.mlp.gate": False}), "quantization dict gives"),
        (lambda a: a["quantization"].update({"model.norm.weight": False}), "not a module"),
        (lambda a: a["quantization"].pop("bits"), "default `bits`"),
    ],
)
def test_allocation_errors(small, tmp_path, mutate, match):
    alloc = mixed_allocation(small)
    mutate(alloc)
    with pytest.raises(ex.ExportError, match=match):
        ex.export(small, alloc, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_norms_stay_16_bit_and_groups_must_fit(small, tmp_path):
    alloc = mixed_allocation(small, with_quantization=False)
    norm = next(u for u in alloc["units"] if u["role"] == "norm")
    norm.update(bits=4, group_size=32)
    with pytest.raises(ex.ExportError, match="always 16-bit"):
        ex.export(small, alloc, tmp_path / "out")
    narrow = Checkpoint(make_tiny_checkpoint("mixtral", tmp_path / "narrow", hidden=64, intermediate=64))
    with pytest.raises(ex.ExportError, match="input dimension 64 is not a multiple of group size 128"):
        ex.export(narrow, uniform_allocation(narrow, (4, 128)), tmp_path / "out")
    ex.export(narrow, uniform_allocation(narrow, (4, 64)), tmp_path / "out")


def test_failed_export_leaves_nothing(small, tmp_path, monkeypatch):
    calls, original = [], ex.pack

    def failing_pack(q, bits):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("disk full")
        return original(q, bits)

    monkeypatch.setattr(ex, "pack", failing_pack)
    with pytest.raises(RuntimeError, match="disk full"):
        ex.export(small, mixed_allocation(small), tmp_path / "mlx", tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(small, tmp_path):
    out = tmp_path / "mlx"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(ex.ExportError, match="not empty"):
        ex.export(small, mixed_allocation(small), out)
    assert (out / "old.txt").exists()
    ex.export(small, mixed_allocation(small), out, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlx"]
    with pytest.raises(ex.ExportError, match="different folders"):
        ex.export(small, mixed_allocation(small), tmp_path / "same", tmp_path / "same")


def test_cli(small, tmp_path, capsys):
    alloc_file = tmp_path / "alloc.json"
    alloc_file.write_text(json.dumps(mixed_allocation(small)))
    args = ["--checkpoint", str(small.path), "--allocation", str(alloc_file), "--mlx-out", str(tmp_path / "mlx"),
            "--dequant-out", str(tmp_path / "hf"), "--dtype", "float16"]
    assert ex.main(args) == 0
    out = capsys.readouterr().out
    assert "written bytes = predicted bytes" in out
    header = read_header(tmp_path / "mlx" / "model.safetensors")
    assert {h["dtype"] for h in header.values()} == {"F16", "U32"}

    bad = dict(mixed_allocation(small))
    bad["units"] = bad["units"][1:]
    alloc_file.write_text(json.dumps(bad))
    for argv in (
        args[:4] + ["--mlx-out", str(tmp_path / "x")],  # allocation misses a unit
        ["--checkpoint", str(tmp_path / "none"), "--allocation", str(alloc_file), "--mlx-out", str(tmp_path / "y")],
        args[:2] + ["--allocation", str(tmp_path / "missing.json"), "--mlx-out", str(tmp_path / "z")],
    ):
        with pytest.raises(SystemExit) as e:
            ex.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mint quantize: error:") and "\n" not in err


def test_shard_plan_and_names():
    ts = [ex.OutTensor(f"t{i}", "BF16", (10, 10)) for i in range(5)]  # 200 bytes each
    shards = ex.plan_shards(ts, 450)
    assert [len(s) for s in shards] == [2, 2, 1]
    assert ex.plan_shards([ex.OutTensor("big", "F32", (1000,))], 10)[0][0].name == "big"
    assert ex.shard_names(1) == ["model.safetensors"]
    assert ex.shard_names(3)[2] == "model-00003-of-00003.safetensors"


def test_clip_search_allocation_is_exported_as_measured(tmp_path):
    """Curves measured with clip search -> an allocation marked `clip` -> weights written with clip
    search: the dequantized folder's error is the error the allocation was chosen from."""
    from mint import allocate, analyze, experts

    path = make_tiny_checkpoint("mixtral", tmp_path / "ckpt", num_experts=E, hidden=128, intermediate=128)
    # Clip search up to 3 bits: each unit is exported the way its chosen config was measured.
    analyze.analyze(path, tmp_path / "analysis", spectral=False, clip=3)
    units = experts.build_units(path, tmp_path / "analysis", tmp_path / "units", spectral=False)
    alloc = allocate.allocate(units, "3.5bpw", sqnr_floor_db=0)
    assert alloc["clip"] is True
    assert all(u["clip"] == (2 <= u["bits"] <= 3) for u in alloc["units"])
    assert {u["bits"] for u in alloc["units"]} & {2, 3} and {u["bits"] for u in alloc["units"]} - {2, 3, 16}
    ckpt = Checkpoint(path)
    ex.export(ckpt, alloc, tmp_path / "mlx", tmp_path / "hf")
    out = Checkpoint(tmp_path / "hf")
    checked = 0
    for entry in alloc["units"]:
        refs = ckpt.units()[entry["unit"]]
        if entry["bits"] == 16 or len(refs) != 1 or refs[0].n_experts > 1 or refs[0].expert is not None:
            continue
        w = ckpt.read(refs[0]).float()
        w_hat = out.read(next(r for r in out.refs if r.name == refs[0].name)).float()
        assert float((w_hat - w).norm() / w.norm()) == pytest.approx(entry["nrmse"], rel=1e-4)
        checked += 1
    assert checked >= 4


def _folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "manifest.json"}


@pytest.mark.parametrize("arch,dtype", [("qwen3_moe", torch.bfloat16), ("mixtral", torch.float16),
                                        ("llama4", torch.bfloat16)])
def test_parallel_and_compiled_exports_write_the_same_bytes(arch, dtype, tmp_path, monkeypatch):
    """Two forked workers and the compiled quantize-and-pack write files byte-identical to one
    process running the torch quantize() and pack(): every width and group size, several shards,
    the dequantized folder too."""
    ckpt = Checkpoint(make_tiny_checkpoint(arch, tmp_path / "ckpt", hidden=128, intermediate=128, dtype=dtype))
    alloc = mixed_allocation(ckpt)
    options = dict(max_shard_bytes=150_000)
    ex.export(ckpt, alloc, tmp_path / "one", tmp_path / "one-hf", workers=1, **options)
    ex.export(ckpt, alloc, tmp_path / "two", tmp_path / "two-hf", workers=2, **options)
    ex.export(ckpt, alloc, tmp_path / "fused-one", workers=1, **options)
    ex.export(ckpt, alloc, tmp_path / "fused-two", workers=2, **options)
    monkeypatch.setattr(ex, "_DTYPE16", {})  # the torch path everywhere
    ex.export(ckpt, alloc, tmp_path / "torch", workers=1, **options)
    reference = _folder_bytes(tmp_path / "torch")
    assert sum(name.endswith(".safetensors") for name in reference) > 1
    for name in ("one", "two", "fused-one", "fused-two"):
        assert _folder_bytes(tmp_path / name) == reference, name
    assert _folder_bytes(tmp_path / "one-hf") == _folder_bytes(tmp_path / "two-hf")

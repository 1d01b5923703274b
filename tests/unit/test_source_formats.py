"""Source formats other than 16/32-bit floats, dequantized on read: MXFP4 (GPT-OSS) and fp8 e4m3 weights with block scales
(`weight_scale_inv`, as DeepSeek-V3, Kimi-K2, MiniMax-M2 and Qwen3 -FP8 releases ship them)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mint import export as ex
from mint.checkpoint import Checkpoint
from mint.testing import FP8_BLOCK, make_tiny_checkpoint, to_fp8, write_fp8_release

def reference_dequant(q, scale, block=FP8_BLOCK):
    """w[i, j] = q[i, j] * scale[i // block, j // block], by explicit indexing."""
    rows, cols = q.shape
    i = torch.arange(rows)[:, None] // block
    j = torch.arange(cols)[None, :] // block
    return q.float() * scale[i, j]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A bf16 checkpoint and its fp8 release (hidden 192: blocks of 128 leave partial tiles)."""
    root = tmp_path_factory.mktemp("fp8")
    bf16 = make_tiny_checkpoint("qwen3_moe", root / "bf16", hidden=192, intermediate=320)
    fp8 = write_fp8_release(bf16, root / "fp8")
    tensors = load_file(fp8 / "model.safetensors")
    originals = {name: w.float() for name, w in load_file(bf16 / "model.safetensors").items()
                 if name + "_scale_inv" in tensors}
    return Checkpoint(bf16), Checkpoint(fp8), tensors, originals


def test_fp8_tensors_read_as_their_dequantized_values(pair):
    _, fp8, tensors, originals = pair
    checked = 0
    for ref in fp8.refs:
        if ref.name not in originals:
            continue
        got = fp8.read(ref)
        want = reference_dequant(tensors[ref.name], tensors[ref.name + "_scale_inv"])
        assert got.dtype == torch.float32 and torch.equal(got, want), ref.name
        # And the values are the model's: within e4m3's rounding (3 mantissa bits) of the bf16 weights.
        assert (got - originals[ref.name]).abs().max() <= originals[ref.name].abs().max() / 8
        checked += 1
    assert checked == len(originals) > 10
    # The scales are not tensors of the model.
    assert not any(r.name.endswith("_scale_inv") for r in fp8.refs)


def test_budgets_refer_to_the_bf16_size(pair):
    bf16, fp8, _, _ = pair
    assert fp8.size16_bytes() == bf16.size16_bytes() and fp8.n_params() == bf16.n_params()
    assert {u: [r.out_in for r in refs] for u, refs in fp8.units().items()} == \
        {u: [r.out_in for r in refs] for u, refs in bf16.units().items()}


def test_fp8_export_loads_in_mlx_and_matches_its_dequantized_twin(pair, tmp_path):
    import mlx.core as mx
    import transformers
    from mlx_lm.utils import load_model

    _, fp8, _, _ = pair
    units = [{"unit": u, "bits": 4 if refs[0].quantizable else 16, "group_size": 64}
             for u, refs in fp8.units().items()]
    ex.export(fp8, {"units": units}, tmp_path / "mlx", tmp_path / "hf")
    assert "quantization_config" not in json.loads((tmp_path / "hf" / "config.json").read_text())
    tokens = np.random.default_rng(0).integers(0, 256, size=(2, 10))
    model, _ = load_model(tmp_path / "mlx")
    model.set_dtype(mx.float32)
    got = np.array(model(mx.array(tokens)))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf(torch.tensor(tokens)).logits.numpy()
    assert np.abs(want).max() > 1 and np.abs(got - want).max() < 1e-4


def test_block_size_is_read_from_the_config_or_inferred():
    from mint.checkpoint import CheckpointError, dequantize_blocks

    q, scale = to_fp8(torch.randn(192, 320))
    want = reference_dequant(q, scale)
    assert torch.equal(dequantize_blocks(q, scale, (128, 128)), want)
    assert torch.equal(dequantize_blocks(q, scale), want)   # the power of two that tiles it: 128
    with pytest.raises(CheckpointError, match="do not tile"):
        dequantize_blocks(q, scale, (64, 64))


# ---------------------------------------------------------------------------------------------
# MXFP4 (GPT-OSS's hub experts): `<name>_blocks` / `<name>_scales`, dequantized on read.


def e2m1_from_bits(code):
    """The value of a 4-bit e2m1 code from its bits (OCP MX spec): sign bit 3, exponent bits 1-2 with
    bias 1, mantissa bit 0; exponent 0 is subnormal (0 or 0.5)."""
    sign = -1.0 if code & 0b1000 else 1.0
    exponent, mantissa = (code >> 1) & 0b11, code & 1
    return sign * (0.5 * mantissa if exponent == 0 else 2.0 ** (exponent - 1) * (1 + mantissa / 2))


def brute_force_mxfp4(blocks, scales):
    """Element by element: byte j of a block holds elements 2j (low nibble) and 2j + 1 (high)."""
    rows, n_blocks, _ = blocks.shape
    out = torch.empty(rows, n_blocks * 32)
    for r in range(rows):
        for b in range(n_blocks):
            scale = 2.0 ** (int(scales[r, b]) - 127)
            for j in range(16):
                byte = int(blocks[r, b, j])
                out[r, b * 32 + 2 * j] = e2m1_from_bits(byte & 0xF) * scale
                out[r, b * 32 + 2 * j + 1] = e2m1_from_bits(byte >> 4) * scale
    return out


@pytest.fixture(scope="module")
def mxfp4(tmp_path_factory):
    from mint.testing import make_tiny_family, write_mxfp4_release

    root = tmp_path_factory.mktemp("mxfp4")
    bf16 = make_tiny_family("gpt_oss", root / "bf16")
    return Checkpoint(bf16), Checkpoint(write_mxfp4_release(bf16, root / "mxfp4"))


def test_mxfp4_experts_read_as_their_dequantized_values(mxfp4):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    bf16, mx = mxfp4
    raw = load_file(mx.path / "model.safetensors")
    originals = load_file(bf16.path / "model.safetensors")
    refs = [r for r in mx.refs if r.dtype == "MXFP4"]
    # per layer: gate and up (interleaved parts of gate_up_proj) and down
    assert len(refs) == 6 and all(r.role == "routed_expert" for r in refs)
    for ref in refs:
        blocks, scales = raw[ref.name], raw[ref.name.replace("_blocks", "_scales")]
        # this ref's rows: every second row of gate_up_proj for gate and up, all rows of down_proj
        rows = slice(None) if ref.split is None else slice(ref.split[0], None, ref.split[1])
        got = mx.read(ref)
        # transformers' own decoding (returned [E, in, out], as its GPT-OSS holds experts in memory)
        want = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32).transpose(1, 2)
        assert torch.equal(got, want[:, rows])
        # one expert read alone, against a decoding written from the format's definition
        assert torch.equal(mx.read_expert(ref, 2), brute_force_mxfp4(blocks[2], scales[2])[rows])
        # and the values are the model's, within MXFP4's rounding (a block's step is at most amax / 3)
        original = originals[ref.name.removesuffix("_blocks")].float().transpose(1, 2)[:, rows]
        assert got.shape == original.shape and (got - original).abs().max() <= original.abs().max() / 3


def test_mxfp4_budgets_refer_to_the_bf16_size(mxfp4):
    bf16, mx = mxfp4
    assert mx.n_params() == bf16.n_params() and mx.size16_bytes() == bf16.size16_bytes()
    assert set(mx.units()) == set(bf16.units())  # the same allocation units in both layouts

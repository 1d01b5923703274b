"""Allocation by MINT, rounding by GPTQ (`mint quantize-gptq`) on tiny real checkpoints.

A real allocation (`mint analyze` -> `experts` -> `allocate` at 3.5 bpw, so several configs) is
rounded by GPTQ in .venv-gptq with random calibration tokens; the MLX folder must hold the plan's
bytes and configs, load in mlx-lm with the twin's logits, and its stored codes must rebuild exactly
the twin's weights. The GPTQ environment is required: without it the fixture fails, it does not skip.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from mint import allocate, analyze, baseline, experts, gptq, gptq_rounding, verify
from mint.checkpoint import Checkpoint
from mint.quantizer import FULL, dequantize, quantize, unpack
from mint.testing import make_tiny_checkpoint

# Mixtral keeps experts per tensor on disk; Llama-4 fuses them [E, in, out] and interleaves dense layers.
ARCHES = ["mixtral", "llama4"]


@pytest.fixture(scope="module", params=ARCHES)
def run(request, tmp_path_factory):
    arch = request.param
    root = tmp_path_factory.mktemp(f"gptq-rounding-{arch}")
    path = make_tiny_checkpoint(arch, root / "ckpt", hidden=128, intermediate=128)
    analyze.analyze(path, root / "analysis", spectral=False)
    units = experts.build_units(path, root / "analysis", root / "units", spectral=False)
    plan = allocate.allocate(units, "3.5bpw", sqnr_floor_db=0)
    (root / "alloc.json").write_text(json.dumps(plan))
    rc = gptq_rounding.main(["--checkpoint", str(path), "--allocation", str(root / "alloc.json"),
                             "--mlx-out", str(root / "mlx"), "--dequant-out", str(root / "hf"),
                             "--out", str(root / "result.json"), "--calibration", "random", "--windows", "16",
                             "--seq-len", "64", "--threads", "1", "--workers", "1"])
    assert rc == 0
    return SimpleNamespace(arch=arch, ckpt=Checkpoint(path), plan=plan, mlx=root / "mlx", hf=root / "hf",
                           twin=Checkpoint(root / "hf"), result=json.loads((root / "result.json").read_text()))


def mlx_tensors(folder):
    out = {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            out.update({name: f.get_tensor(name) for name in f.keys()})
    return out


def planned_configs(plan):
    return {u["unit"]: FULL if u["bits"] == 16 else (u["bits"], u["group_size"]) for u in plan["units"]}


@pytest.mark.gptq
@pytest.mark.slow
def test_allocation_is_mixed_and_gptq_rounds_the_linears(run):
    configs = planned_configs(run.plan)
    gptq_configs = {configs[u] for u in run.result["gptq_units"]}
    assert len(gptq_configs - {FULL}) >= 2, "the test needs an allocation with several configs"
    roles = {u: refs[0].role for u, refs in run.ckpt.units().items()}
    assert {roles[u] for u in run.result["gptq_units"]} <= set(baseline.GPTQ_ROLES)
    assert "routed_expert" in {roles[u] for u in run.result["gptq_units"]}
    assert {roles[u] for u in run.result["rtn_units"]} <= {"embedding", "lm_head", "router"}


@pytest.mark.gptq
@pytest.mark.slow
def test_bytes_equal_the_plan(run):
    assert baseline.tensor_bytes(run.mlx) == run.plan["total_bytes"] == run.result["written_bytes"]
    manifest = json.loads((run.mlx / "manifest.json").read_text())
    assert manifest["written_bytes"] == manifest["predicted_bytes"] == run.plan["total_bytes"]


@pytest.mark.gptq
@pytest.mark.slow
def test_config_json_gives_each_module_the_allocated_config(run):
    quantization = json.loads((run.mlx / "config.json").read_text())["quantization"]
    tensors = mlx_tensors(run.mlx)
    for unit, config in planned_configs(run.plan).items():
        if not run.ckpt.units()[unit][0].quantizable:
            continue
        assert quantization[unit] == (False if config == FULL else {"bits": config[0], "group_size": config[1]})
        if config != FULL:
            _, inp = run.ckpt.units()[unit][0].out_in
            assert tensors[f"{unit}.weight"].shape[-1] * 32 == inp * config[0]
            assert tensors[f"{unit}.scales"].shape[-1] * config[1] == inp


def matrices(ckpt, unit):
    """{index of the matrix in the unit's MLX tensor: the matrix}, placed as the exporter places them."""
    out = {}
    for ref in ckpt.units()[unit]:
        for e in range(ref.n_experts) if ref.n_experts > 1 else [None]:
            w = ckpt.read(ref) if e is None else ckpt.read_expert(ref, e)
            out[e if e is not None else (ref.expert or 0)] = w.float()
    return out


@pytest.mark.gptq
@pytest.mark.slow
def test_stored_codes_rebuild_the_twin_exactly(run):
    """unpack + dequantize of what the MLX folder stores = the twin's weights, bit for bit; for the
    units MINT rounds (embedding, head, routers) that is MINT's own round-to-nearest, for GPTQ's it
    is not (GPTQ moved the codes)."""
    tensors = mlx_tensors(run.mlx)
    configs = planned_configs(run.plan)
    differs_from_rtn = 0
    for unit, config in configs.items():
        if config == FULL:
            continue
        bits, group = config
        packed = tensors[f"{unit}.weight"]
        out, inp = run.ckpt.units()[unit][0].out_in
        rebuilt = dequantize(unpack(packed, bits, inp), tensors[f"{unit}.scales"], tensors[f"{unit}.biases"],
                             group).reshape(-1, out, inp)
        twin, source = matrices(run.twin, unit), matrices(run.ckpt, unit)
        assert set(twin) == set(range(len(rebuilt)))
        for i, w in twin.items():
            assert torch.equal(rebuilt[i], w), f"{unit}[{i}]"
            rtn = dequantize(*quantize(source[i], bits, group, tensors[f"{unit}.scales"].dtype), group)
            if unit in run.result["rtn_units"]:
                assert torch.equal(w, rtn), f"{unit} is not MINT's rounding"
            else:
                differs_from_rtn += not torch.equal(w, rtn)
    assert differs_from_rtn == run.result["gptq_matrices"]


@pytest.mark.gptq
@pytest.mark.mlx
@pytest.mark.slow
def test_mlx_logits_equal_the_twin(run):
    report = verify.verify(run.mlx, run.hf)
    assert report["verified"], report["error"]
    assert report["max_abs_logit"] > 0.1


def test_mlx_affine_is_gptq_code_with_the_bias_in_16_bits():
    """s * q + b16 against GPTQ's s * (q - z): equal up to b's rounding, which is at most half a
    bfloat16 step of -s * z per group, and exactly that difference."""
    g = torch.Generator().manual_seed(0)
    bits, group = 3, 32
    codes = torch.randint(0, 2**bits, (4, 64), generator=g, dtype=torch.uint8)
    scales = (torch.rand(4, 2, generator=g) * 0.1 + 1e-3).to(torch.bfloat16)
    zeros = torch.randint(0, 2**bits, (4, 2), generator=g, dtype=torch.uint8)
    q, s, b = gptq_rounding.mlx_affine(codes, scales, zeros, bits, group, torch.bfloat16)
    assert torch.equal(q, codes) and torch.equal(s, scales)
    exact_bias = -scales.double() * zeros.double()          # exact: 8-bit mantissa times a 3-bit integer
    assert torch.equal(b.double(), exact_bias.to(torch.bfloat16).double())
    gptq_w = (codes.double() - zeros.double().repeat_interleave(group, 1)) * scales.double().repeat_interleave(group, 1)
    mlx_w = dequantize(q, s, b, group).double()
    shift = (b.double() - exact_bias).repeat_interleave(group, 1)
    assert torch.allclose(mlx_w - gptq_w, shift, atol=1e-6)
    assert (b.double() - exact_bias).abs().max() > 0, "no bias needed rounding: the case proves nothing"
    with pytest.raises(ValueError, match="beyond 3 bits"):
        gptq_rounding.mlx_affine(codes + 8, scales, zeros, bits, group, torch.bfloat16)
    with pytest.raises(ValueError, match="not torch.bfloat16 values"):
        gptq_rounding.mlx_affine(codes, scales.float() + 1e-4, zeros, bits, group, torch.bfloat16)


def test_worker_takes_a_uniform_scheme_or_per_module_configs():
    for argv in (["--configs", "c.json"], ["--bits", "4", "--group-size", "64", "--configs", "c.json",
                                          "--codes-out", "x"], ["--bits", "4", "--group-size", "64"]):
        with pytest.raises(SystemExit):
            gptq.main(["--checkpoint", "ckpt", "--calibration", "calib", "--out", "o.json", *argv])

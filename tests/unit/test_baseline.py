"""Uniform baselines: the closed-form size, and the same format as the method's allocations."""

import pytest

from mint import analyze, baseline, experts, quantizer
from mint.checkpoint import Checkpoint
from mint.testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    root = tmp_path_factory.mktemp("uniform")
    ckpt_dir = make_tiny_checkpoint("qwen2_moe", root / "ckpt", num_experts=4, hidden=128, intermediate=128)
    analyze.analyze(ckpt_dir, root / "analysis", spectral=False)
    return Checkpoint(ckpt_dir), experts.build_units(ckpt_dir, root / "analysis", root / "units", spectral=False)


@pytest.mark.parametrize("bits,group", [(4, 64), (4, 128), (3, 64), (8, 64)])
def test_uniform_size_matches_closed_form(units, bits, group):
    ckpt, table = units
    result = baseline.uniform_allocation(table, bits, group)
    # Closed form: quantizable weights at b + 32/g bits, everything else (1-D) at 16 bits.
    quantized = sum(r.numel for r in ckpt.refs if r.quantizable and len(r.shape) > 1)
    kept = ckpt.n_params() - quantized
    assert result["total_bytes"] == quantized * bits // 8 + 4 * quantized // group + 2 * kept
    assert result["total_bytes"] == sum(u["bytes"] for u in result["units"])
    assert result["size16_bytes"] == ckpt.size16_bytes()
    chosen = {(u["bits"], u["group_size"]) for u in result["units"] if u["role"] != "norm"}
    assert chosen == {(bits, group)}
    assert all(u["bits"] == 16 for u in result["units"] if u["role"] == "norm")
    q = result["quantization"]
    assert (q["bits"], q["group_size"]) == (bits, group)
    assert result["solver"] == "uniform" and not result["notes"]
    assert result["avg_bits"] == pytest.approx(8 * result["total_bytes"] / ckpt.n_params())


def test_uniform_rejects_unknown_config(units):
    with pytest.raises(ValueError):
        baseline.uniform_allocation(units[1], 7, 64)

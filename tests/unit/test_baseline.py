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


@pytest.mark.mlx
@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral"])
def test_mlx_recipe_is_read_back_as_the_allocation_mlx_lm_wrote(arch, tmp_path):
    """mlx-lm's own convert with mixed_3_6: the allocation read back from its files gives every module
    the config its config.json records, costs exactly the bytes of tensors it wrote, and follows the
    recipe (6 bits for the head and some down projections, 3 bits elsewhere)."""
    import json

    from mlx_lm.convert import convert

    from mint.baseline import mlx_readable_copy, mlx_recipe_allocation, tensor_bytes
    from mint.checkpoint import Checkpoint
    from mint.convert import prepare_units
    from mint.reference import build_tokenizer
    from mint.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(arch, tmp_path / "ckpt", hidden=128, intermediate=128, num_layers=4)
    build_tokenizer(vocab_size=256, chars=20_000).save_pretrained(ckpt)   # mlx-lm's convert loads one
    units, _, _ = prepare_units(ckpt, False, tmp_path / "work", progress=False)
    result = mlx_recipe_allocation(ckpt, units, "mixed_3_6")
    # mlx-lm's own run, kept this time, for its config and its bytes.
    convert(str(mlx_readable_copy(Checkpoint(ckpt), tmp_path / "src")), str(tmp_path / "mlx"), quantize=True,
            q_group_size=64, quant_predicate="mixed_3_6")
    quant = json.loads((tmp_path / "mlx" / "config.json").read_text())["quantization"]
    assert result["total_bytes"] == tensor_bytes(tmp_path / "mlx")
    chosen = {u["unit"]: (u["bits"], u["group_size"]) for u in result["units"] if u["bits"] != 16}
    recorded = {k: (v["bits"], v["group_size"]) for k, v in quant.items() if isinstance(v, dict)}
    assert chosen == recorded and set(chosen.values()) == {(3, 64), (6, 64)}
    assert chosen["lm_head"] == (6, 64) and chosen["model.layers.0.self_attn.q_proj"] == (3, 64)
    downs = {u: c for u, c in chosen.items() if "down_proj" in u}
    assert (6, 64) in downs.values() and (3, 64) in downs.values()
    # Exported by our writer (forked workers too), the folder holds mlx-lm's own tensors, word for word.
    import torch
    from safetensors.torch import load_file

    from mint.export import export

    export(Checkpoint(ckpt), result, tmp_path / "ours", workers=2, progress=False)
    theirs = {k: v for f in (tmp_path / "mlx").glob("*.safetensors") for k, v in load_file(f).items()}
    ours = {k: v for f in (tmp_path / "ours").glob("*.safetensors") for k, v in load_file(f).items()}
    assert set(ours) == set(theirs)
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.mark.mlx
def test_mlx_dynamic_is_dynamic_quants_own_run_on_our_calibration_text(tmp_path, monkeypatch):
    """mlx-lm's dynamic_quant.main, handed our calibration windows in place of the text it downloads
    (and the float32 gradient pass mlx's CPU needs), writes a folder. mlx_dynamic_allocation, run with
    the network refused, calibrates on exactly those windows, gives every module the config main's folder
    holds (its config.json agrees), mixes low and high bits, costs that folder's tensor bytes, and our
    export of it is that folder word for word."""
    import sys
    import urllib.request

    import mlx.core as mx
    import numpy as np
    import torch
    from mlx_lm.quant import dynamic_quant
    from safetensors.torch import load_file

    from mint import data
    from mint.baseline import (calibration_windows, float32_copy, mlx_dynamic_allocation, mlx_readable_copy,
                               tensor_bytes, written_configs)
    from mint.convert import prepare_units
    from mint.export import export
    from mint.reference import build_tokenizer

    ckpt = make_tiny_checkpoint("qwen3_moe", tmp_path / "ckpt", hidden=128, intermediate=128, num_layers=4)
    build_tokenizer(vocab_size=256, chars=20_000).save_pretrained(ckpt)
    # The reference models' training text; a slice of it keeps the tokenizing fast.
    text = tmp_path / "calibration.txt"
    text.write_text(data.load_text("gutenberg-train")[:60_000], encoding="utf-8")
    units, _, _ = prepare_units(ckpt, False, tmp_path / "work", progress=False)
    calibration = dict(calibration=str(text), windows=8, seq_len=64, seed=3)
    ids = calibration_windows(ckpt, str(text), windows=8, seq_len=64, seed=3).numpy()

    def offline(*args, **kwargs):
        raise AssertionError("dynamic_quant tried to fetch its own calibration text")

    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    monkeypatch.setattr(dynamic_quant, "load_data", offline)
    estimate = dynamic_quant.estimate_sensitivities
    seen = []

    def recorded(model, windows, *args, **kwargs):
        seen.append(np.array(windows))
        return estimate(model, windows, *args, **kwargs)

    monkeypatch.setattr(dynamic_quant, "estimate_sensitivities", recorded)
    result = mlx_dynamic_allocation(ckpt, units, 4.5, low_bits=3, high_bits=6, **calibration)
    assert len(seen) == 1 and np.array_equal(seen[0], ids)
    assert result["budget"] == "mlx-dynamic_3_6_4.5" and result["calibration"]["tokens"] == ids.size

    # dynamic_quant's own main(), on the same windows.
    monkeypatch.setattr(dynamic_quant, "load_data", lambda tokenizer, num_samples, sequence_length:
                        mx.array(ids.astype(np.int32)))
    monkeypatch.setattr(dynamic_quant, "estimate_sensitivities",
                        lambda model, *args, **kwargs: estimate(float32_copy(model), *args, **kwargs))
    monkeypatch.chdir(tmp_path)  # main() writes its sensitivities JSON into the working directory
    source = mlx_readable_copy(Checkpoint(ckpt), tmp_path / "src")
    monkeypatch.setattr(sys, "argv", ["dynamic_quant", "--model", str(source), "--mlx-path", str(tmp_path / "mlx"),
                                      "--target-bpw", "4.5", "--low-bits", "3", "--high-bits", "6"])
    dynamic_quant.main()
    import json

    quant = json.loads((tmp_path / "mlx" / "config.json").read_text())["quantization"]
    theirs_configs = written_configs(tmp_path / "mlx")
    chosen = {u["unit"]: (u["bits"], u["group_size"]) for u in result["units"] if u["bits"] != 16}
    assert chosen == theirs_configs and set(chosen.values()) == {(3, 64), (6, 64)}
    # main() records only the high-bit modules; the rest take the default (3, 64).
    high = {k for k, v in quant.items() if isinstance(v, dict)}
    assert high == {u for u, c in chosen.items() if c == (6, 64)}
    assert result["total_bytes"] == tensor_bytes(tmp_path / "mlx")

    export(Checkpoint(ckpt), result, tmp_path / "ours", workers=2, progress=False)
    theirs = {k: v for f in (tmp_path / "mlx").glob("*.safetensors") for k, v in load_file(f).items()}
    ours = {k: v for f in (tmp_path / "ours").glob("*.safetensors") for k, v in load_file(f).items()}
    assert set(ours) == set(theirs)
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in theirs)


def test_tables_show_mlx_dynamic_as_a_baseline_and_the_method_at_its_size():
    import pandas as pd

    from mint import tables

    runs = pd.DataFrame([dict(model="m", method="bf16", budget="16-bit", size_gib=3.0),
                         dict(model="m", method="mlx", budget="dynamic_3_6_4.5", size_gib=1.0),
                         dict(model="m", method="mint", budget="mlx-dynamic_3_6_4.5", size_gib=0.998),
                         dict(model="m", method="mint", budget="3.5bpw", size_gib=0.9)])
    table = tables.matched_size_table(runs)
    assert list(table["method_label"]) == ["mint @ mlx-dynamic_3_6_4.5", "mlx-lm dynamic_3_6_4.5", "16-bit"]

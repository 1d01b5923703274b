"""GGUF target: ggml's codecs against gguf-py's numpy codecs, sizes against ggml's block layouts, and
exported files against llama.cpp itself (types, bytes, logits) and against the RD measurement.

The main test model is a tiny Mixtral (llama.cpp's converter takes its SentencePiece tokenizer as it
is): hidden 256 so k-quants apply, expert width 512, and a second one of width 352 where the down
projection's rows fit only the 32-blocks (llama.cpp's fallback rule). Qwen2-MoE, Qwen3-MoE, Llama-4,
OLMoE and DeepSeek-V3 models carry a tiny BPE tokenizer, whose pre-tokenizer llama.cpp's converter
cannot recognize by its hash (released checkpoints' tokenizers it does): for them the converter is told its name ("gpt-2",
`convert_to_gguf(pretokenizer=...)`), which decides how text is split into tokens and nothing else.
"""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from mint import allocate as alloc
from mint import ggml, gguf
from mint.testing import make_tiny_checkpoint, write_tiny_bpe_tokenizer, write_tiny_tokenizer

# Bytes per block and weights per block of each type, from ggml's block layouts (FAMILIES.md):
# e.g. Q4_K = 2 fp16 scales + 12 bytes of 6-bit sub-scales + 128 bytes of 4-bit codes per 256 weights.
BLOCKS = {"Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
          "Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
          "IQ4_NL": (32, 18), "IQ4_XS": (256, 136), "F16": (1, 2), "BF16": (1, 2), "F32": (1, 4)}
TOKENS = [1, 5, 17, 33, 60, 100, 7, 200, 42, 3, 250, 9, 77, 128, 31, 64]


def _matrix(rows=8, cols=512, seed=0):
    # Heavy-ish tails, so that codecs with different clipping behaviour really differ.
    return np.random.default_rng(seed).standard_t(5, size=(rows, cols)).astype(np.float32) * 0.02


def _mixtral(folder, intermediate):
    path = make_tiny_checkpoint("mixtral", folder, hidden=256, intermediate=intermediate, num_experts=4, vocab=256)
    return write_tiny_tokenizer(path)


def _tiny_checkpoint(arch, folder):
    """A tiny `arch` checkpoint: mint.testing's four layouts, or OLMoE / DeepSeek-V3 (first layer
    dense, a shared expert, MLA attention) from their transformers classes."""
    if arch in ("qwen2_moe", "qwen3_moe", "llama4"):
        return make_tiny_checkpoint(arch, folder, hidden=256, intermediate=512, num_experts=4, vocab=300)
    import transformers

    from mint.testing import randomize

    common = dict(vocab_size=300, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                  tie_word_embeddings=False, max_position_embeddings=512, intermediate_size=512)
    if arch == "olmoe":
        cfg, cls = transformers.OlmoeConfig(num_experts=4, num_experts_per_tok=2, **common), transformers.OlmoeForCausalLM
    else:
        cfg = transformers.DeepseekV3Config(moe_intermediate_size=512, n_routed_experts=4, n_shared_experts=1,
                                            num_experts_per_tok=2, first_k_dense_replace=1, n_group=1, topk_group=1,
                                            q_lora_rank=128, kv_lora_rank=256, qk_nope_head_dim=64,
                                            qk_rope_head_dim=64, v_head_dim=64, **common)
        cls = transformers.DeepseekV3ForCausalLM
    torch.manual_seed(0)
    randomize(cls(cfg), arch).to(torch.bfloat16).save_pretrained(folder)
    if arch == "deepseek_v3":  # the released config's router activation, which the converter reads
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "scoring_func": "sigmoid", "topk_method": "noaux_tc"}))
    return folder


def _convert_with_bpe(arch, folder):
    """A tiny `arch` checkpoint with a BPE tokenizer and its 16-bit GGUF."""
    ckpt = write_tiny_bpe_tokenizer(_tiny_checkpoint(arch, folder / "hf"), vocab=290)
    # byte-level BPE with GPT-2's split: llama.cpp's "gpt-2" pre-tokenizer
    return ckpt, gguf.convert_to_gguf(ckpt, folder / "model-16bit.gguf", progress=False, pretokenizer="gpt-2")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny Mixtral, its 16-bit GGUF, its measurement, a 4.5 bpw allocation and the written file."""
    root = tmp_path_factory.mktemp("gguf")
    ckpt = _mixtral(root / "hf", 512)
    f16 = gguf.convert_to_gguf(ckpt, root / "model-16bit.gguf", progress=False)
    units, rd, _, header = gguf.measure_gguf(f16, progress=False)
    allocation = gguf.allocate_gguf(units, header, "4.5bpw")
    out = root / "model.gguf"
    gguf.write_gguf(f16, allocation, out)
    return dict(ckpt=ckpt, f16=f16, units=units, rd=rd, header=header, allocation=allocation, out=out, root=root)


# ---------------------------------------------------------------------------------------------
# The binding


@pytest.mark.parametrize("name", list(BLOCKS))
def test_row_bytes_are_ggml_block_layouts(name):
    block, size = BLOCKS[name]
    assert ggml.block_size(name) == block
    assert ggml.row_bytes(name, 512) == 512 // block * size
    blocks = ggml.quantize(_matrix(), name)
    assert blocks.shape == (8, ggml.row_bytes(name, 512)) and blocks.dtype == np.uint8


@pytest.mark.parametrize("name", ggml.QUANT_TYPES + ("F16", "BF16"))
def test_round_trip_equals_gguf_py_numpy_codec(name):
    gguf_py = gguf.import_gguf()
    from gguf import quants

    w = _matrix(seed=1)
    blocks = ggml.quantize(w, name)
    ours = ggml.dequantize(blocks, name, w.shape)
    reference = quants.dequantize(blocks, gguf_py.GGMLQuantizationType[name]).reshape(w.shape)
    np.testing.assert_array_equal(ours, reference)
    # and the codec is a real quantizer: close, but not the identity below 8 bits
    err = np.linalg.norm(ours - w) / np.linalg.norm(w)
    assert 0 < err < 0.35


def test_offered_types_follow_llama_cpp_block_rule():
    assert ggml.offered_types(512) == ggml.QUANT_TYPES  # none of the menu needs an importance matrix
    assert set(ggml.offered_types(352)) == {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL"}
    assert ggml.offered_types(100) == ()


def test_squared_error_is_the_round_trip_error():
    w = _matrix(seed=2)
    err, energy = ggml.squared_error(w, "Q3_K")
    diff = ggml.round_trip(w, "Q3_K").astype(np.float64) - w
    assert err == pytest.approx(float((diff**2).sum()), rel=1e-12)
    assert energy == pytest.approx(float((w.astype(np.float64) ** 2).sum()), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Names and sizes


@pytest.mark.parametrize("name,role,quantized", [
    ("token_embd.weight", "embedding", True), ("output.weight", "lm_head", True),
    ("output_norm.weight", "norm", False), ("blk.3.attn_norm.weight", "norm", False),
    ("blk.3.ffn_gate_inp.weight", "router", False), ("blk.3.ffn_down_exps.weight", "routed_expert", True),
    ("blk.3.ffn_up_shexp.weight", "shared_expert", True), ("blk.3.attn_q.weight", "attention", True),
    ("blk.0.ffn_gate.weight", "dense_mlp", True), ("blk.3.exp_probs_b.bias", "router", False)])
def test_roles_and_quantizability_of_llama_cpp_names(name, role, quantized):
    assert gguf.tensor_role(name) == role
    assert gguf.allows_quantization(name, 2) == quantized


def test_file_holds_the_planned_types_and_predicted_bytes(exported):
    a, out = exported["allocation"], exported["out"]
    assert gguf.file_types(out) == a["ggml_types"]
    size = out.stat().st_size
    assert size == a["total_bytes"] == a["header_bytes"] + a["tensor_bytes"] <= a["budget_bytes"]
    # the header of the written file is the predicted one
    assert gguf.read_gguf(out).data_offset == exported["header"]
    # several types were really chosen, and the experts are k-quants (rows of 256)
    types = set(a["ggml_types"].values())
    assert len(types - {"F32"}) >= 2
    assert a["ggml_types"]["blk.0.ffn_gate_exps.weight"] in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS")


def test_written_tensors_are_the_measured_reconstruction(exported):
    source = {t.name: t for t in gguf.read_gguf(exported["f16"]).tensors}
    units = exported["units"].set_index(["unit", "ggml_type"])
    checked = 0
    for t in gguf.read_gguf(exported["out"]).tensors:
        kind = gguf.type_name(t)
        if kind in ggml.FLOAT_TYPES:
            continue
        original = gguf.tensor_values(source[t.name])
        written = gguf.tensor_values(t)
        np.testing.assert_array_equal(written, ggml.round_trip(original, kind))
        # the NRMSE the allocator scored is this tensor's (worst expert for a stack)
        mats = original if original.ndim == 3 else original[None]
        errs = [np.linalg.norm((written[i] if original.ndim == 3 else written) - mats[i]) / np.linalg.norm(mats[i])
                for i in range(len(mats))] if original.ndim == 3 else [np.linalg.norm(written - original) / np.linalg.norm(original)]
        assert units.loc[(t.name, kind), "nrmse"] == pytest.approx(max(errs), rel=1e-5)
        checked += 1
    assert checked >= 10


def _gguf_name_map(ckpt, arch="LLAMA"):
    """HF tensor name -> GGUF tensor name, by gguf-py's own table (per-expert names map to the stack)."""
    g = gguf.import_gguf()
    n_layers = json.loads((ckpt / "config.json").read_text())["num_hidden_layers"]
    table = g.get_tensor_name_map(g.MODEL_ARCH[arch], n_layers)
    return lambda name: table.get_name(re.sub(r"\.experts\.\d+\.", ".experts.", name), try_suffixes=(".weight", ".bias"))


def _dequantized_torch_logits(ckpt, types, folder, arch="LLAMA"):
    """Logits of transformers (float32) on the HF model whose every tensor is what ggml's to_float
    rebuilds from its planned type. The Mixtral and Qwen converters only reorder rows (Mixtral's q/k
    heads) and stack experts, and ggml quantizes row by row, so quantizing the HF layout gives the
    same weights (not so for Llama-4, whose fused experts the converter transposes)."""
    import transformers
    from safetensors.torch import load_file, save_file

    to_gguf = _gguf_name_map(ckpt, arch)
    weights = {}
    for name, w in load_file(str(ckpt / "model.safetensors")).items():
        kind = types[to_gguf(name)]
        w = w.float()
        weights[name] = w if kind in ggml.FLOAT_TYPES else torch.from_numpy(ggml.round_trip(w.numpy(), kind))
    folder.mkdir()
    save_file(weights, str(folder / "model.safetensors"))
    shutil.copy(ckpt / "config.json", folder / "config.json")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([TOKENS])).logits[0].numpy()


def test_llama_cpp_logits_match_the_dequantized_torch_model(exported):
    """Tolerance: 0.1 of the logits' standard deviation (llama.cpp quantizes activations to 8 bits
    in its CPU dot products and keeps an F16 KV cache), and at most a fifth of the distance to the
    unquantized model, so the file really holds the planned quantization."""
    import transformers

    types = exported["allocation"]["ggml_types"]
    got = gguf.llama_logits(exported["out"], TOKENS, threads=2)
    ref = _dequantized_torch_logits(exported["ckpt"], types, exported["root"] / "dequantized")
    model = transformers.AutoModelForCausalLM.from_pretrained(exported["ckpt"], dtype=torch.float32).eval()
    with torch.no_grad():
        unquantized = model(torch.tensor([TOKENS])).logits[0].numpy()
    gap = np.abs(got - ref).max()
    assert gap < 0.1 * ref.std()
    assert gap < 0.2 * np.abs(unquantized - ref).max()
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


# ---------------------------------------------------------------------------------------------
# Fallback rows, budgets, bad input


def test_rows_of_352_get_only_types_llama_cpp_keeps(tmp_path):
    ckpt = _mixtral(tmp_path / "hf", 352)
    f16 = gguf.convert_to_gguf(ckpt, tmp_path / "m16.gguf", progress=False)
    units, _, _, header = gguf.measure_gguf(f16, progress=False)
    down = set(units.loc[units["unit"] == "blk.0.ffn_down_exps.weight", "ggml_type"])
    assert down == {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "BF16"}
    # llama.cpp really falls back there (Q4_K -> Q5_0), which is why Q4_K is never offered
    names = [t.name for t in gguf.read_gguf(f16).tensors if gguf.allows_quantization(t.name, gguf.n_dims(t))]
    gguf.quantize_file(f16, tmp_path / "q4k.gguf", {n: "Q4_K" for n in names})
    forced = gguf.file_types(tmp_path / "q4k.gguf")
    assert forced["blk.0.ffn_down_exps.weight"] == "Q5_0" and forced["blk.0.ffn_up_exps.weight"] == "Q4_K"
    # a plan at the smallest size is written exactly as planned
    allocation = gguf.allocate_gguf(units, header, "min-safe")
    gguf.write_gguf(f16, allocation, tmp_path / "min.gguf")
    assert gguf.file_types(tmp_path / "min.gguf") == allocation["ggml_types"]
    assert (tmp_path / "min.gguf").stat().st_size == allocation["total_bytes"] == allocation["min_safe_bytes"]


def test_budget_below_smallest_gguf_is_an_error(exported):
    with pytest.raises(alloc.BudgetError, match="smallest possible GGUF of this model, [0-9]+ bytes"):
        gguf.allocate_gguf(exported["units"], exported["header"], "100KiB")


def test_unsupported_architecture_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["FooMoeForCausalLM"]}))
    with pytest.raises(gguf.GGUFError, match="'FooMoeForCausalLM' cannot be converted"):
        gguf.check_architecture(tmp_path)
    done = subprocess.run([sys.executable, "-m", "mint", "convert", str(tmp_path), "--budget", "4bpw", "--out",
                           str(tmp_path / "x.gguf"), "--format", "gguf"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "cannot be converted by llama.cpp" in done.stderr


def test_corrupt_gguf_is_a_one_line_error(tmp_path, exported):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(exported["out"].read_bytes()[:5000])  # header cut short
    with pytest.raises(gguf.GGUFError, match="not a readable GGUF"):
        gguf.llama_logits(bad, TOKENS)
    bad.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(gguf.GGUFError, match="not a readable GGUF|no such|cannot load"):
        gguf.read_gguf(bad)


def test_mint_quantize_writes_a_gguf_allocation(exported, tmp_path, capsys):
    from mint import export

    path = tmp_path / "alloc.json"
    alloc.write_allocation(exported["allocation"], path)
    out = tmp_path / "again.gguf"
    assert export.main(["--checkpoint", str(exported["ckpt"]), "--allocation", str(path), "--format", "gguf",
                        "--gguf-out", str(out)]) == 0
    assert out.read_bytes() == exported["out"].read_bytes()
    assert f"llama-server -m {out}" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.tmp"))  # the temporary 16-bit copy is gone


def test_mint_convert_gguf_reuses_its_measurement(exported, tmp_path, capsys):
    from mint import convert

    args = [str(exported["ckpt"]), "--budget", "5bpw", "--format", "gguf", "--work", str(tmp_path / "work")]
    assert convert.main(args + ["--out", str(tmp_path / "a.gguf")]) == 0
    first = capsys.readouterr().out
    assert convert.main(args[:2] + ["4bpw"] + args[3:] + ["--out", str(tmp_path / "b.gguf")]) == 0
    second = capsys.readouterr().out
    assert "analysis written to" in first and "analysis reused from" in second
    assert f"llama-server -m {tmp_path / 'b.gguf'}" in second
    sizes = [(tmp_path / f).stat().st_size for f in ("a.gguf", "b.gguf")]
    n_params = exported["allocation"]["n_params"]
    assert sizes[0] <= 5 * n_params // 8 and sizes[1] <= 4 * n_params // 8 < sizes[0]
    assert not list((tmp_path / "work").rglob("*.gguf"))  # no full-size copy is left behind


@pytest.mark.parametrize("arch", ["qwen2_moe", "qwen3_moe", "llama4", "olmoe", "deepseek_v3"])
def test_bpe_architectures_export_exactly_and_run(arch, tmp_path):
    ckpt, f16 = _convert_with_bpe(arch, tmp_path)
    units, _, _, header = gguf.measure_gguf(f16, progress=False)
    allocation = gguf.allocate_gguf(units, header, "4.5bpw")
    out = tmp_path / "model.gguf"
    gguf.write_gguf(f16, allocation, out)
    assert gguf.file_types(out) == allocation["ggml_types"]
    assert out.stat().st_size == allocation["total_bytes"] <= allocation["budget_bytes"]
    assert any(t in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS")
               for n, t in allocation["ggml_types"].items() if "_exps" in n)
    got = gguf.llama_logits(out, TOKENS, threads=2)
    assert np.isfinite(got).all() and got.std() > 0.1
    if arch == "qwen3_moe":
        ref = _dequantized_torch_logits(ckpt, allocation["ggml_types"], tmp_path / "dequantized", "QWEN3MOE")
        assert np.abs(got - ref).max() < 0.1 * ref.std()


def test_mint_at_a_presets_bytes_scores_no_worse_than_the_preset(exported, tmp_path):
    """llama.cpp's own Q4_K_M and Q3_K_M files, and MINT-GGUF at exactly their bytes: never larger,
    and (exact solver, same measured curves, no floor) never a worse objective than the preset's mix,
    which is one feasible point of the same knapsack."""
    rows = gguf.compare_presets(exported["f16"], exported["units"], exported["header"], tmp_path,
                                presets=("Q3_K_M", "Q4_K_M"), threads=2)
    for r in rows.itertuples():
        assert r.mint_bytes <= r.preset_bytes
        assert r.mint_objective <= r.preset_objective * (1 + 1e-9)
    q4 = gguf.file_types(tmp_path / "Q4_K_M.gguf")
    assert "Q4_K" in q4.values()  # the preset really is llama.cpp's mix, not an override


def test_mint_evaluate_gguf_uses_llama_cpp_logits(exported, tmp_path, capsys):
    from mint import evaluate

    out = tmp_path / "eval.json"
    args = ["--model", str(exported["ckpt"]), "--gguf", str(exported["out"]), "--reference-gguf",
            str(exported["f16"]), "--windows", "2", "--seq-len", "32", "--out", str(out)]
    assert evaluate.main(args) == 0
    result = json.loads(out.read_text())
    assert result["n_windows"] == 2 and result["weights_size_bytes"] == exported["out"].stat().st_size
    assert result["kld_mean"] > 0 and 0 <= result["top1_agree"] <= 1
    # the windows' NLL is llama.cpp's: recompute the first window by hand
    windows = np.load(out.with_suffix(".windows.npz"))
    from transformers import AutoTokenizer

    from mint import data
    from mint.evaluate import make_windows

    ids = AutoTokenizer.from_pretrained(exported["ckpt"])(data.load_eval_text("wikitext2-test"),
                                                          add_special_tokens=False)["input_ids"]
    x = make_windows(ids, 32, 2, 42)[0][0].numpy()
    logits = gguf.llama_logits(exported["out"], x.tolist(), threads=2)[:-1].astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    assert windows["nll_sum"][0] == pytest.approx(-logp[np.arange(31), x[1:]].sum(), rel=1e-4)


def test_files_scored_together_score_as_each_alone(exported):
    """evaluate_ggufs computes the reference's logits once per window for all files: each file's
    scores are those of its own evaluate_gguf run, and the reference scored against itself has KLD 0."""
    args = dict(tokenizer_dir=exported["ckpt"], reference=exported["f16"], seq_len=32, windows=2, threads=2,
                progress=False)
    together = gguf.evaluate_ggufs([exported["out"], exported["f16"]], **args)
    alone = gguf.evaluate_gguf(exported["out"], **args)
    for key in ("nll_sum", "kld_sum", "ref_nll_sum", "top1_agree"):
        np.testing.assert_allclose(together[0]["windows"][key], alone["windows"][key], rtol=1e-6)
    itself = together[1]["windows"]
    np.testing.assert_allclose(itself["nll_sum"], itself["ref_nll_sum"], rtol=1e-9)
    assert np.abs(itself["kld_sum"]).max() < 1e-9 and together[0]["kld_mean"] > 0


def test_mint_evaluate_rejects_a_corrupt_gguf_in_one_line(exported, tmp_path, capsys):
    from mint import evaluate

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(exported["out"].read_bytes()[:3000])
    assert evaluate.main(["--model", str(exported["ckpt"]), "--gguf", str(bad), "--out", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable GGUF" in err


def test_gguf_compare_table(tmp_path):
    """`mint gguf-compare`: a preset and MINT-GGUF at its bytes, both scored by llama.cpp; the BPE
    tokenizer's pre-tokenizer is named on the command line."""
    from mint import gguf_compare

    ckpt = write_tiny_bpe_tokenizer(_tiny_checkpoint("qwen3_moe", tmp_path / "hf"), vocab=290)
    out = tmp_path / "compare.csv"
    assert gguf_compare.main(["--checkpoint", str(ckpt), "--out", str(out), "--presets", "Q4_K_M", "--windows", "2",
                              "--seq-len", "32", "--pretokenizer", "gpt-2", "--threads", "2"]) == 0
    import pandas as pd

    row = pd.read_csv(out).iloc[0]
    assert row["preset"] == "Q4_K_M" and row["bytes_mint"] <= row["bytes_preset"]
    assert row["kld_preset"] > 0 and row["kld_mint"] > 0 and row["n_windows"] == 2
    assert row["objective_mint"] <= row["objective_preset"] * (1 + 1e-9)
    assert not list(tmp_path.glob("tmp*"))  # the files are gone, the numbers stay

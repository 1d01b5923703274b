"""The family matrix (issue 14): every MoE family users run, built from its own transformers class
(and, where the hub stores it otherwise, in the hub's layout), goes through inspect, analyze,
experts, allocate and quantize; mlx-lm's own loader then computes, from the MLX folder, the logits
transformers computes from the dequantized twin (float32, within 1e-3). Families whose MLX export
cannot be faithful are refused by design, before any work, with a one-line reason. The same family
models go through llama.cpp's converter and a mixed GGUF allocation, and llama.cpp's logits are compared
with the ggml-dequantized twin's, or the GGUF export is refused likewise. The README's support matrix
says the same as the family table and this matrix."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from mint import allocate as al
from mint import ggml
from mint import export as ex
from mint.analyze import analyze
from mint.checkpoint import Checkpoint
from mint.experts import build_units
from mint.inspect import describe_checkpoint
from mint.layouts import FAMILIES
from mint.testing import make_tiny_family, write_fp8_release, write_fused_experts, write_kimi_k2, write_mxfp4_release
from mint.verify import TOLERANCE, main as verify_main, verify

pytestmark = pytest.mark.mlx

# case -> (model_type in its config.json, how the checkpoint is written from the tiny family models)
CASES = {
    "mixtral": ("mixtral", "mixtral"),
    "qwen2_moe": ("qwen2_moe", "qwen2_moe"),
    "qwen3_moe": ("qwen3_moe", "qwen3_moe"),
    "qwen3_next": ("qwen3_next", "qwen3_next"),
    "qwen3_5_moe": ("qwen3_5_moe", "qwen3_5_moe"),
    # the hub's Qwen3.5-MoE: experts fused, gate_up_proj [E, 2I, H] and down_proj without `.weight`
    "qwen3_5_moe_fused": ("qwen3_5_moe", "fused:qwen3_5_moe"),
    "llama4_text": ("llama4_text", "llama4_text"),
    "llama4": ("llama4", "llama4"),
    "deepseek_v2": ("deepseek_v2", "deepseek_v2"),
    "deepseek_v3": ("deepseek_v3", "deepseek_v3"),
    # the hub's DeepSeek-V3: fp8 e4m3 with block scales, and a multi-token-prediction layer
    "deepseek_v3_fp8": ("deepseek_v3", "fp8:deepseek_v3"),
    "kimi_k2": ("kimi_k2", "kimi:deepseek_v3"),
    "glm4_moe": ("glm4_moe", "glm4_moe"),
    "olmoe": ("olmoe", "olmoe"),
    "phimoe": ("phimoe", "phimoe"),
    "minimax_m2": ("minimax_m2", "minimax_m2"),
    "granitemoe": ("granitemoe", "granitemoe"),
    "ernie4_5_moe": ("ernie4_5_moe", "ernie4_5_moe"),
    "jamba": ("jamba", "jamba"),
    "dbrx": ("dbrx", "dbrx"),
    "gpt_oss": ("gpt_oss", "gpt_oss"),
    # the hub's GPT-OSS: experts in MXFP4
    "gpt_oss_mxfp4": ("gpt_oss", "mxfp4:gpt_oss"),
}
ROUND_TRIP = [c for c, (mt, _) in CASES.items() if FAMILIES[mt].mlx is not None]
REFUSED = [c for c, (mt, _) in CASES.items() if FAMILIES[mt].mlx is None]
# A budget between min-safe and 16 bits: the allocation mixes widths and group sizes.
BUDGET = "5bpw"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


def checkpoint(root, case):
    """The checkpoint folder of `case`, written once per module."""
    path = root / case
    if (path / "config.json").exists():
        return path
    how = CASES[case][1]
    kind, _, family = how.rpartition(":")
    if not kind:
        return make_tiny_family(family, path)
    base = checkpoint(root, family)
    if kind == "fp8":
        return write_fp8_release(base, path, mtp_layer=True)
    if kind == "mxfp4":
        return write_mxfp4_release(base, path)
    if kind == "fused":
        return write_fused_experts(base, path)
    return write_kimi_k2(checkpoint(root, "deepseek_v3_fp8"), path)


def allocate(path, work):
    """analyze -> experts -> allocate, as the pipeline runs them; returns the allocation."""
    analyze(path, work / "analysis", spectral=False, progress=False)
    build_units(path, work / "analysis", work / "units", spectral=False)
    return al.allocate(al.load_units(work / "units" / "units.parquet"), BUDGET)


@pytest.mark.parametrize("case", ROUND_TRIP)
def test_family_round_trips_in_mlx_lm(root, tmp_path, case):
    path = checkpoint(root, case)
    ckpt = Checkpoint(path)
    assert ckpt.model_type == CASES[case][0]
    assert ckpt.architecture in describe_checkpoint(path)
    alloc = allocate(path, tmp_path)
    configs = {(u["bits"], u["group_size"]) for u in alloc["units"] if u["role"] not in ("norm", "other")}
    expert_configs = {(u["bits"], u["group_size"]) for u in alloc["units"] if u["role"] == "routed_expert"}
    assert len(configs) >= 3 and expert_configs - {(16, 0)}, configs  # a mixed allocation
    manifest = ex.export(ckpt, alloc, tmp_path / "mlx", tmp_path / "hf")
    assert manifest["written_bytes"] == manifest["predicted_bytes"] == alloc["total_bytes"]

    report = verify(tmp_path / "mlx", tmp_path / "hf")
    print(f"{case}: max |logit difference| {report['max_abs_diff']}")
    assert report["verified"], report["error"]
    assert report["max_abs_diff"] <= TOLERANCE and report["max_abs_logit"] > 1  # not a flat model


def test_fp8_source_reads_as_the_bf16_model_and_drops_the_mtp_layer(root):
    fp8 = Checkpoint(checkpoint(root, "deepseek_v3_fp8"))
    bf16 = Checkpoint(checkpoint(root, "deepseek_v3"))
    n = fp8.text_config["num_hidden_layers"]
    assert {r.name for r in fp8.refs} == {r.name for r in bf16.refs}  # the layer after the last is left out
    assert all(r.layer is None or r.layer < n for r in fp8.refs)
    assert fp8.size16_bytes() == bf16.size16_bytes()  # budgets refer to the bf16 size
    assert "fp8 e4m3" in describe_checkpoint(fp8.path)


@pytest.mark.parametrize("case", REFUSED)
def test_refused_family_is_read_but_not_exported(root, tmp_path, case):
    path = checkpoint(root, case)
    family = FAMILIES[CASES[case][0]]
    alloc = allocate(path, tmp_path)  # inspect, analyze and allocate read it
    assert alloc["total_bytes"] <= alloc["budget_bytes"]
    with pytest.raises(ex.ExportError) as e:
        ex.export(Checkpoint(path), alloc, tmp_path / "mlx", tmp_path / "hf")
    message = str(e.value)
    assert "\n" not in message and family.name in message and family.refused in message
    assert "MINT writes MLX folders for" in message and FAMILIES["mixtral"].name in message
    assert not (tmp_path / "mlx").exists() and not (tmp_path / "hf").exists()


@pytest.mark.parametrize("pair", [("gpt_oss", "gpt_oss_mxfp4"), ("qwen3_5_moe", "qwen3_5_moe_fused")])
def test_hub_layout_gives_the_same_units(root, pair):
    # transformers' layout and the hub's are one model: the same allocation units, of the same size.
    saved, hub = (Checkpoint(checkpoint(root, case)) for case in pair)
    assert {u: saved.num_experts(u) for u in saved.units()} == {u: hub.num_experts(u) for u in hub.units()}
    assert saved.n_params() == hub.n_params()


def test_refused_family_is_refused_before_the_analysis(root, tmp_path):
    from mint.convert import convert

    with pytest.raises(ex.ExportError, match="Jamba"):
        convert(str(checkpoint(root, "jamba")), "4bpw", tmp_path / "out", work=tmp_path / "work", progress=False)
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_architecture_mlx_lm_lacks_is_refused(root, tmp_path):
    # A checkpoint read through the user's rules, of a model_type mlx-lm has no module for.
    import shutil

    path = tmp_path / "toy"
    shutil.copytree(checkpoint(root, "qwen3_moe"), path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "toy_moe"}))
    ckpt = Checkpoint(path)
    with pytest.raises(ex.ExportError, match="mlx-lm has no model for model_type 'toy_moe'.*Mixtral"):
        ex.export(ckpt, {"units": []}, tmp_path / "mlx")


@pytest.fixture(scope="module")
def exported(root, tmp_path_factory):
    """One exported family (Qwen3-MoE), for the verification tests."""
    work = tmp_path_factory.mktemp("verify")
    path = checkpoint(root, "qwen3_moe")
    ex.export(Checkpoint(path), allocate(path, work), work / "mlx", work / "hf")
    return work


def test_verify_cli_writes_the_report(exported, tmp_path, capsys):
    out = tmp_path / "verify.json"
    assert verify_main(["--mlx", str(exported / "mlx"), "--dequant", str(exported / "hf"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["runtime"] == "mlx-lm" and report["verified"] is True and report["tolerance"] == TOLERANCE
    assert 0 <= report["max_abs_diff"] <= TOLERANCE and report["tokens"] == [2, 12]
    assert "verified in mlx-lm" in capsys.readouterr().out


def test_a_broken_export_fails_verification(exported, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(exported / "mlx", broken)
    tensors = load_file(broken / "model.safetensors")
    name = next(n for n in tensors if n.endswith("switch_mlp.down_proj.scales"))
    tensors[name] = tensors[name] * 1.05  # one expert stack's scales 5% off
    save_file(tensors, broken / "model.safetensors", metadata={"format": "mlx"})
    out = tmp_path / "verify.json"
    with pytest.raises(SystemExit) as e:
        verify_main(["--mlx", str(broken), "--dequant", str(exported / "hf"), "--out", str(out)])
    assert e.value.code == 1
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("mint verify: error:")]
    assert str(broken) in line and "differs from transformers" in line
    report = json.loads(out.read_text())  # the report is written for a mismatch too
    assert report["verified"] is False and report["max_abs_diff"] > TOLERANCE
    assert torch.isfinite(torch.tensor(report["max_abs_diff"]))


def test_an_export_that_does_not_load_fails_verification(exported, tmp_path, capsys):
    import shutil

    broken = tmp_path / "noweights"
    shutil.copytree(exported / "mlx", broken)
    (broken / "model.safetensors").unlink()
    out = tmp_path / "verify.json"
    with pytest.raises(SystemExit):
        verify_main(["--mlx", str(broken), "--dequant", str(exported / "hf"), "--out", str(out)])
    assert "mlx-lm cannot load or run" in capsys.readouterr().err and str(broken) in out.read_text()
    assert json.loads(out.read_text())["verified"] is False


# ---------------------------------------------------------------------------------------------
# GGUF: every family exported to GGUF with a mixed allocation and run by llama.cpp, or refused by design
#
# The family models are small (hidden 192, expert width 96): no row is a multiple of 256, so the menu
# offers only ggml's 32-blocks (Q4_0 ... Q8_0, IQ4_NL) there; that verifies the export (names, layout,
# types, bytes, llama.cpp's graph), not the k-quants, which test_gguf.py runs on rows of 256.

# llama.cpp is run in its own tokenizer-free way (token ids in, logits out), but its converter needs a
# tokenizer: a byte-level BPE that fits the families' 256 tokens, named "gpt-2" (see test_gguf.py).
# GLM's converter looks its special tokens up by name; ERNIE's and Jamba's read a SentencePiece model.
GGUF_SPECIAL_TOKENS = ("<|endoftext|>", "[gMASK]", "<|user|>", "<|observation|>")
SENTENCEPIECE = ("ernie4_5_moe", "jamba")
# Config keys released checkpoints have, transformers 5 does not write (it folds rotary_dim into
# partial_rotary_factor, and knows the router's activation by class) and llama.cpp's converter reads.
HUB_CONFIG = {"minimax_m2": {"rotary_dim": 16, "scoring_func": "sigmoid"},
              "deepseek_v3": {"scoring_func": "sigmoid", "topk_method": "noaux_tc"},
              "kimi_k2": {"model_type": "kimi_k2", "scoring_func": "sigmoid", "topk_method": "noaux_tc"}}
# What llama.cpp assumes of a config (Family.gguf_requires) and the family models do not satisfy: the
# GGUF case changes only those keys (the released checkpoints satisfy them); the unchanged model is
# refused in one line (test_gguf_requirement_is_checked_before_conversion).
GGUF_OVERRIDES = {
    "qwen2_moe": {"num_attention_heads": 6},
    "olmoe": {"num_key_value_heads": 6},
    "deepseek_v2": {"topk_method": "greedy", "n_group": 1, "topk_group": 1},
    # the dense width is unused (every layer is MoE) but sets the converter's shared-expert width
    "ernie4_5_moe": {"intermediate_size": 192},
}
# The families' own models; Kimi-K2 as its config names it (the architecture is DeepSeek-V3's).
GGUF_CASES = [c for c, (mt, how) in CASES.items() if ":" not in how or how.startswith("kimi:")]
GGUF_ROUND_TRIP = [c for c in GGUF_CASES if FAMILIES[CASES[c][0]].gguf is not None]
GGUF_REFUSED = [c for c in GGUF_CASES if FAMILIES[CASES[c][0]].gguf is None]
# Exported and run by llama.cpp, but beyond the tolerance on the family model (measured; the f32 GGUF
# gives transformers' logits within 1.5e-3, so the weights and graph are right): MoE routing and
# Mamba's recurrence amplify llama.cpp's 8-bit activations. Marked strict xfail: a pass is news.
GGUF_NOT_VERIFIED = {
    "deepseek_v2": "one token's logits 0.53 off at tolerance 0.10 (its top-k experts flip), the rest <= 0.14",
    "jamba": "0.17 max at tolerance 0.10, spread over all tokens",
}
GGUF_BUDGET = "6bpw"  # between the smallest file and 16 bits for every family model
TOKENS = [1, 5, 17, 33, 60, 100, 7, 200, 42, 3, 250, 9, 77, 128, 31, 64]


def gguf_checkpoint(root, case):
    """The checkpoint of `case` as llama.cpp's converter reads it: GGUF_OVERRIDES, the hub's config keys
    and a tokenizer."""
    from mint.testing import write_tiny_bpe_tokenizer, write_tiny_tokenizer

    path = root / f"gguf-{case}"
    if (path / "config.json").exists():
        return path
    make_tiny_family(CASES[case][1].rpartition(":")[2], path, **GGUF_OVERRIDES.get(case, {}))
    if case in HUB_CONFIG:
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, **HUB_CONFIG[case]}, indent=2))
    write_tiny_bpe_tokenizer(path, vocab=200, special_tokens=GGUF_SPECIAL_TOKENS)
    if case in SENTENCEPIECE:
        write_tiny_tokenizer(path)
    return path


def ggml_twin_logits(ckpt, written, work):
    """transformers' logits (float32) from the checkpoint whose every weight llama.cpp quantized is what
    ggml's to_float rebuilds from the written GGUF, the others as stored.

    The converter moves weights (stacks experts, permutes q/k rows, splits fused matrices, transposes)
    per family. Rather than restate each move, it is asked: a probe checkpoint whose weights hold their
    own global index (exact in float32 below 2**24), converted to an f32 GGUF, says for every element
    of every GGUF tensor which checkpoint element it came from.
    """
    import shutil

    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    from mint import gguf
    from mint.verify import torch_logits

    weights = load_file(str(ckpt / "model.safetensors"))
    probe, offsets, start = {}, {}, 0
    for name, w in weights.items():
        if w.dim() >= 2:
            offsets[name] = start
            probe[name] = torch.arange(start, start + w.numel(), dtype=torch.float32).reshape(w.shape)
            start += w.numel()
        else:
            probe[name] = w.float()
    assert start < 2**24
    (work / "probe").mkdir(parents=True)
    for f in ckpt.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy(f, work / "probe" / f.name)
    save_file(probe, str(work / "probe" / "model.safetensors"))
    probe_gguf = gguf.convert_to_gguf(work / "probe", work / "probe.gguf", progress=False, pretokenizer="gpt-2",
                                      out_type="f32")
    index = {t.name: gguf.tensor_values(t) for t in gguf.read_gguf(probe_gguf).tensors}
    flat = torch.cat([w.float().flatten() for n, w in weights.items() if n in offsets]).numpy()
    for t in gguf.read_gguf(written).tensors:
        if gguf.type_name(t) in ggml.FLOAT_TYPES:
            continue
        source = index[t.name].astype(np.int64)
        assert (source == index[t.name]).all() and 0 <= source.min() and source.max() < start, t.name
        flat[source.ravel()] = gguf.tensor_values(t).ravel()
    twin = {n: torch.from_numpy(flat[offsets[n]:offsets[n] + w.numel()].reshape(w.shape).copy()) if n in offsets
            else w.float() for n, w in weights.items()}
    (work / "twin").mkdir()
    config = json.loads((ckpt / "config.json").read_text())
    hf_model_type = FAMILIES[config["model_type"]].hf_model_type  # Kimi-K2 is transformers' deepseek_v3
    (work / "twin" / "config.json").write_text(json.dumps({**config, "model_type": hf_model_type or config["model_type"]}))
    save_file(twin, str(work / "twin" / "model.safetensors"))
    return torch_logits(work / "twin", [TOKENS])[0]


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=GGUF_NOT_VERIFIED[c]))
                                  if c in GGUF_NOT_VERIFIED else c for c in GGUF_ROUND_TRIP])
def test_family_round_trips_in_llama_cpp(root, tmp_path, case):
    """A mixed GGUF allocation, written with the planned types and bytes, loaded by llama.cpp, gives the
    logits transformers computes from the ggml-dequantized twin within test_gguf.py's tolerance: 0.1 of
    the logits' standard deviation (llama.cpp quantizes activations to 8 bits in its CPU dot products
    and keeps an F16 KV cache)."""
    from mint import gguf

    family = FAMILIES[CASES[case][0]]
    ckpt = gguf_checkpoint(root, case)
    f16 = gguf.convert_to_gguf(ckpt, tmp_path / "model-16bit.gguf", progress=False, pretokenizer="gpt-2")
    assert gguf.read_gguf(f16).fields["general.architecture"].contents() == family.gguf
    units, _, _, header = gguf.measure_gguf(f16, progress=False)
    allocation = gguf.allocate_gguf(units, header, GGUF_BUDGET)
    out = tmp_path / "model.gguf"
    gguf.write_gguf(f16, allocation, out)
    assert gguf.file_types(out) == allocation["ggml_types"]
    assert out.stat().st_size == allocation["total_bytes"] == allocation["header_bytes"] + allocation["tensor_bytes"]
    assert allocation["total_bytes"] <= allocation["budget_bytes"]
    quantized = {t for t in allocation["ggml_types"].values() if t not in ggml.FLOAT_TYPES}
    assert len(quantized) >= 2, allocation["ggml_types"]  # a mixed allocation
    expert_types = {t for n, t in allocation["ggml_types"].items() if "_exps" in n}
    assert expert_types & quantized, expert_types

    got = gguf.llama_logits(out, TOKENS, threads=2)
    ref = ggml_twin_logits(ckpt, out, tmp_path)
    gap = float(np.abs(got - ref).max())
    print(f"{case}: max |logit difference| {gap:.4f}, tolerance {0.1 * ref.std():.4f}")
    assert ref.std() > 0.1  # not a flat model
    assert gap < 0.1 * ref.std()


@pytest.mark.parametrize("case", GGUF_REFUSED)
def test_gguf_refused_family_is_refused_before_conversion(root, tmp_path, case):
    from mint import gguf

    family = FAMILIES[CASES[case][0]]
    with pytest.raises(gguf.GGUFError) as e:
        gguf.convert_to_gguf(checkpoint(root, case), tmp_path / "model.gguf", progress=False)
    message = str(e.value)
    assert "\n" not in message and family.name in message and family.gguf_refused in message
    assert "MINT writes GGUF files for" in message and FAMILIES["mixtral"].name in message
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("case", sorted(set(GGUF_OVERRIDES) | set(HUB_CONFIG) - {"kimi_k2"}))
def test_gguf_requirement_is_checked_before_conversion(root, tmp_path, case):
    # the family model as the MLX matrix runs it (transformers' config) breaks what llama.cpp assumes:
    # one line, nothing written
    from mint import gguf

    family = FAMILIES[CASES[case][0]]
    with pytest.raises(gguf.GGUFError) as e:
        gguf.convert_to_gguf(checkpoint(root, case), tmp_path / "model.gguf", progress=False)
    message = str(e.value)
    assert "\n" not in message and f"llama.cpp's {family.name} " in message
    assert any(r.reason in message for r in family.gguf_requires)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# The README's support matrix

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_matrix():
    """{model_type: {column: cell}} from the README's support matrix table."""
    text = README.read_text()
    section = text.split("## Supported families", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    matrix = {}
    for line in rows[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        for model_type in re.findall(r"`(\w+)`", cells["model_type"]):
            matrix[model_type] = cells
    return matrix


def test_readme_support_matrix_matches_the_family_table():
    matrix = readme_matrix()
    assert set(matrix) == set(FAMILIES)
    tested = {CASES[c][0] for c in ROUND_TRIP}
    refused = {CASES[c][0] for c in REFUSED}
    for model_type, family in FAMILIES.items():
        row = matrix[model_type]
        assert row["family"] == family.name, model_type
        if family.mlx is None:
            assert row["MLX export"].startswith("refused"), model_type
            assert model_type in refused, model_type
        else:
            assert row["MLX export"].startswith("verified"), model_type
            assert model_type in tested, f"{model_type}: the README says verified, the matrix does not test it"
        gguf_cell = row["GGUF export"]
        if family.gguf is None:
            assert gguf_cell.startswith("refused: "), model_type
            assert model_type in {CASES[c][0] for c in GGUF_REFUSED}, model_type
        elif model_type in GGUF_NOT_VERIFIED:
            assert gguf_cell == f"exported, not verified: {GGUF_NOT_VERIFIED[model_type]}", model_type
        else:
            assert gguf_cell.startswith("verified"), model_type
            assert model_type in {CASES[c][0] for c in GGUF_ROUND_TRIP}, f"{model_type}: GGUF not in the matrix"
        assert row["source formats"].startswith("bf16, fp16, fp32, fp8"), model_type
        mxfp4_case = any(how.startswith("mxfp4:") and mt == model_type for mt, how in CASES.values())
        assert ("MXFP4" in row["source formats"]) == mxfp4_case, model_type

"""The family matrix (issue 14): every MoE family users run, built from its own transformers class
(and, where the hub stores it otherwise, in the hub's layout), goes through inspect, analyze,
experts, allocate and quantize; mlx-lm's own loader then computes, from the MLX folder, the logits
transformers computes from the dequantized twin (float32, within 1e-3). Families whose MLX export
cannot be faithful are refused by design, before any work, with a one-line reason; the README's
support matrix says the same as the family table and this matrix."""

import json
import re
from pathlib import Path

import pytest

from mint import allocate as al
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
        assert row["GGUF export"] == "planned"
        assert row["source formats"].startswith("bf16, fp16, fp32, fp8"), model_type
        mxfp4_case = any(how.startswith("mxfp4:") and mt == model_type for mt, how in CASES.values())
        assert ("MXFP4" in row["source formats"]) == mxfp4_case, model_type

"""Issue 8, hardening: every bad input gets a one-line error naming what to fix (or a documented
handling), a killed stage reruns to byte-identical outputs, runs are reproducible, loading is safe,
and a failed export validation touches nothing the user had."""

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from mint import allocate, analyze, cli, experts
from mint import export as ex
from mint.checkpoint import Checkpoint
from mint.testing import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
EXPERT = "model.layers.0.block_sparse_moe.experts.1.w1.weight"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A tiny sharded Mixtral (2 experts, 1 layer, 6 shards and an index)."""
    return make_tiny_checkpoint("mixtral", tmp_path_factory.mktemp("tpl") / "ckpt", num_experts=2, num_layers=1,
                                hidden=64, intermediate=64, vocab=64, max_shard_size="20KB")


@pytest.fixture
def ckpt(template, tmp_path):
    """A fresh copy of the template to damage."""
    return Path(shutil.copytree(template, tmp_path / "ckpt"))


def run(argv, capsys):
    """`mint ...` in-process: (exit code, stderr). A user error must be exit 2 and one line."""
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def error_of(argv, capsys):
    """The one error line of a command that must fail cleanly."""
    code, err = run(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    # Progress bars may come before it; the error is the last line, and the only one.
    assert code == 2 and lines and sum("error" in line.lower() for line in lines) == 1, err
    assert lines[-1].startswith(f"mint {argv[0]}: error: "), err
    return lines[-1]


def analyze_error(ckpt, tmp_path, capsys):
    return error_of(["analyze", "--checkpoint", str(ckpt), "--out", str(tmp_path / "an"), "--no-spectral"], capsys)


def shard_of(ckpt, name):
    return ckpt / json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"][name]


def edit_tensor(ckpt, name, change):
    """Rewrite the shard holding `name` with change(tensor) in its place."""
    path = shard_of(ckpt, name)
    tensors = load_file(path)
    tensors[name] = change(tensors[name])
    save_file(tensors, path, metadata={"format": "pt"})
    return path


def edit_header(path, change):
    """Rewrite a safetensors header in place (the data is kept as is)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


def edit_config(ckpt, **values):
    config = json.loads((ckpt / "config.json").read_text())
    config.update(values)
    (ckpt / "config.json").write_text(json.dumps(config))


def pipeline(ckpt, work, budget="4.5bpw", **analyze_kwargs):
    """analyze -> experts -> allocate -> export in-process; returns the manifest."""
    analyze.analyze(ckpt, work / "an", **{"spectral": False, **analyze_kwargs})
    experts.build_units(ckpt, work / "an", work / "units", k=2, spectral=False)
    result = allocate.allocate_files([work / "units" / "units.parquet"], budget, work / "alloc.json")
    assert result["total_bytes"] <= result["budget_bytes"]
    alloc = json.loads((work / "alloc.json").read_text())
    return ex.export(Checkpoint(ckpt), alloc, work / "mlx")


# ---------------------------------------------------------------------------------------------
# Bad checkpoints


def test_config_json_missing_or_not_json(ckpt, tmp_path, capsys):
    (ckpt / "config.json").write_text("{not json")
    assert "config.json: unreadable config.json" in analyze_error(ckpt, tmp_path, capsys)
    (ckpt / "config.json").write_text("[1, 2]")
    assert "must be a JSON object" in analyze_error(ckpt, tmp_path, capsys)
    (ckpt / "config.json").unlink()
    assert "no config.json" in analyze_error(ckpt, tmp_path, capsys)


def test_truncated_shard_names_file_and_remedy(ckpt, tmp_path, capsys):
    path = shard_of(ckpt, EXPERT)
    path.write_bytes(path.read_bytes()[:-10])
    line = analyze_error(ckpt, tmp_path, capsys)
    assert path.name in line and "truncated" in line and "download" in line


def test_corrupted_header_names_the_tensor(ckpt, tmp_path, capsys):
    path = shard_of(ckpt, EXPERT)
    edit_header(path, lambda h: h[EXPERT].update(shape=[64, 32]))
    line = analyze_error(ckpt, tmp_path, capsys)
    assert path.name in line and EXPERT in line
    edit_header(path, lambda h: h.update({EXPERT: "garbage"}))
    assert "malformed header entry" in analyze_error(ckpt, tmp_path, capsys)
    path.write_bytes(b"\xff" * 8 + b"junk")
    assert "not a safetensors file" in analyze_error(ckpt, tmp_path, capsys)


def test_shard_in_index_but_absent_or_bad_index(ckpt, tmp_path, capsys):
    path = shard_of(ckpt, EXPERT)
    path.unlink()
    line = analyze_error(ckpt, tmp_path, capsys)
    assert "missing" in line and path.name in line
    index = ckpt / "model.safetensors.index.json"
    index.write_text("{")
    assert "unreadable index" in analyze_error(ckpt, tmp_path, capsys)
    # An index cannot send us outside the folder.
    index.write_text(json.dumps({"weight_map": {EXPERT: "../../etc/passwd"}}))
    assert "files in the folder" in analyze_error(ckpt, tmp_path, capsys)


@pytest.mark.parametrize("values, words", [
    ({"hidden_size": 128}, "hidden_size 128"),
    ({"vocab_size": 100}, "vocab_size 100"),
    ({"num_hidden_layers": 0}, "num_hidden_layers 0"),
    ({"num_local_experts": 3}, "config.json says 3"),
])
def test_tensor_shape_disagrees_with_config(ckpt, tmp_path, capsys, values, words):
    edit_config(ckpt, **values)
    line = analyze_error(ckpt, tmp_path, capsys)
    assert words in line


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused(ckpt, tmp_path, capsys, value):
    def poison(t):
        t = t.clone()
        t[3, 5] = value
        return t

    path = edit_tensor(ckpt, EXPERT, poison)
    line = analyze_error(ckpt, tmp_path, capsys)
    assert path.name in line and EXPERT in line and "1 NaN or Inf" in line


def test_all_zero_tensor_is_exact_at_every_config(ckpt, tmp_path):
    edit_tensor(ckpt, EXPERT, torch.zeros_like)
    manifest = pipeline(ckpt, tmp_path, budget="min-safe")
    rd = experts.read_tables(tmp_path / "an", "rd")
    zero = rd[rd["tensor"] == EXPERT]
    # 6 bit widths x g32, g64 (g128 does not divide 64) + 16-bit, every one exact.
    assert len(zero) == 13 and (zero["nrmse"] == 0).all() and (zero["sqnr_db"] == 100).all()
    assert manifest["written_bytes"] == manifest["predicted_bytes"]
    written = load_file(tmp_path / "mlx" / "model.safetensors")
    assert torch.isfinite(written["model.layers.0.block_sparse_moe.switch_mlp.gate_proj.scales"].float()).all()


def test_fp8_and_integer_dtypes_are_refused_with_a_remedy(ckpt, tmp_path, capsys):
    path = edit_tensor(ckpt, EXPERT, lambda t: t.to(torch.float8_e4m3fn))
    line = analyze_error(ckpt, tmp_path, capsys)
    assert path.name in line and EXPERT in line and "fp8" in line and "dequantize it to bf16" in line
    edit_tensor(ckpt, EXPERT, lambda t: t.to(torch.int8))
    assert "already quantized" in analyze_error(ckpt, tmp_path, capsys)


def test_group_sizes_that_do_not_divide_are_dropped(tmp_path):
    # hidden 96: only g32 divides the inputs of attention and w1/w3; hidden 80: no group size does,
    # so those tensors can only stay 16-bit (MLX cannot store a partial group).
    for hidden, groups in ((96, {32}), (80, set())):
        ckpt = make_tiny_checkpoint("mixtral", tmp_path / f"h{hidden}", num_experts=2, num_layers=1,
                                    hidden=hidden, intermediate=64, vocab=64)
        manifest = pipeline(ckpt, tmp_path / f"w{hidden}", budget="min-safe")
        rd = experts.read_tables(tmp_path / f"w{hidden}" / "an", "rd")
        wide_input = rd[rd["tensor"].str.contains("w1|q_proj")]
        assert set(wide_input["group_size"]) - {0} == groups
        w2 = rd[rd["tensor"].str.contains("w2")]
        assert set(w2["group_size"]) == {0, 32, 64}             # input 64: g128 dropped only
        assert manifest["written_bytes"] == manifest["predicted_bytes"]


def test_tied_embeddings(template, tmp_path):
    # Head absent, tie_word_embeddings true (what save_pretrained writes): the embedding is the only
    # such unit and the export says tied, as mlx-lm's mixtral expects.
    ckpt = Path(shutil.copytree(template, tmp_path / "tied"))
    edit_config(ckpt, tie_word_embeddings=True)
    head = shard_of(ckpt, "lm_head.weight")
    kept = pipeline(ckpt, tmp_path / "kept")["units"]
    assert not any(u["role"] == "lm_head" for u in kept)
    assert json.loads((tmp_path / "kept" / "mlx" / "config.json").read_text())["tie_word_embeddings"] is True
    # A stored copy of a tied head is ignored, as transformers and mlx-lm ignore it.
    assert "lm_head.weight" in load_file(head)
    tensors = load_file(head)
    del tensors["lm_head.weight"]
    save_file(tensors, head, metadata={"format": "pt"})
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    del index["weight_map"]["lm_head.weight"]
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    assert not any(r.role == "lm_head" for r in Checkpoint(ckpt).refs)
    # mlx-lm's qwen2_moe always has its own head: refused before anything is written.
    q2 = make_tiny_checkpoint("qwen2_moe", tmp_path / "q2", num_experts=2, num_layers=1, hidden=64,
                              intermediate=64, vocab=64)
    edit_config(q2, tie_word_embeddings=True)
    with pytest.raises(ex.ExportError, match="ties it to the embedding"):
        ex.export(Checkpoint(q2), {"units": []}, tmp_path / "q2-mlx")
    assert not (tmp_path / "q2-mlx").exists()


# ---------------------------------------------------------------------------------------------
# Bad config


def validate_config(config):
    from snakemake.utils import validate

    validate(config, str(ROOT / "config" / "schema.yaml"))


def load_config():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.mark.parametrize("change, words", [
    (lambda c: c["analysis"].update(clusterthreshold=3), "'clusterthreshold' was unexpected"),
    (lambda c: c["analysis"].update(seed="zero"), "['analysis']['seed']"),
    (lambda c: c.update(modles={}), "'modles' was unexpected"),
    (lambda c: c["models"]["mini-mixtral"].update(budgets=["4.5 parsecs"]), "4.5 parsecs"),
    (lambda c: c["models"]["mini-mixtral"]["source"].update(path="/x"), "['models']['mini-mixtral']['source']"),
    (lambda c: c["models"]["mini-mixtral"].update(rules=[{"pattern": "x", "role": "other", "unit": "u",
                                                          "prj_map": {}}]), "'prj_map' was unexpected"),
])
def test_schema_errors_point_at_the_key(change, words):
    from snakemake_interface_common.exceptions import WorkflowError

    validate_config(load_config())
    config = load_config()
    change(config)
    with pytest.raises(WorkflowError) as err:
        validate_config(config)
    assert words in str(err.value)


def test_schema_accepts_every_rule_key_the_layouts_read():
    config = load_config()
    config["models"]["mini-mixtral"]["rules"] = [
        {"pattern": r"^h\.(?P<layer>\d+)\.fused$", "role": "routed_expert", "unit": "m.{layer}.{proj}",
         "parts": ["gate_proj", "up_proj"], "transpose": True, "proj_map": {"w1": "gate_proj"}}]
    validate_config(config)


def failed_dry_run(tmp_path, config):
    """The output of `snakemake -n` on `config`, which must fail."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    bin_dir = Path(sys.executable).parent
    run_ = subprocess.run([str(bin_dir / "snakemake"), "-n", "--snakefile", str(ROOT / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")],
                          capture_output=True, text=True, timeout=300)
    assert run_.returncode != 0
    return run_.stdout + run_.stderr


def test_missing_model_source_is_named(tmp_path):
    config = {"models": {"mine": {"source": {"path": str(tmp_path / "nowhere")}, "budgets": ["4bpw"]}},
              "variants": {"mint": {"solver": "exact"}}}
    output = failed_dry_run(tmp_path, config)
    assert "model mine: source path" in output and "no config.json there" in output


def test_variant_study_names_undefined_variants(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")
    config = {"models": {"mine": {"source": {"path": str(tmp_path / "mine")}, "budgets": ["4bpw"]}},
              "variants": {"mint": {"solver": "exact"}},
              "variant_study": {"faithful": "mint", "variants": ["mint-plsu"], "budgets": ["4bpw"]}}
    assert "variant_study names variants ['mint-plsu']" in failed_dry_run(tmp_path, config)


def test_unknown_architecture_without_rules(ckpt, tmp_path, capsys):
    edit_config(ckpt, model_type="toy")
    line = analyze_error(ckpt, tmp_path, capsys)
    assert "match no rule" in line and "add rules" in line


def test_budget_limits_from_the_command_line(ckpt, tmp_path, capsys):
    # Below min-safe: an error naming min-safe; above the 16-bit size: a warning, everything 16-bit.
    work = tmp_path / "w"
    analyze.analyze(ckpt, work / "an", spectral=False)
    experts.build_units(ckpt, work / "an", work / "units", spectral=False)
    units = ["allocate", "--units", str(work / "units" / "units.parquet"), "--out", str(work / "a.json")]
    assert "below the min-safe size" in error_of(units + ["--budget", "1bpw"], capsys)
    with pytest.warns(UserWarning, match="nothing is quantized"):
        code, _ = run(units + ["--budget", "20bpw"], capsys)
    assert code == 0
    assert json.loads((work / "a.json").read_text())["bit_distribution"] == {"16": 1.0}


# ---------------------------------------------------------------------------------------------
# Crash safety: SIGKILL a real run mid-stage, rerun, compare with an uninterrupted run.

# Each stage is slowed down per matrix inside the real command, so the kill always lands mid-stage
# however fast or loaded the machine is.
SLOW_RUN = """
import sys, time
from mint import cli, quantizer
import mint.export as ex
rd_curve, write_mlx = quantizer.rd_curve, ex._write_mlx
quantizer.rd_curve = lambda *a, **k: (time.sleep(0.02), rd_curve(*a, **k))[1]
ex._write_mlx = lambda *a, **k: (time.sleep(0.01), write_mlx(*a, **k))[1]
sys.exit(cli.main(sys.argv[1:]))
"""


def kill_when(argv, ready, timeout_s=120):
    """Start `mint argv` (slowed), SIGKILL it as soon as ready() holds; it must not have finished."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, *map(str, argv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"


def tree_bytes(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_killed_analyze_reruns_to_identical_tables(template, tmp_path):
    # One thread everywhere (as the pipeline's rules run it): reductions split over another number of
    # threads round differently, and the killed run's first shards must match the reference's.
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    analyze.analyze(template, reference, threads=1)
    kill_when(["analyze", "--checkpoint", template, "--out", killed, "--threads", "1"],
              lambda: len(list(killed.glob("*.parquet"))) >= 3)
    done = {p.name for p in killed.glob("*.parquet")}
    assert 3 <= len(done) < len(list(reference.glob("*.parquet")))
    analyze.analyze(template, killed, threads=1)
    assert tree_bytes(killed) == tree_bytes(reference)


def test_killed_quantize_reruns_to_identical_folders(template, tmp_path):
    work = tmp_path / "work"
    pipeline(template, work)
    alloc = work / "alloc.json"
    out = tmp_path / "out"
    argv = ["quantize", "--checkpoint", template, "--allocation", alloc, "--mlx-out", out / "mlx",
            "--dequant-out", out / "hf"]
    kill_when(argv, lambda: any(out.glob(".mlx.tmp-*/*.safetensors")))
    assert not (out / "mlx").exists() and any(out.glob(".mlx.tmp-*"))   # nothing published
    assert cli.main([str(a) for a in argv]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["hf", "mlx"]        # the stale temp is gone
    assert tree_bytes(out / "mlx") == tree_bytes(work / "mlx")


# ---------------------------------------------------------------------------------------------
# Determinism


def test_same_inputs_give_byte_identical_outputs(tmp_path):
    # 4 experts over a threshold of 2: k-means and representatives are part of what must repeat.
    ckpt = make_tiny_checkpoint("qwen3_moe", tmp_path / "q3", num_experts=4, num_layers=1, hidden=128,
                                intermediate=128, vocab=64, max_shard_size="100KB")
    runs = []
    for name in ("a", "b"):
        work = tmp_path / name
        analyze.analyze(ckpt, work / "an", cluster_threshold=2, spectral=True)
        experts.build_units(ckpt, work / "an", work / "units", k=2, spectral=True)
        allocate.allocate_files([work / "units" / "units.parquet"], "4bpw", work / "alloc.json")
        ex.export(Checkpoint(ckpt), json.loads((work / "alloc.json").read_text()), work / "mlx")
        runs.append(tree_bytes(work))
    assert len(runs[0]) > 10 and runs[0].keys() == runs[1].keys()
    assert [k for k in runs[0] if runs[0][k] != runs[1][k]] == []
    features = experts.read_tables(tmp_path / "a" / "an", "features")
    assert "seconds" not in features.columns
    assert "solve_seconds" not in json.loads((tmp_path / "a" / "alloc.json").read_text())
    assert pd.read_parquet(tmp_path / "a" / "units" / "clusters.parquet")["is_representative"].sum() == 3 * 2


# ---------------------------------------------------------------------------------------------
# Safe loading


def test_pickled_checkpoints_are_refused(tmp_path, capsys):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "mixtral"}')
    for name in ("pytorch_model.bin", "model.pt"):
        (folder / name).write_bytes(b"cos\nsystem\n(S'touch /tmp/pwned-by-mint'\ntR.")
    line = analyze_error(folder, tmp_path, capsys)
    assert "never unpickles" in line and "model.pt" in line and "safetensors" in line


def calls_in(path):
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]


def test_nothing_unpickles_and_remote_code_stays_off():
    for path in sorted((ROOT / "mint").glob("*.py")):
        for call in calls_in(path):
            name = ast.unparse(call.func)
            keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
            where = f"{path.name}:{call.lineno}"
            assert name not in ("torch.load", "pickle.load", "pickle.loads", "pd.read_pickle"), where
            assert keywords.get("allow_pickle") != "True", where
            if name.endswith("from_pretrained"):
                assert keywords.get("trust_remote_code") == "False" or "kwargs" in ast.unparse(call), where
    evaluate_source = (ROOT / "mint" / "evaluate.py").read_text()
    assert '"trust_remote_code": False' in evaluate_source   # load_model's kwargs and lm-eval's model_args
    rules = "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    assert "trust_remote_code" not in rules and "--include '*.safetensors'" in rules


# ---------------------------------------------------------------------------------------------
# Export validation


def test_failed_validation_keeps_the_users_folder(template, tmp_path, monkeypatch):
    ckpt = Checkpoint(template)
    alloc_path = tmp_path / "work" / "alloc.json"
    pipeline(template, tmp_path / "work")
    out = tmp_path / "mlx"
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    close = ex.ShardWriter.close

    def short_write(self):
        close(self)
        first = next(iter(self.files))
        with open(self.folder / first, "r+b") as f:   # a disk that lost the last bytes
            f.truncate(os.path.getsize(self.folder / first) - 4)

    monkeypatch.setattr(ex.ShardWriter, "close", short_write)
    with pytest.raises(ex.ExportError, match="does not check out.*truncated"):
        ex.export(ckpt, json.loads(alloc_path.read_text()), out, overwrite=True)
    assert tree_bytes(out) == {"mine.txt": b"the user's"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlx", "work"]
    monkeypatch.setattr(ex.ShardWriter, "close", close)
    manifest = ex.export(ckpt, json.loads(alloc_path.read_text()), out, overwrite=True)
    assert manifest["written_bytes"] == manifest["predicted_bytes"] and not (out / "mine.txt").exists()


def test_validation_checks_every_planned_tensor(template, tmp_path):
    pipeline(template, tmp_path)
    folder = tmp_path / "mlx"
    plan = {"model.safetensors": [ex.OutTensor(n, h["dtype"], tuple(h["shape"]))
                                  for n, h in ex.read_header(folder / "model.safetensors").items()]}
    assert ex.validate_folder(folder, plan) == sum(t.nbytes for t in plan["model.safetensors"])
    missing = {"model.safetensors": plan["model.safetensors"] + [ex.OutTensor("extra.weight", "BF16", (2, 2))]}
    with pytest.raises(ex.ExportError, match="differ from the plan"):
        ex.validate_folder(folder, missing)
    t = plan["model.safetensors"][0]
    wrong = {"model.safetensors": [ex.OutTensor(t.name, "F16" if t.dtype != "F16" else "BF16", t.shape)]
             + plan["model.safetensors"][1:]}
    with pytest.raises(ex.ExportError, match=t.name.replace(".", r"\.")):
        ex.validate_folder(folder, wrong)



def test_variant_study_is_opt_in(tmp_path):
    """`make tables` runs no study; `make study` lays config/study.yaml over the default config."""
    default = load_config()
    study = yaml.safe_load((ROOT / "config" / "study.yaml").read_text())
    assert "variant_study" not in default and set(study) == {"variant_study"}
    merged = {**default, **study}
    validate_config(merged)
    assert set(study["variant_study"]["variants"]) <= set(default["variants"])
    make = subprocess.run(["make", "-n", "-C", str(ROOT), "study"], capture_output=True, text=True)
    assert "--configfile config/study.yaml results/tables" in make.stdout, make.stdout
    # Snakemake reads a study file given that way on top of the embedded default (its models and
    # variants): a study naming a variant the default lacks is refused with that variant's name.
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(
        {"variant_study": dict(study["variant_study"], variants=["mint-plsu"])}))
    bin_dir = Path(sys.executable).parent
    run_ = subprocess.run([str(bin_dir / "snakemake"), "-n", "--snakefile", str(ROOT / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(tmp_path / "study.yaml")],
                          capture_output=True, text=True, timeout=300)
    assert run_.returncode != 0 and "variant_study names variants ['mint-plsu']" in run_.stdout + run_.stderr


def test_mlx_dynamic_names_plan_the_baseline_and_its_matched_budget(tmp_path):
    """`baselines: {mlx: [dynamic_4.8, dynamic_3_6_4.5]}` runs `mint baseline mlx-dynamic` with the
    name's target and bits (dynamic_quant's default 4 and 5 without them), and a budget
    `mlx-dynamic_3_6_4.5` allocates at that baseline's file; a misspelt name is refused by the schema."""
    from snakemake_interface_common.exceptions import WorkflowError

    ckpt = make_tiny_checkpoint("qwen3_moe", tmp_path / "ckpt")
    config = {"models": {"m": {"source": {"path": str(ckpt)}, "budgets": ["mlx-dynamic_3_6_4.5"],
                               "baselines": {"mlx": ["mixed_3_6", "dynamic_4.8", "dynamic_3_6_4.5"]}}},
              "variants": {"mint": {"solver": "exact"}}, "evaluation": {"seq_len": 128}}
    validate_config(config)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    bin_dir = Path(sys.executable).parent
    plan = subprocess.run([str(bin_dir / "snakemake"), "-n", "-p", "--snakefile", str(ROOT / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")],
                          capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    shell = [line for line in plan.stdout.splitlines() if "-m mint " in line]
    dynamic = [line for line in shell if "baseline mlx-dynamic" in line]
    assert len(dynamic) == 2
    assert any("--target-bpw 4.8 --seq-len 128 --out results/m/alloc/mlx/dynamic_4.8.json" in line for line in dynamic)
    assert any("--target-bpw 4.5 --low-bits 3 --high-bits 6 --seq-len 128 --out results/m/alloc/mlx/dynamic_3_6_4.5.json"
               in line for line in dynamic)
    assert any("allocate" in line and "--budget @results/m/alloc/mlx/dynamic_3_6_4.5.json" in line for line in shell)
    config["models"]["m"]["baselines"]["mlx"] = ["dynamic_4.8bpw"]
    with pytest.raises(WorkflowError, match="dynamic_4.8bpw"):
        validate_config(config)


def test_allocated_only_variants_are_allocated_for_the_tables_but_not_evaluated(tmp_path):
    """`allocated_only: [mint-greedy]` allocates the greedy at each of the model's budgets as inputs of
    the tables (the solver table reads the files) with no export, verification or evaluation of it; a
    name `variants` does not define is refused, naming the model."""
    ckpt = make_tiny_checkpoint("qwen3_moe", tmp_path / "ckpt")
    config = {"models": {"m": {"source": {"path": str(ckpt)}, "budgets": ["3.5bpw", "4.5bpw"], "variants": ["mint"],
                               "allocated_only": ["mint-greedy"]}},
              "variants": {"mint": {"solver": "exact"}, "mint-greedy": {"solver": "greedy"}}}
    validate_config(config)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    bin_dir = Path(sys.executable).parent
    plan = subprocess.run([str(bin_dir / "snakemake"), "-n", "--snakefile", str(ROOT / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")],
                          capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    jobs = re.findall(r"^rule (\w+):\n(?:\s+\w+: .*\n)*?\s+wildcards: (.*)$", plan.stdout, re.MULTILINE)
    greedy = sorted((rule, w) for rule, w in jobs if "mint-greedy" in w)
    assert greedy == [("allocate", "model=m, variant=mint-greedy, budget=3.5bpw"),
                      ("allocate", "model=m, variant=mint-greedy, budget=4.5bpw")]
    assert {rule for rule, w in jobs if "method=mint," in w} == {"quantize", "verify", "evaluate"}
    tables_input = re.search(r"rule tables:\n\s*input: ([^\n]*)", plan.stdout)[1].split(", ")
    assert {"results/m/alloc/mint-greedy/3.5bpw.json", "results/m/alloc/mint-greedy/4.5bpw.json",
            "results/m/eval/mint/3.5bpw.json"} <= set(tables_input)
    assert not [f for f in tables_input if "/eval/mint-greedy/" in f]

    config["models"]["m"]["allocated_only"] = ["mint-gredy"]
    assert "model m: allocated_only names unknown variants ['mint-gredy']" in failed_dry_run(tmp_path, config)

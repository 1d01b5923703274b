"""The Snakemake workflow end to end: a user's model from a config entry through to a table row,
incremental reruns, and the cluster dispatch path."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mint.reference import build_tokenizer
from mint.testing import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VOCAB = 512


def snakemake(workdir, *args):
    # The environment is not activated: its bin folder is taken off PATH, as for a user who runs
    # .venv/bin/snakemake directly. The rules must find mint without it.
    path = [p for p in os.environ["PATH"].split(os.pathsep) if Path(p).resolve() != BIN.resolve()]
    env = {**os.environ, "PATH": os.pathsep.join(path)}
    cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def write_config(workdir, budgets):
    config = {
        "models": {"my-tiny": {"source": {"path": str(workdir / "my-tiny")}, "budgets": budgets,
                               "variants": ["mint"], "baselines": {"uniform": ["4bit-g64"]}}},
        "variants": {"mint": {"solver": "exact", "sqnr_floor_db": 9.0}},
        "analysis": {"cluster_threshold": 2, "clusters_per_unit": 2, "spectral": False},
        "evaluation": {"seq_len": 64, "windows": 4},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny Qwen3-MoE checkpoint (4 experts: clustered, threshold 2) with a real tokenizer."""
    workdir = tmp_path_factory.mktemp("workflow")
    ckpt = make_tiny_checkpoint("qwen3_moe", workdir / "my-tiny", hidden=128, intermediate=128, vocab=VOCAB,
                                max_shard_size="300KB")
    build_tokenizer(vocab_size=VOCAB, chars=200_000).save_pretrained(ckpt)
    return workdir


def run_one_budget(workdir):
    """The pipeline at one budget, from whatever state an earlier test left (nothing to do if done)."""
    write_config(workdir, ["4.5bpw"])
    run = snakemake(workdir, "--cores", "2", "results/tables")
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.slow
def test_new_model_runs_through_to_a_table_row(workdir):
    run_one_budget(workdir)
    shards = list((workdir / "my-tiny").glob("*.safetensors"))
    assert len(shards) > 1 and len(list((workdir / "results/my-tiny/analysis").glob("*.rd.parquet"))) == len(shards)
    table = pd.read_csv(workdir / "results/tables/results.csv")
    rows = table[table["model"] == "my-tiny"]
    assert set(zip(rows["method"], rows["budget"])) == {("bf16", "16-bit"), ("mint", "4.5bpw"),
                                                        ("uniform", "4bit-g64")}
    mint = rows[rows["method"] == "mint"].iloc[0]
    assert mint["avg_bits"] <= 4.5 and mint["ppl_mean"] > 1
    # Every export behind a row was loaded by its runtime and matched its dequantized twin.
    for _, row in rows[rows["method"] != "bf16"].iterrows():
        assert re.fullmatch(r"mlx-lm \d\.\de[-+]\d\d", row["verified"]), row["verified"]
        assert float(row["verified"].split()[1]) <= 1e-3
    assert (workdir / "results/plots/my-tiny_ppl_vs_size.png").stat().st_size > 0
    # Run with --directory outside the repository, the tables still name the commit and the config.
    provenance = (workdir / "results/tables/results.md").read_text().splitlines()[0]
    assert re.fullmatch(r"Made by commit [0-9a-f]{7,}(\+dirty)? with config sha256 [0-9a-f]{12}\.", provenance), \
        provenance
    # A second run has nothing to do.
    again = snakemake(workdir, "-n", "results/tables")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_changing_budgets_reruns_only_allocation_and_what_follows(workdir):
    run_one_budget(workdir)
    write_config(workdir, ["4.5bpw", "3.5bpw"])
    plan = snakemake(workdir, "-n", "results/tables")
    assert plan.returncode == 0, plan.stderr[-3000:]
    # The "Job stats" table of the dry run: one "rule count" line per rule that would run.
    jobs = {m[1] for m in re.finditer(r"^(\w+)\s+\d+$", plan.stdout, re.M)} - {"total"}
    assert jobs == {"allocate", "quantize", "verify", "evaluate", "tables"}, plan.stdout


@pytest.mark.slow
def test_a_broken_export_fails_the_pipeline(workdir):
    """An MLX folder whose runtime output differs from its twin stops the pipeline before evaluation."""
    from safetensors.torch import load_file, save_file

    run_one_budget(workdir)
    run = "my-tiny/{}/mint/4.5bpw"
    results = workdir / "results"
    try:
        # Snakemake reruns a missing intermediate only for an output that must be made: the tables.
        for done in ("verify/mint/4.5bpw.json", "eval/mint/4.5bpw.json"):
            (results / "my-tiny" / done).unlink()
        for made in ("tables", "plots"):
            shutil.rmtree(results / made)
        shard = next((results / run.format("mlx")).glob("*.safetensors"))
        tensors = load_file(shard)
        name = next(n for n in sorted(tensors) if n.endswith(".scales"))
        tensors[name] = tensors[name] * 2   # one module's scales doubled: a wrong but loadable file
        save_file(tensors, shard, metadata={"format": "mlx"})
        failed = snakemake(workdir, "--cores", "2", "results/tables")
        assert failed.returncode != 0
        assert "Error in rule verify" in failed.stdout + failed.stderr
        log = (workdir / "logs/my-tiny/verify/mint/4.5bpw.log").read_text()
        assert str(results / run.format("mlx")) in log or run.format("mlx") in log, log
        assert not (results / "my-tiny/eval/mint/4.5bpw.json").exists()   # nothing was evaluated
    finally:   # the next test starts from a pipeline that can complete
        for kind in ("mlx", "dequant"):
            shutil.rmtree(results / run.format(kind), ignore_errors=True)


@pytest.mark.slow
def test_cluster_dispatch_through_the_generic_executor(workdir, tmp_path):
    """The per-shard jobs go through the cluster-generic executor plugin, submitting to a local shell."""
    write_config(workdir, ["4.5bpw"])
    for stage in ("analysis", "units"):
        shutil.rmtree(workdir / "results/my-tiny" / stage, ignore_errors=True)
    submitted = tmp_path / "submitted.txt"
    # The "cluster": run the job script in the background, print a job id, like sbatch --parsable would.
    submit = f"sh -c 'echo $0 >> {submitted}; sh $0 > /dev/null 2>&1 & echo $!'"
    run = snakemake(workdir, "--executor", "cluster-generic", "--cluster-generic-submit-cmd", submit,
                    "--jobs", "2", "--latency-wait", "30", "results/my-tiny/units/units.parquet")
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(submitted.read_text().splitlines()) >= 2   # every shard's analysis, then experts
    assert (workdir / "results/my-tiny/units/units.parquet").exists()


@pytest.mark.slow
def test_variant_study_runs_every_switch_to_the_variants_table(workdir):
    """Issue 9's study from config switches alone: clip search (its own analysis), another aggregation,
    the output loss (its own importance table), a menu; the table compares each with the faithful run."""
    write_config(workdir, ["min-safe", "4.5bpw"])
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["models"]["my-tiny"]["variants"] = ["mint", "mint-greedy"]
    config["variants"].update({
        "mint-greedy": {"solver": "greedy"},
        "greedy-clip-q90": {"solver": "greedy", "clip": True, "aggregation": "q90"},
        "greedy-output": {"solver": "greedy", "loss": "output"},
        "greedy-no-g32": {"solver": "greedy", "group_sizes": [64, 128]},
    })
    config["variant_study"] = {"faithful": "mint-greedy", "variants": ["greedy-clip-q90", "greedy-output",
                                                                      "greedy-no-g32"],
                               "budgets": ["faithful-min-safe", "4.5bpw"]}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    run = snakemake(workdir, "--cores", "2", "results/tables")
    assert run.returncode == 0, run.stderr[-3000:]
    results = workdir / "results/my-tiny"
    assert list((results / "analysis-clip").glob("*.rd.parquet")) and (results / "importance.parquet").exists()
    clip = json.loads((results / "alloc/greedy-clip-q90/faithful-min-safe.json").read_text())
    faithful = json.loads((results / "alloc/mint-greedy/min-safe.json").read_text())
    assert clip["clip"] is True and clip["budget_bytes"] == faithful["total_bytes"]
    assert json.loads((results / "alloc/greedy-output/4.5bpw.json").read_text())["loss"] == "output"
    table = pd.read_csv(workdir / "results/tables/variants.csv")
    got = set(zip(table["variant"], table["budget"], table["verdict"].where(table["verdict"] == "forced", "-")))
    assert got == {("mint-greedy", "faithful-min-safe", "-"), ("mint-greedy", "4.5bpw", "-"),
                   ("greedy-clip-q90", "faithful-min-safe", "-"), ("greedy-clip-q90", "4.5bpw", "-"),
                   ("greedy-output", "faithful-min-safe", "forced"), ("greedy-output", "4.5bpw", "-"),
                   ("greedy-no-g32", "4.5bpw", "-")}
    assert (table.loc[table["variant"] == "mint-greedy", "dlogppl"] == 0).all()


def test_tables_include_the_gguf_comparison_of_the_configured_models(tmp_path):
    """gguf.models puts those models' `mint gguf-compare` into the DAG of results/tables (dry run), on
    the evaluation's windows unless gguf.windows says otherwise; a name not under models is an error."""
    def plan(gguf):
        config = {"models": {m: {"source": {"reference": m}, "budgets": ["4.5bpw"], "variants": ["mint"]}
                             for m in ("mini-mixtral", "mini-qwen3moe", "mini-llama4")},
                  "variants": {"mint": {"solver": "exact"}}, "reference_profile": "quick",
                  "evaluation": {"seq_len": 64, "windows": 4}, "gguf": gguf}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        return snakemake(tmp_path, "-n", "-p", "results/tables")

    run = plan({"models": ["mini-mixtral", "mini-qwen3moe"], "presets": ["Q4_K_M"]})
    assert run.returncode == 0, run.stderr[-3000:]
    compares = re.findall(r"mint gguf-compare (.*)", run.stdout)
    assert sorted(re.search(r"--out results/([\w-]+)/gguf/compare.csv", c)[1] for c in compares) == \
        ["mini-mixtral", "mini-qwen3moe"]
    assert all("--presets Q4_K_M --windows 4 --seq-len 64" in c for c in compares), compares
    assert re.search(r"mint tables .*--gguf-models mini-mixtral mini-qwen3moe", run.stdout)
    tables_input = re.search(r"rule tables:\n\s*input: ([^\n]*)", run.stdout)[1].split(", ")
    assert sorted(f for f in tables_input if "/gguf/" in f) == ["results/mini-mixtral/gguf/compare.csv",
                                                               "results/mini-qwen3moe/gguf/compare.csv"]

    run = plan({"models": ["mini-mixtral"], "windows": 2})
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.findall(r"mint gguf-compare .*--windows (\d+)", run.stdout) == ["2"]

    run = plan({})
    assert run.returncode == 0 and "gguf-compare" not in run.stdout and "--gguf-models" not in run.stdout

    run = plan({"models": ["mini-nothing"]})
    assert run.returncode != 0 and "gguf.models names ['mini-nothing']" in run.stdout + run.stderr

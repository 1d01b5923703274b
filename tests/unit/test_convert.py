"""`mint convert` and `mint plan`: one command from a checkpoint folder to an MLX folder of a given size,
the analysis cached by content, and the budget frontier before any weights are written."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mint import convert, plan
from mint.testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint("qwen3_moe", tmp_path_factory.mktemp("convert") / "ckpt", hidden=128,
                                intermediate=128)


def test_convert_twice_reuses_the_analysis_and_fits_each_budget(checkpoint, tmp_path):
    import mlx.core as mx
    from mlx_lm.utils import load_model

    work = tmp_path / "work"
    first = convert.convert(str(checkpoint), "4.5bpw", tmp_path / "a", work=work, progress=False)
    analysis = sorted((work.glob("*/analysis/*.parquet")))
    stamps = [p.stat().st_mtime_ns for p in analysis]
    second = convert.convert(str(checkpoint), "3.5bpw", tmp_path / "b", work=work, progress=False)
    assert not first["analysis_reused"] and second["analysis_reused"]
    assert first["work"] == second["work"] and len(analysis) == 2
    assert [p.stat().st_mtime_ns for p in analysis] == stamps   # nothing was measured again
    for summary, bpw in ((first, 4.5), (second, 3.5)):
        assert summary["written_bytes"] <= summary["budget_bytes"] and bpw - 0.05 < summary["bits_per_weight"] <= bpw
        # The bytes the summary reports are the folder's tensor bytes.
        manifest = json.loads((tmp_path / ("a" if bpw == 4.5 else "b") / "manifest.json").read_text())
        assert manifest["written_bytes"] == summary["written_bytes"]
    model, _ = load_model(tmp_path / "b")   # the runtime opens what convert wrote
    logits = np.array(model(mx.array([[1, 2, 3]])).astype(mx.float32))
    assert logits.shape == (1, 3, 256) and np.isfinite(logits).all()


def test_content_key_changes_with_the_weights(checkpoint, tmp_path):
    other = make_tiny_checkpoint("qwen3_moe", tmp_path / "other", hidden=128, intermediate=128, seed=1)
    settings = dict(convert.ANALYSIS, clip=2)
    assert convert.content_key(checkpoint, settings) == convert.content_key(checkpoint, dict(settings))
    assert convert.content_key(checkpoint, settings) != convert.content_key(other, settings)
    assert convert.content_key(checkpoint, settings) != convert.content_key(checkpoint, dict(settings, clip=False))


def test_plan_frontier_is_monotone_and_marks_infeasible_sizes(checkpoint, tmp_path):
    table = plan.plan(str(checkpoint), tmp_path / "plan", work=tmp_path / "work", progress=False)
    feasible = table[table["feasible"]].sort_values("size_gib")
    assert feasible["budget"].iloc[0] == "min-safe" and len(feasible) >= 5
    # More bytes never cost more error, and every row keeps its floor.
    assert (np.diff(feasible["objective"].to_numpy()) <= 1e-12).all()
    assert (feasible["min_sqnr_db"] >= feasible["floor_db"] - 1e-9).all()
    assert (feasible["bits_per_weight"] <= 8 + 1e-9).all()
    for name in ("frontier.csv", "frontier.md", "frontier.png"):
        assert (tmp_path / "plan" / name).stat().st_size > 0
    assert len(pd.read_csv(tmp_path / "plan" / "frontier.csv")) == len(table)


def test_named_size_below_min_safe_is_listed_as_infeasible(checkpoint, tmp_path):
    units, _, _ = convert.prepare_units(checkpoint, 2, tmp_path / "work", progress=False)
    table = plan.frontier(units, bpw=(1.0, 4.0), named_gib=())
    row = table.set_index("budget").loc["1bpw"]
    assert not row["feasible"] and row["mix"] == "below min-safe" and np.isnan(row["objective"])


def test_cli_errors_are_one_line(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    for source in (str(tmp_path / "missing"), "no-such-owner/no-such-model"):
        run = subprocess.run([sys.executable, "-m", "mint", "convert", source, "--budget", "4bpw", "--out",
                              str(tmp_path / "out")], capture_output=True, text=True, env=env)
        assert run.returncode == 2 and run.stderr.startswith("mint convert: error:"), run.stderr
        assert len(run.stderr.strip().splitlines()) == 1

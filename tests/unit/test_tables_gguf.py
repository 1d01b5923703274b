"""The tables step's GGUF table, rendered from a compare.csv that `mint gguf-compare` really wrote (a
tiny Qwen3-MoE with hidden 256, so llama.cpp's k-quants apply, scored by llama.cpp on a few windows)
and from the model's 16-bit evaluation by `mint evaluate`."""

import math

import numpy as np
import pandas as pd
import pytest
from safetensors import safe_open

from mint import evaluate, gguf_compare, tables
from mint.testing import make_tiny_checkpoint, write_tiny_bpe_tokenizer

WINDOWS, SEQ_LEN = 3, 32


def _n_weights(checkpoint):
    """Weights of the checkpoint, counted from its safetensors (not from any GGUF)."""
    total = 0
    for shard in checkpoint.glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    ckpt = make_tiny_checkpoint("qwen3_moe", root / "hf", hidden=256, intermediate=512, num_experts=4, vocab=300)
    write_tiny_bpe_tokenizer(ckpt, vocab=290)
    model = root / "results" / "tiny"
    assert gguf_compare.main(["--checkpoint", str(ckpt), "--out", str(model / "gguf/compare.csv"),
                              "--presets", "Q3_K_M", "Q6_K", "--windows", str(WINDOWS), "--seq-len", str(SEQ_LEN),
                              "--pretokenizer", "gpt-2", "--threads", "2"]) == 0
    assert evaluate.main(["--model", str(ckpt), "--windows", str(WINDOWS), "--seq-len", str(SEQ_LEN),
                          "--out", str(model / "eval/bf16.json")]) == 0
    return dict(root=root, ckpt=ckpt, results=root / "results")


def test_gguf_table_renders_the_comparison(results, tmp_path):
    compare = pd.read_csv(results["results"] / "tiny/gguf/compare.csv").set_index("preset")
    table = tables.make_gguf_table(results["results"], ["tiny"], tmp_path / "tables", tmp_path / "plots",
                                   "Made by test.")
    written = pd.read_csv(tmp_path / "tables/gguf.csv").set_index("preset")
    assert list(written.index) == ["Q3_K_M", "Q6_K"] and (written["model"] == "tiny").all()
    for column in ("bytes_preset", "bytes_mint", "ppl_preset", "ppl_mint", "ppl_median_preset", "kld_preset",
                   "kld_mint", "dlogppl_mint_vs_preset", "dlogppl_se"):
        np.testing.assert_allclose(written[column], compare.loc[written.index, column], rtol=1e-5)
    # bits per weight from the file's bytes and the checkpoint's own weight count
    n = _n_weights(results["ckpt"])
    np.testing.assert_allclose(written["bpw_preset"], 8 * written["bytes_preset"] / n, rtol=1e-5)
    assert (written["bytes_mint"] <= written["bytes_preset"]).all()
    assert (written["bpw_preset"].diff().dropna() > 0).all()  # Q6_K is the larger file
    # equal window lengths: the paired mean is the log of the perplexity ratio
    np.testing.assert_allclose(written["dlogppl_mint_vs_preset"], np.log(written["ppl_mint"] / written["ppl_preset"]),
                               atol=1e-4)
    z = written["dlogppl_mint_vs_preset"] / written["dlogppl_se"]
    assert list(written["verdict"]) == ["mint better" if v < -2 else "preset better" if v > 2 else "same" for v in z]
    assert "Q3_K" in written.loc["Q3_K_M", "preset_types"] and "Q6_K" in written.loc["Q6_K", "preset_types"]
    assert (written["kld_preset"] > 0).all() and (written["n_windows"] == WINDOWS).all()
    # the 16-bit evaluation used the same text, window length, seed and count: the same windows
    assert table["same_windows"].all()
    header = (tmp_path / "tables/gguf.md").read_text().splitlines()[0]
    assert header.startswith("Made by test.") and "the same windows as the other tables" in header
    assert (tmp_path / "plots/gguf_kld.png").stat().st_size > 0


def test_gguf_table_says_when_its_windows_are_not_the_other_tables(results, tmp_path):
    """gguf.windows != evaluation.windows is another sample of windows: the table says so."""
    other = tmp_path / "results"
    (other / "tiny/gguf").mkdir(parents=True)
    (other / "tiny/gguf/compare.csv").write_bytes((results["results"] / "tiny/gguf/compare.csv").read_bytes())
    assert evaluate.main(["--model", str(results["ckpt"]), "--windows", str(WINDOWS + 1), "--seq-len", str(SEQ_LEN),
                          "--out", str(other / "tiny/eval/bf16.json")]) == 0
    table = tables.make_gguf_table(other, ["tiny"], tmp_path / "tables", tmp_path / "plots", "Made by test.")
    assert not table["same_windows"].any()
    assert "NOT the other tables' windows" in (tmp_path / "tables/gguf.md").read_text().splitlines()[0]


def test_gguf_table_refuses_a_compare_csv_of_an_older_gguf_compare(results, tmp_path):
    old = tmp_path / "results/tiny/gguf/compare.csv"
    old.parent.mkdir(parents=True)
    pd.read_csv(results["results"] / "tiny/gguf/compare.csv").drop(columns=["bpw_preset"]).to_csv(old, index=False)
    with pytest.raises(ValueError, match="bpw_preset"):
        tables.gguf_table(tmp_path / "results", ["tiny"])

"""evaluate: the METHOD.md §5 protocol against straightforward re-implementations on a tiny random model;
paired standard errors against simulation; KLD; trimmed/median definitions; lm-eval word perplexity."""

import json
import math
import re

import numpy as np
import pytest
import torch

from mint import evaluate as ev
from mint import reference

SEQ_LEN = 32


def _tiny_mixtral(tokenizer, seed):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    config = MixtralConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        max_position_embeddings=128, initializer_range=0.1, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return MixtralForCausalLM(config).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny random Mixtral (fp32 on disk) with the quick tokenizer, and a perturbed copy of it."""
    root = tmp_path_factory.mktemp("eval")
    tokenizer = reference.build_tokenizer(512, 200_000)
    base = _tiny_mixtral(tokenizer, 0)
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    noisy = _tiny_mixtral(tokenizer, 0)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    noisy.save_pretrained(root / "noisy")
    tokenizer.save_pretrained(root / "noisy")
    return {"base": root / "base", "noisy": root / "noisy", "model": base, "tokenizer": tokenizer}


def _straightforward_windows(tokenizer, n_windows):
    """The protocol written out independently: read the raw file, keep non-empty lines, join, tokenize,
    cut, sample with default_rng(42), keep text order."""
    raw = open(ev.data.DATA_DIR / "wikitext-2-raw-v1" / "wiki.test.raw", encoding="utf-8").read()
    text = "\n\n".join(line for line in raw.split("\n") if line.strip() != "")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    total = len(ids) // SEQ_LEN
    picked = sorted(np.random.default_rng(42).choice(total, size=n_windows, replace=False))
    return [ids[i * SEQ_LEN:(i + 1) * SEQ_LEN] for i in picked], picked


def test_perplexity_matches_a_straightforward_loop(models):
    result = ev.evaluate(models["base"], seq_len=SEQ_LEN, windows=12, batch_size=5)
    windows, picked = _straightforward_windows(models["tokenizer"], 12)
    total_nll, total_tokens, per_window = 0.0, 0, []
    with torch.no_grad():
        for w in windows:
            x = torch.tensor([w])
            logits = models["model"](x).logits[0, :-1]
            nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
            total_nll += nll
            total_tokens += len(w) - 1
            per_window.append(nll)
    assert result["n_windows"] == 12 and result["n_tokens"] == 12 * (SEQ_LEN - 1)
    assert list(result["windows"]["window_index"]) == list(picked)
    assert result["ppl_mean"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-5)
    np.testing.assert_allclose(result["windows"]["nll_sum"], per_window, rtol=1e-5)
    assert 50 < result["ppl_mean"] < 5000  # a random model over a 512-token vocabulary
    assert "kld_mean" not in result


def test_same_windows_every_time_and_all_windows_when_few(models):
    a = ev.make_windows(np.arange(1000), 10, 7)
    b = ev.make_windows(np.arange(1000), 10, 7)
    assert np.array_equal(a[1], b[1]) and np.all(np.diff(a[1]) > 0) and a[2] == 100
    x, index, total = ev.make_windows(np.arange(105), 10, 50)
    assert total == 10 and list(index) == list(range(10)) and x[3, 0] == 30
    with pytest.raises(ev.EvalError, match="fewer than one window"):
        ev.make_windows(np.arange(5), 10)


def test_kld_zero_against_itself_positive_otherwise(models):
    same = ev.evaluate(models["base"], reference_dir=models["base"], seq_len=SEQ_LEN, windows=6)
    assert abs(same["kld_mean"]) < 1e-6
    assert same["top1_agree"] == 1.0
    assert same["paired"]["mean_diff_log_ppl"] == 0.0 and same["reference"]["ppl_mean"] == same["ppl_mean"]

    other = ev.evaluate(models["noisy"], reference_dir=models["base"], seq_len=SEQ_LEN, windows=6)
    assert other["kld_mean"] > 1e-4
    assert other["reference"]["ppl_mean"] == pytest.approx(same["ppl_mean"], rel=1e-6)
    assert other["paired"]["mean_diff_log_ppl"] == pytest.approx(
        math.log(other["ppl_mean"] / same["ppl_mean"]), abs=1e-9)
    # KLD of the first window, independently with torch's kl_div.
    from transformers import AutoModelForCausalLM

    noisy = AutoModelForCausalLM.from_pretrained(models["noisy"], dtype=torch.float32).eval()
    x = torch.tensor([_straightforward_windows(models["tokenizer"], 6)[0][0]])
    with torch.no_grad():
        lp = torch.log_softmax(noisy(x).logits[0, :-1], -1)
        lq = torch.log_softmax(models["model"](x).logits[0, :-1], -1)
    kl = torch.nn.functional.kl_div(lp, lq, log_target=True, reduction="sum").item()
    assert other["windows"]["kld_sum"][0] == pytest.approx(kl, rel=1e-4)


def test_saved_reference_logprobs_give_the_results_of_running_the_reference(models, tmp_path, capsys):
    """The 16-bit model's own evaluation saves its log-probabilities; an evaluation against them gives
    what running the reference model gives, and falls back to running it when the windows differ."""
    out = tmp_path / "bf16.json"
    assert ev.main(["--model", str(models["base"]), "--seq-len", str(SEQ_LEN), "--windows", "6",
                    "--save-logprobs", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    saved = np.load(tmp_path / summary["logprobs_file"])
    assert saved.shape == (6, SEQ_LEN - 1, len(models["tokenizer"])) and saved.dtype == np.float32
    np.testing.assert_allclose(np.exp(saved).sum(-1), 1.0, rtol=1e-5)

    run = ev.evaluate(models["noisy"], reference_dir=models["base"], seq_len=SEQ_LEN, windows=6)
    cached = ev.evaluate(models["noisy"], reference_dir=models["base"], seq_len=SEQ_LEN, windows=6,
                         reference_eval=out)
    assert "running the reference model" not in capsys.readouterr().err
    for key in ("kld_sum", "ref_nll_sum", "top1_agree", "nll_sum"):
        np.testing.assert_allclose(cached["windows"][key], run["windows"][key], rtol=1e-6, atol=1e-9)
    assert cached["kld_mean"] == pytest.approx(run["kld_mean"], rel=1e-6)
    assert cached["paired"]["se"] == pytest.approx(run["paired"]["se"], rel=1e-6)

    other = ev.evaluate(models["noisy"], reference_dir=models["base"], seq_len=SEQ_LEN, windows=5,
                        reference_eval=out)
    assert "its windows" in capsys.readouterr().err
    assert other["kld_mean"] > 1e-4 and other["n_windows"] == 5


def test_logprobs_over_the_size_limit_are_not_saved(models, tmp_path, capsys):
    result = ev.evaluate(models["base"], seq_len=SEQ_LEN, windows=2, save_logprobs=tmp_path / "x.logprobs.npy",
                         max_logprobs_gib=1e-9)
    assert result["logprobs_file"] is None and not (tmp_path / "x.logprobs.npy").exists()
    assert "not saved" in capsys.readouterr().err


def test_trimmed_and_median_on_a_crafted_case():
    # 40 windows, mean losses 1.0, 1.1, ..., 4.9 nats; token counts 10, 20, 10, 20, ...
    # The window with loss 4.9 has 20 tokens and one more is above ln(100) = 4.605: 4.7 and 4.8, 4.9.
    loss = 1.0 + 0.1 * np.arange(40)
    tokens = np.where(np.arange(40) % 2 == 0, 10, 20)
    nll = loss * tokens
    s = ev.summarize(nll[::-1], tokens[::-1])  # order of windows must not matter
    assert s["trimmed_windows_each_end"] == 2  # floor(0.05 * 40)
    kept = slice(2, 38)  # losses 1.2 .. 4.7
    assert s["ppl_trimmed5"] == pytest.approx(math.exp(nll[kept].sum() / tokens[kept].sum()))
    assert s["ppl_median"] == pytest.approx((math.exp(2.9) + math.exp(3.0)) / 2)
    assert s["ppl_mean"] == pytest.approx(math.exp(nll.sum() / tokens.sum()))
    assert s["windows_ppl_gt_100"] == 3  # 4.7, 4.8, 4.9 > ln(100)
    assert s["n_windows"] == 40 and s["n_tokens"] == 600
    few = ev.summarize([1.0, 2.0, 9.0], [1, 1, 1])  # n < 20: nothing trimmed
    assert few["ppl_trimmed5"] == few["ppl_mean"]


def test_paired_standard_error_matches_simulation():
    rng = np.random.default_rng(0)
    n, tokens, mu, sigma = 64, 100, 0.01, 0.05
    means, ses, covered = [], [], 0
    for _ in range(2000):
        loss_a = rng.normal(3.0, 0.5, n)  # large spread shared by both models: pairing removes it
        loss_b = loss_a + rng.normal(mu, sigma, n)
        a = {"window_start": np.arange(n), "n_tokens": np.full(n, tokens), "nll_sum": loss_a * tokens}
        b = {**a, "nll_sum": loss_b * tokens}
        p = ev.paired_comparison(a, b)
        means.append(p["mean_diff_log_ppl"])
        ses.append(p["se"])
        covered += p["ci95"][0] <= mu <= p["ci95"][1]
    assert np.std(means) == pytest.approx(sigma / math.sqrt(n), rel=0.05)
    assert np.mean(ses) == pytest.approx(sigma / math.sqrt(n), rel=0.05)
    assert np.mean(means) == pytest.approx(mu, abs=3 * sigma / math.sqrt(n) / math.sqrt(2000))
    assert 0.93 < covered / 2000 < 0.97
    with pytest.raises(ev.EvalError, match="same windows"):
        ev.paired_comparison(a, {**b, "window_start": np.arange(n) + 1})


def test_main_writes_json_and_windows(models, tmp_path, capsys):
    out = tmp_path / "r" / "noisy.json"
    rc = ev.main(["--model", str(models["noisy"]), "--reference", str(models["base"]), "--out", str(out),
                  "--windows", "4", "--seq-len", str(SEQ_LEN)])
    assert rc == 0
    summary = json.loads(out.read_text())
    assert summary["n_windows"] == 4 and summary["windows_file"] == "noisy.windows.npz"
    p = ev.paired_comparison(out.with_suffix(".windows.npz"),
                             {**dict(np.load(out.with_suffix(".windows.npz"))), "nll_sum": np.zeros(4)})
    assert p["n_windows"] == 4
    assert ev.main(["--model", str(tmp_path / "absent"), "--out", str(out)]) == 2
    assert "mint evaluate: error:" in capsys.readouterr().err


@pytest.mark.slow
def test_lm_eval_word_perplexity_matches_rolling_loglikelihood(models):
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    from mint.lm_eval_tasks.utils import split_documents

    length = 64
    got = ev.lm_eval_perplexity(models["base"], max_length=length, limit=1, batch_size=16)
    tok, model = models["tokenizer"], models["model"]
    docs = split_documents(ev.data.load_text("wikitext2-test"))[:1]
    loglik, words, nbytes = 0.0, 0, 0
    with torch.no_grad():
        for page in docs:
            t = tok(wikitext_detokenizer({"page": page}), add_special_tokens=False)["input_ids"]
            # Disjoint rolling windows of length predictions; the first is conditioned on the eos token,
            # each later one on the tokens before it, up to length tokens of input.
            done = 0
            while done < len(t):
                n_pred = min(length, len(t) - done)
                end = done + n_pred
                inp = ([tok.eos_token_id] + t[:end - 1]) if done == 0 else t[max(0, end - length - 1):end - 1]
                inp = inp[-length:]
                logp = torch.log_softmax(model(torch.tensor([inp])).logits[0], -1)
                scored = logp[-n_pred:].gather(1, torch.tensor(t[done:end])[:, None])
                loglik += scored.sum().item()
                done = end
            words += len(re.split(r"\s+", page))
            nbytes += len(page.encode("utf-8"))
    assert got["word_perplexity"] == pytest.approx(math.exp(-loglik / words), rel=1e-4)
    assert got["byte_perplexity"] == pytest.approx(math.exp(-loglik / nbytes), rel=1e-4)
    assert got["bits_per_byte"] == pytest.approx(-loglik / nbytes / math.log(2), rel=1e-4)

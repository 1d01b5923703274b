"""Perplexity, KL divergence and paired comparisons on WikiText-2 raw test (METHOD.md §5).

Protocol: the non-empty lines of wiki.test.raw joined with "\\n\\n", tokenized once (no special tokens),
cut into non-overlapping windows of `seq_len` tokens (the tail shorter than a window is dropped); when
there are more windows than asked for, a seeded (42) sample of them, kept in text order. Each window is
scored on its own: every token but the first is predicted from the tokens before it in the window.

Reported (per model):
    ppl_mean       token-weighted perplexity exp(sum NLL / sum tokens) (the paper's "mean"),
                   with ppl_mean_se from the windows' spread (delta method, as mlx-lm reports it)
    ppl_median     median over windows of the per-window perplexity exp(NLL_w / tokens_w)
    ppl_trimmed5   sort windows by per-window loss, drop floor(5% of n) from each end, then the
                   token-weighted perplexity of the rest (equals ppl_mean when n < 20)
    windows_ppl_gt_100, n_windows, n_tokens (predicted tokens)
With a reference (the 16-bit model) the same windows are run through both, batch by batch, so memory
holds two models and one batch of logits (never the reference's distributions for the whole text):
    kld_mean       mean over predicted tokens of KL(P_ref || P_model), full vocabulary, nats
    top1_agree     fraction of tokens where both models' argmax agree
    paired         paired_comparison(reference, model): mean per-window log-perplexity difference
                   with its standard error, so a table can say whether a difference is real.
Per-window NLL sums and token counts (and KLD sums) go to an .npz beside the JSON for later pairing.

Word and byte perplexity through lm-eval's own HF backend: `lm_eval_perplexity`, with the task in
mint/lm_eval_tasks/ over the vendored wiki.test.raw (offline).
"""

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from mint import data, files

SEED = 42  # METHOD.md §5: the window sample
TRIM = 0.05  # fraction of windows trimmed from each end for ppl_trimmed5
PPL_BAD = 100.0  # a window with perplexity above this counts as broken
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WINDOW_KEYS = ("window_index", "window_start", "nll_sum", "n_tokens")
# The most a saved log-probability file may take (128 windows of 512 tokens x a 1,024-token vocabulary
# is 0.25 GiB; a 150k vocabulary would be 37 GiB, and its evaluations run the reference model instead).
MAX_LOGPROBS_GIB = 2.0


class EvalError(ValueError):
    """Bad arguments or inputs (a user error)."""


# ---------------------------------------------------------------------------------------------------
# Pure statistics over per-window NLL sums.
# ---------------------------------------------------------------------------------------------------


def summarize(nll_sum, n_tokens, trim=TRIM, ppl_bad=PPL_BAD):
    """Perplexity statistics from per-window NLL sums (nats) and predicted-token counts.

    >>> s = summarize([2 * math.log(3)] * 4, [2] * 4)
    >>> round(s["ppl_mean"], 6), round(s["ppl_median"], 6), s["windows_ppl_gt_100"]
    (3.0, 3.0, 0)
    """
    nll = np.asarray(nll_sum, dtype=np.float64)
    tok = np.asarray(n_tokens, dtype=np.float64)
    if nll.shape != tok.shape or nll.ndim != 1 or len(nll) == 0:
        raise EvalError("need one NLL sum and one token count per window")
    per_window = nll / tok  # mean NLL of each window
    n = len(nll)
    k = int(math.floor(trim * n))
    order = np.argsort(per_window, kind="stable")
    kept = order[k:n - k]
    log_ppl = nll.sum() / tok.sum()
    # Standard error of log ppl_mean from the windows' token-weighted spread (ratio estimator);
    # with equal window lengths this is std(per-window loss) / sqrt(n).
    w = tok / tok.sum()
    se_log = math.sqrt(n / (n - 1) * np.sum(w**2 * (per_window - log_ppl) ** 2)) if n > 1 else float("nan")
    return {
        "ppl_mean": math.exp(log_ppl),
        "ppl_mean_se": math.exp(log_ppl) * se_log,
        "nll_mean": log_ppl,
        "ppl_median": float(np.median(np.exp(per_window))),
        "ppl_trimmed5": math.exp(nll[kept].sum() / tok[kept].sum()),
        "trimmed_windows_each_end": k,
        "windows_ppl_gt_100": int(np.sum(np.exp(per_window) > ppl_bad)),
        "n_windows": n,
        "n_tokens": int(tok.sum()),
    }


def _windows_of(x):
    """Per-window arrays from an evaluate() result, a dict of arrays, or an .npz path."""
    if isinstance(x, (str, Path)):
        with np.load(x) as z:
            return {k: z[k] for k in z.files}
    if isinstance(x, dict) and "windows" in x:
        return x["windows"]
    return x


def paired_comparison(a, b):
    """Is model b's perplexity really different from model a's on the same windows?

    d_w = log ppl_w(b) - log ppl_w(a) per window (per-window mean NLL difference, nats);
    returns mean(d), se = std(d, ddof=1) / sqrt(n), z = mean / se, a normal 95% interval, and the
    perplexity ratio exp(mean(d)). Equal window lengths make mean(d) = log(ppl_mean(b) / ppl_mean(a)).

    Args:
        a, b: evaluate() results, their per-window dicts, or paths to their .npz files.
    """
    a, b = _windows_of(a), _windows_of(b)
    if len(a["window_start"]) != len(b["window_start"]) or not np.array_equal(a["window_start"], b["window_start"]) \
            or not np.array_equal(a["n_tokens"], b["n_tokens"]):
        raise EvalError("paired comparison needs both models evaluated on the same windows")
    d = np.asarray(b["nll_sum"], np.float64) / b["n_tokens"] - np.asarray(a["nll_sum"], np.float64) / a["n_tokens"]
    n = len(d)
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    z = mean / se if se > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))
    return {
        "n_windows": n,
        "mean_diff_log_ppl": mean,
        "se": se,
        "z": z,
        "ci95": [mean - 1.96 * se, mean + 1.96 * se],
        "ppl_ratio": math.exp(mean),
        "significant_95": bool(abs(z) > 1.96),
    }


# ---------------------------------------------------------------------------------------------------
# Windows and models.
# ---------------------------------------------------------------------------------------------------


def make_windows(ids, seq_len, max_windows=None, seed=SEED):
    """Non-overlapping windows [n, seq_len] of `ids` and their indices among all windows.

    When there are more than `max_windows`, a sample drawn with numpy's default_rng(seed),
    returned in text order.
    """
    ids = np.asarray(ids, dtype=np.int64)
    total = len(ids) // seq_len
    if total == 0:
        raise EvalError(f"text has {len(ids)} tokens, fewer than one window of {seq_len}")
    index = np.arange(total)
    if max_windows is not None and max_windows < total:
        index = np.sort(np.random.default_rng(seed).choice(total, size=max_windows, replace=False))
    windows = ids[: total * seq_len].reshape(total, seq_len)[index]
    return torch.from_numpy(windows), index, total


def load_model(model_dir, dtype="float32", experts_implementation=None):
    """A transformers causal LM from a local folder, in eval mode, on the CPU."""
    from transformers import AutoModelForCausalLM

    # Never run code shipped with a checkpoint (no config entry turns it on; see the README).
    kwargs = {"dtype": DTYPES[dtype], "trust_remote_code": False}
    if experts_implementation:
        kwargs["experts_implementation"] = experts_implementation
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    return model.eval()


def default_seq_len(model_dir, config):
    """The reference recipe's training length when there is one, else min(max positions, 2048)."""
    meta = Path(model_dir) / "train_meta.json"
    if meta.is_file():
        return int(json.loads(meta.read_text())["recipe"]["seq_len"])
    return int(min(getattr(config, "max_position_embeddings", 2048) or 2048, 2048))


def weights_bytes(model_dir):
    """Bytes of the weights files (*.safetensors, else *.bin) of a folder."""
    files = list(Path(model_dir).glob("*.safetensors")) or list(Path(model_dir).glob("*.bin"))
    return sum(f.stat().st_size for f in files)


def empty_scores(n, seq_len, with_reference):
    """Per-window score arrays for `n` windows of `seq_len` tokens (each predicts seq_len - 1)."""
    out = {"nll_sum": np.zeros(n), "n_tokens": np.full(n, seq_len - 1, dtype=np.int64)}
    if with_reference:
        out.update(ref_nll_sum=np.zeros(n), kld_sum=np.zeros(n), top1_agree=np.zeros(n, dtype=np.int64))
    return out


def log_probs(logits, dtype=torch.float32):
    """Log-probabilities [seq_len - 1, vocab] of a window's logits: every position but the last
    predicts the next token."""
    return torch.log_softmax(logits[:-1].to(dtype), dim=-1)


def score_window(scores, i, window, logp, ref_logp=None):
    """Fill window `i` of `scores` from the log-probabilities of `window` (and the reference's)."""
    target = torch.as_tensor(window)[1:]
    scores["nll_sum"][i] = -logp.gather(1, target[:, None]).sum().item()
    if ref_logp is not None:
        scores["ref_nll_sum"][i] = -ref_logp.gather(1, target[:, None]).sum().item()
        # KL(P_ref || P) = sum_v p_ref (log p_ref - log p), summed over the window's positions.
        scores["kld_sum"][i] = (ref_logp.exp() * (ref_logp - logp)).sum().item()
        scores["top1_agree"][i] = (ref_logp.argmax(-1) == logp.argmax(-1)).sum().item()


def reference_statistics(scores, per_window):
    """KLD, top-1 agreement, the reference's own summary and the paired comparison, from the scores
    of a run against a reference."""
    n_tok = scores["n_tokens"].sum()
    return {"kld_mean": float(scores["kld_sum"].sum() / n_tok),
            "top1_agree": float(scores["top1_agree"].sum() / n_tok),
            "reference": summarize(scores["ref_nll_sum"], scores["n_tokens"]),
            "paired": paired_comparison({**per_window, "nll_sum": scores["ref_nll_sum"]}, per_window)}


@torch.inference_mode()
def score_windows(model, windows, batch_size=8, reference=None, progress=False, reference_logprobs=None,
                  keep_logprobs=None):
    """Per-window NLL sums (and, with a reference, KLD sums, top-1 agreements and the reference's NLL
    sums), computed one window's logits at a time after each batch's forward.

    The reference is a model run on the same batches, or `reference_logprobs` [n, seq_len - 1, vocab]
    saved by its own evaluation (then the model is not run). `keep_logprobs`, an array of that shape,
    receives this model's log-probabilities (what a later evaluation uses as its reference)."""
    from tqdm import tqdm

    n, seq_len = windows.shape
    out = empty_scores(n, seq_len, reference is not None or reference_logprobs is not None)
    for i in tqdm(range(0, n, batch_size), disable=not progress, desc="windows", mininterval=5):
        x = windows[i:i + batch_size]
        logits = model(input_ids=x).logits
        ref_logits = reference(input_ids=x).logits if reference is not None and reference_logprobs is None else None
        for j in range(len(x)):
            logp = log_probs(logits[j])
            if keep_logprobs is not None:
                keep_logprobs[i + j] = logp.numpy()
            if reference_logprobs is not None:
                ref_logp = torch.from_numpy(np.asarray(reference_logprobs[i + j]))
            else:
                ref_logp = None if ref_logits is None else log_probs(ref_logits[j])
            score_window(out, i + j, x[j], logp, ref_logp)
    return out


def cached_reference_logprobs(reference_eval, index, seq_len, text, seed, dtype, vocab):
    """The reference's log-probabilities saved by its own evaluation (`mint evaluate --save-logprobs`,
    summary `reference_eval`), memory-mapped, when they cover exactly these windows; else None and why."""
    summary = json.loads(Path(reference_eval).read_text())
    folder = Path(reference_eval).parent
    if not summary.get("logprobs_file"):
        return None, "it saved no log-probabilities"
    if (summary["seq_len"], summary["text"], summary["seed"], summary["dtype"]) != (seq_len, text, seed, dtype):
        return None, "its windows or dtype differ"
    path = folder / summary["logprobs_file"]
    if not path.is_file():
        return None, f"{path} is missing"
    if not np.array_equal(np.load(folder / summary["windows_file"])["window_index"], index):
        return None, "its windows differ"
    logp = np.load(path, mmap_mode="r")
    if logp.shape != (len(index), seq_len - 1, vocab):
        return None, f"its log-probabilities have shape {logp.shape}"
    return logp, None


def evaluate(model_dir, reference_dir=None, seq_len=None, windows=None, batch_size=8, dtype="float32",
             text="wikitext2-test", seed=SEED, threads=None, experts_implementation=None, progress=False,
             reference_eval=None, save_logprobs=None, max_logprobs_gib=MAX_LOGPROBS_GIB):
    """Evaluate a model folder (16-bit or dequantized) with METHOD.md §5, optionally against a reference.

    Args:
        model_dir: transformers folder (with a tokenizer, or the reference's is used).
        reference_dir: the 16-bit model the KLD and the paired comparison are taken against.
        seq_len: window length; default: the reference recipe's training length, else the model's.
        windows: how many windows at most (seeded sample); None: all.
        batch_size: windows per forward pass.
        dtype: compute dtype, "float32" (default), "bfloat16" or "float16".
        text: a `mint.data.load_text` source; its non-empty lines are joined with "\\n\\n".
        seed: seed of the window sample (42 in the protocol).
        threads: torch CPU threads (None: torch's default).
        reference_eval: the reference's own evaluation summary (JSON); when it saved log-probabilities
            for these windows they stand in for the reference model, which is then not run.
        save_logprobs: write this model's log-probabilities [windows, seq_len - 1, vocab] (float32,
            .npy) here, for later evaluations against it, unless larger than `max_logprobs_gib`.
    Returns:
        A JSON-ready dict of the statistics, plus "windows": the per-window numpy arrays.
    """
    from transformers import AutoTokenizer

    if dtype not in DTYPES:
        raise EvalError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    for folder in (model_dir, reference_dir):
        if folder is not None and not (Path(folder) / "config.json").is_file():
            raise EvalError(f"{folder} is not a model folder (no config.json)")
    if threads:
        torch.set_num_threads(threads)
    tok_dir = model_dir if (Path(model_dir) / "tokenizer_config.json").is_file() else reference_dir
    if tok_dir is None:
        raise EvalError(f"{model_dir} has no tokenizer and no --reference was given")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=False)
    model = load_model(model_dir, dtype, experts_implementation)
    seq_len = seq_len or default_seq_len(reference_dir or model_dir, model.config)
    if seq_len < 2:
        raise EvalError("seq_len must be at least 2")
    ids = tokenizer(data.load_eval_text(text), add_special_tokens=False)["input_ids"]
    x, index, total = make_windows(ids, seq_len, windows, seed)
    vocab = model.config.vocab_size

    cached = None
    if reference_eval is not None:
        cached, why_not = cached_reference_logprobs(reference_eval, index, seq_len, text, seed, dtype, vocab)
        if cached is None:
            print(f"mint evaluate: running the reference model: {reference_eval} {why_not}", file=sys.stderr)
    reference = load_model(reference_dir, dtype, experts_implementation) if reference_dir and cached is None else None
    if reference is not None and reference.config.vocab_size != vocab:
        raise EvalError("model and reference have different vocabularies")
    with contextlib.ExitStack() as stack:
        keep = None
        nbytes = len(x) * (seq_len - 1) * vocab * 4
        if save_logprobs is not None and nbytes <= max_logprobs_gib * 1024**3:
            tmp = stack.enter_context(files.replaced(save_logprobs))
            keep = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(x), seq_len - 1, vocab))
        elif save_logprobs is not None:
            print(f"mint evaluate: log-probabilities not saved: {nbytes / 1024**3:.1f} GiB is over "
                  f"{max_logprobs_gib} GiB (later evaluations run the reference model)", file=sys.stderr)
        scores = score_windows(model, x, batch_size, reference, progress, cached, keep)
        if keep is not None:
            keep.flush()
    per_window = {"window_index": index, "window_start": index * seq_len, **scores}
    result = {
        "model_dir": str(model_dir),
        "reference_dir": str(reference_dir) if reference_dir else None,
        "text": text,
        "seq_len": seq_len,
        "dtype": dtype,
        "seed": seed,
        "text_tokens": len(ids),
        "windows_available": int(total),
        **summarize(scores["nll_sum"], scores["n_tokens"]),
        "weights_size_bytes": weights_bytes(model_dir),
        "weights_size_gib": weights_bytes(model_dir) / 1024**3,
        "params": sum(p.numel() for p in model.parameters()),
        "logprobs_file": Path(save_logprobs).name if keep is not None else None,
    }
    if reference is not None or cached is not None:
        result.update(reference_statistics(scores, per_window))
    result["windows"] = per_window
    return result


def save_result(result, out):
    """Write the JSON summary to `out` and the per-window arrays to `out` with suffix .windows.npz."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    npz = out.with_suffix(".windows.npz")
    # The arrays first, the summary (the rule's declared output) last: a killed run leaves no summary.
    with files.replaced(npz) as tmp:
        np.savez(tmp, **result["windows"])
    summary = {k: v for k, v in result.items() if k != "windows"}
    summary["windows_file"] = npz.name
    files.write_text(out, json.dumps(summary, indent=2) + "\n")
    return npz


# ---------------------------------------------------------------------------------------------------
# Word / byte perplexity through lm-eval (its HF backend, a local task over the vendored text).
# ---------------------------------------------------------------------------------------------------

LM_EVAL_TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
LM_EVAL_TASK = "mint_wikitext2"


def lm_eval_perplexity(model_dir, max_length=None, limit=None, batch_size=1, dtype="float32"):
    """lm-eval's word perplexity, byte perplexity and bits per byte of `model_dir` on the vendored
    WikiText-2 test, with the upstream `wikitext` task's documents, detokenizer and metrics.

    Runs offline: the task reads data/wikitext-2-raw-v1/wiki.test.raw (checksummed), the model is a
    local folder. `max_length` is lm-eval's rolling-window length (default: as `evaluate`);
    `limit` caps the number of documents (62 articles in all).
    """
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager
    from transformers import AutoConfig

    if max_length is None:
        max_length = default_seq_len(model_dir, AutoConfig.from_pretrained(model_dir, trust_remote_code=False))
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(model_dir), "dtype": dtype, "device": "cpu", "max_length": max_length,
                    "trust_remote_code": False},
        tasks=[LM_EVAL_TASK],
        task_manager=TaskManager(include_path=str(LM_EVAL_TASKS_DIR), include_defaults=False),
        batch_size=batch_size,
        limit=limit,
        log_samples=False,
    )
    metrics = results["results"][LM_EVAL_TASK]
    return {name: float(metrics[f"{name},none"]) for name in ("word_perplexity", "byte_perplexity", "bits_per_byte")}


def _evaluate_gguf(args):
    """`mint evaluate --gguf FILE --model SOURCE`: llama.cpp's logits on the same windows."""
    from mint import gguf

    try:
        result = gguf.evaluate_gguf(args.gguf, args.model, args.reference_gguf, args.seq_len or 512, args.windows,
                                    args.text, args.seed, args.threads)
    except (gguf.GGUFError, EvalError, data.DataError, OSError) as e:
        print(f"mint evaluate: error: {e}", file=sys.stderr)
        return 2
    save_result(result, args.out)
    print(summary_line(result, " (llama.cpp)"))
    return 0


def summary_line(result, runtime=""):
    """One line: perplexity with its standard error and, against a reference, KLD and the paired difference."""
    line = f"ppl {result['ppl_mean']:.3f} +- {result['ppl_mean_se']:.3f} on {result['n_windows']} windows{runtime}"
    if "kld_mean" in result:
        p = result["paired"]
        line += (f"; reference {result['reference']['ppl_mean']:.3f}, KLD {result['kld_mean']:.5f}, "
                 f"dlog ppl {p['mean_diff_log_ppl']:+.5f} +- {p['se']:.5f}")
    return line


def main(argv=None):
    """`mint evaluate --model DIR --out result.json [--reference DIR] [--windows N] [--seq-len L]`."""
    parser = argparse.ArgumentParser(prog="mint evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True,
                        help="transformers folder (16-bit or dequantized); with --gguf, the source checkpoint "
                             "whose tokenizer makes the windows")
    parser.add_argument("--gguf", help="evaluate this GGUF file with llama.cpp's own logits (mint/gguf.py)")
    parser.add_argument("--reference-gguf", help="with --gguf: the 16-bit GGUF for KLD and the paired comparison")
    parser.add_argument("--out", required=True, help="result JSON; per-window arrays go beside it (.windows.npz)")
    parser.add_argument("--reference", help="16-bit model folder for KLD and the paired comparison")
    parser.add_argument("--reference-eval",
                        help="with --reference: the reference's own evaluation (JSON); its saved "
                             "log-probabilities stand in for running the reference when they cover the same windows")
    parser.add_argument("--save-logprobs", action="store_true",
                        help=f"also save the log-probabilities (.logprobs.npy beside --out; at most "
                             f"{MAX_LOGPROBS_GIB:g} GiB) for --reference-eval of later evaluations")
    parser.add_argument("--windows", type=int, help="at most this many windows (seeded sample)")
    parser.add_argument("--seq-len", type=int, help="window length in tokens")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="compute dtype")
    parser.add_argument("--text", default="wikitext2-test", help="text source (mint.data.load_text)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the window sample")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--lm-eval", action="store_true",
                        help="also lm-eval's word/byte perplexity (all 62 documents; slow)")
    args = parser.parse_args(argv)
    if args.windows is not None and args.windows < 1:
        parser.error("--windows must be at least 1")
    if args.reference_eval and not args.reference:
        parser.error("--reference-eval needs --reference (run when the saved log-probabilities do not fit)")
    if args.gguf:
        return _evaluate_gguf(args)
    keep = Path(args.out).with_suffix(".logprobs.npy") if args.save_logprobs else None
    try:
        result = evaluate(args.model, args.reference, args.seq_len, args.windows, args.batch_size, args.dtype,
                          args.text, args.seed, args.threads, progress=True, reference_eval=args.reference_eval,
                          save_logprobs=keep)
        if args.lm_eval:
            result["lm_eval"] = lm_eval_perplexity(args.model, result["seq_len"], dtype=args.dtype)
    except (EvalError, data.DataError, OSError) as e:
        print(f"mint evaluate: error: {e}", file=sys.stderr)
        return 2
    save_result(result, args.out)
    print(summary_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

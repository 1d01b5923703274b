"""Verify an export in its runtime: the logits the runtime computes from the written file equal the
logits transformers computes from the dequantized twin (the model the evaluation measured).

The pipeline evaluates the dequantized twin, never the file a user gets; this check closes that gap.
Both models run in float32 on the same fixed, seeded tokens; the export is verified when the largest
absolute logit difference is within the tolerance (1e-3: the two runtimes compute the same function,
so only float32 summation order differs). A load failure or a larger difference fails, with the
folder and the difference in one line; the JSON report is written either way (atomically).

    mint verify --mlx model-mlx/ --dequant model-hf/ --out verify.json

Runtimes are entries of RUNTIMES (the runtime's logits from its file), so a GGUF check through
llama.cpp is one more entry and one more flag.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mint.files import write_text

# Largest |logit difference| accepted between the runtime and transformers, both in float32.
TOLERANCE = 1e-3
# Tokens per sequence, and sequences: enough positions to exercise attention and several experts.
N_TOKENS = 12
N_SEQUENCES = 2
SEED = 0


class VerifyError(RuntimeError):
    """The export does not compute what the dequantized twin computes, or does not load."""


def fixed_tokens(vocab_size, n_tokens=N_TOKENS, n_sequences=N_SEQUENCES, seed=SEED):
    """[n_sequences, n_tokens] token ids, seeded, uniform over the vocabulary."""
    return np.random.default_rng(seed).integers(0, vocab_size, size=(n_sequences, n_tokens))


def _vocab_size(folder):
    config = json.loads((Path(folder) / "config.json").read_text())
    return config.get("text_config", config)["vocab_size"]


def mlx_logits(folder, tokens):
    """Logits [B, T, V] (float32) of the MLX folder as mlx-lm loads it (its own loader and sanitize)."""
    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(folder))
    model.set_dtype(mx.float32)  # scales, biases and 16-bit weights; packed weights stay uint32
    return np.array(model(mx.array(tokens)), dtype=np.float32)


def torch_logits(folder, tokens):
    """Logits [B, T, V] (float32) of a Hugging Face folder in transformers, by its own class."""
    import torch
    import transformers

    config = json.loads((Path(folder) / "config.json").read_text())
    architecture = (config.get("architectures") or [None])[0]
    cls = getattr(transformers, architecture, None) if architecture else None
    cls = cls or transformers.AutoModelForCausalLM
    model, info = cls.from_pretrained(folder, dtype=torch.float32, output_loading_info=True, trust_remote_code=False)
    # A tensor transformers did not load is a randomly initialised one: the comparison would be void.
    unloaded = sorted(set(info.get("missing_keys", ())) | set(info.get("unexpected_keys", ())))
    if unloaded:
        raise ValueError(f"{len(unloaded)} tensors missing or unexpected, e.g. {unloaded[:3]}")
    # A multimodal wrapper computes text-only logits with its language model (and Llama-4's wrapper
    # cannot build its output for a text-only call in transformers 5.24).
    text_model = getattr(model, "language_model", None)
    if text_model is not None and hasattr(text_model, "lm_head"):
        model = text_model
    with torch.no_grad():
        return model.eval()(torch.as_tensor(tokens)).logits.float().numpy()


# runtime -> function(path of the export, tokens) -> logits
RUNTIMES = {"mlx-lm": mlx_logits}


def verify(export, dequant, runtime="mlx-lm", n_tokens=N_TOKENS, tolerance=TOLERANCE, seed=SEED):
    """Compare the runtime's logits on `export` with transformers' on `dequant`.

    Returns:
        A report dict: runtime, export, dequant, tokens (shape), max_abs_diff, max_abs_logit (of the
        twin, to show the model is not degenerate), tolerance, verified, and error (None, or why the
        check failed: a load failure or the difference).
    """
    report = {"runtime": runtime, "export": str(export), "dequant": str(dequant), "tolerance": tolerance,
              "tokens": [N_SEQUENCES, n_tokens], "seed": seed, "max_abs_diff": None, "max_abs_logit": None,
              "verified": False, "error": None}
    try:
        tokens = fixed_tokens(_vocab_size(dequant), n_tokens, N_SEQUENCES, seed)
        want = torch_logits(dequant, tokens)
    except Exception as e:  # noqa: BLE001 - any failure to load is the message
        report["error"] = f"transformers cannot run the dequantized folder {dequant}: {_first_line(e)}"
        return report
    try:
        got = RUNTIMES[runtime](export, tokens)
    except Exception as e:  # noqa: BLE001
        report["error"] = f"{runtime} cannot load or run {export}: {_first_line(e)}"
        return report
    if got.shape != want.shape:
        report["error"] = f"{runtime} on {export} gives logits of shape {list(got.shape)}, transformers {list(want.shape)}"
        return report
    diff = float(np.abs(got - want).max())
    report.update(max_abs_diff=diff, max_abs_logit=float(np.abs(want).max()), verified=bool(diff <= tolerance))
    if not report["verified"]:
        report["error"] = (f"{runtime} on {export} differs from transformers on {dequant} by {diff:.3g} "
                           f"(max |logit| difference; tolerance {tolerance:g})")
    return report


def _first_line(e):
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def verify_files(mlx, dequant, out, tokens=N_TOKENS, tolerance=TOLERANCE, seed=SEED):
    """`mint verify`: verify, write the report to `out` (atomically), raise VerifyError on failure."""
    report = verify(mlx, dequant, "mlx-lm", tokens, tolerance, seed)
    write_text(out, json.dumps(report, indent=1) + "\n")
    if not report["verified"]:
        raise VerifyError(report["error"])
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mint verify", description=__doc__.split("\n")[0])
    parser.add_argument("--mlx", required=True, help="MLX folder written by mint quantize")
    parser.add_argument("--dequant", required=True, help="its dequantized Hugging Face folder (--dequant-out)")
    parser.add_argument("--tokens", type=int, default=N_TOKENS, help="tokens per sequence (2 seeded sequences)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="largest |logit difference| accepted")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the token ids")
    parser.add_argument("--out", required=True, help="JSON report to write")
    args = parser.parse_args(argv)
    try:
        report = verify_files(**vars(args))
    except (VerifyError, OSError) as e:
        print(f"mint verify: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"{args.mlx}: verified in {report['runtime']}, max |logit difference| {report['max_abs_diff']:.2e} "
          f"<= {report['tolerance']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

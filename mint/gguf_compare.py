"""llama.cpp's own mixes against MINT-GGUF at equal bytes, scored by llama.cpp's logits.

    mint gguf-compare --checkpoint path/to/hf-model --out results/m/gguf/compare.csv --windows 32

For each preset (Q2_K, Q3_K_M, Q4_K_M, Q5_K_M, Q6_K, made by `llama_model_quantize` with that ftype,
no importance matrix), MINT-GGUF is allocated at exactly the preset file's bytes (no SQNR floor, so
that both solve the same problem) and both files are evaluated on the same WikiText-2 windows:
perplexity, KLD against the 16-bit conversion, and MINT's paired delta log-PPL against the preset.
All files are scored in one pass over the windows, the 16-bit file's logits computed once per window.
The files are written in a temporary folder and deleted; the table keeps the numbers, the windows'
parameters (seq_len, seed, count, text tokens: together they fix the windows) and the types mixes.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

from mint import gguf
from mint.evaluate import EvalError, paired_comparison


def compare(checkpoint, out, presets=tuple(gguf.PRESET_FTYPES), windows=32, seq_len=512, seed=42,
            text="wikitext2-test", pretokenizer=None, threads=None, progress=True):
    """Write the comparison table (CSV) to `out`; returns it."""
    with tempfile.TemporaryDirectory(dir=Path(out).parent if Path(out).parent.exists() else None) as tmp:
        tmp = Path(tmp)
        f16 = gguf.convert_to_gguf(checkpoint, tmp / "model-16bit.gguf", progress, pretokenizer)
        units, _, _, header = gguf.measure_gguf(f16, progress=progress)
        files = gguf.compare_presets(f16, units, header, tmp, presets, threads=threads)
        paths = [tmp / name for r in files.itertuples() for name in (f"{r.preset}.gguf", f"mint-{r.preset}.gguf")]
        scored = dict(zip(paths, gguf.evaluate_ggufs(paths, checkpoint, f16, seq_len, windows, text, seed, threads,
                                                     progress=progress)))
        rows = []
        for r in files.itertuples():
            preset, mint = scored[tmp / f"{r.preset}.gguf"], scored[tmp / f"mint-{r.preset}.gguf"]
            paired = paired_comparison(preset["windows"], mint["windows"])
            rows.append(dict(preset=r.preset, bytes_preset=r.preset_bytes, bytes_mint=r.mint_bytes,
                             n_params=r.n_params, bpw_preset=8 * r.preset_bytes / r.n_params,
                             bpw_mint=8 * r.mint_bytes / r.n_params,
                             ppl_16bit=mint["reference"]["ppl_mean"], ppl_preset=preset["ppl_mean"],
                             ppl_mint=mint["ppl_mean"], ppl_median_16bit=mint["reference"]["ppl_median"],
                             ppl_median_preset=preset["ppl_median"], ppl_median_mint=mint["ppl_median"],
                             kld_preset=preset["kld_mean"], kld_mint=mint["kld_mean"],
                             dlogppl_mint_vs_preset=paired["mean_diff_log_ppl"], dlogppl_se=paired["se"],
                             objective_preset=r.preset_objective, objective_mint=r.mint_objective,
                             preset_types=r.preset_types, mint_types=r.mint_types, n_windows=mint["n_windows"],
                             seq_len=seq_len, seed=seed, text=text, text_tokens=mint["text_tokens"]))
    table = pd.DataFrame(rows)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.6g")
    return table


def main(argv=None):
    p = argparse.ArgumentParser(prog="mint gguf-compare", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="Hugging Face checkpoint folder (with its tokenizer)")
    p.add_argument("--out", required=True, help="comparison table (CSV)")
    p.add_argument("--presets", nargs="+", choices=tuple(gguf.PRESET_FTYPES), default=list(gguf.PRESET_FTYPES))
    p.add_argument("--windows", type=int, default=32, help="WikiText-2 windows (seeded sample)")
    p.add_argument("--seq-len", type=int, default=512, help="window length in tokens")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--pretokenizer", help="llama.cpp's name of a BPE pre-tokenizer it cannot detect (e.g. gpt-2)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    try:
        table = compare(args.checkpoint, args.out, tuple(args.presets), args.windows, args.seq_len, args.seed,
                        pretokenizer=args.pretokenizer, threads=args.threads)
    except (gguf.GGUFError, EvalError, ValueError, OSError) as e:
        print(f"mint gguf-compare: error: {e}", file=sys.stderr)
        return 2
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

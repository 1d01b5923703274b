"""Analysis throughput on Qwen3-30B-A3B-shaped expert matrices (hidden 2048, expert width 768).

Prints parameters per second for each stage of `mint analyze` on one thread (or --threads), and the
time the whole Qwen3-30B-A3B (30.5B parameters) would take at that rate with every expert measured.
Not a test: run it by hand on a quiet machine.

    python benchmarks/analyze_bench.py [--experts 8] [--threads 1]
"""

import argparse
import time

import torch

from mint import analyze, quantizer

QWEN3_30B_PARAMS = 30.5e9


def bench(label, fn, mats):
    start = time.perf_counter()
    for w in mats:
        fn(w)
    seconds = time.perf_counter() - start
    params = sum(w.numel() for w in mats)
    rate = params / seconds
    print(f"{label:<34} {rate / 1e6:8.2f} M params/s   ({seconds:.2f} s for {params / 1e6:.1f} M)")
    return rate


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", type=int, default=8, help="expert matrices per projection")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    # gate/up [768, 2048] and down [2048, 768] per expert, bf16 like the released checkpoint.
    mats = [(torch.randn(shape, generator=gen) * 0.02).bfloat16()
            for _ in range(args.experts) for shape in ((768, 2048), (768, 2048), (2048, 768))]
    print(f"{len(mats)} matrices, {args.threads} thread(s)")
    rd = bench("RD curve (18 configs + 16-bit)", lambda w: quantizer.rd_curve(w, scale_dtype=torch.bfloat16), mats)
    light = bench("light stats (norm, std, kurtosis)", analyze.light_stats, mats)
    feats = bench("features without spectral", lambda w: analyze.tensor_features(w, spectral=False), mats)
    spectral = bench("spectral (rank-256 randomized SVD)", analyze.spectral_features, mats)
    per_param = 1 / rd + 1 / feats + 1 / spectral
    print(f"\nall experts measured: {1 / per_param / 1e6:.2f} M params/s -> Qwen3-30B-A3B in "
          f"{QWEN3_30B_PARAMS * per_param / 60:.0f} min on {args.threads} thread(s)")
    print(f"without spectral features: {QWEN3_30B_PARAMS * (1 / rd + 1 / feats) / 60:.0f} min; "
          f"light statistics alone (the clustering pass): {QWEN3_30B_PARAMS / light / 60:.0f} min")


if __name__ == "__main__":
    main()

"""The RD-curve kernel (`kernels.rd_errors`: 18 configs of one matrix in one pass), against another
checkout's, on one thread: M parameters per second, the ratio, and how far the errors moved.

    git archive cce846b mint | tar -x -C /tmp/oldmint     # the kernel before the inline loop
    python benchmarks/kernel_bench.py --baseline /tmp/oldmint

Each round times both kernels back to back on the same Qwen3-30B-A3B expert-shaped bfloat16 matrix
(768 x 2048); the best round of each is reported, so a shared machine's noise mostly cancels.
Not a test: run it by hand.
"""

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

# numba's caches of this run in a folder of their own: the baseline's module is loaded under another
# name, and its cache, written next to its source, would break that checkout's `mint` (numba would
# look for this module name when `mint.kernels` reloads it).
os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="kernel_bench-numba-"))

import numba  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mint import kernels  # noqa: E402


def load_kernels(folder):
    """mint/kernels.py of another checkout (a folder holding mint/), as its own module."""
    spec = importlib.util.spec_from_file_location("baseline_kernels", Path(folder) / "mint" / "kernels.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # numba's on-disk cache finds the module by name when it reloads
    spec.loader.exec_module(module)
    return module


def run(module, x, group_sizes, levels):
    out = np.zeros((len(group_sizes) * len(levels), x.shape[0]))
    module.rd_errors(x, group_sizes, levels, *kernels.FLOAT16, out, np.zeros(x.shape[0]))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="a folder holding another checkout's mint/")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--rows", type=int, default=768)
    parser.add_argument("--cols", type=int, default=2048)
    args = parser.parse_args(argv)
    numba.set_num_threads(1)
    w = (torch.randn(args.rows, args.cols, generator=torch.Generator().manual_seed(0)) * 0.02).bfloat16()
    x = w.view(torch.int16).numpy().view(np.uint16)
    group_sizes = np.array([32, 64, 128], dtype=np.int64)
    levels = np.array([2.0**b - 1 for b in (2, 3, 4, 5, 6, 8)], dtype=np.float32)
    contenders = {"baseline": load_kernels(args.baseline), "this checkout": kernels}
    errors = {name: run(m, x, group_sizes, levels) for name, m in contenders.items()}  # compiles, warms up
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(args.rounds):
        for name, module in contenders.items():
            start = time.perf_counter()
            run(module, x, group_sizes, levels)
            best[name] = min(best[name], time.perf_counter() - start)
    for name in contenders:
        print(f"{name:>14}: {x.size / best[name] / 1e6:6.1f} M params/s (best of {args.rounds})")
    moved = np.abs(errors["this checkout"] - errors["baseline"]) / errors["baseline"]
    print(f"ratio: {best['baseline'] / best['this checkout']:.2f}x; largest relative change of an error total: "
          f"{moved.max():.1e}")


if __name__ == "__main__":
    main()

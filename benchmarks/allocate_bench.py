"""Solve-time benchmark of the allocator (METHOD.md §4) on a synthetic model: not a test.

20,000 units x 19 options (18 quantized configs + 16-bit) with realistic rate-distortion curves:
NRMSE roughly halves per extra bit and grows slowly with the group size, with per-unit scale and a
little per-option noise (so curves are not exactly convex); bytes follow METHOD.md §1,
ceil(n*b/8) + 4*ceil(n/g). Prints the exact and greedy solve times (best of --repeat), the
objective, LP bound and gap at a few budgets.

    .venv/bin/python benchmarks/allocate_bench.py [--units 20000] [--repeat 3] [--seed 0]
"""

import argparse
import time
import warnings

import numpy as np
import pandas as pd

from mint.allocate import allocate

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)


def synthetic_units(n_units=20_000, n_layers=48, seed=0):
    """A units table shaped like a large MoE model's (roles, layers, sizes), random curves."""
    rng = np.random.default_rng(seed)
    roles = rng.choice(["attention", "routed_expert", "shared_expert", "router", "dense_mlp"],
                       size=n_units, p=[0.4, 0.4, 0.1, 0.05, 0.05])
    roles[0], roles[1] = "embedding", "lm_head"
    layer = np.sort(rng.integers(0, n_layers, n_units))
    layer[:2] = -1
    # Weights per unit: log-uniform 64K .. 64M, a multiple of 128 so every group size divides it.
    n = (np.exp(rng.uniform(np.log(2**16), np.log(2**26), n_units)) // 128 * 128).astype(np.int64)
    scale = 0.1 * np.exp(rng.normal(0, 0.3, n_units))   # NRMSE at 4-bit g64, about 20 dB
    rows = []
    for b in BITS:
        for g in GROUP_SIZES:
            noise = np.exp(rng.normal(0, 0.03, n_units))
            nrmse = scale * 2.0 ** (4 - b) * (g / 64) ** 0.15 * noise
            rows.append(pd.DataFrame(dict(
                bits=b, group_size=g, nrmse=nrmse, sqnr_db=-20 * np.log10(nrmse),
                bytes=-(-n * b // 8) + 4 * -(-n // g), idx=np.arange(n_units))))
    rows.append(pd.DataFrame(dict(bits=16, group_size=0, nrmse=0.0, sqnr_db=100.0, bytes=2 * n,
                                  idx=np.arange(n_units))))
    table = pd.concat(rows, ignore_index=True)
    ids = np.array([f"model.layers.{l}.unit{i}" for i, l in enumerate(layer)])
    table["unit"] = ids[table["idx"]]
    table["role"] = roles[table["idx"]]
    table["layer"] = layer[table["idx"]]
    table["n_params"] = n[table["idx"]]
    return table.drop(columns="idx")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    units = synthetic_units(args.units, seed=args.seed)
    print(f"{units['unit'].nunique()} units x {units.groupby('unit').size().max()} options, "
          f"{units.drop_duplicates('unit')['n_params'].sum() / 1e9:.2f} B parameters")
    warnings.simplefilter("ignore")
    for budget in ("min-safe", "3.5bpw", "4.5bpw", "0.3x"):
        results = {}
        for solver in ("exact", "greedy"):
            solve, wall = [], []
            for _ in range(args.repeat):
                start = time.perf_counter()
                r = allocate(units, budget, solver=solver)
                wall.append(time.perf_counter() - start)
                solve.append(r["solve_seconds"])
            results[solver] = r
            print(f"{budget:>8} {solver:>6}: solve {min(solve):.3f} s (allocate() {min(wall):.3f} s), "
                  f"{r['avg_bits']:.4f} bpw, objective {r['objective']:.6f}, LP bound "
                  f"{r['lp_bound']:.6f}, gap {r['gap_abs']:.2e} ({100 * r['gap_rel']:.4f}%), "
                  f"{r['status']}, free units {r['free_units']}")
        ex, gr = results["exact"]["objective"], results["greedy"]["objective"]
        print(f"{'':>8} greedy - exact = {gr - ex:.3e} ({100 * (gr - ex) / ex:.4f}% of exact)")


if __name__ == "__main__":
    main()

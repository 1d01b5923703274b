"""The matched-size pairing of mint/tables.py: each run at a baseline's exact size is compared with that
baseline, window by window, and called a win, tie or loss by its standard error."""

import math

import numpy as np
import pandas as pd

from mint import tables

N_WINDOWS, N_TOKENS = 16, 100


def _windows(path, nll_per_token):
    np.savez(path, window_start=np.arange(N_WINDOWS) * 1000, n_tokens=np.full(N_WINDOWS, N_TOKENS),
             nll_sum=np.asarray(nll_per_token) * N_TOKENS)
    return str(path)


def _runs(tmp_path):
    rng = np.random.default_rng(0)
    base = 5.0 + rng.normal(0, 0.3, N_WINDOWS)
    noise = rng.normal(0, 0.001, N_WINDOWS)
    rows = [
        ("bf16", "16-bit", base),
        ("gptq", "3bit-g128", base + 0.050 + noise),
        ("gptq", "4bit-g128", base + 0.010 + noise),
        ("mint", "gptq-3bit-g128", base + 0.030 + rng.normal(0, 0.001, N_WINDOWS)),  # better than gptq 3-bit
        ("mint", "gptq-4bit-g128", base + 0.010 + rng.normal(0, 0.001, N_WINDOWS)),  # same as gptq 4-bit
        ("mint", "3.5bpw", base + 0.02),                                              # matched to nothing
    ]
    records = []
    for i, (method, budget, nll) in enumerate(rows):
        records.append(dict(model="m", method=method, budget=budget, size_bytes=1000 + i, avg_bits=4.0,
                            ppl_mean=float(np.exp(nll).mean()), kld=0.01 * i,
                            windows=_windows(tmp_path / f"{i}.npz", nll)))
    return pd.DataFrame(records), base, rows


def test_runs_are_paired_with_the_baseline_their_budget_names(tmp_path):
    runs, _, rows = _runs(tmp_path)
    paired = tables.add_paired(runs)
    by = {(r["method"], r["budget"]): r for _, r in paired.iterrows()}
    r = by[("mint", "gptq-3bit-g128")]
    assert r["matched_to"] == "gptq 3bit-g128"
    d = rows[3][2] - rows[1][2]  # per-window log-PPL difference, by hand
    assert math.isclose(r["dlogppl_vs_matched"], d.mean(), rel_tol=1e-9)
    assert math.isclose(r["se_vs_matched"], d.std(ddof=1) / math.sqrt(N_WINDOWS), rel_tol=1e-9)
    assert by[("mint", "gptq-4bit-g128")]["matched_to"] == "gptq 4bit-g128"
    for key in [("mint", "3.5bpw"), ("gptq", "3bit-g128"), ("bf16", "16-bit")]:
        assert pd.isna(by[key]["matched_to"]), key


def test_matched_verdicts_call_wins_ties_and_losses_by_their_standard_error(tmp_path):
    runs, _, _ = _runs(tmp_path)
    verdicts = tables.matched_verdicts(tables.add_paired(runs))
    got = dict(zip(verdicts["baseline"], verdicts["verdict"]))
    assert got == {"gptq 3bit-g128": "win", "gptq 4bit-g128": "tie"}
    row = verdicts[verdicts["baseline"] == "gptq 3bit-g128"].iloc[0]
    assert row["baseline_bytes"] == 1001 and row["size_bytes"] == 1003
    assert math.isclose(row["z"], row["dlogppl"] / row["se"])


def test_matched_verdicts_without_matched_runs_is_an_empty_table(tmp_path):
    runs, _, _ = _runs(tmp_path)
    verdicts = tables.matched_verdicts(tables.add_paired(runs.iloc[[0, 5]].reset_index(drop=True)))
    assert len(verdicts) == 0 and "verdict" in verdicts.columns

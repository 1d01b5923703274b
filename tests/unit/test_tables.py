"""The matched-size pairing of mint/tables.py: each run at a baseline's exact size is compared with that
baseline, window by window, and called a win, tie or loss by its standard error; and the solver table,
read from the allocation files whether or not they were evaluated."""

import json
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
        ("mint-gptq", "gptq-3bit-g128", base + 0.020 + rng.normal(0, 0.001, N_WINDOWS)),  # calibrated rounding
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
    got = dict(zip(zip(verdicts["baseline"], verdicts["method"]), verdicts["verdict"]))
    assert got == {("gptq 3bit-g128", "mint"): "win", ("gptq 4bit-g128", "mint"): "tie",
                   ("gptq 3bit-g128", "mint-gptq"): "win", ("mint @ gptq-3bit-g128", "mint-gptq"): "win"}
    row = verdicts[(verdicts["baseline"] == "gptq 3bit-g128") & (verdicts["method"] == "mint")].iloc[0]
    assert row["baseline_bytes"] == 1001 and row["size_bytes"] == 1003
    assert math.isclose(row["z"], row["dlogppl"] / row["se"])


def test_matched_verdicts_without_matched_runs_is_an_empty_table(tmp_path):
    runs, _, _ = _runs(tmp_path)
    verdicts = tables.matched_verdicts(tables.add_paired(runs.iloc[[0, 5]].reset_index(drop=True)))
    assert len(verdicts) == 0 and "verdict" in verdicts.columns


def test_reference_table_reports_each_trained_models_uniform_sensitivity(tmp_path):
    import json

    runs, base, rows = _runs(tmp_path)
    uniform = dict(model="m", method="uniform", budget="4bit-g64", size_bytes=900, avg_bits=4.5,
                   ppl_mean=float(np.exp(base + 0.01).mean()), kld=0.001,
                   windows=_windows(tmp_path / "u.npz", base + 0.01))
    runs = tables.add_paired(pd.concat([runs, pd.DataFrame([uniform])], ignore_index=True))
    (tmp_path / "m" / "checkpoint").mkdir(parents=True)
    meta = {"architecture": "MixtralForCausalLM", "params": 1000, "tokens_seen": 2000, "tokens_per_param": 2.0,
            "train_wall_s": 600.0, "final_val_loss": 3.5, "recipe": {"num_experts": 8, "top_k": 2}}
    (tmp_path / "m" / "checkpoint" / "train_meta.json").write_text(json.dumps(meta))
    table = tables.reference_table(runs, tmp_path)
    assert len(table) == 1
    row = table.iloc[0]
    ppl16 = np.exp(base).mean()
    assert math.isclose(row["uniform_4bit-g64_ppl_pct"], 100 * (np.exp(base + 0.01).mean() / ppl16 - 1))
    assert math.isclose(row["uniform_4bit-g64_se_pct"], 0.0, abs_tol=1e-9)  # a constant shift: no spread
    assert row["train_minutes"] == 10.0 and row["experts"] == 8
    assert len(tables.reference_table(runs, tmp_path / "elsewhere")) == 0  # not trained here: no row


def test_matched_verdicts_say_where_the_floor_was_lowered(tmp_path):
    runs, _, _ = _runs(tmp_path)
    runs["floor_lowered"] = [np.nan, np.nan, np.nan, True, False, False, np.nan]
    verdicts = tables.matched_verdicts(tables.add_paired(runs))
    lowered = dict(zip(zip(verdicts["baseline"], verdicts["method"]), verdicts["floor_lowered"]))
    assert lowered[("gptq 3bit-g128", "mint")] and not lowered[("gptq 4bit-g128", "mint")]
    assert not lowered[("gptq 3bit-g128", "mint-gptq")]


def _allocation(root, model, method, budget, objective, total_bytes):
    path = root / model / "alloc" / method / f"{budget}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(objective=objective, lp_bound=0.9, gap_rel=0.01, budget_bytes=1000,
                                    total_bytes=total_bytes, solver="exact" if method == "mint" else "greedy")))


def test_solver_table_pairs_the_allocation_files_with_or_without_evaluations(tmp_path):
    """The greedy can be allocated for the solver table only (config allocated_only): a row wherever
    both allocations exist, its perplexity where it was evaluated, NaN where not."""
    _allocation(tmp_path, "m", "mint", "3.5bpw", 1.0, 990)
    _allocation(tmp_path, "m", "mint-greedy", "3.5bpw", 1.25, 1000)
    _allocation(tmp_path, "m", "mint", "4.5bpw", 0.5, 1400)         # no greedy here: no row
    _allocation(tmp_path, "m", "mint-all", "3.5bpw", 0.8, 990)       # another variant: not read
    allocations = tables.collect_allocations(tmp_path)
    assert sorted(allocations["method"]) == ["mint", "mint", "mint-greedy"]

    unevaluated = tables.solver_table(allocations, pd.DataFrame())
    assert len(unevaluated) == 1
    row = unevaluated.iloc[0]
    assert (row["model"], row["budget"], row["budget_bytes"]) == ("m", "3.5bpw", 1000)
    assert (row["exact_objective"], row["greedy_objective"], row["lp_bound"], row["exact_gap_rel"]) == (1.0, 1.25, 0.9, 0.01)
    assert math.isclose(row["greedy_excess_rel"], 0.25)
    assert (row["exact_bytes"], row["greedy_bytes"]) == (990, 1000)
    assert pd.isna(row["ppl_exact"]) and pd.isna(row["ppl_greedy"])

    runs = pd.DataFrame([dict(model="m", method="mint", budget="3.5bpw", ppl_mean=50.0),
                         dict(model="m", method="uniform", budget="4bit-g64", ppl_mean=52.0)])
    evaluated = tables.solver_table(allocations, runs)
    assert list(evaluated.columns) == list(unevaluated.columns)
    assert evaluated.iloc[0]["ppl_exact"] == 50.0 and pd.isna(evaluated.iloc[0]["ppl_greedy"])
    runs.loc[len(runs)] = dict(model="m", method="mint-greedy", budget="3.5bpw", ppl_mean=51.0)
    assert tables.solver_table(allocations, runs).iloc[0]["ppl_greedy"] == 51.0


def test_solver_table_without_any_pair_is_an_empty_table_with_its_columns(tmp_path):
    _allocation(tmp_path, "m", "mint", "3.5bpw", 1.0, 990)
    table = tables.solver_table(tables.collect_allocations(tmp_path), pd.DataFrame())
    assert len(table) == 0 and list(table.columns) == tables.SOLVER_COLUMNS
    assert len(tables.solver_table(tables.collect_allocations(tmp_path / "nothing"), pd.DataFrame())) == 0

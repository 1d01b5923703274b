"""The budget allocator (METHOD.md §4) against brute force, hand-worked cases and the input contract."""

import itertools
import json
import math
import os
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linprog

from mint import allocate as A

# The priors of METHOD.md §4, restated here so the oracle does not share code with the module.
ROLE_PRIOR = {"embedding": 10, "lm_head": 10, "router": 8}
CONFIGS = [(b, g) for b in (2, 3, 4, 5, 6, 8) for g in (32, 64, 128)]


def oracle_prior(role, layer, last):
    if role == "norm":
        return math.inf
    layer_prior = 3 if layer == 0 else (2 if layer == last else 0)
    return max(ROLE_PRIOR.get(role, 1), layer_prior)


def brute_force(units, budget, floor):
    """Least sum of prior * nrmse over all choices within budget, by enumeration."""
    last = units.loc[units["layer"] >= 0, "layer"].max()
    per_unit = []
    for _, g in units.groupby("unit", sort=False):
        prior = oracle_prior(g["role"].iloc[0], g["layer"].iloc[0], last)
        ok = (g["bits"] == 16) | ((g["sqnr_db"] >= floor) & np.isfinite(prior))
        g = g[ok]
        cost = np.where(g["bits"] == 16, 0.0, prior * g["nrmse"] if np.isfinite(prior) else 0.0)
        per_unit.append(list(zip(g["bytes"], cost)))
    best = math.inf
    for combo in itertools.product(*per_unit):
        if sum(b for b, _ in combo) <= budget:
            best = min(best, sum(c for _, c in combo))
    return best


def random_units(rng, n_units, n_options):
    """Random small curves; small byte ranges so ties and dominated options are common."""
    roles = ["attention", "routed_expert", "router", "embedding", "lm_head", "shared_expert", "norm"]
    last = int(rng.integers(1, 4))
    rows = []
    for i in range(n_units):
        role = str(rng.choice(roles))
        layer = -1 if role in ("embedding", "lm_head") else int(rng.integers(0, last + 1))
        n = 64 * int(rng.integers(1, 8))
        rows.append(dict(unit=f"u{i}", role=role, layer=layer, n_params=n, bits=16, group_size=0,
                         bytes=int(rng.integers(30, 46)), nrmse=0.0, sqnr_db=100.0))
        if role == "norm":
            continue
        for c in rng.choice(len(CONFIGS), size=n_options - 1, replace=False):
            b, g = CONFIGS[c]
            nrmse = float(rng.choice([0.1, 0.2, 0.3])) if rng.random() < 0.2 else float(rng.random())
            rows.append(dict(unit=f"u{i}", role=role, layer=layer, n_params=n, bits=b, group_size=g,
                             bytes=int(rng.integers(1, 40)), nrmse=nrmse,
                             sqnr_db=float(rng.uniform(0, 30))))
    return pd.DataFrame(rows)


def model_units(n_units, seed=0):
    """A table with realistic curves: NRMSE about halves per bit, bytes of METHOD.md §1."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_units):
        kinds = ["attention", "routed_expert", "router"]
        role = ["embedding", "lm_head"][i] if i < 2 else str(rng.choice(kinds))
        layer = -1 if i < 2 else i % 6
        n = 128 * int(rng.integers(64, 4096))
        scale = 0.1 * float(np.exp(rng.normal(0, 0.3)))
        rows.append(dict(unit=f"model.layers.{layer}.m{i}", role=role, layer=layer, n_params=n,
                         bits=16, group_size=0, bytes=2 * n, nrmse=0.0, sqnr_db=100.0))
        for b, g in CONFIGS:
            nrmse = scale * 2.0 ** (4 - b) * (g / 64) ** 0.15 * float(np.exp(rng.normal(0, 0.03)))
            rows.append(dict(unit=f"model.layers.{layer}.m{i}", role=role, layer=layer, n_params=n,
                             bits=b, group_size=g, bytes=math.ceil(n * b / 8) + 4 * math.ceil(n / g),
                             nrmse=nrmse, sqnr_db=-20 * math.log10(nrmse)))
    return pd.DataFrame(rows)


def packed(units, floor=9.0):
    options = A.candidate_options(units, floor).reset_index(drop=True)
    return A.pack_options(options)


def test_exact_matches_brute_force_and_greedy_is_feasible():
    rng = np.random.default_rng(1)
    for trial in range(150):
        units = random_units(rng, int(rng.integers(2, 7)), int(rng.integers(2, 6)))
        floor = float(rng.choice([0.0, 9.0, 15.0]))
        low, high = A.min_safe_bytes(units, floor), A.size16_bytes(units)
        budget = int(rng.integers(low, high)) if high > low else low
        best = brute_force(units, budget, floor)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # budget == 16-bit size when nothing can be quantized
            exact = A.allocate(units, budget, "exact", floor)
            greedy = A.allocate(units, budget, "greedy", floor)
        where = f"trial {trial}, budget {budget}, floor {floor}"
        assert exact["objective"] == pytest.approx(best, abs=1e-9), where
        assert exact["status"] == "optimal" and exact["gap_abs"] == 0, where
        assert exact["total_bytes"] <= budget and greedy["total_bytes"] <= budget, where
        assert exact["lp_bound"] <= best + 1e-9, where
        assert greedy["objective"] >= exact["objective"] - 1e-9, where
        # The reported totals are those of the listed choices.
        for r in (exact, greedy):
            assert r["total_bytes"] == sum(u["bytes"] for u in r["units"]), where
            assert r["objective"] == pytest.approx(
                sum(u["prior"] * u["nrmse"] for u in r["units"] if u["prior"] is not None), abs=1e-12)


def random_instance(rng):
    """A random small problem (no veto) with a feasible budget: (budget, brute-force optimum, arrays)."""
    units = random_units(rng, int(rng.integers(2, 7)), int(rng.integers(2, 6)))
    low, high = A.min_safe_bytes(units, 0.0), A.size16_bytes(units)
    budget = int(rng.integers(low, high + 1))
    return budget, brute_force(units, budget, 0.0), packed(units, 0.0)


def test_core_dp_and_milp_fallback_match_brute_force():
    rng = np.random.default_rng(2)
    for trial in range(60):
        budget, best, (cost, size, valid, _) = random_instance(rng)
        # The dynamic program alone, on the whole problem.
        choice, proven, _ = A.core_dp(cost, size, valid, budget, math.inf)
        assert proven and A._picked(size, choice).sum() <= budget
        assert A._picked(cost, choice).sum() == pytest.approx(best, abs=1e-9), trial
        # One state allowed: the dynamic program gives up and HiGHS must finish the proof.
        solved = A.solve_exact(cost, size, valid, budget, max_states=1)
        assert solved["status"] == "optimal"
        assert A._picked(size, solved["choice"]).sum() <= budget
        assert A._picked(cost, solved["choice"]).sum() == pytest.approx(best, abs=1e-9), trial


def test_exact_matches_highs_on_a_model_sized_curve_set():
    units = model_units(60)
    cost, size, valid, _ = packed(units)
    n_params = units.drop_duplicates("unit")["n_params"].sum()
    for bpw in (3.3, 3.9, 4.5, 6.0):
        budget = int(bpw * n_params / 8)
        solved = A.solve_exact(cost, size, valid, budget)
        reference, proven, _ = A.solve_milp(cost, size, valid, budget)
        assert proven and solved["status"] == "optimal"
        assert A._picked(size, solved["choice"]).sum() <= budget
        assert A._picked(cost, solved["choice"]).sum() == pytest.approx(
            A._picked(cost, reference).sum(), rel=1e-9, abs=1e-12), bpw
        greedy = A.solve_greedy(cost, size, valid, budget)
        assert A._picked(size, greedy).sum() <= budget
        assert A._picked(cost, greedy).sum() >= A._picked(cost, solved["choice"]).sum() - 1e-12
        assert solved["lp_bound"] <= A._picked(cost, solved["choice"]).sum() + 1e-12


def test_lp_bound_is_the_lp_relaxation():
    # The convex-hull bound must equal the LP relaxation solved directly by HiGHS.
    rng = np.random.default_rng(3)
    cases = [(model_units(40), 0.4), (model_units(40), 0.25)]
    cases += [(random_units(rng, int(rng.integers(2, 7)), int(rng.integers(2, 6))), rng.random())
              for _ in range(20)]
    for units, where in cases:
        cost, size, valid, _ = packed(units, 0.0)
        low, high = A.min_safe_bytes(units, 0.0), A.size16_bytes(units)
        budget = int(low + where * (high - low))
        u, k = np.nonzero(valid)
        one_each = np.zeros((len(cost), len(u)))
        one_each[u, np.arange(len(u))] = 1
        lp = linprog(cost[u, k], A_ub=size[u, k][None, :], b_ub=[budget], A_eq=one_each,
                     b_eq=np.ones(len(cost)), bounds=(0, 1), method="highs")
        assert lp.status == 0
        assert A.lp_relaxation(cost, size, valid, budget)[0] == pytest.approx(lp.fun, rel=1e-9, abs=1e-9)


def unit_rows(unit, role, layer, options, n=64):
    """Rows for one unit: options = [(bits, group_size, bytes, nrmse)], 16-bit added."""
    rows = [dict(unit=unit, role=role, layer=layer, n_params=n, bits=16, group_size=0, bytes=2 * n,
                 nrmse=0.0, sqnr_db=100.0)]
    for b, g, nbytes, nrmse in options:
        rows.append(dict(unit=unit, role=role, layer=layer, n_params=n, bits=b, group_size=g,
                         bytes=nbytes, nrmse=nrmse, sqnr_db=-20 * math.log10(nrmse)))
    return rows


def test_greedy_is_the_single_pass_reading():
    # Unit a: 3g128 (10 B, 0.5) -> 3g64 (12 B, 0.45) -> 3g32 (14 B, 0.1): 3g64 lies above the lower
    # convex hull, so a's only step is 10 -> 14 B (efficiency 0.1 per byte).
    # Unit b: 3g128 (10 B, 0.5) -> 3g64 (11 B, 0.3), the most efficient step of all (0.2 per byte).
    # The single pass takes b's step, then a's no longer fits; the optimum upgrades a instead.
    units = pd.DataFrame(
        unit_rows("a", "attention", 1, [(3, 128, 10, 0.5), (3, 64, 12, 0.45), (3, 32, 14, 0.1)])
        + unit_rows("b", "attention", 1, [(3, 128, 10, 0.5), (3, 64, 11, 0.3)])
        + [dict(unit="final_norm.weight", role="norm", layer=2, n_params=1, bits=16, group_size=0,
                bytes=2, nrmse=0.0, sqnr_db=100.0)])
    budget = 10 + 10 + 2 + 4
    greedy = {u["unit"]: u["bytes"] for u in A.allocate(units, budget, "greedy", 0.0)["units"]}
    exact = {u["unit"]: u["bytes"] for u in A.allocate(units, budget, "exact", 0.0)["units"]}
    assert greedy == {"a": 10, "b": 11, "final_norm.weight": 2}    # objective 0.5 + 0.3
    assert exact == {"a": 14, "b": 10, "final_norm.weight": 2}     # objective 0.1 + 0.5


def test_greedy_drops_dominated_options():
    # 4g64 costs more bytes than 4g128 for a higher error: it is never a step.
    units = pd.DataFrame(unit_rows("a", "attention", 1, [(4, 128, 10, 0.2), (4, 64, 12, 0.3),
                                                         (5, 128, 13, 0.1)])
                         + unit_rows("b", "attention", 2, [(4, 128, 10, 0.2)]))
    r = A.allocate(units, 10 + 13, "greedy")
    assert {u["unit"]: u["bytes"] for u in r["units"]} == {"a": 13, "b": 10}


def test_priors_rule_and_overrides():
    spec = [("embed", "embedding", -1, 10), ("head", "lm_head", -1, 10), ("r5", "router", 5, 8),
            ("r0", "router", 0, 8), ("a0", "attention", 0, 3), ("s0", "shared_expert", 0, 3),
            ("a3", "attention", 3, 1), ("e3", "routed_expert", 3, 1), ("a7", "attention", 7, 2),
            ("h7", "lm_head", 7, 10), ("n3", "norm", 3, math.inf)]
    units = pd.DataFrame(sum((unit_rows(u, role, layer, [(4, 64, 40, 0.1)]) for u, role, layer, _
                              in spec), []))
    assert A.unit_priors(units).to_dict() == {u: p for u, _, _, p in spec}
    over = A.unit_priors(units, {"router": 4, "first_layer": 5, "attention": 0.5})
    assert over["r5"] == 4 and over["r0"] == 5 and over["a0"] == 5 and over["a3"] == 0.5
    assert over["a7"] == 2 and over["embed"] == 10
    with pytest.raises(ValueError, match="unknown prior"):
        A.unit_priors(units, {"routers": 4})


def test_norms_are_always_16_bit():
    # A norm with (impossible but cheap) quantized rows: still 16-bit, even at the tightest budget.
    units = pd.DataFrame(unit_rows("model.norm", "norm", -1, [(4, 64, 5, 0.01)], n=512)
                         + unit_rows("model.layers.0.mlp", "dense_mlp", 0, [(4, 64, 40, 0.1)], n=64))
    assert A.min_safe_bytes(units) == 1024 + 40
    for solver in A.SOLVERS:
        r = A.allocate(units, "min-safe", solver)
        norm = next(u for u in r["units"] if u["unit"] == "model.norm")
        assert norm["bits"] == 16 and norm["prior"] is None
        assert "model.norm" not in r["quantization"]


def test_sqnr_veto():
    units = pd.DataFrame(unit_rows("m", "attention", 1, [(2, 64, 20, 0.5), (4, 64, 40, 0.1)], n=64)
                         + unit_rows("k", "attention", 2, [(4, 64, 40, 0.1)], n=64))
    # 2-bit is at 6 dB: vetoed at the 9 dB floor, allowed with the floor off.
    assert A.min_safe_bytes(units, 9.0) == 80 and A.min_safe_bytes(units, 0.0) == 60
    with pytest.raises(A.BudgetError):
        A.allocate(units, 70, sqnr_floor_db=9.0)
    r = A.allocate(units, 70, sqnr_floor_db=0.0)
    assert {u["unit"]: u["bits"] for u in r["units"]} == {"m": 2, "k": 4}


def test_budget_below_min_safe_names_the_size():
    units = model_units(8)
    min_safe = A.min_safe_bytes(units)
    with pytest.raises(A.BudgetError) as err:
        A.allocate(units, min_safe - 1)
    assert str(min_safe) in str(err.value) and f"{min_safe / 1024**3:.3f} GiB" in str(err.value)
    r = A.allocate(units, "min-safe")
    assert r["total_bytes"] == min_safe == r["min_safe_bytes"]


def test_budget_above_16_bit_keeps_everything_16_bit():
    units = model_units(4)
    with pytest.warns(UserWarning, match="nothing is quantized"):
        r = A.allocate(units, "1.5x")
    assert r["total_bytes"] == r["size16_bytes"] and r["bit_distribution"] == {"16": 1.0}
    assert all(v is False for k, v in r["quantization"].items() if k.startswith("model."))


@pytest.mark.parametrize("spec, expected", [
    ("16GiB", 16 * 2**30), ("16.5 GiB", 33 * 2**29), ("500MiB", 500 * 2**20), ("2e9B", 2 * 10**9),
    ("1.5GB", 15 * 10**8), (" 16gib ", 16 * 2**30), (123456, 123456), ("123456", 123456),
    ("4.5bpw", 562), ("4.5 bits", 562), ("0.3x", 300), ("30%", 300), ("100%", 1000),
    ("min-safe", 77), ("Min-Safe", 77)])
def test_parse_budget_forms(spec, expected):
    assert A.parse_budget(spec, n_params=1000, size16_bytes=1000, min_safe=77) == expected


@pytest.mark.parametrize("spec", ["", "abc", "16 parsecs", "-1GiB", "0bpw", "1.5", "GiB", "4.5 bpw x",
                                  None, True, 1.5, "0.0001B"])
def test_parse_budget_errors(spec):
    with pytest.raises(ValueError) as err:
        A.parse_budget(spec, n_params=1000, size16_bytes=1000)
    assert isinstance(err.value, A.BudgetError)
    message = str(err.value)
    assert repr(spec) in message
    if spec in ("abc", "16 parsecs", None):
        assert "bpw" in message and "GiB" in message and "min-safe" in message


def test_min_safe_needs_the_table():
    with pytest.raises(A.BudgetError, match="min-safe"):
        A.parse_budget("min-safe", n_params=1000, size16_bytes=1000)


def test_result_and_quantization_dict_shape(tmp_path):
    units = pd.DataFrame(
        unit_rows("model.embed_tokens", "embedding", -1, [(8, 64, 80, 0.01), (4, 64, 40, 0.1)])
        + unit_rows("model.layers.0.self_attn.q_proj", "attention", 0, [(4, 64, 40, 0.1), (3, 64, 30, 0.2)])
        + unit_rows("model.layers.1.self_attn.q_proj", "attention", 1, [(4, 64, 40, 0.1), (3, 64, 30, 0.2)])
        + unit_rows("model.layers.1.mlp.gate", "router", 1, [(4, 64, 40, 0.3)])
        + unit_rows("model.layers.1.input_layernorm", "norm", 1, [])
        + unit_rows("model.layers.1.mlp.gate.e_score_correction_bias", "other", 1, []))
    r = A.allocate(units, 80 + 40 + 40 + 128 + 128 + 128)
    q = r["quantization"]
    assert list(q) == sorted(q)
    assert (q["bits"], q["group_size"]) == (4, 64)
    assert q["model.layers.1.mlp.gate"] is False                      # kept at 16-bit
    assert q["model.embed_tokens"] == {"bits": 8, "group_size": 64}
    assert set(q) == {"bits", "group_size", "model.embed_tokens", "model.layers.0.self_attn.q_proj",
                      "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.gate"}
    assert len(r["units"]) == 6 and r["n_params"] == 6 * 64
    assert r["avg_bits"] == 8 * r["total_bytes"] / r["n_params"]
    assert sum(r["bit_distribution"].values()) == pytest.approx(1.0)
    assert set(r["bit_distribution"]) <= {"2", "3", "4", "5", "6", "8", "16"}
    path = tmp_path / "sub" / "alloc.json"
    A.write_allocation(r, path)
    assert json.loads(path.read_text()) == r
    assert os.listdir(path.parent) == ["alloc.json"]                   # no temp file left


def test_bad_tables_are_refused():
    units = pd.DataFrame(unit_rows("a", "attention", 1, [(4, 64, 40, 0.1)]))
    with pytest.raises(ValueError, match="16-bit"):
        A.allocate(units[units["bits"] != 16], "4bpw")
    with pytest.raises(ValueError, match="duplicate"):
        A.allocate(pd.concat([units, units]), "4bpw")
    with pytest.raises(ValueError, match="roles"):
        A.allocate(units.assign(role="mlp"), "4bpw")
    with pytest.raises(ValueError, match="solver"):
        A.allocate(units, "4bpw", solver="lp")


def test_main_writes_the_allocation_and_refuses_bad_budgets(tmp_path, capsys):
    units = model_units(10)
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    units.iloc[: 19 * 4].to_parquet(first)
    units.iloc[19 * 4:].to_parquet(second)
    out = tmp_path / "alloc.json"
    A.main(["--units", str(first), str(second), "--budget", "4.5bpw", "--out", str(out)])
    summary = capsys.readouterr().out
    assert "objective" in summary and "LP bound" in summary and "gap" in summary
    result = json.loads(out.read_text())
    assert len(result["units"]) == 10 and result["total_bytes"] <= result["budget_bytes"]

    for budget, words in (("lots", "not understood"), ("0.01x", "min-safe size")):
        with pytest.raises(SystemExit) as exit_:
            A.main(["--units", str(first), "--budget", budget, "--out", str(tmp_path / "x.json")])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(SystemExit):
        A.main(["--units", str(first), "--budget", "4bpw", "--prior", "routers=3", "--out", "x"])


def test_time_limit_reports_a_certified_gap():
    # No time at all: the dynamic program gives up at once and HiGHS gets its minimum; whatever
    # comes back must be feasible, and its bound must be a true lower bound.
    rng = np.random.default_rng(4)
    for trial in range(20):
        budget, best, (cost, size, valid, _) = random_instance(rng)
        solved = A.solve_exact(cost, size, valid, budget, time_limit_s=0.0)
        objective = A._picked(cost, solved["choice"]).sum()
        assert A._picked(size, solved["choice"]).sum() <= budget
        assert solved["best_bound"] <= best + 1e-9 <= objective + 2e-9, trial
        assert solved["status"] in ("optimal", "time_limit")
        if solved["status"] == "optimal":
            assert objective == pytest.approx(best, abs=1e-9)


def test_matched_budget_reads_another_results_size(tmp_path):
    result = tmp_path / "gptq.json"
    result.write_text('{"total_bytes": 123456}')
    assert A.matched_budget(f"@{result}") == 123456
    assert A.matched_budget("4.5bpw") == "4.5bpw"
    with pytest.raises(A.BudgetError, match="total_bytes"):
        A.matched_budget(f"@{tmp_path / 'missing.json'}")


def test_mse_loss_and_menu_against_brute_force():
    """The `mse` loss is prior * nrmse**2; a menu removes every quantized option outside it."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        units = random_units(rng, n_units=5, n_options=5)
        squared = units.assign(nrmse=units["nrmse"] ** 2)   # brute force of the squared objective
        outside = ~units["group_size"].isin([0, 64, 128])
        # Within reach of both problems: the cheapest choice inside the menu, plus some room.
        budget = int(units[~outside].groupby("unit")["bytes"].min().sum()) + int(rng.integers(0, 60))
        best = brute_force(squared, budget, 0.0)
        result = A.allocate(units, budget, sqnr_floor_db=0.0, loss="mse")
        assert result["objective"] == pytest.approx(best, rel=1e-9, abs=1e-12)
        menu = A.config_menu(group_sizes=[64, 128])
        expected = brute_force(units[~outside], budget, 0.0)
        result = A.allocate(units, budget, sqnr_floor_db=0.0, menu=menu)
        assert result["objective"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert all(u["group_size"] in (0, 64, 128) for u in result["units"])
        assert result["loss"] == "nrmse" and result["menu"] == [[b, g] for b in A.BITS for g in (64, 128)]


def test_menu_rejects_unsupported_configs():
    with pytest.raises(ValueError, match="group_size"):
        A.config_menu(group_sizes=[48])
    with pytest.raises(ValueError, match="bits"):
        A.config_menu(bits=[7])


def test_raised_floor_applies_only_where_the_budget_allows_it():
    units = model_units(40, seed=3)
    low, high = A.min_safe_bytes(units, 9.0), A.min_safe_bytes(units, 12.0)
    assert low < high
    for budget in (low, (low + high) // 2, high, 2 * high):
        got = A.allocate(units, budget, sqnr_floor_db=9.0, raised_floor_db=12.0)
        floor = 12.0 if budget >= high else 9.0
        want = A.allocate(units, budget, sqnr_floor_db=floor)
        assert got["sqnr_floor_db"] == floor and got["objective"] == pytest.approx(want["objective"])
        assert min(u["sqnr_db"] for u in got["units"]) >= floor


def test_lowered_floor_applies_only_below_the_min_safe_size():
    units = model_units(40, seed=3)
    safe, bare = A.min_safe_bytes(units, 9.0), A.min_safe_bytes(units, 0.0)
    assert bare < safe
    below = (bare + safe) // 2
    with pytest.raises(A.BudgetError, match="min-safe"):
        A.allocate(units, below, sqnr_floor_db=9.0)
    got = A.allocate(units, below, sqnr_floor_db=9.0, lowered_floor_db=0.0)
    want = A.allocate(units, below, sqnr_floor_db=0.0)
    assert got["floor_lowered"] and got["sqnr_floor_db"] == 0.0
    assert got["objective"] == pytest.approx(want["objective"]) and got["total_bytes"] <= below
    assert min(u["sqnr_db"] for u in got["units"]) < 9.0  # something below the floor was needed
    for budget in (safe, 2 * safe):  # at or above min-safe the floor stays
        kept = A.allocate(units, budget, sqnr_floor_db=9.0, lowered_floor_db=0.0)
        plain = A.allocate(units, budget, sqnr_floor_db=9.0)
        assert not kept["floor_lowered"] and kept["sqnr_floor_db"] == 9.0
        assert kept["objective"] == pytest.approx(plain["objective"])
    with pytest.raises(A.BudgetError, match="min-safe"):  # below even the floor-free minimum
        A.allocate(units, bare - 1, sqnr_floor_db=9.0, lowered_floor_db=0.0)

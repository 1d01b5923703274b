"""Budget allocation: one (bits, group_size) per unit, a multiple-choice knapsack (METHOD.md §4).

    minimize   sum_i pi_i * NRMSE_i(c_i)    subject to   sum_i bytes_i(c_i) <= B,   one c_i per unit

The input is the table of rate-distortion curves written by `mint analyze`: one row per (unit, option)
with columns unit, role, layer, n_params, bits, group_size, bytes, nrmse, sqnr_db (16-bit is bits=16,
group_size=0, nrmse=0, sqnr_db=100, and every unit has it).

Two formats share this allocator. MLX options are (bits, group_size). GGUF options carry a
`ggml_type` column (mint/ggml.py) that names the option; `bits` is then the type's nominal width and
every float type (F16, BF16, and F32 where llama.cpp keeps a tensor in F32, bits=32) is an
unquantized option: "16-bit" below means bits >= 16.

Before solving, two rules of §4 shape the options of each unit:
  - soft priors pi (embedding and head 10, router 8, first layer 3, last layer 2, otherwise 1; norms
    are infinite, i.e. always 16-bit), see `unit_priors`;
  - the SQNR safety veto: options below the floor (9 dB) are dropped, 16-bit always stays.

Two solvers:
  - `greedy`, the published single-pass greedy over upgrade efficiencies (reproduction, a heuristic);
  - `exact` (default): LP relaxation over each unit's lower convex hull, a rounded incumbent,
    reduced-cost fixing with the Lagrange multiplier of the LP, then an exact dynamic program over
    the few units left free, with HiGHS (scipy.optimize.milp) as its fallback. It proves optimality
    or, at its time limit, reports the certified gap. 20,000 units x 19 options take a fraction of a
    second (benchmarks/allocate_bench.py).

Both report the LP bound, so the greedy's distance to the optimum is bounded too (the paper reports it
"within 0.1% of the LP bound").
"""

import argparse
import functools
import json
import math
import os
import re
import sys
import tempfile
import time
import warnings
from collections import Counter
from fractions import Fraction

import numpy as np
import pandas as pd
import pyarrow
import scipy.sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from mint.quantizer import BITS, GROUP_SIZES, check_config

ROLES = ("embedding", "lm_head", "norm", "router", "attention", "dense_mlp", "shared_expert",
         "routed_expert", "other")
COLUMNS = ("unit", "role", "layer", "n_params", "bits", "group_size", "bytes", "nrmse", "sqnr_db")
SOLVERS = ("exact", "greedy")
# The distortion a unit's cost counts: NRMSE (published); its square (errors that reach the output
# independently add in power, so the second-order loss of a model is a sum of squared errors); or
# the square weighted by the unit's data-free output weight rho (mint/importance.py).
LOSSES = ("nrmse", "mse", "output")

# Soft priors pi of METHOD.md §4: the weight of a unit's NRMSE in the objective. A unit's prior is
# max(role prior, layer prior), the layer prior applying only to layer 0 and to the last layer.
# Role keys may be any of ROLES; roles not listed take "default". Norms are infinite: always 16-bit.
PRIORS = {
    "embedding": 10.0,
    "lm_head": 10.0,
    "router": 8.0,
    "norm": math.inf,
    "first_layer": 3.0,
    "last_layer": 2.0,
    "default": 1.0,
}
SQNR_FLOOR_DB = 9.0      # safety veto (METHOD.md §4); 0 turns it off
TIME_LIMIT_S = 60.0      # for the exact solver; past it, it reports the best found and its certified gap
# Exact solver: units in the first, incumbent-finding dynamic program, and the most states the
# dynamic programs may keep before HiGHS takes over (a few thousand suffice on realistic models).
CORE_UNITS = 64
MAX_DP_STATES = 200_000
# mlx-lm's own default, used as the nominal default config only when nothing at all is quantized
# (every module is then listed as false, so the default applies to nothing).
MLX_DEFAULT = (4, 64)

GIB = 1024**3
_BYTE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_BPW_UNITS = ("bpw", "bit", "bits")
_BUDGET_RE = re.compile(r"^([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z%]*)$")
BUDGET_FORMS = ("an absolute size ('16GiB', '16.5 GiB', '500MiB', '2e9B', or an integer number of "
                "bytes), average bits per weight ('4.5bpw', '4.5bits'), a fraction of the 16-bit "
                "size ('0.3x', '30%'), or 'min-safe'")


class BudgetError(ValueError):
    """A budget the user gave that cannot be read or cannot be met."""


class UnitsError(ValueError):
    """A units table that cannot be read or breaks the input contract (see the module docstring)."""


# ---------------------------------------------------------------------------------------------
# Formats: how an option is named


def config_columns(table):
    """The columns that name an option: (bits, group_size) for MLX, plus ggml_type for GGUF."""
    return ["bits", "group_size", "ggml_type"] if "ggml_type" in table.columns else ["bits", "group_size"]


def unquantized(bits):
    """Mask of the options that store weights as they are (16-bit; F32 in GGUF files)."""
    return np.asarray(bits) >= 16


# ---------------------------------------------------------------------------------------------
# Priors, veto, sizes


def check_priors(priors=None):
    """PRIORS updated with `priors`; an unknown key or a negative value raises ValueError."""
    merged = dict(PRIORS)
    for key, value in (priors or {}).items():
        if key not in PRIORS and key not in ROLES:
            raise ValueError(f"unknown prior {key!r}; known: {sorted(set(PRIORS) | set(ROLES))}")
        if not float(value) >= 0:
            raise ValueError(f"prior {key!r} must be >= 0, got {value!r}")
        merged[key] = float(value)
    return merged


def unit_codes(units):
    """(code per row, first row of each unit): units numbered in order of first appearance.
    Integer codes keep the string column out of the hot paths."""
    codes = pd.factorize(units["unit"], sort=False)[0]
    return codes, np.unique(codes, return_index=True)[1]


def unit_priors(units, priors=None):
    """Prior pi of every unit (METHOD.md §4), a Series indexed by unit id, in order of appearance.

    pi = max(role prior, layer prior); the layer prior exists only for layer 0 ("first_layer") and
    for the last layer, the largest layer number in the table ("last_layer"). Roles without their
    own prior take "default".
    """
    p = check_priors(priors)
    per_unit = units.iloc[unit_codes(units)[1]]
    role_prior = per_unit["role"].map(lambda r: p.get(r, p["default"])).to_numpy(float)
    layer = per_unit["layer"].to_numpy()
    last = layer.max() if (layer >= 0).any() else None
    layer_prior = np.where(layer == 0, p["first_layer"], 0.0)
    layer_prior = np.where(layer == last, np.maximum(layer_prior, p["last_layer"]), layer_prior)
    return pd.Series(np.maximum(role_prior, layer_prior), index=per_unit["unit"].to_numpy(),
                     name="prior")


def check_units(units):
    """Raise UnitsError unless `units` follows the input contract (see the module docstring)."""
    missing = [c for c in COLUMNS if c not in units.columns]
    if missing:
        raise UnitsError(f"units table lacks columns {missing}")
    if len(units) == 0:
        raise UnitsError("units table is empty")
    # A damaged or hand-edited table must fail here, by name, not deep inside the solver.
    not_numeric = [c for c in COLUMNS[2:] if not pd.api.types.is_numeric_dtype(units[c])]
    if not_numeric or not units["unit"].map(lambda u: isinstance(u, str)).all():
        raise UnitsError(f"units table has non-numeric columns {not_numeric} or non-string unit names")
    if units[list(COLUMNS[2:])].isna().any().any():
        raise UnitsError("units table has missing (NaN) values")
    bad_roles = sorted(map(str, set(units["role"].unique()) - set(ROLES)))
    if bad_roles:
        raise UnitsError(f"unknown roles {bad_roles}; known: {list(ROLES)}")
    if "ggml_type" in units.columns:
        from mint.ggml import TYPE_IDS  # the GGUF menu (no ggml library needed to name types)
        configs = set(units["ggml_type"]) - set(TYPE_IDS)
    else:
        configs = set(zip(units["bits"], units["group_size"])) - {(b, g) for b in BITS for g in GROUP_SIZES} - {(16, 0)}
    if configs:
        raise UnitsError(f"unknown configs {sorted(map(str, configs))[:3]}")
    if not (units["n_params"] > 0).all():
        raise UnitsError("n_params must be > 0")
    codes, first = unit_codes(units)
    config = units[config_columns(units)].assign(unit=codes)
    if config.duplicated().any():
        raise UnitsError(f"units table has duplicate (unit, {', '.join(config_columns(units))}) rows")
    has16 = np.zeros(len(first), bool)
    has16[codes[unquantized(units["bits"])]] = True
    if not has16.all():
        raise UnitsError(f"{(~has16).sum()} units lack a 16-bit row, e.g. "
                         f"{units['unit'].iloc[first[~has16][0]]!r}")
    n_params = units["n_params"].to_numpy()
    if (n_params != n_params[first][codes]).any():
        raise UnitsError("n_params differs between rows of one unit")
    if not (np.isfinite(units["nrmse"]).all() and (units["nrmse"] >= 0).all()):
        raise UnitsError("nrmse must be finite and >= 0")
    if not (units["bytes"] > 0).all():
        raise UnitsError("bytes must be > 0")


def candidate_options(units, sqnr_floor_db=SQNR_FLOOR_DB, priors=None, loss="nrmse", menu=None, rho=None):
    """The rows that survive the rules of §4, with `uid` (see `unit_codes`), `prior` and
    `cost` = prior * nrmse (loss "nrmse"), prior * nrmse**2 ("mse") or prior * rho * nrmse**2
    ("output", `rho` a Series of output weights indexed by unit) added.

    Dropped: options with sqnr_db < sqnr_floor_db (the safety veto; 0 disables it), every
    quantized option of a unit with an infinite prior (norms), and, with a `menu` (a set of
    (bits, group_size), or of ggml type names for GGUF), every quantized option outside it. 16-bit rows always stay, so every unit
    keeps at least one option.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    codes = unit_codes(units)[0]
    prior = unit_priors(units, priors).to_numpy()[codes]
    pinned = ~np.isfinite(prior)
    bits = units["bits"].to_numpy()
    full = unquantized(bits)
    keep = full | ((units["sqnr_db"].to_numpy() >= sqnr_floor_db) & ~pinned)
    if menu is not None:
        if "ggml_type" in units.columns:
            offered = units["ggml_type"].isin(list(menu)).to_numpy()
        else:
            offered = pd.MultiIndex.from_arrays([bits, units["group_size"].to_numpy()]).isin(list(menu))
        keep &= full | offered
    nrmse = units["nrmse"].to_numpy(float)
    distortion = nrmse if loss == "nrmse" else nrmse**2
    if loss == "output":
        if rho is None:
            raise UnitsError("loss 'output' needs the output weights of `mint importance` (--importance)")
        weight = units["unit"].map(rho)
        missing = units.loc[weight.isna() & ~full, "unit"].unique()
        if len(missing):
            raise UnitsError(f"no output weight for {len(missing)} units, e.g. {missing[0]!r}: "
                             "was the importance table made from this checkpoint?")
        distortion = distortion * weight.fillna(0.0).to_numpy(float)
    # inf * 0 is nan: a pinned unit keeps only its 16-bit row, whose cost is 0.
    cost = np.where(pinned, 0.0, prior) * distortion
    return units.loc[keep].assign(uid=codes[keep], prior=prior[keep], cost=cost[keep])


def config_menu(bits=None, group_sizes=None):
    """The quantized configs allowed when only these bit widths / group sizes are offered (None: all)."""
    if bits is None and group_sizes is None:
        return None
    bits = BITS if bits is None else tuple(int(b) for b in bits)
    group_sizes = GROUP_SIZES if group_sizes is None else tuple(int(g) for g in group_sizes)
    for b in bits:
        check_config(b, GROUP_SIZES[0])
    for g in group_sizes:
        check_config(BITS[0], g)
    return {(b, g) for b in bits for g in group_sizes}


def size16_bytes(units):
    """Bytes of the whole model left at 16 bits."""
    return int(units.loc[unquantized(units["bits"]), "bytes"].sum())


def min_safe_bytes(units, sqnr_floor_db=SQNR_FLOOR_DB, priors=None):
    """The smallest size the rules allow: every unit at its cheapest surviving option (§4 "min-safe")."""
    options = candidate_options(units, sqnr_floor_db, priors)
    return int(options.groupby("uid")["bytes"].min().sum())


def parse_budget(spec, n_params, size16_bytes, min_safe=None):
    """A budget spec (METHOD.md §4) in bytes, rounded down so it is never exceeded.

    Args:
        spec: an int (bytes) or a string: "16GiB", "16.5 GiB", "500MiB", "2e9B", "123456" (bytes;
            KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024), "4.5bpw" or "4.5bits"
            (average bits per weight over `n_params`), "0.3x" or "30%" (of `size16_bytes`), or
            "min-safe" (returns `min_safe`, which must then be given).
    Returns:
        int bytes.

    >>> parse_budget("4.5bpw", n_params=1024, size16_bytes=2048)
    576
    """
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        value, suffix = Fraction(int(spec)), ""
    elif isinstance(spec, str):
        text = spec.strip().lower()
        if text == "min-safe":
            if min_safe is None:
                raise BudgetError("budget 'min-safe' needs the units table to be resolved")
            return int(min_safe)
        match = _BUDGET_RE.match(text)
        if not match:
            raise BudgetError(f"budget {spec!r} not understood; use {BUDGET_FORMS}")
        value, suffix = Fraction(match.group(1)), match.group(2)
    else:
        raise BudgetError(f"budget {spec!r} not understood; use {BUDGET_FORMS}")

    if suffix == "" and value.denominator != 1:
        raise BudgetError(f"budget {spec!r}: a plain number is bytes and must be an integer")
    if suffix in ("", *_BYTE_UNITS):
        budget = value * _BYTE_UNITS.get(suffix, 1)
    elif suffix in _BPW_UNITS:
        budget = value * n_params / 8
    elif suffix == "x":
        budget = value * size16_bytes
    elif suffix == "%":
        budget = value / 100 * size16_bytes
    else:
        raise BudgetError(f"budget {spec!r}: unknown unit {suffix!r}; use {BUDGET_FORMS}")
    if math.floor(budget) <= 0:
        raise BudgetError(f"budget {spec!r} must be positive")
    return math.floor(budget)


# ---------------------------------------------------------------------------------------------
# The knapsack in dense form: row i = unit i, column k = its k-th option in order of (bytes, cost).
# `cost` is +inf and `size` 0 on padding, `valid` marks real options; column 0 is the unit's cheapest
# surviving option (least bytes, then least cost), the start of both solvers.


def pack_options(options):
    """(cost [n, K] float, size [n, K] int64, valid [n, K] bool, row [n, K] int) from the rows of
    `candidate_options`; row i is the unit with uid i, `row` indexes `options` positionally (-1 on
    padding).
    """
    unit_idx = options["uid"].to_numpy()
    cost = options["cost"].to_numpy(float)
    nbytes = options["bytes"].to_numpy(np.int64)
    order = np.lexsort((cost, nbytes, unit_idx))
    u = unit_idx[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
    counts = np.diff(np.r_[starts, len(u)])
    pos = np.arange(len(u)) - np.repeat(starts, counts)
    n, k = int(unit_idx.max()) + 1, int(counts.max())
    packed_cost = np.full((n, k), np.inf)
    packed_size = np.zeros((n, k), np.int64)
    row = np.full((n, k), -1)
    packed_cost[u, pos] = cost[order]
    packed_size[u, pos] = nbytes[order]
    row[u, pos] = order
    return packed_cost, packed_size, row >= 0, row


def _picked(a, choice):
    return a[np.arange(len(choice)), choice]


def undominated(cost, valid):
    """Options not dominated within their unit: no option with fewer (or equal) bytes has an equal
    or lower cost. Columns are in order of (bytes, cost), so this is a strict running minimum."""
    before = np.minimum.accumulate(np.where(valid, cost, np.inf), axis=1)
    before = np.concatenate([np.full((len(cost), 1), np.inf), before[:, :-1]], axis=1)
    return valid & (cost < before)


def hull_steps(cost, size, valid):
    """Steps along each unit's lower convex hull from its column-0 option (gift wrapping, all units
    in lockstep; at most K rounds).

    Returns (unit, frm, to, d_size, d_cost, slope) arrays, one entry per step, ordered step-major
    (every unit's first step, then every second step, ...); slope = d_cost / d_size is the cost
    saved per byte and is non-increasing along each unit.
    """
    n = len(cost)
    size_f = size.astype(float)
    cur = np.zeros(n, int)
    active = np.arange(n)
    steps, last_slope = [], np.full(n, np.inf)
    while active.size:
        c0, s0 = cost[active, cur[active]], size_f[active, cur[active]]
        d_cost = c0[:, None] - cost[active]
        d_size = size_f[active] - s0[:, None]
        ok = valid[active] & (d_size > 0) & (d_cost > 0)
        slope = np.where(ok, d_cost / np.where(ok, d_size, 1.0), -np.inf)
        # argmax takes the first of equal slopes, i.e. the nearest collinear point: finer steps.
        nxt = slope.argmax(axis=1)
        best = slope[np.arange(active.size), nxt]
        go = best > -np.inf
        u, frm, to = active[go], cur[active[go]], nxt[go]
        # Exact arithmetic makes slopes non-increasing along a hull; clip rounding noise so a unit's
        # steps always sort in order.
        s = np.minimum(best[go], last_slope[u])
        last_slope[u] = s
        steps.append((u, frm, to, size[u, to] - size[u, frm], cost[u, frm] - cost[u, to], s))
        cur[u] = to
        active = u
    if not steps:
        empty = np.zeros(0, int)
        return empty, empty, empty, empty.astype(np.int64), empty.astype(float), empty.astype(float)
    return tuple(np.concatenate(parts) for parts in zip(*steps))


def lp_relaxation(cost, size, valid, budget):
    """LP relaxation of the knapsack (each unit on its lower convex hull).

    From every unit's column-0 option, hull steps are taken in order of slope until the budget;
    the first step that does not fit is the single fractional one and its slope is the Lagrange
    multiplier lambda*. Returns (lp_bound, lam, choice): `choice` is the LP solution rounded down
    (the fractional step not taken), a feasible solution.
    """
    n = len(cost)
    unit, _, to, d_size, d_cost, slope = hull_steps(cost, size, valid)
    order = np.argsort(-slope, kind="stable")   # stable: a unit's steps keep their order on ties
    room = budget - int(size[:, 0].sum())
    filled = np.cumsum(d_size[order])
    n_full = int(np.searchsorted(filled, room, side="right"))
    full = order[:n_full]
    lp = float(cost[:, 0].sum() - d_cost[full].sum())
    lam = 0.0
    if n_full < len(order):
        crit = order[n_full]
        frac = (room - (filled[n_full - 1] if n_full else 0)) / d_size[crit]
        lp -= frac * d_cost[crit]
        lam = float(slope[crit])
    # Taken steps are a prefix of each unit's hull and columns grow along it: a unit ends at the
    # largest `to` among its taken steps.
    choice = np.zeros(n, int)
    np.maximum.at(choice, unit[full], to[full])
    return lp, lam, choice


def improve(cost, size, valid, choice, budget, max_rounds=100):
    """Spend the bytes left by `choice` on moves that lower the cost (a local improvement).

    Each round every unit proposes its best affordable move; moves are taken by efficiency while
    they fit together, else the single best one. Stops when no move lowers the cost.
    """
    choice = choice.copy()
    r = np.arange(len(choice))
    for _ in range(max_rounds):
        left = budget - int(_picked(size, choice).sum())
        gain = _picked(cost, choice)[:, None] - cost
        extra = size - _picked(size, choice)[:, None]
        ok = valid & (gain > 0) & (extra <= left)
        if not ok.any():
            break
        best = np.where(ok, gain, -np.inf).argmax(axis=1)
        movers = np.flatnonzero(ok[r, best])
        g, e = gain[movers, best[movers]], extra[movers, best[movers]]
        by_eff = np.argsort(-g / np.maximum(e, 1), kind="stable")
        fits = np.cumsum(np.maximum(e[by_eff], 0)) <= left
        take = by_eff[: np.argmin(fits)] if not fits.all() else by_eff
        if take.size == 0:
            take = [int(np.argmax(g))]
        choice[movers[take]] = best[movers[take]]
    return choice


def solve_greedy(cost, size, valid, budget):
    """The published single-pass greedy over upgrade efficiencies (METHOD.md §4), as we read it.

    Start every unit at its cheapest surviving option. A unit's upgrade steps run along the lower
    convex hull of its (bytes, pi * NRMSE) points, so that its efficiencies pi * dNRMSE / dbytes
    decrease along the unit; every step of every unit is sorted once by efficiency, descending, and
    visited in a single pass: a step is taken if its unit is at the step's starting option and its
    extra bytes fit in what is left. Returns the choice per unit.

    Why the hull: options in order of bytes interleave bit widths and group sizes (3-bit g32 is
    4.0 bpw, 4-bit g128 4.25 bpw), so the raw curves are not convex; stepping between consecutive
    undominated options then visits a cheap unit's efficient later step before the step that leads
    to it, skips it, and leaves most of a budget unspent (70-89% above the LP bound in
    benchmarks/allocate_bench.py). Over hull steps the pass is the LP solution rounded down with
    the leftover bytes spent on later steps that still fit, consistent with the paper's "within
    0.1% of the LP bound".
    """
    unit, frm, to, d_size, _, slope = hull_steps(cost, size, valid)
    order = np.argsort(-slope, kind="stable")   # stable: a unit's steps keep their order on ties
    choice = [0] * len(cost)
    left = budget - int(size[:, 0].sum())
    # Sequential by nature (each step depends on the bytes left); plain lists keep it fast.
    for u, f, t, d in zip(unit[order].tolist(), frm[order].tolist(), to[order].tolist(),
                          d_size[order].tolist()):
        if choice[u] == f and d <= left:
            choice[u] = t
            left -= d
    return np.array(choice, int)


def compact(cost, size, valid):
    """The same options moved left in each row (column 0 = least bytes); also returns `col`, the
    original column of each moved one."""
    col = np.argsort(~valid, axis=1, kind="stable")
    k = max(1, int(valid.sum(axis=1).max()))
    col = col[:, :k]
    moved = np.take_along_axis(valid, col, axis=1)
    return (np.where(moved, np.take_along_axis(cost, col, axis=1), np.inf),
            np.where(moved, np.take_along_axis(size, col, axis=1), 0), moved, col)


def core_dp(cost, size, valid, capacity, target, max_states=MAX_DP_STATES, deadline=math.inf):
    """The cheapest choice within `capacity` bytes that costs less than `target`, on a small problem.

    A dynamic program over units whose states are partial choices, kept only when Pareto-optimal in
    (bytes, cost) and when their LP bound (the units still to decide, LP-relaxed) is below the best
    cost known; each state's greedy completion updates that best (the scheme of Pisinger's minimal
    algorithm for the multiple-choice knapsack).

    Returns (choice, proven, lower): choice is None when nothing below `target` was found; proven
    is False when more than `max_states` states had to be kept or time.perf_counter() passed
    `deadline` (choice is then the best found);
    lower, a bound on the optimum, is not tracked (-inf): `proven` says all there is.
    """
    m = len(cost)
    c, s, v, col = compact(cost, size, valid)
    # Widest units first: the narrow ones left to the end make the LP bound of the rest nearly tight.
    order = np.argsort(s[:, 0] - s.max(axis=1), kind="stable")
    c, s, v, col = c[order], s[order], v[order], col[order]
    unit, _, to, d_size, d_cost, slope = hull_steps(c, s, v)
    by_slope = np.argsort(-slope, kind="stable")
    unit, to, d_size, d_cost = unit[by_slope], to[by_slope], d_size[by_slope], d_cost[by_slope]
    # Units after j, each at its least-bytes option (column 0).
    rest_size = np.r_[np.cumsum(s[::-1, 0])[::-1][1:], 0]
    rest_cost = np.r_[np.cumsum(c[::-1, 0])[::-1][1:], 0.0]
    tol = 1e-12 * max(1.0, abs(target))           # keep states that only float rounding would cut

    st_size, st_cost, st_node = np.zeros(1, np.int64), np.zeros(1), np.full(1, -1)
    # A state's options other than column 0, as a linked list: node -> (unit, option, previous node).
    nodes = ([], [], [])
    n_nodes, best, best_at, proven = 0, target, None, True
    for j in range(m):
        k = np.tile(np.flatnonzero(v[j]), len(st_size))
        parent = np.repeat(np.arange(len(st_size)), v[j].sum())
        st = st_size[parent] + s[j, k]
        room = capacity - rest_size[j] - st
        fits = room >= 0
        parent, k, st, room = parent[fits], k[fits], st[fits], room[fits]
        ct = st_cost[parent] + c[j, k]
        # The rest, LP-relaxed: from column 0, hull steps by slope; cumulated bytes and savings.
        later = unit > j
        cum_size = np.r_[0, np.cumsum(d_size[later])]
        cum_gain = np.r_[0.0, np.cumsum(d_cost[later])]
        complete = ct + rest_cost[j] - cum_gain[np.searchsorted(cum_size, room, side="right") - 1]
        if complete.size and complete.min() < best:
            i = int(complete.argmin())
            best, best_at = float(complete[i]), (j, st_node[parent[i]], k[i], room[i])
        hope = ct + rest_cost[j] - np.interp(room, cum_size, cum_gain) < best + tol
        parent, k, st, ct = parent[hope], k[hope], st[hope], ct[hope]
        by_size = np.lexsort((ct, st))
        parent, k, st, ct = parent[by_size], k[by_size], st[by_size], ct[by_size]
        pareto = np.r_[True, ct[1:] < np.minimum.accumulate(ct)[:-1]][: len(ct)]
        parent, k, st_size, st_cost = parent[pareto], k[pareto], st[pareto], ct[pareto]
        st_node = st_node[parent]
        moved = np.flatnonzero(k != 0)
        for part, values in zip(nodes, (np.full(len(moved), j), k[moved], st_node[moved])):
            part.append(values)
        st_node[moved] = n_nodes + np.arange(len(moved))
        n_nodes += len(moved)
        if len(st_size) == 0:
            break
        if len(st_size) > max_states or time.perf_counter() > deadline:
            proven = False
            break
    if best_at is None:
        return None, proven, -np.inf

    j, node, k_j, room = best_at
    node_unit, node_opt, node_prev = (np.concatenate(part) for part in nodes)
    choice = np.zeros(m, int)
    while node >= 0:
        choice[node_unit[node]], node = node_opt[node], node_prev[node]
    choice[j] = k_j
    later = unit > j
    whole = np.searchsorted(np.r_[0, np.cumsum(d_size[later])], room, side="right") - 1
    np.maximum.at(choice, unit[later][:whole], to[later][:whole])
    out = np.empty(m, int)
    out[order] = col[np.arange(m), choice]
    return out, proven, -np.inf


def solve_milp(cost, size, valid, capacity, target=np.inf, time_limit_s=TIME_LIMIT_S):
    """The knapsack as a MILP for HiGHS (scipy.optimize.milp): the fallback of `solve_exact`.

    Returns (choice or None, proven, lower bound on the optimum); `target` is unused (HiGHS through
    scipy takes no cutoff) and there for the same signature as `core_dp`.
    """
    sub_u, sub_k = np.nonzero(valid)
    c, s = cost[sub_u, sub_k], size[sub_u, sub_k]
    # Shift each unit to its cheapest option (smaller numbers), and scale the objective so that
    # HiGHS's absolute gap tolerance (1e-6) is far below any difference that matters.
    c_min = np.where(valid, cost, np.inf).min(axis=1)
    s_min = np.where(valid, size, np.iinfo(np.int64).max).min(axis=1)
    c_rel = c - c_min[sub_u]
    scale = 1e4 / max(float(c_rel.max()), 1e-300)
    one_each = scipy.sparse.csr_array((np.ones(len(sub_u)), (sub_u, np.arange(len(sub_u)))),
                                      shape=(len(cost), len(sub_u)))
    fits = LinearConstraint((s - s_min[sub_u])[None, :].astype(float), -np.inf,
                            capacity - int(s_min.sum()))
    res = milp(c_rel * scale, integrality=np.ones(len(sub_u)), bounds=Bounds(0, 1),
               constraints=[LinearConstraint(one_each, 1, 1), fits],
               options=dict(time_limit=float(time_limit_s), mip_rel_gap=0.0))
    dual = getattr(res, "mip_dual_bound", None)
    lower = float(c_min.sum()) + dual / scale if dual is not None and np.isfinite(dual) else -np.inf
    if res.x is None:
        return None, False, lower
    picked = res.x > 0.5
    choice = np.full(len(cost), -1)
    choice[sub_u[picked]] = sub_k[picked]
    # Trust nothing: one option per unit and the capacity are checked in exact integers.
    ok = (np.bincount(sub_u[picked], minlength=len(cost)) == 1).all()
    ok = ok and int(_picked(size, choice).sum()) <= capacity
    return (choice, res.status == 0, lower) if ok else (None, False, lower)


def fix_by_reduced_cost(rc, valid, gap, choice):
    """Options that can be part of a solution better than `choice` (whose cost exceeds the
    Lagrangian bound by `gap`): for any feasible x, cost(x) >= bound + sum_i rc_i(x_i), so an
    option with rc > gap cannot. Returns (keep, free): free are the units left with a choice."""
    keep = valid & (rc <= gap)
    keep[np.arange(len(choice)), choice] = True   # the incumbent stays, whatever the rounding
    return keep, np.flatnonzero(keep.sum(axis=1) >= 2)


def _resolve(cost, size, keep, choice, budget, units, solve):
    """Re-solve `units` (the others fixed at `choice`) with `solve(cost, size, valid, capacity,
    target)`. Returns (choice, proven, lower bound on the optimum of the whole problem)."""
    if units.size == 0:
        return choice, True, float(_picked(cost, choice).sum())
    capacity = budget - int(_picked(size, choice).sum() - size[units, choice[units]].sum())
    current = float(cost[units, choice[units]].sum())
    sub, proven, lower = solve(cost[units], size[units], keep[units], capacity, current)
    fixed = float(_picked(cost, choice).sum()) - current
    if sub is not None and cost[units, sub].sum() < current:
        choice = choice.copy()
        choice[units] = sub
    return choice, proven, fixed + lower


def solve_exact(cost, size, valid, budget, time_limit_s=TIME_LIMIT_S, max_states=MAX_DP_STATES):
    """Optimal choice per unit, or the best found with a certified gap (METHOD.md §4).

    1. LP relaxation: the bound, lambda*, and a rounded incumbent, improved by `improve`.
    2. Reduced-cost fixing against the Lagrangian bound at lambda* (`fix_by_reduced_cost`).
    3. `core_dp` on the CORE_UNITS free units whose alternatives are cheapest in reduced cost: a
       near-optimal incumbent, hence a much smaller gap; fixing again with it.
    4. `core_dp` on all units left free: the proof. Should it need more than `max_states` states
       or half of `time_limit_s`, HiGHS (`solve_milp`) takes the units left free, within the rest.

    Returns dict(choice, lp_bound, best_bound, status, free_units); status is "optimal" or
    "time_limit"; best_bound is a proven lower bound on the optimum (the objective when optimal).
    """
    start = time.perf_counter()
    lp, lam, choice = lp_relaxation(cost, size, valid, budget)
    choice = improve(cost, size, valid, choice, budget)
    lagr = np.where(valid, cost + lam * size, np.inf)
    low = lagr.min(axis=1)
    bound = float(low.sum() - lam * budget)       # the Lagrangian bound, valid for any lambda >= 0
    rc = lagr - low[:, None]

    def fix(choice):
        incumbent = float(_picked(cost, choice).sum())
        # Slack for rounding in the sums: keeping an option too many is harmless.
        return fix_by_reduced_cost(rc, valid, incumbent - bound + 1e-9 * max(1.0, incumbent), choice)

    dp = functools.partial(core_dp, max_states=max_states, deadline=start + time_limit_s / 2)
    keep, free = fix(choice)
    second = np.sort(np.where(keep[free], rc[free], np.inf), axis=1)[:, 1]
    core = free[np.argsort(second, kind="stable")[:CORE_UNITS]]
    choice = _resolve(cost, size, keep, choice, budget, core, dp)[0]
    keep, free = fix(choice)
    choice, proven, lower = _resolve(cost, size, keep, choice, budget, free, dp)
    free_units = len(free)
    if not proven:
        keep, free = fix(choice)
        left_s = max(0.01, time_limit_s - (time.perf_counter() - start))
        highs = functools.partial(solve_milp, time_limit_s=left_s)
        choice, proven, lower = _resolve(cost, size, keep, choice, budget, free, highs)
    objective = float(_picked(cost, choice).sum())
    return dict(choice=choice, lp_bound=lp, free_units=free_units,
                best_bound=objective if proven else min(objective, max(lp, bound, lower)),
                status="optimal" if proven else "time_limit")


# ---------------------------------------------------------------------------------------------
# Allocation


def quantization_dict(chosen):
    """The mlx-lm `quantization` dict for the chosen rows (METHOD.md §1).

    Default (bits, group_size) = the quantized config chosen by most units; every module is listed
    explicitly ({"bits", "group_size"}, or false for 16-bit), so the default only matters to a
    runtime for modules we did not see. Norms and units that never had a quantized option (1-D
    tensors, addressed by parameter path) are not quantizable modules and are left out.
    """
    modules = chosen[chosen["module"]]
    quantized = modules[modules["bits"] != 16]
    counts = Counter(zip(quantized["bits"], quantized["group_size"]))
    bits, group = max(counts, key=lambda c: (counts[c], c)) if counts else MLX_DEFAULT
    out = {"bits": int(bits), "group_size": int(group)}
    for unit, b, g in zip(modules["unit"], modules["bits"], modules["group_size"]):
        out[unit] = False if b == 16 else {"bits": int(b), "group_size": int(g)}
    return dict(sorted(out.items()))


def allocate(units, budget, solver="exact", sqnr_floor_db=SQNR_FLOOR_DB, priors=None,
             time_limit_s=TIME_LIMIT_S, loss="nrmse", menu=None, rho=None, raised_floor_db=None,
             lowered_floor_db=None):
    """Choose one option per unit within `budget` (METHOD.md §4).

    Args:
        units: the rate-distortion table (see the module docstring).
        budget: a spec for `parse_budget` ("4.5bpw", "16GiB", "0.3x", "min-safe", bytes as an int).
        solver: "exact" (optimal, or certified gap at the time limit) or "greedy" (published).
        sqnr_floor_db: safety veto floor; 0 disables it.
        priors: overrides of PRIORS (keys of PRIORS or role names).
        time_limit_s: time limit of the exact solver (see `solve_exact`).
        loss: "nrmse" (published), "mse" (squared NRMSE) or "output" (rho-weighted), see LOSSES.
        rho: output weights by unit (a Series, from `mint importance`) for loss "output".
        menu: a set of (bits, group_size) the runtime should use (see `config_menu`); None: all.
        raised_floor_db: a second, higher floor, used instead of `sqnr_floor_db` whenever the budget
            can give every unit that much (None: the floor is fixed). Near the floor a unit's error
            is larger than its NRMSE cost suggests; where the budget allows, no unit goes there.
        lowered_floor_db: a lower floor (0: none), used instead of failing when the budget is below
            the min-safe size at `sqnr_floor_db`: how the method meets a baseline's exact size that is
            smaller than its safe minimum. The result says so (`floor_lowered`).
    Returns:
        A JSON-serializable dict: sizes, objective, LP bound, gap, time, per-unit choices and the
        mlx-lm `quantization` dict. gap_abs bounds objective - optimum (0: proven optimal).
    Raises:
        BudgetError: the budget cannot be read or is below the min-safe size.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    check_units(units)
    units = units.reset_index(drop=True)
    options = candidate_options(units, sqnr_floor_db, priors, loss, menu, rho).reset_index(drop=True)
    codes, first = unit_codes(units)
    n_params = int(units["n_params"].to_numpy()[first].sum())
    size16 = size16_bytes(units)
    min_safe = int(options.groupby("uid")["bytes"].min().sum())
    budget_bytes = parse_budget(budget, n_params, size16, min_safe)
    if raised_floor_db is not None and raised_floor_db > sqnr_floor_db:
        raised = candidate_options(units, raised_floor_db, priors, loss, menu, rho).reset_index(drop=True)
        if int(raised.groupby("uid")["bytes"].min().sum()) <= budget_bytes:
            sqnr_floor_db, options = raised_floor_db, raised
    floor_lowered = False
    if budget_bytes < min_safe and lowered_floor_db is not None and lowered_floor_db < sqnr_floor_db:
        sqnr_floor_db, floor_lowered = lowered_floor_db, True
        options = candidate_options(units, sqnr_floor_db, priors, loss, menu, rho).reset_index(drop=True)
        min_safe = int(options.groupby("uid")["bytes"].min().sum())
    if budget_bytes < min_safe:
        raise BudgetError(
            f"budget {budget!r} = {budget_bytes} bytes is below the min-safe size "
            f"{min_safe} bytes ({min_safe / GIB:.3f} GiB, {8 * min_safe / n_params:.3f} bits per "
            f"weight) at a {sqnr_floor_db:g} dB SQNR floor")

    cost, size, valid, row = pack_options(options)
    start = time.perf_counter()
    if budget_bytes >= size16:
        warnings.warn(f"budget {budget!r} is at least the 16-bit size {size16} bytes: "
                      "nothing is quantized", stacklevel=2)
        # More room than the 16-bit model is the 16-bit model (and keeps "1e300GiB" printable).
        budget_bytes = size16
        bits = np.where(valid, options["bits"].to_numpy()[row], 0)
        choice = unquantized(bits).argmax(axis=1)
        solved = dict(choice=choice, lp_bound=0.0, best_bound=0.0, status="optimal", free_units=0)
    elif solver == "greedy":
        solved = dict(choice=solve_greedy(cost, size, valid, budget_bytes), status="heuristic",
                      free_units=0)
    else:
        solved = solve_exact(cost, size, valid, budget_bytes, time_limit_s)
    seconds = time.perf_counter() - start
    if "lp_bound" not in solved:
        # Not part of the published greedy: the LP bound bounds its distance to the optimum.
        solved["lp_bound"] = solved["best_bound"] = lp_relaxation(cost, size, valid, budget_bytes)[0]

    chosen = options.iloc[_picked(row, solved["choice"])].reset_index(drop=True)
    had_quantized = np.zeros(len(first), bool)
    had_quantized[codes[~unquantized(units["bits"])]] = True
    chosen["module"] = (chosen["role"] != "norm").to_numpy() & had_quantized
    per_unit = chosen[["unit", "role", "layer", "n_params", "prior", *config_columns(chosen), "bytes",
                       "nrmse", "sqnr_db"]].astype({"prior": object})
    # JSON has no infinity: an infinite prior (always 16-bit) is written as null.
    per_unit.loc[~np.isfinite(chosen["prior"].to_numpy(float)), "prior"] = None
    if "clip" in chosen:
        per_unit["clip"] = chosen["clip"].fillna(False).astype(bool).to_numpy()
    total = int(chosen["bytes"].sum())
    objective = float(chosen["cost"].sum())
    gap_abs = max(0.0, objective - solved["best_bound"])
    params_at = chosen.groupby("bits")["n_params"].sum().sort_index()
    effective = check_priors(priors)
    return {
        "solver": solver,
        "status": solved["status"],
        "budget": str(budget),
        "budget_bytes": budget_bytes,
        "total_bytes": total,
        "size16_bytes": size16,
        "min_safe_bytes": min_safe,
        "n_params": n_params,
        "avg_bits": 8 * total / n_params,
        "objective": objective,
        "lp_bound": float(solved["lp_bound"]),
        "gap_abs": gap_abs,
        "gap_rel": gap_abs / objective if objective > 0 else 0.0,
        "solve_seconds": seconds,
        "free_units": int(solved["free_units"]),   # left by reduced-cost fixing (exact solver)
        "sqnr_floor_db": float(sqnr_floor_db),   # the floor applied (the raised one if it was)
        "raised_floor_db": None if raised_floor_db is None else float(raised_floor_db),
        "floor_lowered": floor_lowered,   # the budget was below min-safe: lowered_floor_db applied
        "loss": loss,
        "menu": None if menu is None else [list(c) for c in sorted(menu)],
        # The exporter quantizes each unit the way its curve was measured (plain range or clip search).
        "clip": bool(chosen["clip"].any()) if "clip" in chosen else False,
        "priors": {k: (v if math.isfinite(v) else None) for k, v in effective.items()},
        "bit_distribution": {str(int(b)): float(p / n_params) for b, p in params_at.items()},
        "units": per_unit.to_dict("records"),
        # What the exporter writes: mlx-lm's `quantization` dict, or a ggml type per GGUF tensor.
        **({"format": "gguf", "ggml_types": dict(zip(chosen["unit"], chosen["ggml_type"]))}
           if "ggml_type" in chosen.columns else {"quantization": quantization_dict(chosen)}),
    }


def _read_table(path):
    """One parquet table; UnitsError naming the file when it is damaged (pyarrow has many types)."""
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, pyarrow.ArrowException) as e:
        reason = " ".join(str(e).split())  # pyarrow's messages span lines; an error is one line
        raise UnitsError(f"{path}: not a readable Parquet table ({type(e).__name__}: {reason}); "
                         "delete it and rerun `mint experts`") from None


def load_units(paths):
    """Concatenate rate-distortion tables (parquet files, e.g. one per shard)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    return pd.concat([_read_table(p) for p in paths], ignore_index=True)


# Keys of a result that measure the run rather than describe the allocation: printed, but not
# written by `mint allocate`, so that the same inputs give a byte-identical file.
RUN_KEYS = ("solve_seconds", "wall_seconds", "peak_rss_mb")


def write_allocation(result, path, drop=()):
    """Write `result` (without the keys in `drop`) as JSON atomically: a temp file in the same
    folder, then os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".alloc-", suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w") as f:
            kept = {k: v for k, v in result.items() if k not in drop}
            json.dump(kept, f, indent=1, allow_nan=False)   # strict JSON, no NaN/Infinity
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def summary(result):
    """One paragraph describing an allocation."""
    r = result
    return (f"{r['solver']} allocation of {len(r['units'])} units: budget {r['budget']} = "
            f"{r['budget_bytes']} bytes ({r['budget_bytes'] / GIB:.3f} GiB); chosen "
            f"{r['total_bytes']} bytes ({r['total_bytes'] / GIB:.3f} GiB, {r['avg_bits']:.3f} bits "
            f"per weight; 16-bit {r['size16_bytes'] / GIB:.3f} GiB, min-safe "
            f"{r['min_safe_bytes'] / GIB:.3f} GiB); objective {r['objective']:.6g}, LP bound "
            f"{r['lp_bound']:.6g}, gap {r['gap_abs']:.3g} ({100 * r['gap_rel']:.3g}%, {r['status']}); "
            f"solved in {r['solve_seconds']:.3f} s.")


def allocate_files(units, budget, out, solver="exact", sqnr_floor=SQNR_FLOOR_DB, prior=None,
                   time_limit=TIME_LIMIT_S, loss="nrmse", bits=None, group_sizes=None, importance=None,
                   raised_floor=None, floor_below_min_safe=None):
    """Read the tables, allocate, write the JSON to `out`; returns the result."""
    priors = dict(prior or [])
    rho = pd.read_parquet(importance).set_index("unit")["rho"] if importance else None
    result = allocate(load_units(units), budget, solver, sqnr_floor, priors, time_limit, loss,
                      config_menu(bits, group_sizes), rho, raised_floor, floor_below_min_safe)
    write_allocation(result, out, drop=RUN_KEYS)
    return result


def _prior_flag(text):
    """A --prior KEY=VALUE flag, checked while the flags are parsed."""
    key, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError(f"expected KEY=VALUE, got {text!r}")
        check_priors({key: float(value)})
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return key, float(value)


def matched_budget(spec):
    """A budget spec, where `@result.json` stands for the `total_bytes` of another result.

    This is how the method is allocated at a baseline's exact size (GPTQ's, uniform RTN's).
    """
    if not str(spec).startswith("@"):
        return spec
    path = spec[1:]
    try:
        with open(path) as f:
            return int(json.load(f)["total_bytes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BudgetError(f"budget {spec!r}: cannot read total_bytes from {path}: {e}") from None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mint allocate", description=__doc__.split("\n")[0])
    parser.add_argument("--units", nargs="+", required=True, help="rate-distortion parquet file(s)")
    parser.add_argument("--budget", required=True,
                        help=f"the memory budget: {BUDGET_FORMS.replace('%', '%%')}; or @result.json for that "
                             "result's size")
    parser.add_argument("--solver", choices=SOLVERS, default="exact")
    parser.add_argument("--sqnr-floor", type=float, default=SQNR_FLOOR_DB,
                        help="safety veto floor in dB; 0 turns it off")
    parser.add_argument("--prior", type=_prior_flag, action="append", metavar="KEY=VALUE",
                        help=f"override a prior (keys: {', '.join(PRIORS)} or a role); repeatable")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S,
                        help="seconds for the exact solver; past them it reports its certified gap")
    parser.add_argument("--loss", choices=LOSSES, default="nrmse",
                        help="distortion in the objective: nrmse (published), mse (squared NRMSE), or output "
                             "(squared NRMSE times the output weight of --importance)")
    parser.add_argument("--importance", help="output weights per unit (`mint importance`), for --loss output")
    parser.add_argument("--bits", type=int, nargs="+", choices=BITS, help="offer only these bit widths")
    parser.add_argument("--group-sizes", type=int, nargs="+", choices=GROUP_SIZES,
                        help="offer only these group sizes (e.g. 64 128: no g32, faster kernels)")
    parser.add_argument("--raised-floor", type=float, default=None, metavar="DB",
                        help="use this higher SQNR floor instead whenever the budget can give every unit that much")
    parser.add_argument("--floor-below-min-safe", type=float, default=None, metavar="DB",
                        help="below the min-safe size, allocate at this lower SQNR floor (0: none) instead of "
                             "failing; the result records floor_lowered")
    parser.add_argument("--out", required=True, help="allocation JSON to write")
    args = parser.parse_args(argv)
    try:
        args.budget = matched_budget(args.budget)
        result = allocate_files(**vars(args))
    except (BudgetError, UnitsError, OSError) as e:
        print(f"mint allocate: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(summary(result))


if __name__ == "__main__":
    main()

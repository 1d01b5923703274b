"""Issue 8, fuzz: seeded random corruptions of a small checkpoint and of a units table, thrown at
`mint analyze` and `mint allocate` in-process. Each case must end in success with consistent outputs
or in a clean user error (exit 2, one `mint <stage>: error: ...` line); any other exception escaping
`mint.cli.main` fails the test with the case that raised it."""

import json
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mint import analyze, cli, experts
from mint.checkpoint import Checkpoint
from mint.testing import make_tiny_checkpoint

ANALYZE_CASES = 160
ALLOCATE_CASES = 120
INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny sharded Mixtral, its analysis and its units table (reused by every allocate case)."""
    root = tmp_path_factory.mktemp("fuzz")
    ckpt = make_tiny_checkpoint("mixtral", root / "ckpt", num_experts=2, num_layers=1, hidden=64,
                                intermediate=64, vocab=64, max_shard_size="20KB")
    analyze.analyze(ckpt, root / "an", spectral=False)
    experts.build_units(ckpt, root / "an", root / "units", spectral=False)
    return ckpt, root / "units" / "units.parquet"


def run_cli(argv, capsys):
    """(exit code, error line or None); asserts the clean-error contract on failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the budget-above-16-bit warning is an expected outcome
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    err = capsys.readouterr().err
    if code in (0, None):
        return 0, None
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert lines[-1].startswith(f"mint {argv[0]}: error: ") and "Traceback" not in err, err
    assert sum("error" in line.lower() for line in lines) == 1, err
    return 2, lines[-1]


# ---------------------------------------------------------------------------------------------
# Checkpoint corruptions: each takes (rng, folder) and returns a short description.


def _shards(folder):
    return sorted(folder.glob("*.safetensors"))


def _flip(rng, path, lo, hi, n):
    data = bytearray(path.read_bytes())
    hi = min(hi, len(data))
    for pos in rng.integers(lo, max(lo + 1, hi), size=n):
        if pos < len(data):
            data[pos] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))


def truncate_shard(rng, folder):
    path = rng.choice(_shards(folder))
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: int(rng.integers(0, size))])
    return f"truncate {path.name}"


def flip_header(rng, folder):
    path = rng.choice(_shards(folder))
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    _flip(rng, path, 8, 8 + header_len, int(rng.integers(1, 4)))
    return f"flip header bytes of {path.name}"


def flip_length(rng, folder):
    path = rng.choice(_shards(folder))
    _flip(rng, path, 0, 8, 1)
    return f"flip header length of {path.name}"


def flip_data(rng, folder):
    path = rng.choice(_shards(folder))
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    _flip(rng, path, 8 + header_len, path.stat().st_size, int(rng.integers(1, 20)))
    return f"flip data bytes of {path.name}"


def delete_shard(rng, folder):
    path = rng.choice(_shards(folder))
    path.unlink()
    return f"delete {path.name}"


def _edit_index(folder, change):
    index = json.loads((folder / INDEX).read_text())
    change(index)
    (folder / INDEX).write_text(json.dumps(index))


def drop_index_entry(rng, folder):
    names = sorted(json.loads((folder / INDEX).read_text())["weight_map"])
    name = str(rng.choice(names))
    _edit_index(folder, lambda i: i["weight_map"].pop(name))
    return f"drop index entry {name}"


def alter_index_entry(rng, folder):
    names = sorted(json.loads((folder / INDEX).read_text())["weight_map"])
    name = str(rng.choice(names))
    value = [str(rng.choice(_shards(folder)).name), "model-99999.safetensors", 7, None, "../x.safetensors"][
        int(rng.integers(0, 5))]
    _edit_index(folder, lambda i: i["weight_map"].__setitem__(name, value))
    return f"index entry {name} -> {value!r}"


def garbage_json(rng, folder, name):
    path = folder / name
    choice = int(rng.integers(0, 4))
    if choice == 0:
        path.write_bytes(path.read_bytes()[: int(rng.integers(0, path.stat().st_size))])
    elif choice == 1:
        path.write_bytes(rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8).tobytes())
    elif choice == 2:
        path.write_text(json.dumps([1, "two", None]))
    else:
        _flip(rng, path, 0, path.stat().st_size, 3)
    return f"garbage {name} ({choice})"


def garbage_index(rng, folder):
    return garbage_json(rng, folder, INDEX)


def garbage_config(rng, folder):
    return garbage_json(rng, folder, "config.json")


CONFIG_KEYS = ("num_local_experts", "hidden_size", "vocab_size", "num_hidden_layers", "model_type",
               "tie_word_embeddings", "intermediate_size", "num_experts_per_tok", "text_config")
CONFIG_VALUES = (-1, 0, 1, 3, 64, 10**12, 2.5, "abc", "qwen3_moe", "llama4", None, [], {}, True, False)


def change_config(rng, folder):
    config = json.loads((folder / "config.json").read_text())
    key = str(rng.choice(CONFIG_KEYS))
    value = CONFIG_VALUES[int(rng.integers(0, len(CONFIG_VALUES)))]
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return f"config {key} = {value!r}"


def delete_config(rng, folder):
    (folder / "config.json").unlink()
    return "delete config.json"


def stray_pickle(rng, folder):
    (folder / "pytorch_model.bin").write_bytes(b"cos\nsystem\n(S'false'\ntR.")
    return "a pickle beside the shards"


CHECKPOINT_CORRUPTIONS = (truncate_shard, flip_header, flip_length, flip_data, delete_shard, drop_index_entry,
                          alter_index_entry, garbage_index, garbage_config, change_config, delete_config,
                          stray_pickle)


def check_analysis(folder, out):
    """A successful analysis: one rd and one features table per shard, covering every tensor, finite."""
    ckpt = Checkpoint(folder)
    for shard in ckpt.shards:
        stem = Path(shard).stem
        rd = pd.read_parquet(out / f"{stem}.rd.parquet")
        assert set(rd["tensor"]) == {r.name for r in ckpt.refs_in_shard(shard)}, shard
        assert np.isfinite(rd["nrmse"]).all() and (rd["nrmse"] >= 0).all() and (rd["bytes"] > 0).all()
        assert (rd["bits"] == 16).groupby(rd["tensor"]).any().all()  # every tensor can stay 16-bit
        assert (out / f"{stem}.features.parquet").exists()


def test_fuzz_analyze(base, tmp_path, capsys):
    ckpt, _ = base
    outcomes = Counter()
    for case in range(ANALYZE_CASES):
        rng = np.random.default_rng(case)
        folder = Path(shutil.copytree(ckpt, tmp_path / f"c{case}"))
        corrupt = CHECKPOINT_CORRUPTIONS[case % len(CHECKPOINT_CORRUPTIONS)]
        what = f"case {case}: {corrupt(rng, folder)}"
        out = tmp_path / f"an{case}"
        try:
            code, _ = run_cli(["analyze", "--checkpoint", folder, "--out", out, "--no-spectral"], capsys)
            if code == 0:
                check_analysis(folder, out)
        except BaseException as e:
            raise AssertionError(f"{what}: {type(e).__name__}: {e}") from e
        outcomes[(corrupt.__name__, code)] += 1
        shutil.rmtree(folder)
        shutil.rmtree(out, ignore_errors=True)
    # Both outcomes occur, and the damage that cannot be survived never passes silently.
    assert sum(n for (_, code), n in outcomes.items() if code == 0) > 0
    assert sum(n for (_, code), n in outcomes.items() if code == 2) > ANALYZE_CASES / 2
    for kind in ("truncate_shard", "delete_shard", "garbage_config", "delete_config"):
        assert outcomes[(kind, 0)] == 0, outcomes


# ---------------------------------------------------------------------------------------------
# Allocation corruptions: a budget string, or a damaged units table.

BUDGETS = ("4.5bpw", "3bpw", "min-safe", "0.5x", "30%", "1e300GiB", "20bpw", "1", "-1", "-4bpw", "0", "nan",
           "inf", "", " ", "4.5 parsecs", "4.5bpw4", "1e-300B", "@missing.json", "@", "∞GiB", "0x10", "1_000",
           "16GiB", "9" * 400, "1e99999bpw", "min safe", "MIN-SAFE")


def random_budget(rng):
    if rng.random() < 0.5:
        return str(rng.choice(BUDGETS))
    number = float(rng.choice([-1, 1])) * 10 ** float(rng.uniform(-3, 12))
    return f"{number:g}{rng.choice(['', 'B', 'KiB', 'MB', 'GiB', 'bpw', 'bits', 'x', '%', 'q'])}"


TABLE_CHANGES = {
    "drop a column": lambda t, rng: t.drop(columns=[str(rng.choice(list(t.columns)))]),
    "nrmse NaN": lambda t, rng: t.assign(nrmse=t["nrmse"].where(rng.random(len(t)) > 0.1, np.nan)),
    "nrmse negative": lambda t, rng: t.assign(nrmse=-t["nrmse"]),
    "bits 7": lambda t, rng: t.assign(bits=t["bits"].where(t["bits"] != 4, 7)),
    "no 16-bit rows": lambda t, rng: t[t["bits"] != 16],
    "duplicate rows": lambda t, rng: pd.concat([t, t.iloc[:5]]),
    "unknown role": lambda t, rng: t.assign(role=t["role"].where(rng.random(len(t)) > 0.1, "mlp")),
    "n_params 0": lambda t, rng: t.assign(n_params=0),
    "bytes negative": lambda t, rng: t.assign(bytes=-t["bytes"]),
    "unit missing": lambda t, rng: t.assign(unit=t["unit"].where(rng.random(len(t)) > 0.1, None)),
    "empty": lambda t, rng: t.iloc[:0],
    "strings": lambda t, rng: t.assign(bytes=t["bytes"].astype(str)),
    "shuffled": lambda t, rng: t.sample(frac=1.0, random_state=int(rng.integers(0, 1000))),
    "sqnr NaN": lambda t, rng: t.assign(sqnr_db=np.nan),
}


def corrupt_table(rng, units, path):
    choice = int(rng.integers(0, len(TABLE_CHANGES) + 3))
    if choice < len(TABLE_CHANGES):
        name = list(TABLE_CHANGES)[choice]
        TABLE_CHANGES[name](pd.read_parquet(units), rng).to_parquet(path)
        return name
    data = bytearray(units.read_bytes())
    if choice == len(TABLE_CHANGES):
        path.write_bytes(bytes(data[: int(rng.integers(0, len(data)))]))
        return "truncated parquet"
    if choice == len(TABLE_CHANGES) + 1:
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
            data[pos] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(data))
        return "flipped parquet bytes"
    path.write_text("not a table")
    return "text file"


def check_allocation(path, units):
    result = json.loads(path.read_text())
    table = pd.read_parquet(units)
    assert result["total_bytes"] <= result["budget_bytes"]
    assert sorted(u["unit"] for u in result["units"]) == sorted(table["unit"].unique())
    assert result["total_bytes"] == sum(u["bytes"] for u in result["units"])
    assert "solve_seconds" not in result


def test_fuzz_allocate(base, tmp_path, capsys):
    _, units = base
    outcomes = Counter()
    for case in range(ALLOCATE_CASES):
        rng = np.random.default_rng(10_000 + case)
        table, budget = units, "4bpw"
        if case % 2:
            table = tmp_path / f"units{case}.parquet"
            what = corrupt_table(rng, units, table)
        else:
            budget = random_budget(rng)
            what = f"budget {budget!r}"
        out = tmp_path / f"alloc{case}.json"
        try:
            code, _ = run_cli(["allocate", "--units", table, "--budget", budget, "--out", out], capsys)
            if code == 0:
                check_allocation(out, table)
        except BaseException as e:
            raise AssertionError(f"case {case}: {what}: {type(e).__name__}: {e}") from e
        outcomes[code] += 1
    assert outcomes[0] > 10 and outcomes[2] > 10, outcomes

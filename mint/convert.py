"""From a Hugging Face checkpoint to a quantized model of a given size in one command.

    mint convert Qwen/Qwen3-30B-A3B --budget 16GiB --out qwen3-16g-mlx
    mint convert path/to/hf-model --budget 16GiB --out model.gguf --format gguf   # for llama.cpp
    mint plan path/to/hf-model                 # what each budget buys, before writing any weights

`convert` runs the stages of the pipeline in a row (analyze, experts, allocate, export). The analysis
(every tensor's rate-distortion curve) is the slow part and does not depend on the budget, so it is
cached in a work folder keyed by the checkpoint's content and the analysis settings: a second call
with another budget only allocates (well under a second) and writes.

The default allocation is the preset the variant study supports (README, "Beyond the paper"): the
exact knapsack, clip search for 2-bit configs and a 12 dB floor wherever the budget can give every
unit that (`mint-plus-safe` in config/config.yaml). `--faithful` gives the published method instead
(single-pass greedy, plain round-to-nearest, 9 dB floor).
"""

import argparse
import hashlib
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

from mint import allocate as alloc
from mint.analyze import analyze
from mint.checkpoint import Checkpoint, CheckpointError
from mint.experts import build_units

GIB = 1024**3

# Allocation presets: the solver settings, and the clip setting the analysis must be measured with.
PRESETS = {
    "mint-plus-safe": dict(solver="exact", clip=2, sqnr_floor_db=9.0, raised_floor_db=12.0),
    "mint-greedy": dict(solver="greedy", clip=False, sqnr_floor_db=9.0, raised_floor_db=None),
}
DEFAULT_PRESET, FAITHFUL_PRESET = "mint-plus-safe", "mint-greedy"
# Analysis settings that change the units table (and so belong in the cache key). Spectral features
# are not used by the allocator and are skipped here.
ANALYSIS = dict(cluster_threshold=32, k=8, seed=0, aggregation="max")
# Bytes sampled from each shard for the content key, in this many evenly spaced blocks.
_KEY_BLOCKS, _KEY_BLOCK_BYTES = 16, 1 << 16
# Files a download needs: weights, configs, tokenizer.
HUB_PATTERNS = ["*.safetensors", "*.json", "*.model", "*.txt", "*.jinja", "*.py"]


class ConvertError(ValueError):
    """The source cannot be read or the request cannot be met; the message says what to do."""


def resolve_source(source):
    """A local checkpoint folder for `source`: the folder itself, or a hub id downloaded to the
    Hugging Face cache (weights, configs and tokenizer only)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise ConvertError(f"{source}: not a checkpoint folder, and not a hub id of the form owner/name")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, allow_patterns=HUB_PATTERNS))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        reason = str(e).splitlines()[0]
        raise ConvertError(f"{source}: not a local folder, and the hub download failed ({reason}); "
                           "download it yourself and pass the folder") from None


def content_key(path, settings):
    """A key for the checkpoint's content and the analysis settings: config.json, each shard's
    header and size, and evenly spaced blocks of each shard's bytes (hashing every byte of a 60 GB
    model would take minutes; two checkpoints that agree on all of this are the same model)."""
    path = Path(path)
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update((path / "config.json").read_bytes())
    for shard in Checkpoint(path).shards:
        file = path / shard
        size = file.stat().st_size
        h.update(f"{shard}:{size}".encode())
        with open(file, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            h.update(f.read(header_len))
            for i in range(_KEY_BLOCKS):
                f.seek(i * max(0, size - _KEY_BLOCK_BYTES) // max(1, _KEY_BLOCKS - 1))
                h.update(f.read(_KEY_BLOCK_BYTES))
    return h.hexdigest()[:16]


def cache_root():
    """Where analyses are kept: $MINT_CACHE, else ~/.cache/mint."""
    return Path(os.environ.get("MINT_CACHE") or Path.home() / ".cache" / "mint")


def work_folder(path, clip, work=None):
    """The work folder of a checkpoint analysed with `clip`: under `work` or the cache root."""
    settings = dict(ANALYSIS, clip=clip)
    return Path(work or cache_root()) / f"{Path(path).name}-{content_key(path, settings)}", settings


def prepare_units(path, clip, work=None, progress=True):
    """(units table, work folder, reused): the checkpoint's units, measured once per content key.

    Each stage writes its files atomically and is skipped when they exist, so an interrupted
    analysis resumes at the shard where it stopped.
    """
    folder, settings = work_folder(path, clip, work)
    units_file = folder / "units" / "units.parquet"
    reused = units_file.exists()
    if not reused:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "source.json").write_text(json.dumps({"checkpoint": str(Path(path).resolve()),
                                                         **settings}, indent=1))
        analyze(path, folder / "analysis", cluster_threshold=settings["cluster_threshold"], spectral=False,
                clip=clip, progress=progress)
        build_units(path, folder / "analysis", folder / "units", k=settings["k"], seed=settings["seed"],
                    aggregation=settings["aggregation"], spectral=False)
    return alloc.load_units(units_file), folder, reused


def allocate_preset(units, budget, preset):
    p = PRESETS[preset]
    return alloc.allocate(units, budget, p["solver"], p["sqnr_floor_db"], raised_floor_db=p["raised_floor_db"])


def bits_mix(allocation):
    """{role: {bits: share of the role's parameters}}, roles with quantizable units only."""
    per_role = defaultdict(lambda: defaultdict(int))
    for u in allocation["units"]:
        if u["role"] != "norm":
            per_role[u["role"]][int(u["bits"])] += int(u["n_params"])
    return {role: {b: n / sum(mix.values()) for b, n in sorted(mix.items())} for role, mix in per_role.items()}


def format_mix(mix):
    return " ".join(f"{b}b {100 * share:.0f}%" for b, share in mix.items())


def run_line(fmt, out):
    if fmt == "gguf":
        return f"llama-server -m {out}    # or: llama-cli -m {out} -p 'Hello'"
    return f"mlx_lm.generate --model {out} --prompt 'Hello'"


def convert_gguf(path, budget, out, preset, work=None, overwrite=False, progress=True, pretokenizer=None):
    """The GGUF branch of `convert` (mint/gguf.py): measured in ggml's types on llama.cpp's own
    16-bit conversion, cached beside the MLX analyses under another key. Returns a summary dict."""
    from mint import gguf

    started = time.perf_counter()
    # ggml's quantizers have no clip search: of the preset, the solver and floors apply.
    gguf.check_architecture(path)
    folder, _ = work_folder(path, "gguf", work)
    allocation, reused = gguf.convert_gguf(path, budget, out, PRESETS[preset], folder, overwrite, progress,
                                           pretokenizer=pretokenizer)
    return {
        "source": str(path), "out": str(out), "format": "gguf", "preset": preset, "work": str(folder),
        "analysis_reused": reused, "budget": str(budget), "budget_bytes": allocation["budget_bytes"],
        "written_bytes": allocation["total_bytes"], "bits_per_weight": allocation["avg_bits"],
        "min_safe_bytes": allocation["min_safe_bytes"], "size16_bytes": allocation["size16_bytes"],
        "sqnr_floor_db": allocation["sqnr_floor_db"], "mix": bits_mix(allocation),
        "types": gguf.describe_types(allocation), "seconds": time.perf_counter() - started,
    }


def convert(source, budget, out, fmt="mlx", faithful=False, work=None, overwrite=False, progress=True,
            pretokenizer=None):
    """Analyse (or reuse the analysis of) `source`, allocate `budget`, write `out`. Returns a summary dict."""
    started = time.perf_counter()
    path = resolve_source(source)
    preset = FAITHFUL_PRESET if faithful else DEFAULT_PRESET
    if fmt == "gguf":
        return convert_gguf(path, budget, out, preset, work, overwrite, progress, pretokenizer)
    if fmt == "mlx":
        from mint.export import check_mlx_support

        check_mlx_support(Checkpoint(path))  # a family mlx-lm cannot load is refused before the analysis
    units, folder, reused = prepare_units(path, PRESETS[preset]["clip"], work, progress)
    allocation = allocate_preset(units, budget, preset)
    alloc.write_allocation(allocation, folder / "allocations" / f"{preset}-{allocation['budget_bytes']}.json",
                           drop=alloc.RUN_KEYS)
    ckpt = Checkpoint(path)
    if fmt == "mlx":
        from mint.export import export

        manifest = export(ckpt, allocation, out, overwrite=overwrite, progress=progress)
        written = manifest["written_bytes"]
    else:
        raise ConvertError(f"format must be mlx or gguf, got {fmt!r}")
    return {
        "source": str(path), "out": str(out), "format": fmt, "preset": preset, "work": str(folder),
        "analysis_reused": reused, "budget": str(budget), "budget_bytes": allocation["budget_bytes"],
        "written_bytes": written, "bits_per_weight": 8 * written / allocation["n_params"],
        "min_safe_bytes": allocation["min_safe_bytes"], "size16_bytes": allocation["size16_bytes"],
        "sqnr_floor_db": allocation["sqnr_floor_db"], "mix": bits_mix(allocation),
        "seconds": time.perf_counter() - started,
    }


def describe(summary):
    s = summary
    lines = [
        f"{s['out']}: {s['written_bytes']:,} bytes ({s['written_bytes'] / GIB:.3f} GiB), "
        f"{s['bits_per_weight']:.3f} bits per weight ({s['format']}, {s['preset']}, "
        f"{s['sqnr_floor_db']:g} dB floor), budget {s['budget']} = {s['budget_bytes']:,} bytes",
        f"16-bit size {s['size16_bytes'] / GIB:.3f} GiB; smallest safe size (min-safe) "
        f"{s['min_safe_bytes'] / GIB:.3f} GiB",
        "bits by role: " + "; ".join(f"{role} {format_mix(mix)}" for role, mix in s["mix"].items()),
        *([f"ggml types by parameters: {s['types']}"] if "types" in s else []),
        f"analysis {'reused from' if s['analysis_reused'] else 'written to'} {s['work']}; "
        f"{s['seconds']:.1f} s in all",
        f"run it: {run_line(s['format'], s['out'])}",
    ]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="mint convert", description=__doc__.splitlines()[0])
    p.add_argument("source", help="Hugging Face checkpoint folder, or a hub id (owner/name)")
    p.add_argument("--budget", required=True, help=f"target size: {alloc.BUDGET_FORMS.replace('%', '%%')}")
    p.add_argument("--out", required=True, help="output folder (mlx) or file (gguf)")
    p.add_argument("--format", dest="fmt", choices=("mlx", "gguf"), default="mlx")
    p.add_argument("--faithful", action="store_true",
                   help="the published method (greedy, plain rounding, 9 dB floor) instead of the default preset")
    p.add_argument("--work", help="work folder for the cached analysis (default $MINT_CACHE or ~/.cache/mint)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--pretokenizer", help="gguf: llama.cpp's name of a BPE pre-tokenizer its converter cannot "
                                          "detect by hash (e.g. gpt-2); it decides how llama.cpp splits text")
    args = p.parse_args(argv)
    try:
        summary = convert(**vars(args))
    except (ConvertError, CheckpointError, alloc.BudgetError, ValueError, OSError, RuntimeError) as e:
        print(f"mint convert: error: {e}", file=sys.stderr)
        return 2
    print(describe(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Baselines at matched size: uniform round-to-nearest (an ordinary allocation) and GPTQ.

Uniform RTN puts every quantizable unit (embedding, head, routers, attention, experts, ...) at one
(bits, group size); norms, biases and other 1-D tensors stay 16-bit, exactly as the method keeps them,
and a unit whose input dimension the group does not divide stays 16-bit (said in the result's
`notes`). The result has the same format as `mint allocate`'s, so the same exporter writes it and the
sizes are comparable byte for byte.

GPTQ runs llm-compressor's `GPTQModifier` (mint/gptq.py) in its own environment, `.venv-gptq`
(`make gptq-env`), because llm-compressor pins an older transformers than ours. This side cuts the
calibration windows from the training corpus (never the test split), runs the worker, and writes a
result JSON in the spirit of an allocation (solver "gptq", total_bytes, avg_bits, ...) plus the
dequantized folder the evaluator reads. Its size is GPTQ's true packed size: compressed-tensors'
pack-quantized tensors for every quantized Linear (see mint/gptq.py) and 2 bytes per weight for
everything it keeps in 16 bits (embeddings, LM head, routers, norms, biases).

mlx-lm's own mixed recipes (`mixed_2_6`, `mixed_3_4`, `mixed_3_6`, `mixed_4_6`: low bits everywhere,
6 or 4 bits for v_proj and down_proj in some layers and for the head, group 64) are what a Mac user picks
instead. `mint baseline mlx-recipe` runs mlx-lm's own `convert` with the recipe and reads back, from the
files it wrote, which (bits, group) each module got: that choice is an allocation like any other, so
the same exporter writes it (the test checks it equals mlx-lm's file), the same evaluator measures it,
and the method can be allocated at exactly its bytes.

mlx-lm's calibrated `dynamic_quant` (mlx_lm/quant/dynamic_quant.py) is read back the same way. It
estimates each layer's sensitivity from the gradient of a KL loss on calibration text and gives the most
sensitive layers `high_bits`, the rest `low_bits`, at a threshold searched to a target bits per weight.
`mint baseline mlx-dynamic` calls its functions on GPTQ's calibration windows (the reference models'
training text, never an evaluation split) instead of the text its `main()` downloads, and quantizes and
saves with mlx-lm's own `quantize_model` and `save`: its weights are mx.quantize's affine min-max codes,
so our exporter writes the same bytes (rounding "mlx") and the evaluator measures mlx-lm's model.

    mint baseline uniform --units units.parquet --bits 4 --group-size 64 --out uniform.json
    mint baseline gptq --checkpoint ckpt/ --bits 4 --group-size 128 --out gptq.json --dequant-out dq/
    mint baseline mlx-recipe --checkpoint ckpt/ --units units.parquet --recipe mixed_3_6 --out mixed_3_6.json
    mint baseline mlx-dynamic --checkpoint ckpt/ --units units.parquet --target-bpw 4.8 --out dynamic_4.8.json
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mint import allocate as alloc
from mint import quantizer
from mint.gptq import peak_rss_mb  # the worker's own measure; gptq.py imports only torch here

REPO = Path(__file__).resolve().parent.parent
# The environment llm-compressor lives in (Makefile target gptq-env); MINT_GPTQ_PYTHON overrides it.
GPTQ_PYTHON = REPO / ".venv-gptq" / "bin" / "python"
# Calibration defaults of the GPTQ paper and llm-compressor's examples: 128 windows of 2048 tokens.
CALIBRATION_SOURCE = "gutenberg-train"   # the reference models' training text; never an eval split
CALIBRATION_WINDOWS = 128
CALIBRATION_SEQ_LEN = 2048               # capped at the model's max_position_embeddings
EVAL_SOURCES = ("wikitext2-test",)       # refused as calibration text
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# Roles GPTQ quantizes (every nn.Linear but the head and the routers); all others stay 16-bit.
GPTQ_ROLES = ("attention", "dense_mlp", "shared_expert", "routed_expert")


def uniform_allocation(units, bits, group_size):
    """Every quantizable unit at (bits, group_size); an allocation dict like `allocate.allocate`'s."""
    quantizer.check_config(bits, group_size)
    alloc.check_units(units)
    target = set(units.loc[(units["bits"] == bits) & (units["group_size"] == group_size), "unit"])
    stuck = sorted(set(units.loc[units["bits"] != 16, "unit"]) - target)
    result = forced_allocation(units, {u: (bits, group_size) for u in target}, "uniform",
                               f"uniform-{bits}bit-g{group_size}")
    result["notes"] = [f"{u}: group {group_size} does not divide its input dimension; kept 16-bit" for u in stuck]
    return result


def forced_allocation(units, configs, solver, budget):
    """The allocation giving each unit its config in `configs` ({unit: (bits, group_size)}; a unit not
    named stays 16-bit), in the common format. Each unit keeps its chosen config and its 16-bit row;
    at exactly the chosen configs' bytes, 16-bit (which costs more) fits nowhere, so the exact solver
    has no choice to make. A baseline applies no SQNR veto."""
    alloc.check_units(units)
    want = units["unit"].map(lambda u: configs.get(u, (16, 0)))
    chosen = (units["bits"] == want.str[0]) & (units["group_size"] == want.str[1])
    missing = sorted(set(configs) - set(units.loc[chosen, "unit"]))
    if missing:
        raise ValueError(f"{len(missing)} units have no measured config for the choice made, e.g. "
                         f"{missing[0]}: {configs[missing[0]]}")
    menu = units[chosen | (units["bits"] == 16)]
    result = alloc.allocate(menu, int(units.loc[chosen, "bytes"].sum()), solver="exact", sqnr_floor_db=0.0)
    result.update(solver=solver, budget=budget)
    return result


# ---------------------------------------------------------------------------------------------
# mlx-lm's mixed recipes

MLX_RECIPES = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")
MLX_RECIPE_GROUP = 64   # mlx_lm.convert's default group size, which the recipes keep


def mlx_readable_copy(ckpt, folder):
    """`folder` made a Hugging Face folder mlx-lm reads as transformers does: the checkpoint's weight files
    linked, its side files copied, and the config.json the MLX export writes (transformers 5 nests
    settings that mlx-lm reads flat), without a quantization entry."""
    from mint import export

    folder = Path(folder)
    folder.mkdir(parents=True)
    for f in ckpt.path.iterdir():
        if f.suffix == ".safetensors" or f.name == "model.safetensors.index.json":
            (folder / f.name).symlink_to(f.resolve())
        elif f.name in export.SIDE_FILES:
            shutil.copy(f, folder / f.name)
    cfg = export.mlx_config(ckpt, None)
    for key in ("quantization", "quantization_config"):
        cfg.pop(key, None)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return folder


def written_configs(mlx_folder, group_size=MLX_RECIPE_GROUP):
    """{module path: (bits, group_size)} of every quantized module in an MLX folder written with one
    group size, read from the tensors themselves (packed codes and scales), not from the config's defaults."""
    from safetensors import safe_open

    shapes = {}
    for shard in sorted(Path(mlx_folder).glob("*.safetensors")):
        with safe_open(shard, "np") as f:
            shapes.update({name: f.get_slice(name).get_shape() for name in f.keys()})
    configs = {}
    for name, scales in shapes.items():
        if name.endswith(".scales"):
            module = name.removesuffix(".scales")
            # With the group size known, the scales give the input width and the packed uint32
            # codes the bits: in * bits = 32 * packed columns.
            in_features = scales[-1] * group_size
            bits, rest = divmod(shapes[f"{module}.weight"][-1] * 32, in_features)
            if rest or bits not in quantizer.BITS:
                raise ValueError(f"{mlx_folder}: {module} is not a {group_size}-group affine code")
            configs[module] = (bits, group_size)
    return configs


def mlx_recipe_allocation(checkpoint, units, recipe, work=None):
    """The allocation mlx-lm's `recipe` makes for `checkpoint`, run through mlx-lm's own convert."""
    from mlx_lm.convert import convert

    from mint.checkpoint import Checkpoint

    if recipe not in MLX_RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(MLX_RECIPES)}, got {recipe!r}")
    ckpt = Checkpoint(checkpoint)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        source = mlx_readable_copy(ckpt, Path(tmp) / "source")
        convert(str(source), str(Path(tmp) / "mlx"), quantize=True, q_group_size=MLX_RECIPE_GROUP,
                quant_predicate=recipe)
        configs = written_configs(Path(tmp) / "mlx")
        written = tensor_bytes(Path(tmp) / "mlx")
    result = forced_allocation(units, configs, solver="mlx-recipe", budget=f"mlx-{recipe}")
    if result["total_bytes"] != written:
        raise ValueError(f"mlx-lm's {recipe} wrote {written} bytes of tensors; the same choice is "
                         f"{result['total_bytes']} bytes by our count")
    # Exported with MLX's own rounding, so the folder is the one mlx-lm's convert writes.
    result.update(recipe=recipe, rounding="mlx")
    return result


# ---------------------------------------------------------------------------------------------
# mlx-lm's calibrated dynamic_quant

MLX_DYNAMIC_BITS = (4, 5)   # dynamic_quant's default low and high bits
MLX_DYNAMIC_GROUP = 64      # its default group size (low and high alike)
# dynamic_quant's estimate_sensitivities default: windows per forward/backward pass.
MLX_DYNAMIC_BATCH = 4


def mlx_dynamic_name(target_bpw, low_bits=MLX_DYNAMIC_BITS[0], high_bits=MLX_DYNAMIC_BITS[1]):
    """The baseline's config name: "dynamic_4.8" at dynamic_quant's default bits, else "dynamic_3_6_4.5"."""
    bpw = f"{target_bpw:g}"
    if (low_bits, high_bits) == MLX_DYNAMIC_BITS:
        return f"dynamic_{bpw}"
    return f"dynamic_{low_bits}_{high_bits}_{bpw}"


def float32_copy(model):
    """A float32 copy of an mlx model, for dynamic_quant's gradient pass: mlx's CPU backend runs the
    experts' gather_mm in float32 only ("[GatherMM::eval] Currently only supports float32"), where a
    Mac's GPU would run the checkpoint's 16-bit dtype. The threshold search, which counts bytes, and
    the quantization keep the model as loaded, so the files are those a Mac would write."""
    import copy

    import mlx.core as mx

    f32 = copy.deepcopy(model)
    f32.set_dtype(mx.float32)
    return f32


def mlx_dynamic_allocation(checkpoint, units, target_bpw, low_bits=MLX_DYNAMIC_BITS[0],
                           high_bits=MLX_DYNAMIC_BITS[1], group_size=MLX_DYNAMIC_GROUP,
                           calibration=CALIBRATION_SOURCE, windows=CALIBRATION_WINDOWS,
                           seq_len=CALIBRATION_SEQ_LEN, seed=0, tokenizer=None, batch_size=MLX_DYNAMIC_BATCH,
                           work=None):
    """The allocation mlx-lm's dynamic_quant makes for `checkpoint` at `target_bpw`.

    Args:
        low_bits, high_bits, group_size: dynamic_quant's --low-bits/--high-bits and both group sizes.
        calibration, windows, seq_len, seed, tokenizer: the calibration windows, as for GPTQ
            (`calibration_windows`); with the same values both calibrated baselines see the same text.
    Returns:
        An allocation dict (rounding "mlx"), with the calibration and dynamic_quant's threshold.
    """
    import mlx.core as mx
    from mlx_lm.quant import dynamic_quant
    from mlx_lm.utils import load, quantize_model, save

    from mint.checkpoint import Checkpoint

    for b in (low_bits, high_bits):
        quantizer.check_config(b, group_size)
    if low_bits >= high_bits:
        raise ValueError(f"low bits {low_bits} must be below high bits {high_bits}")
    ckpt = Checkpoint(checkpoint)
    ids = calibration_windows(checkpoint, calibration, windows, seq_len, seed, tokenizer)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        source = mlx_readable_copy(ckpt, Path(tmp) / "source")
        model, tok, config = load(str(source), return_config=True)
        # In place of dynamic_quant.main's load_data (which downloads its own text): our windows,
        # as the int32 token array its tokenizer.encode(return_tensors="mlx") would give.
        data = mx.array(ids.numpy().astype("int32"))
        sensitivities = dict(dynamic_quant.estimate_sensitivities(
            float32_copy(model), data, low_bits, group_size, high_bits, group_size, batch_size=batch_size))
        threshold = dynamic_quant.estimate_threshold(
            model, sensitivities, target_bpw, low_bits, group_size, high_bits, group_size)

        # dynamic_quant.main's rule, which it keeps inside main(): above the threshold, high bits.
        def above_threshold(path, module):
            if not hasattr(module, "to_quantized"):
                return False
            if sensitivities[path] > threshold:
                return {"bits": high_bits, "group_size": group_size}
            return True

        model, config = quantize_model(model, config, group_size=group_size, bits=low_bits,
                                       quant_predicate=above_threshold)
        save(Path(tmp) / "mlx", str(source), model, tok, config)
        configs = written_configs(Path(tmp) / "mlx", group_size)
        written = tensor_bytes(Path(tmp) / "mlx")
    name = mlx_dynamic_name(target_bpw, low_bits, high_bits)
    result = forced_allocation(units, configs, solver="mlx-dynamic", budget=f"mlx-{name}")
    if result["total_bytes"] != written:
        raise ValueError(f"mlx-lm's dynamic_quant wrote {written} bytes of tensors; the same choice is "
                         f"{result['total_bytes']} bytes by our count")
    # Exported with MLX's own rounding, so the folder is the one dynamic_quant saves.
    result.update(recipe=name, rounding="mlx", target_bpw=target_bpw, threshold=threshold,
                  calibration={"source": calibration, "windows": int(ids.shape[0]),
                               "seq_len": int(ids.shape[1]), "seed": seed, "tokens": int(ids.numel())})
    return result


def tensor_bytes(folder):
    """Bytes of tensor data in a folder's safetensors files: each file less its 8-byte length and header."""
    total = 0
    for shard in Path(folder).glob("*.safetensors"):
        with open(shard, "rb") as f:
            header = int.from_bytes(f.read(8), "little")
        total += shard.stat().st_size - 8 - header
    return total


# ---------------------------------------------------------------------------------------------
# GPTQ


def gptq_python():
    """The interpreter of the GPTQ environment: $MINT_GPTQ_PYTHON, else .venv-gptq/bin/python."""
    return Path(os.environ.get("MINT_GPTQ_PYTHON") or GPTQ_PYTHON)


def _max_positions(checkpoint):
    cfg = json.loads((Path(checkpoint) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    return cfg.get("max_position_embeddings"), cfg.get("vocab_size")


def _encode(tokenizer, text, chunk_lines=2000):
    """Token ids of `text`, int64, encoded a block of lines at a time: one call on a whole corpus
    keeps every token's offsets and masks alive at once (gigabytes for a few million tokens)."""
    import numpy as np

    lines = text.split("\n")
    blocks = ["\n".join(lines[i : i + chunk_lines]) + "\n" for i in range(0, len(lines), chunk_lines)]
    blocks[-1] = blocks[-1][:-1]  # the text's own last line has no newline after it
    out = []
    for i in range(0, len(blocks), 16):
        encoded = tokenizer(blocks[i : i + 16], add_special_tokens=False, verbose=False)["input_ids"]
        out += [np.asarray(ids, dtype=np.int64) for ids in encoded]
    return np.concatenate(out)


def calibration_windows(checkpoint, source=CALIBRATION_SOURCE, windows=CALIBRATION_WINDOWS,
                        seq_len=CALIBRATION_SEQ_LEN, seed=0, tokenizer=None):
    """Calibration token windows, int64 [windows, seq_len].

    The text of `source` (a name or path for `mint.data.load_text`) is tokenized once with the
    checkpoint's tokenizer (or `tokenizer`), cut into non-overlapping windows, and `windows` of them
    are drawn without replacement with `seed`. `source="random"` draws uniform token ids instead
    (for tiny test checkpoints that have no tokenizer).
    """
    import numpy as np
    import torch

    max_pos, vocab = _max_positions(checkpoint)
    seq_len = min(seq_len, max_pos) if max_pos else seq_len
    rng = np.random.default_rng(seed)
    if source == "random":
        return torch.from_numpy(rng.integers(0, vocab, size=(windows, seq_len), dtype=np.int64))
    if source in EVAL_SOURCES:
        raise ValueError(f"{source!r} is an evaluation split; calibrate on training text")
    from transformers import AutoTokenizer

    from mint import data

    folder = Path(tokenizer or checkpoint)
    # transformers builds an empty tokenizer from config.json alone: require the tokenizer's files.
    if not any((folder / f).exists() for f in TOKENIZER_FILES):
        raise ValueError(f"no tokenizer in {folder} (none of {', '.join(TOKENIZER_FILES)}); pass "
                         "--tokenizer, or --calibration random for a checkpoint without one")
    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    ids = _encode(tok, data.load_text(source))
    available = len(ids) // seq_len
    if available < windows:
        raise ValueError(f"{source!r} holds {len(ids)} tokens: {available} windows of {seq_len}, "
                         f"fewer than the {windows} asked for")
    pick = np.sort(rng.choice(available, size=windows, replace=False))
    return torch.from_numpy(ids[: available * seq_len].reshape(available, seq_len)[pick])


def gptq_size(ckpt, worker):
    """Total bytes of the GPTQ model from the worker's packed modules; checks what was quantized.

    The worker's quantized weights must be exactly the checkpoint's weights of GPTQ_ROLES (so every
    weight is counted once, packed or at 2 bytes).
    """
    expected = sum(r.numel for r in ckpt.refs if r.role in GPTQ_ROLES and len(r.shape) > 1)
    if worker["quantized_weights"] != expected:
        raise RuntimeError(f"GPTQ quantized {worker['quantized_weights']} weights, but the checkpoint "
                           f"holds {expected} in {GPTQ_ROLES}: the sizes would not add up")
    return worker["quantized_bytes"] + 2 * (ckpt.n_params() - worker["quantized_weights"])


def run_gptq_worker(checkpoint, ids, scheme_args, scale_dtype, batch_size=8, actorder="static", dampening=0.01,
                    threads=None, python=None):
    """Run mint/gptq.py in the GPTQ environment on the calibration windows `ids`; return its JSON.

    `scheme_args` are the worker's flags saying what to quantize and where to write it (the uniform
    `--bits --group-size --dequant-out`, or the per-module `--configs --codes-out`).
    """
    from safetensors.torch import save_file

    python = Path(python or gptq_python())
    if not python.exists():
        raise FileNotFoundError(f"GPTQ environment not found at {python}: run `make gptq-env` "
                                "(or set MINT_GPTQ_PYTHON)")
    with tempfile.TemporaryDirectory(prefix="mint-gptq-") as tmp:
        calib, worker_json = Path(tmp) / "calibration.safetensors", Path(tmp) / "worker.json"
        save_file({"input_ids": ids.contiguous()}, str(calib))
        cmd = [str(python), "-P", "-m", "mint.gptq", "--checkpoint", str(checkpoint), "--calibration", str(calib),
               *scheme_args, "--out", str(worker_json), "--scale-dtype", scale_dtype,
               "--batch-size", str(batch_size), "--actorder", actorder, "--dampening", str(dampening)]
        if threads:
            cmd += ["--threads", str(threads)]
        # -P and PYTHONPATH: import this checkout's mint, and nothing from the working directory.
        env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
        subprocess.run(cmd, check=True, env=env)
        return json.loads(worker_json.read_text())


def gptq_baseline(checkpoint, bits, group_size, out, dequant_out, calibration=CALIBRATION_SOURCE,
                  windows=CALIBRATION_WINDOWS, seq_len=CALIBRATION_SEQ_LEN, seed=0, tokenizer=None,
                  batch_size=8, actorder="static", dampening=0.01, threads=None, python=None):
    """GPTQ at (bits, group_size) through llm-compressor; writes `out` (JSON) and `dequant_out`.

    Args:
        checkpoint: Hugging Face checkpoint folder.
        calibration: text source of the calibration windows ("random": uniform token ids).
        windows, seq_len, seed: calibration windows drawn from it.
        python: interpreter of the GPTQ environment (default `gptq_python()`).
    Returns:
        The result dict (also written to `out`).
    """
    from mint.checkpoint import Checkpoint
    from mint.export import default_dtype16

    start = time.perf_counter()
    quantizer.check_config(bits, group_size)
    ckpt = Checkpoint(checkpoint)
    dtype16 = str(default_dtype16(ckpt)).removeprefix("torch.")  # scales stored like the model's weights
    ids = calibration_windows(checkpoint, calibration, windows, seq_len, seed, tokenizer)
    worker = run_gptq_worker(checkpoint, ids, ["--bits", str(bits), "--group-size", str(group_size),
                                               "--dequant-out", str(dequant_out)],
                             dtype16, batch_size, actorder, dampening, threads, python)
    total = gptq_size(ckpt, worker)
    n_params = ckpt.n_params()
    peak_self, peak_worker = peak_rss_mb(), worker["worker_peak_rss_mb"]
    result = {
        "solver": "gptq",
        "budget": f"gptq-{bits}bit-g{group_size}",
        "bits": bits,
        "group_size": group_size,
        "total_bytes": total,
        "total_gib": total / alloc.GIB,
        "avg_bits": 8 * total / n_params,
        "n_params": n_params,
        "size16_bytes": ckpt.size16_bytes(),
        "quantized_weights": worker["quantized_weights"],
        "quantized_bytes": worker["quantized_bytes"],
        "size_formula": ("per quantized [out, in] Linear: 4*out*ceil(in*b/32) codes + 2*out*G 16-bit scales "
                         "+ 4*ceil(out*b/32)*G packed b-bit zero points + 16 (weight_shape), G = ceil(in/g); "
                         "every other weight 2 bytes"),
        "wall_seconds": time.perf_counter() - start,
        "peak_rss_mb": max(peak_self, peak_worker),
        "peak_rss_mb_parent": peak_self,
        "peak_rss_mb_worker": peak_worker,
        "experts_without_tokens": worker["experts_without_tokens"],
        "tokens_per_expert": worker["tokens_per_expert"],
        "calibration": {"source": calibration, "windows": int(ids.shape[0]), "seq_len": int(ids.shape[1]),
                        "seed": seed, "tokens": int(ids.numel())},
        "dequant_out": str(dequant_out),
        "worker": {k: v for k, v in worker.items() if k not in ("experts_without_tokens", "tokens_per_expert")},
    }
    alloc.write_allocation(result, out)
    return result


def gptq_summary(r):
    """One paragraph describing a GPTQ result."""
    idle = sum(r["experts_without_tokens"].values())
    experts = sum(len(v) for v in r["tokens_per_expert"].values())
    return (f"gptq {r['bits']}-bit g{r['group_size']}: {r['total_bytes']} bytes ({r['total_gib']:.4f} GiB, "
            f"{r['avg_bits']:.3f} bits per weight; 16-bit {r['size16_bytes'] / alloc.GIB:.4f} GiB); "
            f"{r['calibration']['windows']} windows x {r['calibration']['seq_len']} tokens; "
            f"{idle} of {experts} experts would get no calibration token under normal routing; "
            f"{r['wall_seconds']:.1f} s, peak {r['peak_rss_mb']:.0f} MiB.")


def add_calibration_arguments(parser, batch_size=8, batch_help="windows per calibration forward"):
    """The flags that choose calibration windows (`calibration_windows`), shared by every calibrated
    command, so that GPTQ, GPTQ rounding and mlx-lm's dynamic_quant see the same text by default."""
    parser.add_argument("--calibration", default=CALIBRATION_SOURCE,
                        help="calibration text (vendored name or path), or 'random' for random token ids")
    parser.add_argument("--windows", type=int, default=CALIBRATION_WINDOWS, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=CALIBRATION_SEQ_LEN, help="tokens per window")
    parser.add_argument("--seed", type=int, default=0, help="seed of the window sample")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)


def add_gptq_arguments(parser):
    """The GPTQ worker's flags (mint/gptq.py), shared by `mint baseline gptq` and `mint quantize-gptq`."""
    parser.add_argument("--actorder", choices=("static", "weight", "none"), default="static")
    parser.add_argument("--dampening", type=float, default=0.01, help="GPTQ dampening (fraction of mean diag H)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the GPTQ worker")
    parser.add_argument("--python", default=None, help="interpreter of the GPTQ environment")


def main(argv=None):
    p = argparse.ArgumentParser(prog="mint baseline", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="kind", required=True)
    uni = sub.add_parser("uniform", help="every quantizable unit at one (bits, group size)")
    uni.add_argument("--units", required=True, nargs="+", help="units.parquet from `mint experts`")
    uni.add_argument("--bits", type=int, required=True, choices=quantizer.BITS)
    uni.add_argument("--group-size", type=int, required=True, choices=quantizer.GROUP_SIZES)
    uni.add_argument("--out", required=True, help="allocation JSON to write")
    gq = sub.add_parser("gptq", help="GPTQ (llm-compressor) at one (bits, group size), in .venv-gptq")
    gq.add_argument("--checkpoint", required=True, help="Hugging Face checkpoint folder")
    gq.add_argument("--bits", type=int, required=True, choices=quantizer.BITS)
    gq.add_argument("--group-size", type=int, required=True, choices=quantizer.GROUP_SIZES)
    gq.add_argument("--out", required=True, help="result JSON to write")
    gq.add_argument("--dequant-out", required=True, help="dequantized folder to write (input's names, float32)")
    add_calibration_arguments(gq)
    add_gptq_arguments(gq)
    rec = sub.add_parser("mlx-recipe", help="mlx-lm's own mixed recipe (mixed_3_6, ...), read back as an allocation")
    rec.add_argument("--checkpoint", required=True, help="Hugging Face checkpoint folder")
    rec.add_argument("--units", required=True, nargs="+", help="units.parquet from `mint experts`")
    rec.add_argument("--recipe", required=True, choices=MLX_RECIPES)
    rec.add_argument("--out", required=True, help="allocation JSON to write")
    dyn = sub.add_parser("mlx-dynamic", help="mlx-lm's calibrated dynamic_quant at a target bpw, read back as an allocation")
    dyn.add_argument("--checkpoint", required=True, help="Hugging Face checkpoint folder (with its tokenizer)")
    dyn.add_argument("--units", required=True, nargs="+", help="units.parquet from `mint experts`")
    dyn.add_argument("--target-bpw", type=float, required=True, help="dynamic_quant's target bits per weight")
    dyn.add_argument("--low-bits", type=int, default=MLX_DYNAMIC_BITS[0], choices=quantizer.BITS)
    dyn.add_argument("--high-bits", type=int, default=MLX_DYNAMIC_BITS[1], choices=quantizer.BITS)
    dyn.add_argument("--group-size", type=int, default=MLX_DYNAMIC_GROUP, choices=quantizer.GROUP_SIZES)
    add_calibration_arguments(dyn, batch_size=MLX_DYNAMIC_BATCH, batch_help="windows per gradient pass")
    dyn.add_argument("--out", required=True, help="allocation JSON to write")
    args = p.parse_args(argv)
    kind = args.__dict__.pop("kind")
    start = time.perf_counter()
    try:
        if kind == "gptq":
            result = gptq_baseline(**vars(args))
            print(gptq_summary(result))
            return 0
        units = alloc.load_units(args.__dict__.pop("units"))
        out = args.__dict__.pop("out")
        if kind == "mlx-recipe":
            result = mlx_recipe_allocation(args.checkpoint, units, args.recipe)
        elif kind == "mlx-dynamic":
            result = mlx_dynamic_allocation(units=units, **vars(args))
        else:
            result = uniform_allocation(units, args.bits, args.group_size)
    except (ValueError, FileNotFoundError) as e:
        print(f"mint baseline: error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"mint baseline: error: the GPTQ worker failed (exit {e.returncode})", file=sys.stderr)
        return 1
    result.update(total_gib=result["total_bytes"] / alloc.GIB, wall_seconds=time.perf_counter() - start,
                  peak_rss_mb=peak_rss_mb())
    # Printed, not written: an allocation file depends only on its inputs.
    alloc.write_allocation(result, out, drop=alloc.RUN_KEYS)
    print(alloc.summary(result), f"{result['wall_seconds']:.1f} s, peak {result['peak_rss_mb']:.0f} MiB.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

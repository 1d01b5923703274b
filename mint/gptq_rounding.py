"""Allocation by MINT, rounding by GPTQ: each tensor at the (bits, group) MINT chose, rounded by GPTQ.

For users who have calibration text. MINT's data-free allocation (`mint allocate`) chooses one
(bits, group size) per unit within the budget; GPTQ (llm-compressor, run by mint/gptq.py in
`.venv-gptq`) then rounds every Linear it quantizes (attention, dense MLPs, shared and routed
experts, every expert calibrated on every token) at its unit's config, on the calibration windows
`mint baseline gptq` uses. GPTQ's result comes back as integers, codes q, 16-bit scales s and zero
points z with w = s * (q - z), and MINT's exporter writes them in MLX's affine format: scales s and
biases b = -s * z, both in the 16-bit dtype MLX stores, codes packed as MLX packs them. Units GPTQ
does not quantize (embeddings, the LM head, routers) and units the allocation keeps at 16 bits are
written as `mint quantize` writes them. So the MLX folder holds exactly the allocation's tensors
and bytes; only the rounding differs.

The dequantized twin is rebuilt from the stored 16-bit values, s * q + b, not from GPTQ's floats:
rounding b = -s * z to 16 bits moves a group's weights by up to half a 16-bit step of b, and the
twin must be the model mlx-lm runs.

Matrices are matched across the two environments by content (`mint.gptq.fingerprint`), since
transformers names and splits the experts its own way: both sides read the same stored values.

    mint quantize-gptq --checkpoint ckpt/ --allocation alloc.json --mlx-out mlx/ --dequant-out hf/ \\
        --out result.json
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

from mint import allocate as alloc
from mint import baseline, export
from mint.checkpoint import Checkpoint, CheckpointError, default_dtype16
from mint.gptq import fingerprint, peak_rss_mb
from mint.quantizer import FULL


def gptq_matrices(ckpt, configs):
    """{fingerprint: {"bits", "group_size", "matrix", "unit"}} of every matrix GPTQ is to round: the weights
    of GPTQ's roles (baseline.GPTQ_ROLES) whose unit `configs` ({unit: (bits, group)}) quantizes.
    Each matrix is read as the exporter reads it, so the exporter finds its codes by the same key."""
    out = {}
    for ref in ckpt.refs:
        config = configs[ref.unit]
        if ref.role not in baseline.GPTQ_ROLES or config == FULL:
            continue
        for e in range(ref.n_experts) if ref.n_experts > 1 else [None]:
            name = ref.name if e is None else f"{ref.name}[expert {e}]"
            key = fingerprint(export._matrix(ckpt, ref, e))
            if key in out:
                raise ValueError(f"{name} holds the same weights as {out[key]['matrix']}: GPTQ's codes of "
                                 "the two could not be told apart")
            out[key] = {"bits": config[0], "group_size": config[1], "matrix": name, "unit": ref.unit}
    return out


def mlx_affine(codes, scales, zero_points, bits, group_size, dtype16):
    """GPTQ's affine code (w = s * (q - z)) as MLX stores it: (codes, scales, biases), b = -s * z.

    Scales must already be `dtype16` values (GPTQ rounded them so); the bias is rounded to `dtype16`
    here, which is the one place the stored model departs from GPTQ's. `quantizer.dequantize` of
    the result is what MLX rebuilds.
    """
    out, inp = codes.shape
    if scales.shape != (out, inp // group_size) or zero_points.shape != scales.shape:
        raise ValueError(f"codes {tuple(codes.shape)} with scales {tuple(scales.shape)} and zero points "
                         f"{tuple(zero_points.shape)} are not groups of {group_size}")
    if int(codes.max()) >= 2**bits:
        raise ValueError(f"codes reach {int(codes.max())}, beyond {bits} bits")
    scales16 = scales.to(dtype16)
    if not torch.equal(scales16.float(), scales.float()):
        raise ValueError(f"GPTQ's scales are not {dtype16} values")
    biases16 = (-scales16.float() * zero_points.float()).to(dtype16)
    return codes.to(torch.uint8), scales16, biases16


class GPTQCodes:
    """The codes file the worker wrote ({fingerprint}.codes / .scales / .zero_points), looked up by
    matrix content for `export.export(codes=...)`. Tensors are read on demand (forked export
    workers each open the file)."""

    def __init__(self, path, matrices):
        self.path, self.matrices = str(path), matrices
        with safe_open(self.path, "pt") as f:
            self.keys = {k.rpartition(".")[0] for k in f.keys()}
        if self.keys != set(matrices):
            raise ValueError(f"the GPTQ worker returned codes for {len(self.keys)} matrices, "
                             f"{len(matrices)} were asked for")

    def lookup(self, w, bits, group_size, dtype16):
        key = fingerprint(w)
        if key not in self.keys:
            return None
        want = self.matrices[key]
        if (want["bits"], want["group_size"]) != (bits, group_size):
            raise ValueError(f"{want['matrix']}: GPTQ rounded it at {want['bits']} bits g{want['group_size']}, "
                             f"the export writes {bits} bits g{group_size}")
        with safe_open(self.path, "pt") as f:
            q, s, z = (f.get_tensor(f"{key}.{part}") for part in ("codes", "scales", "zero_points"))
        return mlx_affine(q, s, z, bits, group_size, dtype16)


def quantize_gptq(checkpoint, allocation, mlx_out, dequant_out, out, rules=None,
                  calibration=baseline.CALIBRATION_SOURCE, windows=baseline.CALIBRATION_WINDOWS,
                  seq_len=baseline.CALIBRATION_SEQ_LEN, seed=0, tokenizer=None, batch_size=8, actorder="static",
                  dampening=0.01, threads=None, python=None, workers=None, overwrite=False):
    """Write the MLX folder and its dequantized twin of `allocation`, GPTQ rounding what it quantizes.

    Args:
        checkpoint: Hugging Face checkpoint folder; allocation: JSON file from `mint allocate`.
        mlx_out, dequant_out: folders to write, as `mint quantize` writes them.
        out: result JSON to write: the allocation, with the rounding and the GPTQ run described.
        calibration, windows, seq_len, seed, tokenizer: calibration windows, as `mint baseline gptq`.
        The rest: GPTQ's options (baseline.run_gptq_worker) and the export's.
    Returns:
        The result dict (also written to `out`).
    """
    start = time.perf_counter()
    ckpt = Checkpoint(checkpoint, rules=json.loads(Path(rules).read_text()) if rules else None)
    allocation_path, allocation = allocation, json.loads(Path(allocation).read_text())
    configs = export.unit_configs(ckpt, allocation)
    dtype16 = default_dtype16(ckpt)
    matrices = gptq_matrices(ckpt, configs)
    ids = baseline.calibration_windows(checkpoint, calibration, windows, seq_len, seed, tokenizer)
    with tempfile.TemporaryDirectory(prefix="mint-gptq-codes-") as tmp:
        configs_file, codes_file = Path(tmp) / "configs.json", Path(tmp) / "codes.safetensors"
        configs_file.write_text(json.dumps(matrices, indent=1))
        worker = baseline.run_gptq_worker(
            checkpoint, ids, ["--configs", str(configs_file), "--codes-out", str(codes_file)],
            str(dtype16).removeprefix("torch."), batch_size, actorder, dampening, threads, python)
        manifest = export.export(ckpt, allocation, mlx_out, dequant_out, dtype16=dtype16, overwrite=overwrite,
                                 workers=workers, codes=GPTQCodes(codes_file, matrices))
    if "total_bytes" in allocation and manifest["written_bytes"] != allocation["total_bytes"]:
        raise export.ExportError(f"wrote {manifest['written_bytes']} bytes, the allocation planned "
                                 f"{allocation['total_bytes']}")
    gptq_units = sorted({m["unit"] for m in matrices.values()})
    result = {
        **allocation,
        "rounding": "gptq",
        "allocation": str(allocation_path),
        "written_bytes": manifest["written_bytes"],
        "predicted_bytes": manifest["predicted_bytes"],
        "gptq_units": gptq_units,
        "rtn_units": sorted(u for u, c in configs.items() if c != FULL and u not in gptq_units),
        "gptq_matrices": len(matrices),
        "calibration": {"source": calibration, "windows": int(ids.shape[0]), "seq_len": int(ids.shape[1]),
                        "seed": seed, "tokens": int(ids.numel())},
        "mlx_out": str(mlx_out),
        "dequant_out": str(dequant_out),
        "worker": {k: v for k, v in worker.items() if k != "quantized_modules"},
        "wall_seconds": time.perf_counter() - start,
        "peak_rss_mb": max(peak_rss_mb(), worker["worker_peak_rss_mb"]),
    }
    alloc.write_allocation(result, out)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(prog="mint quantize-gptq", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="Hugging Face checkpoint folder")
    p.add_argument("--allocation", required=True, help="allocation JSON from `mint allocate`")
    p.add_argument("--mlx-out", required=True, help="MLX folder to write")
    p.add_argument("--dequant-out", required=True, help="dequantized Hugging Face folder to write (the twin)")
    p.add_argument("--out", required=True, help="result JSON to write (the allocation, with the GPTQ run)")
    p.add_argument("--rules", default=None, help="JSON list of extra naming rules (see mint/layouts.py)")
    baseline.add_calibration_arguments(p)
    baseline.add_gptq_arguments(p)
    p.add_argument("--workers", type=int, default=None, help="export processes (same bytes out)")
    p.add_argument("--overwrite", action="store_true", help="replace non-empty output folders")
    args = p.parse_args(argv)
    try:
        r = quantize_gptq(**vars(args))
    except (ValueError, FileNotFoundError, CheckpointError, json.JSONDecodeError) as e:
        print(f"mint quantize-gptq: error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"mint quantize-gptq: error: the GPTQ worker failed (exit {e.returncode})", file=sys.stderr)
        return 1
    print(f"{args.mlx_out}: written bytes = predicted bytes = {r['written_bytes']} "
          f"({8 * r['written_bytes'] / Checkpoint(args.checkpoint).n_params():.3f} bits per weight); GPTQ rounded {r['gptq_matrices']} matrices of "
          f"{len(r['gptq_units'])} units, MINT {len(r['rtn_units'])} units; {r['calibration']['windows']} windows x "
          f"{r['calibration']['seq_len']} tokens; {r['wall_seconds']:.1f} s, peak {r['peak_rss_mb']:.0f} MiB.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

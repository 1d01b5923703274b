"""Inspect a checkpoint (roles, units, experts, sizes) or an allocation JSON, without loading weights."""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from mint.checkpoint import Checkpoint, CheckpointError

GIB = 1024**3
# How `mint inspect` names the dtypes on disk; fp8 tensors are dequantized on read.
DTYPE_NAMES = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F8_E4M3": "fp8 e4m3 with block scales (dequantized on read)",
              "MXFP4": "MXFP4 (dequantized on read)"}


def describe_checkpoint(path, rules=None):
    """A short report of what MINT sees in a checkpoint: only headers are read."""
    ckpt = Checkpoint(path, rules=rules)
    roles = Counter(ref.role for ref in ckpt.refs)
    dtypes = Counter()
    for ref in ckpt.refs:
        dtypes[ref.dtype] += ref.numel
    units = ckpt.units()
    expert_units = {u: ckpt.num_experts(u) for u, refs in units.items() if refs[0].role == "routed_expert"}
    lines = [
        f"{path}: {ckpt.architecture}, {len(ckpt.shards)} shard(s), {len(ckpt.refs)} tensors",
        f"parameters: {ckpt.n_params():,}  16-bit size: {ckpt.size16_bytes() / GIB:.3f} GiB",
        "tensors by role: " + ", ".join(f"{role} {n}" for role, n in sorted(roles.items())),
        f"allocation units: {len(units)} ({len(expert_units)} routed-expert stacks)",
        "stored as: " + ", ".join(f"{DTYPE_NAMES.get(d, d)} {100 * n / ckpt.n_params():.0f}%"
                                  for d, n in sorted(dtypes.items(), key=lambda kv: -kv[1])),
    ]
    if expert_units:
        counts = Counter(expert_units.values())
        lines.append("experts per stack: " + ", ".join(f"{e} x{n}" for e, n in sorted(counts.items())))
    return "\n".join(lines)


def describe_allocation(path):
    alloc = json.loads(Path(path).read_text())
    dist = ", ".join(f"{b}-bit {100 * f:.1f}%" for b, f in sorted(alloc["bit_distribution"].items(), key=lambda kv: int(kv[0])))
    return "\n".join([
        f"{path}: solver {alloc['solver']}, budget {alloc['budget_bytes'] / GIB:.4f} GiB",
        f"size {alloc['total_bytes'] / GIB:.4f} GiB, {alloc['avg_bits']:.3f} bits/weight, "
        f"objective {alloc['objective']:.6g}, LP bound {alloc['lp_bound']:.6g}, gap {alloc['gap_rel']:.2e}",
        f"bits by parameters: {dist}",
    ])


def main(argv=None):
    p = argparse.ArgumentParser(prog="mint inspect", description=__doc__)
    p.add_argument("path", help="a checkpoint folder or an allocation JSON")
    args = p.parse_args(argv)
    try:
        if args.path.endswith(".json"):
            print(describe_allocation(args.path))
        else:
            print(describe_checkpoint(args.path))
    except (CheckpointError, FileNotFoundError, KeyError, json.JSONDecodeError) as e:
        print(f"mint inspect: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

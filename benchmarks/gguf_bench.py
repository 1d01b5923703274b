"""MINT-GGUF export time against llama.cpp's own quantize time for the same type mix, in one run.

On a `mint synth` checkpoint (Qwen3-MoE layout, seeded Gaussian weights with planted heavy-tailed
experts; 48 experts per stack by default, so they are clustered and representatives measured) plus a
tiny byte-level BPE tokenizer, which llama.cpp's converter is told is "gpt-2" (it cannot detect an
unknown tokenizer by hash). Hidden and expert widths are multiples of 256, so the k-quants apply.

MINT-GGUF = llama.cpp's conversion to 16 bits + the measurement of every tensor in every ggml type
(mint/ggml.py) + the knapsack + llama.cpp's quantizer with MINT's per-tensor types. The reference is
the last step alone: `llama_model_quantize` with the same type mix from the same 16-bit GGUF (what a
user of llama.cpp runs once the mix is known). Not a test: run it by hand on a quiet machine.

    python benchmarks/gguf_bench.py [--hidden 512] [--expert-width 512] [--experts 48] [--layers 2]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from mint import gguf
from mint.synth import synth
from mint.testing import write_tiny_bpe_tokenizer


def timed(label, fn, times):
    start = time.perf_counter()
    result = fn()
    times[label] = time.perf_counter() - start
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--expert-width", type=int, default=512)
    p.add_argument("--experts", type=int, default=48)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--budget", default="4.5bpw")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp's quantizer threads (default: all cores)")
    args = p.parse_args(argv)
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "synth"
        synth(ckpt, num_layers=args.layers, progress=False, hidden_size=args.hidden, num_experts=args.experts,
              moe_intermediate_size=args.expert_width, vocab_size=args.vocab, num_attention_heads=4,
              num_key_value_heads=2, head_dim=128)
        write_tiny_bpe_tokenizer(ckpt)
        # mint synth's config.json names no architecture (MINT reads model_type); llama.cpp's converter needs it.
        config = json.loads((ckpt / "config.json").read_text())
        (ckpt / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen3MoeForCausalLM"]}))
        f16 = timed("convert (llama.cpp, 16-bit)",
                    lambda: gguf.convert_to_gguf(ckpt, tmp / "m16.gguf", False, pretokenizer="gpt-2"), times)
        units, _, _, header = timed("measure (ggml, every type)", lambda: gguf.measure_gguf(f16, progress=False), times)
        allocation = timed("allocate (knapsack)", lambda: gguf.allocate_gguf(units, header, args.budget), times)
        timed("write (llama.cpp quantizer + check)",
              lambda: gguf.write_gguf(f16, allocation, tmp / "mint.gguf", threads=args.threads), times)
        mix = {name: t for name, t in allocation["ggml_types"].items()
               if name in {u["unit"] for u in allocation["units"]} and t not in ("F32",)}
        reference = timed("llama.cpp quantize, same mix",
                          lambda: gguf.quantize_file(f16, tmp / "llama.gguf", mix, args.threads), times)
        same = (tmp / "mint.gguf").read_bytes() == Path(reference).read_bytes()
    n_params = allocation["n_params"]
    print(f"mint synth (Qwen3-MoE layout): {args.layers} layers, {args.experts} experts, hidden {args.hidden}, expert width "
          f"{args.expert_width}, vocab {args.vocab}: {n_params / 1e6:.1f} M parameters; budget {args.budget} -> "
          f"{allocation['total_bytes']:,} bytes ({gguf.describe_types(allocation)})")
    for label, seconds in times.items():
        print(f"  {label:<38} {seconds:8.2f} s")
    mint_s = sum(s for label, s in times.items() if not label.startswith("llama.cpp quantize"))
    ref_s = times["llama.cpp quantize, same mix"]
    print(f"MINT-GGUF export {mint_s:.2f} s / llama.cpp quantize {ref_s:.2f} s = {mint_s / ref_s:.1f}x "
          f"(identical files: {same})")


if __name__ == "__main__":
    main()

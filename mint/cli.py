"""`mint <stage>`: one subcommand per pipeline stage, each the `main()` of one module.

Modules are imported only when their subcommand runs, so `mint --help` is instant and a stage's
heavy dependencies (transformers, mlx) load only where they are used.
"""

import importlib
import sys

# subcommand -> (module, one-line description)
COMMANDS = {
    "convert": ("mint.convert", "one command: a checkpoint (folder or hub id) to an MLX folder or GGUF file of a given size"),
    "plan": ("mint.plan", "what each budget buys (objective, bits mix, floor) before any weights are written"),
    "inspect": ("mint.inspect", "show a checkpoint's tensors, roles, units and sizes (or an allocation)"),
    "analyze": ("mint.analyze", "measure every tensor of a checkpoint: RD curves and features, per shard"),
    "experts": ("mint.experts", "cluster large expert stacks, measure representatives, aggregate units"),
    "importance": ("mint.importance", "data-free output weights per unit (random probes through each block)"),
    "allocate": ("mint.allocate", "choose (bits, group) per unit to fit a memory budget (knapsack)"),
    "verify": ("mint.verify", "load an export in its runtime and compare its logits with the dequantized twin"),
    "quantize": ("mint.export", "write the MLX folder (and a dequantized HF folder), or the GGUF file, for an allocation"),
    "quantize-gptq": ("mint.gptq_rounding", "MINT's allocation rounded by GPTQ (calibration text, .venv-gptq): MLX folder + twin"),
    "gguf-compare": ("mint.gguf_compare", "llama.cpp's preset mixes against MINT-GGUF at equal bytes (llama.cpp's logits)"),
    "baseline": ("mint.baseline", "matched-size baselines (uniform RTN) written as allocations"),
    "train-reference": ("mint.reference", "train a small reference MoE model from the vendored text"),
    "evaluate": ("mint.evaluate", "perplexity, KLD and paired comparisons on WikiText-2"),
    "synth": ("mint.synth", "write a synthetic checkpoint of a real shape (Qwen3-30B-A3B by default)"),
    "tables": ("mint.tables", "the result tables (CSV, Markdown) and plots (PNG) from the result files"),
}


def usage():
    width = max(map(len, COMMANDS))
    lines = ["usage: mint <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "`mint <command> --help` shows a command's options; `python -m mint` works the same."]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"mint: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())

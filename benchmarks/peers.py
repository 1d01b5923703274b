"""MINT beside its peers on one synthetic checkpoint: export vs mlx_lm.convert, analysis vs the floor.

One run, one `mint synth` checkpoint (Qwen3-30B-A3B's layer shape; `--layers`, `--vocab`), every
contender a child process timed in the same run, alternating when `--repeats` > 1, from a cold page
cache each time. For each: wall time, CPU time (user + system of the process and its children) and
peak resident memory (the largest ru_maxrss of the process tree, from wait4), then ratios:

- export: `mint quantize` (its forked workers, one per core) against `mlx_lm.convert -q --q-bits 4
  --q-group-size 64` (uniform 4-bit g64), mint's allocation made for the same bytes as mlx-lm wrote;
- analysis: `mint analyze` of every expert exactly (one process per shard, `--workers` at a time, as
  `snakemake --cores 2` runs it), and clustered (+ `mint experts`), against the floor: a plain read
  of the same files by the same number of processes;
- GGUF export: `mint convert --format gguf` (conversion, measurement in every ggml type, knapsack,
  llama.cpp's quantizer) against llama.cpp's own route to a file of the same type mix (its converter,
  then its quantizer with mint's per-tensor types), at mlx-lm's bytes.

Not a test: run it by hand; the load average is printed first and last, since the machine may be shared.

    python benchmarks/peers.py                          # --layers 1 --vocab 32000: 0.75B parameters
    python benchmarks/peers.py --quick                  # --experts 48 --vocab 8000: 0.26B
    python benchmarks/peers.py --baseline /tmp/old      # also an earlier mint, alternating (same run)
"""

import argparse
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scale_bench import evict  # the benchmark beside this one (run as a script from benchmarks/)

GIB = 1024**3
MINT = [sys.executable, "-m", "mint"]
# The floor: each shard read once, in 16 MiB pieces, and thrown away.
READ = """
import sys
buf = bytearray(16 << 20)
for path in sys.argv[1:]:
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
"""


def run_jobs(commands, workers, log, pythonpath=None):
    """Run commands, `workers` at a time. Returns (wall s, CPU s, peak RSS MiB) of them all.

    CPU time and peak come from wait4 on each child, so they include its own children (forked
    workers): CPU summed, the peak the largest resident set of any process of the tree.
    """
    started, pending, running = time.perf_counter(), list(commands), {}
    cpu, peak = 0.0, 0.0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    with open(log, "a") as out:
        while pending or running:
            while pending and len(running) < workers:
                cmd = pending.pop(0)
                out.write(f"$ {' '.join(map(str, cmd))}\n")
                out.flush()
                # Run from the log's folder: `python -m` puts the working directory first on sys.path,
                # where a checkout's own mint would shadow the one PYTHONPATH names.
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=Path(log).parent)
                # Keep the Popen: one dropped while running is reaped by subprocess's own clean-up,
                # and wait4 below would never see it.
                running[proc.pid] = (proc, cmd)
            pid, status, usage = os.wait4(-1, 0)
            proc, cmd = running.pop(pid, (None, None))
            if cmd is None:
                continue
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"failed: {' '.join(map(str, cmd))} (log: {log})")
            cpu += usage.ru_utime + usage.ru_stime
            peak = max(peak, usage.ru_maxrss / 1024)
    return time.perf_counter() - started, cpu, peak


# Compiles (or loads from numba's cache) every kernel once, so no timed run pays for compiling.
WARM_UP = """
import torch
from mint import analyze, export, quantizer
w = torch.randn(64, 256).bfloat16()
quantizer.squared_errors(w, scale_dtype=torch.bfloat16)
quantizer.squared_errors(w, scale_dtype=torch.float16)
analyze.tensor_features(w, spectral=False)
for dtype in (torch.bfloat16, torch.float16):
    export._quantize_pack(w, 4, 64, dtype)
"""
# A stand-in word-level tokenizer: mlx_lm.convert loads one with the model (mint needs none).
TOKENIZER = """
import sys
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(1000)}, unk_token="w0"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", eos_token="w1").save_pretrained(sys.argv[1])
"""


def headers(folder):
    """The safetensors headers of a folder's files (this process imports no torch: a child's peak
    resident memory as wait4 reports it starts from its parent's, which must stay small)."""
    for f in sorted(Path(folder).glob("*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        yield {k: v for k, v in header.items() if k != "__metadata__"}


def tensor_bytes(folder):
    """Bytes of tensor data in a folder's safetensors files (headers excluded)."""
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for h in headers(folder) for v in h.values())


def n_params(folder):
    """Parameters of a 16-bit checkpoint folder."""
    return sum(math.prod(v["shape"]) for h in headers(folder) for v in h.values())


def contender(name, commands, workers, files, work, log, pythonpath=None):
    """A function that runs `commands` once from a cold cache and returns (wall, cpu, peak)."""
    def once():
        for path in map(Path, work):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        evict(files)
        return run_jobs(commands, workers, log, pythonpath)
    once.name = name
    return once


def measure(contenders, repeats):
    """Run the contenders in turn, `repeats` rounds; the median of each figure per contender."""
    runs = {c.name: [] for c in contenders}
    for _ in range(repeats):
        for c in contenders:
            runs[c.name].append(c())
            wall, cpu, peak = runs[c.name][-1]
            print(f"  {c.name:<34} {wall:7.1f} s wall {cpu:7.1f} s CPU {peak:7.0f} MiB", flush=True)
    return {name: tuple(statistics.median(r[i] for r in rs) for i in range(3)) for name, rs in runs.items()}


def compare(title, results, ours, theirs, extra=""):
    """One line of ratios: how many times faster (wall, CPU) and lighter `ours` is than `theirs`."""
    (w1, c1, p1), (w0, c0, p0) = results[ours], results[theirs]
    print(f"{title:<44} {w0 / w1:5.2f}x wall ({w1:6.1f} vs {w0:6.1f} s), {c0 / c1:5.2f}x CPU ({c1:6.1f} vs "
          f"{c0:6.1f} s), peak RSS {p1:5.0f} vs {p0:5.0f} MiB{extra}")


# llama.cpp's own route from a Hugging Face folder to a GGUF of a known type mix: its converter to 16
# bits, then its quantizer with per-tensor types (what `llama-quantize --tensor-type` does).
LLAMA_CPP_ROUTE = """
import json, sys
from mint import gguf
ckpt, f16, out, mix = sys.argv[1:]
gguf.convert_to_gguf(ckpt, f16, False, pretokenizer="gpt-2")
gguf.quantize_file(f16, out, json.loads(open(mix).read()))
"""


def gguf_contenders(ckpt, workdir, budget, log):
    """mint's GGUF export (`mint convert --format gguf`, from a fresh work folder: conversion,
    measurement in every ggml type, knapsack, llama.cpp's quantizer) against llama.cpp's own route to
    the same file: its converter, then its quantizer told the type mix mint chose. The same files in,
    the same tensor types out (checked). Needs a BPE tokenizer and an architecture in config.json."""
    from mint import gguf

    from mint.testing import write_tiny_bpe_tokenizer

    for stale in ckpt.glob("tokenizer*"):
        stale.unlink()
    write_tiny_bpe_tokenizer(ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen3MoeForCausalLM"]}, indent=2))
    shards = sorted(ckpt.glob("*.safetensors"))
    ours, theirs = workdir / "mint.gguf", workdir / "llama.gguf"
    mint_run = contender("mint convert --format gguf", [[*MINT, "convert", ckpt, "--budget", budget, "--format",
                                                         "gguf", "--out", ours, "--pretokenizer", "gpt-2", "--work",
                                                         workdir / "gguf-work"]], 1, shards,
                         [ours, workdir / "gguf-work"], log)
    first = mint_run()  # its types set llama.cpp's mix
    mix = workdir / "mix.json"
    mix.write_text(json.dumps(gguf.file_types(ours)))
    llama_run = contender("llama.cpp convert + quantize", [[sys.executable, "-c", LLAMA_CPP_ROUTE, ckpt,
                                                            workdir / "llama-f16.gguf", theirs, mix]], 1, shards,
                          [theirs, workdir / "llama-f16.gguf"], log)
    print(f"  {'mint convert --format gguf':<34} {first[0]:7.1f} s wall {first[1]:7.1f} s CPU {first[2]:7.0f} MiB"
          " (sets the type mix)")
    return mint_run, llama_run, lambda: gguf.file_types(theirs) == gguf.file_types(ours)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--experts", type=int, default=128)
    p.add_argument("--shard-gib", type=float, default=0.3, help="shard size of the synthetic checkpoint")
    p.add_argument("--quick", action="store_true", help="48 experts, a vocabulary of 8000 (a few minutes)")
    p.add_argument("--workers", type=int, default=2, help="analysis processes at a time; export workers")
    p.add_argument("--repeats", type=int, default=1, help="alternating rounds (medians are reported)")
    p.add_argument("--workdir", default="/tmp/mint-peers")
    p.add_argument("--baseline", type=Path, help="a folder holding an earlier `mint` package (e.g. `git archive "
                   "REV mint | tar -x -C DIR`): its analysis and export run alternating with this one's")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint and outputs")
    p.add_argument("--no-gguf", action="store_true", help="skip the GGUF contenders (mint's measures every "
                   "tensor in 12 ggml types: minutes per round at the default size)")
    args = p.parse_args()
    if args.quick:
        args.experts, args.vocab = 48, 8000  # above 32 experts, so the clustered analysis clusters
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "peers.log"
    load = os.getloadavg()
    print(f"peers {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}; logs in {log}")

    ckpt = work / "ckpt"
    run_jobs([[*MINT, "synth", "--out", ckpt, "--layers", str(args.layers), "--vocab", str(args.vocab),
               "--experts", str(args.experts), "--shard-gib", str(args.shard_gib)]], 1, log)
    run_jobs([[sys.executable, "-c", TOKENIZER, ckpt]], 1, log)
    run_jobs([[sys.executable, "-c", WARM_UP]], 1, log)
    # mlx-lm reads rope_theta and num_experts at the top level; transformers 5 nests and renames them.
    config = json.loads((ckpt / "config.json").read_text())
    config.setdefault("rope_theta", (config.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    config.setdefault("num_experts", config.get("num_local_experts", args.experts))
    (ckpt / "config.json").write_text(json.dumps(config, indent=2))
    shards = sorted(ckpt.glob("*.safetensors"))
    size = sum(s.stat().st_size for s in shards)
    params = n_params(ckpt)
    print(f"checkpoint: {params / 1e9:.3f}B parameters, {size / GIB:.2f} GiB bf16 in {len(shards)} shards "
          f"({args.layers} layers of {args.experts} experts, vocabulary {args.vocab})")

    # --- analysis against the floor ---------------------------------------------------------
    exact, clustered = work / "analysis-exact", work / "analysis-clustered"
    per_shard = [["--shard", s.name] for s in shards]
    analyze = [*MINT, "analyze", "--checkpoint", ckpt, "--threads", "1", "--no-spectral"]
    floor = contender("floor: plain read", [[sys.executable, "-c", READ, *shards[i::args.workers]]
                                            for i in range(args.workers)], args.workers, shards, [], log)
    exact_run = contender("mint analyze, every expert exact",
                          [[*analyze, "--out", exact, "--cluster-threshold", "100000", *s] for s in per_shard],
                          args.workers, shards, [exact], log)
    clustered_run = contender("mint analyze, clustered", [[*analyze, "--out", clustered, *s] for s in per_shard],
                              args.workers, shards, [clustered], log)
    runs = [floor, exact_run, clustered_run]
    if args.baseline:
        runs += [contender("baseline analyze, every expert exact",
                           [[*analyze, "--out", work / "baseline-exact", "--cluster-threshold", "100000", *s]
                            for s in per_shard], args.workers, shards, [work / "baseline-exact"], log, args.baseline),
                 contender("baseline analyze, clustered", [[*analyze, "--out", work / "baseline-clustered", *s]
                                                           for s in per_shard],
                           args.workers, shards, [work / "baseline-clustered"], log, args.baseline)]
    print(f"\n== analysis ({args.workers} processes, 1 thread each, cold page cache) ==")
    results = measure(runs, args.repeats)
    # Clustered: `mint experts` measures the representatives after the light pass.
    units = work / "units"
    experts = run_jobs([[*MINT, "experts", "--checkpoint", ckpt, "--analysis", clustered, "--out", units,
                         "--no-spectral"]], 1, log)
    wall, cpu, peak = results["mint analyze, clustered"]
    results["clustered + experts"] = (wall + experts[0], cpu + experts[1], max(peak, experts[2]))
    run_jobs([[*MINT, "experts", "--checkpoint", ckpt, "--analysis", exact, "--out", units, "--no-spectral"]], 1, log)

    # --- export against mlx_lm.convert at the same bytes --------------------------------------
    mlx_out, mint_out, alloc = work / "mlx-lm", work / "mint-mlx", work / "alloc.json"
    convert = contender("mlx_lm.convert -q 4-bit g64", [[sys.executable, "-m", "mlx_lm", "convert", "--hf-path",
                                                          ckpt, "--mlx-path", mlx_out, "-q", "--q-bits", "4",
                                                          "--q-group-size", "64"]], 1, shards, [mlx_out], log)
    quantize = contender(f"mint quantize ({args.workers} workers)",
                         [[*MINT, "quantize", "--checkpoint", ckpt, "--allocation", alloc, "--mlx-out", mint_out,
                           "--workers", str(args.workers)]], 1, shards, [mint_out], log)
    quantize_one = contender("mint quantize (1 process)",
                             [[*MINT, "quantize", "--checkpoint", ckpt, "--allocation", alloc, "--mlx-out",
                               mint_out, "--workers", "1"]], 1, shards, [mint_out], log)
    print("\n== export ==")
    first = convert()  # its bytes set mint's budget
    mlx_bytes = tensor_bytes(mlx_out)
    run_jobs([[*MINT, "allocate", "--units", units / "units.parquet", "--budget", str(mlx_bytes), "--out", alloc]],
             1, log)
    print(f"  {'mlx_lm.convert -q 4-bit g64':<34} {first[0]:7.1f} s wall {first[1]:7.1f} s CPU {first[2]:7.0f} MiB"
          " (sets the budget)")
    runs = [quantize, quantize_one, convert]
    if args.baseline:
        runs.append(contender("baseline quantize", [[*MINT, "quantize", "--checkpoint", ckpt, "--allocation", alloc,
                                                     "--mlx-out", mint_out]], 1, shards, [mint_out], log,
                              args.baseline))
    export = measure(runs, args.repeats)
    mint_bytes = tensor_bytes(mint_out)

    if not args.no_gguf:
        print("\n== GGUF export ==")
        mint_gguf, llama_gguf, same_types = gguf_contenders(ckpt, work, str(mlx_bytes), log)
        gguf_results = measure([mint_gguf, llama_gguf], args.repeats)
        gguf_same = same_types()

    load = os.getloadavg()
    print(f"\n== ratios (how many times faster / the peaks) on {params / 1e9:.3f}B parameters; load average "
          f"now {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ==")
    compare("mint quantize vs mlx_lm.convert", export, f"mint quantize ({args.workers} workers)",
            "mlx_lm.convert -q 4-bit g64",
            f"; bytes {mint_bytes / GIB:.3f} vs {mlx_bytes / GIB:.3f} GiB ({8 * mint_bytes / params:.3f} vs "
            f"{8 * mlx_bytes / params:.3f} bpw)")
    compare("mint quantize, 1 process, vs mlx_lm.convert", export, "mint quantize (1 process)",
            "mlx_lm.convert -q 4-bit g64")
    if not args.no_gguf:
        compare("mint GGUF export vs llama.cpp's own", gguf_results, "mint convert --format gguf",
                "llama.cpp convert + quantize", f"; same tensor types: {gguf_same}")
    if args.baseline:
        compare("mint quantize vs baseline quantize", export, f"mint quantize ({args.workers} workers)",
                "baseline quantize")
        compare("mint quantize, 1 process, vs baseline", export, "mint quantize (1 process)", "baseline quantize")
        compare("mint analyze exact vs baseline", results, "mint analyze, every expert exact",
                "baseline analyze, every expert exact")
        compare("mint analyze clustered vs baseline", results, "mint analyze, clustered",
                "baseline analyze, clustered")
    floor_wall, floor_cpu, _ = results["floor: plain read"]
    for name in ("mint analyze, every expert exact", "clustered + experts"):
        wall, cpu, peak = results[name]
        print(f"{name + ' vs floor':<44} {wall / floor_wall:5.2f}x the floor's wall ({wall:6.1f} vs {floor_wall:5.1f} s), "
              f"{cpu:6.1f} s CPU, {params / wall / 1e6:6.1f} M params/s, peak RSS {peak:5.0f} MiB")
    if not args.keep:
        shutil.rmtree(work / "ckpt", ignore_errors=True)
        for path in (mlx_out, mint_out, exact, clustered, units, work / "baseline-exact", work / "baseline-clustered",
                     work / "gguf-work"):
            shutil.rmtree(path, ignore_errors=True)
        for path in work.glob("*.gguf"):
            path.unlink()


if __name__ == "__main__":
    main()

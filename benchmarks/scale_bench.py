"""Scale benchmark: analysis, allocation and export of a Qwen3-30B-A3B-shaped checkpoint on this machine.

Writes (or reuses) a `mint synth` checkpoint of a few real-size layers (hidden 2048, 128 experts of
768, real vocabulary; the embedding and head in shards of their own), then runs the stages as the
pipeline does, one process per shard with one thread each, `--workers` at a time, on real files:

1. per-stage throughput on one thread (reading cold and warm, RD curves exact and sampled, light
   statistics, features, spectral features; 2-thread scaling of the RD curve);
2. `mint analyze` end to end in three modes: every expert exact, every expert sampled
   (`--sample-rows`), and clustered (light statistics + `mint experts` representatives), each from
   a cold page cache; per-shard wall time and peak resident memory (the child's ru_maxrss);
3. the accuracy cost of each shortcut against the exact analysis: NRMSE error of the sampled
   estimate (relative error, and |error| / its standard error), and how many units change their
   config in `mint allocate` at a few budgets;
4. extrapolation to the full Qwen3-30B-A3B (48 layers, 30.5B parameters): the per-layer time
   (thread-seconds of the layer shards / layers) times 48, plus the embedding and head shards, plus
   a process start-up per shard of the real checkpoint, over `--workers` processes; next to the
   published pipeline's ~50 min on a 24-core M2 Ultra. A start-up is the same command run on a
   tiny checkpoint of the same layout (imports, numba loading its cached kernels, writing the
   tables), so that what a process pays once is not multiplied by 48 with the per-layer work;
5. exact and greedy allocation of 20,000 units x 19 options (benchmarks/allocate_bench.py's model);
6. `mint quantize` export (`--workers` forked workers): bytes written per second and peak resident
   memory (the largest process's; CPU time sums the workers').

Not a test: run it by hand. The load average is printed first, since timings on a shared machine
are contended.

    python benchmarks/scale_bench.py --layers 2 --workers 2 --sample-rows 128
"""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from allocate_bench import synthetic_units  # noqa: E402

from mint import analyze, quantizer, sampling, synth  # noqa: E402
from mint.allocate import allocate  # noqa: E402
from mint.checkpoint import Checkpoint  # noqa: E402
from mint.experts import aggregate_units, read_tables  # noqa: E402

# Qwen3-30B-A3B: 48 layers; 30.5B parameters (the model card's count).
FULL_LAYERS = 48
FULL_PARAMS = 30.5e9
PUBLISHED_MIN = 50  # the published pipeline on a 24-core Apple M2 Ultra, 192 GB
FULL_SHARDS = 16  # shard files of the released checkpoint (about 4 GB each): one analysis job, one start-up each
FIXED = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
GIB = 1024**3


def evict(paths):
    """Drop the files' pages from the page cache, so the next read comes from disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def rate(params, seconds):
    return f"{params / seconds / 1e6:8.1f} M params/s"


# Runs `mint <args>` and writes the process's own peak resident memory (VmHWM) to a file at exit.
# Not the rusage of the child: its ru_maxrss starts from the parent's peak (exec keeps it).
LAUNCH = """
import atexit, runpy, sys
from pathlib import Path
out = sys.argv.pop(1)
def hwm():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
    Path(out).write_text(line.split()[1])
atexit.register(hwm)
sys.argv[0] = "mint"
runpy.run_module("mint", run_name="__main__")
"""


def run_jobs(commands, workers, logs):
    """Run `mint` commands (argument lists), `workers` at a time.

    Returns [(wall seconds, peak RSS MiB, CPU seconds)] per command, and the wall time of all. CPU
    seconds (user + system) are what the wall time would be on a quiet machine for these
    single-threaded jobs, so they are reported beside it when the machine is shared.
    """
    started, pending, running, results = time.perf_counter(), list(enumerate(commands)), {}, {}
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    while pending or running:
        while pending and len(running) < workers:
            i, cmd = pending.pop(0)
            # Output to a file, not a pipe: a pipe nobody reads fills up with progress bars and blocks the job.
            with open(logs / f"job{i}.log", "w") as log:
                proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(logs / f"job{i}.hwm"), *cmd],
                                        stdout=log, stderr=subprocess.STDOUT, env=env)
            running[proc.pid] = (i, proc, time.perf_counter())
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        i, proc, t0 = running.pop(pid)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"failed: {' '.join(commands[i])}\n{(logs / f'job{i}.log').read_text()[-2000:]}")
        peak = int((logs / f"job{i}.hwm").read_text()) / 1024
        results[i] = (time.perf_counter() - t0, peak, usage.ru_utime + usage.ru_stime)
    return [results[i] for i in range(len(commands))], time.perf_counter() - started


def shard_kinds(ckpt):
    """Shard -> (is fixed: only embedding/norm/head, parameters)."""
    kinds = {}
    for shard in ckpt.shards:
        refs = ckpt.refs_in_shard(shard)
        kinds[shard] = (all(r.name in FIXED for r in refs), sum(r.numel for r in refs))
    return kinds


def stage_rates(ckpt, args):
    """Per-stage throughput on one thread, on the routed experts of layer 0."""
    print(f"\n== per-stage throughput, 1 thread, {args.stage_matrices} expert matrices of layer 0 ==")
    torch.set_num_threads(1)
    refs = [r for r in ckpt.refs if r.role == "routed_expert" and r.layer == 0]
    per_proj = max(1, args.stage_matrices // 3)
    picked = [r for proj in ("gate_proj", "up_proj", "down_proj") for r in [x for x in refs if x.proj == proj][:per_proj]]
    evict([ckpt.path / s for s in {r.shard for r in picked}])
    out = {}
    for label in ("cold", "warm"):
        t0 = time.perf_counter()
        mats = [analyze.read_matrix(ckpt, r, 0) for r in picked]
        out[f"read {label}"] = time.perf_counter() - t0
    n = sum(w.numel() for w in mats)
    dtype = torch.bfloat16
    stages = {
        "RD curve exact (18 configs + 16-bit)": lambda w, k: quantizer.rd_curve(w, scale_dtype=dtype),
        f"RD curve sampled ({args.sample_rows} rows)": lambda w, k: sampling.sampled_rd_curve(w, args.sample_rows, k, dtype),
        "light statistics (clustering pass)": lambda w, k: analyze.light_stats(w),
        "features, whole matrix (no spectral)": lambda w, k: analyze.tensor_features(w, spectral=False),
        f"sampled RD + features ({args.sample_rows} rows)": lambda w, k: analyze.measure_sampled(w, args.sample_rows, k, dtype, spectral=False),
    }
    for label, fn in stages.items():
        fn(mats[0], "bench/warm-up")  # numba's first call (loading its cached kernels) is start-up, not rate
        t0 = time.perf_counter()
        for i, w in enumerate(mats):
            fn(w, f"bench/{i}")
        out[label] = time.perf_counter() - t0
    few = mats[:: max(1, len(mats) // 6)]
    t0 = time.perf_counter()
    for w in few:
        analyze.spectral_features(w)
    spectral_s = (time.perf_counter() - t0) * len(mats) / len(few)
    out["spectral features (rank-256 randomized SVD)"] = spectral_s
    for label, seconds in out.items():
        print(f"{label:<44} {rate(n, seconds)}   ({seconds:.2f} s for {n / 1e6:.0f} M)")
    # Intra-op threads: the RD curve of the same matrices on 2 torch threads.
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    for w in mats[: len(mats) // 3]:
        quantizer.rd_curve(w, scale_dtype=dtype)
    two = time.perf_counter() - t0
    torch.set_num_threads(1)
    one = out["RD curve exact (18 configs + 16-bit)"] * (len(mats) // 3) / len(mats)
    print(f"RD curve exact on 2 torch threads: {one / two:.2f}x the 1-thread rate (so the benchmark runs "
          "one process per shard, 1 thread each)")
    return out


def tiny_checkpoint(workdir):
    """A checkpoint of the same layout with tiny tensors (40 experts, so that a unit is clustered):
    what a process costs before its work (imports, loading numba's cached kernels, writing tables)."""
    path = workdir / "tiny"
    if not (path / "config.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        run_jobs([["synth", "--out", str(path), "--layers", "1", "--experts", "40", "--hidden", "64",
                   "--expert-width", "32", "--vocab", "256", "--planted", "1"]], 1, workdir / "logs" / "tiny")
    return path


def analysis_mode(name, ckpt, args, extra, workdir):
    """`mint analyze` of every shard (cold cache), one process per shard. Returns a summary dict.

    A process's start-up is measured by the same command on the tiny checkpoint (all its shards in
    one process): counted once per shard of the full model, not in the per-layer time.
    """
    tiny = tiny_checkpoint(workdir)
    tiny_out = workdir / f"tiny-analysis-{name}"
    shutil.rmtree(tiny_out, ignore_errors=True)
    (startup,), _ = run_jobs([["analyze", "--checkpoint", str(tiny), "--out", str(tiny_out), "--threads", "1",
                               "--no-spectral", *extra]], 1, workdir / "logs" / f"startup-analyze-{name}")
    out = workdir / f"analysis-{name}"
    shutil.rmtree(out, ignore_errors=True)
    evict([ckpt.path / s for s in ckpt.shards])
    commands = [["analyze", "--checkpoint", str(ckpt.path), "--out", str(out),
                 "--shard", s, "--threads", "1", "--no-spectral", *extra] for s in ckpt.shards]
    jobs, wall = run_jobs(commands, args.workers, workdir / "logs" / name)
    kinds = shard_kinds(ckpt)
    summary = dict(name=name, out=out, tiny_out=tiny_out, wall=wall, peak_mib=max(j[1] for j in jobs), params=ckpt.n_params(),
                   layer_params=sum(kinds[s][1] for s in ckpt.shards if not kinds[s][0]),
                   cpu=sum(j[2] for j in jobs))
    # Process start-up (imports) is counted once per shard job, so it is taken out of the per-layer and
    # fixed times here and added back per shard of the full model.
    for clock, col in (("wall", 0), ("cpu", 2)):
        work = [max(0.0, j[col] - startup[col]) for j in jobs]
        summary[f"fixed_{clock}"] = sum(w for w, s in zip(work, ckpt.shards) if kinds[s][0])
        summary[f"layer_{clock}"] = sum(w for w, s in zip(work, ckpt.shards) if not kinds[s][0]) / args.layers
        summary[f"startup_{clock}"] = startup[col]
    print(f"{name:<10} start-up of a process (the same command on a tiny checkpoint) {startup[0]:.1f} s wall, "
          f"{startup[2]:.1f} s CPU")
    print(f"{name:<10} wall {wall:6.1f} s ({rate(summary['params'], wall)} on {args.workers} workers), CPU "
          f"{summary['cpu']:6.1f} s; after start-up, per layer {summary['layer_wall']:5.1f} s wall / {summary['layer_cpu']:5.1f} s CPU "
          f"({rate(summary['layer_params'] / args.layers, summary['layer_cpu'])} per CPU-s), embedding+head "
          f"shards {summary['fixed_wall']:5.1f} s wall / {summary['fixed_cpu']:5.1f} s CPU; peak RSS "
          f"{summary['peak_mib']:.0f} MiB per process")
    return summary


def build_units(name, ckpt, analysis, workdir):
    """`mint experts` (clusters and measures representatives when the analysis clustered)."""
    out = workdir / f"units-{name}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["experts", "--checkpoint", str(ckpt.path), "--analysis", str(analysis),
           "--out", str(out), "--no-spectral"]
    jobs, _ = run_jobs([cmd], 1, workdir / "logs" / f"experts-{name}")
    return out, jobs[0]


def experts_startup(name, analysis, workdir):
    """(wall, peak, CPU) of `mint experts` on the tiny checkpoint's analysis: its start-up."""
    out = workdir / f"tiny-units-{name}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["experts", "--checkpoint", str(workdir / "tiny"), "--analysis", str(analysis), "--out", str(out),
           "--no-spectral"]
    jobs, _ = run_jobs([cmd], 1, workdir / "logs" / f"startup-experts-{name}")
    return jobs[0]


def compare_curves(exact_dir, sampled_dir):
    """Relative error and |error| / SE of the sampled NRMSE, per (matrix, quantized config)."""
    exact, sampled = read_tables(exact_dir, "rd"), read_tables(sampled_dir, "rd")
    key = ["tensor", "unit", "expert", "bits", "group_size"]
    m = sampled.merge(exact[key + ["nrmse"]], on=key, suffixes=("", "_exact"))
    # Matrices with no more rows than the sample are measured whole (SE 0): not estimates.
    m = m[(m["role"] == "routed_expert") & (m["bits"] < 16) & (m["nrmse_se"] > 0)]
    rel = (m["nrmse"] / m["nrmse_exact"] - 1).abs()
    z = (m["nrmse"] - m["nrmse_exact"]).abs() / m["nrmse_se"]
    return dict(n=len(m), rel_median=rel.median(), rel_p99=rel.quantile(0.99), rel_max=rel.max(),
                within2=(z <= 2).mean(), within3=(z <= 3).mean(), z_max=z.max(),
                se_rel_median=(m["nrmse_se"] / m["nrmse"]).median())


def allocation_changes(units_exact, units_other, budgets):
    """Per budget: units whose config differs, and the exact-curve objective of both choices."""
    exact_units = pd.read_parquet(units_exact / "units.parquet")
    other_units = pd.read_parquet(units_other / "units.parquet")
    rows = []
    for budget in budgets:
        a = allocate(exact_units, budget)
        b = allocate(other_units, budget)
        ca = {u["unit"]: (u["bits"], u["group_size"]) for u in a["units"]}
        cb = {u["unit"]: (u["bits"], u["group_size"]) for u in b["units"]}
        changed = sum(ca[u] != cb.get(u) for u in ca)
        # The other allocation's choices scored on the exact curves (the loss it really has).
        curve = exact_units.set_index(["unit", "bits", "group_size"])["nrmse"]
        true_b = sum(curve[(u, *cb[u])] for u in cb)
        true_a = sum(curve[(u, *ca[u])] for u in ca)
        rows.append((budget, changed, len(ca), true_a, true_b))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="an existing `mint synth` checkpoint (default: write one to --workdir)")
    p.add_argument("--layers", type=int, default=2, help="layers of the synthetic checkpoint")
    p.add_argument("--workers", type=int, default=2, help="shard processes at a time (1 thread each)")
    p.add_argument("--shard-gib", type=float, default=0.6, help="shard size of the synthetic checkpoint")
    p.add_argument("--sample-rows", type=int, default=sampling.DEFAULT_SAMPLE_ROWS)
    p.add_argument("--stage-matrices", type=int, default=48, help="expert matrices for the per-stage figures")
    p.add_argument("--budgets", nargs="+", default=["3.5bpw", "4.5bpw"])
    p.add_argument("--workdir", default="/tmp/mint-scale-bench")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint and outputs")
    args = p.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"scale_bench {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min), torch {torch.__version__}")

    path = Path(args.checkpoint) if args.checkpoint else workdir / "ckpt"
    if not args.checkpoint:
        shutil.rmtree(path, ignore_errors=True)
        t0 = time.perf_counter()
        # In its own process, so that this one stays small (its peak would be the synth's).
        (_, synth_peak, _), = run_jobs([["synth", "--out", str(path), "--layers", str(args.layers), "--shard-gib",
                                         str(args.shard_gib)]], 1, workdir / "logs" / "synth")[0]
        print(f"mint synth: {time.perf_counter() - t0:.0f} s, peak RSS {synth_peak:.0f} MiB")
    ckpt = Checkpoint(path)
    args.layers = len({r.layer for r in ckpt.refs if r.layer is not None})
    size = sum((path / s).stat().st_size for s in ckpt.shards)
    print(f"checkpoint {path}: {args.layers} layers, {ckpt.n_params() / 1e9:.3f}B parameters, {size / GIB:.2f} GiB, "
          f"{len(ckpt.shards)} shards")

    stage_rates(ckpt, args)

    print(f"\n== mint analyze end to end, cold page cache, {args.workers} shard processes x 1 thread ==")
    exact = analysis_mode("exact", ckpt, args, ["--cluster-threshold", "100000"], workdir)
    sampled = analysis_mode("sampled", ckpt, args, ["--cluster-threshold", "100000", "--sample-rows",
                                                    str(args.sample_rows)], workdir)
    clustered = analysis_mode("clustered", ckpt, args, [], workdir)
    # `mint experts` is one process for the whole model: its start-up (the same command on the tiny
    # checkpoint) is counted once, the rest per layer.
    units = {}
    for mode in (exact, sampled, clustered):
        startup_wall, _, startup_cpu = experts_startup(mode["name"], mode["tiny_out"], workdir)
        mode["experts_startup_wall"], mode["experts_startup_cpu"] = startup_wall, startup_cpu
        out, (seconds, peak, cpu) = build_units(mode["name"], ckpt, mode["out"], workdir)
        units[mode["name"]] = out
        mode["experts_wall"], mode["experts_peak"], mode["experts_cpu"] = seconds, peak, cpu
        print(f"mint experts ({mode['name']}): {seconds:.1f} s wall, {cpu:.1f} s CPU, peak RSS {peak:.0f} MiB; "
              f"start-up (tiny checkpoint) {startup_wall:.1f} s wall, {startup_cpu:.1f} s CPU")

    print("\n== accuracy cost of the shortcuts (against every expert measured exactly) ==")
    c = compare_curves(exact["out"], sampled["out"])
    print(f"sampled ({args.sample_rows} rows), {c['n']} expert x config NRMSEs: relative error median "
          f"{100 * c['rel_median']:.2f}%, p99 {100 * c['rel_p99']:.2f}%, max {100 * c['rel_max']:.2f}%; "
          f"within 2 SE {100 * c['within2']:.1f}%, within 3 SE {100 * c['within3']:.1f}%, max {c['z_max']:.1f} SE; "
          f"median SE {100 * c['se_rel_median']:.2f}% of the NRMSE")
    for name in ("sampled", "clustered"):
        for budget, changed, total, obj_exact, obj_other in allocation_changes(units["exact"], units[name], args.budgets):
            print(f"{name:<10} @ {budget:>7}: {changed} of {total} units change config; objective on the exact "
                  f"curves {obj_other:.5f} vs {obj_exact:.5f} ({100 * (obj_other / obj_exact - 1):+.3f}%)")
    clusters = pd.read_parquet(units["clustered"] / "clusters.parquet")
    planted = synth.planted_experts(128, 3, 0)
    alone = 0
    for _, g in clusters.groupby("unit"):
        with_planted = set(g.loc[g["expert"].isin(planted), "cluster"])
        alone += set(g.loc[g["cluster"].isin(with_planted), "expert"]) <= set(planted)
    print(f"clustered: the planted heavy-tailed experts {planted} share clusters with no other expert in {alone} "
          f"of {clusters['unit'].nunique()} units")

    print(f"\n== extrapolated to Qwen3-30B-A3B ({FULL_LAYERS} layers, {FULL_PARAMS / 1e9:.1f}B parameters), "
          f"{args.workers} workers ==")
    print(f"(per-layer time x 48 + embedding and head + {FULL_SHARDS} process start-ups, shared by the workers;\n"
          " `mint experts` start-up + the rest x 48 / layers;"
          " 'wall' as measured here under the load above, 'CPU' the jobs' CPU seconds: the wall time without contention)")
    for mode in (exact, sampled, clustered):
        line = []
        for clock in ("wall", "cpu"):
            analysis = (mode[f"fixed_{clock}"] + FULL_LAYERS * mode[f"layer_{clock}"]
                        + FULL_SHARDS * mode[f"startup_{clock}"]) / args.workers
            startup = mode[f"experts_startup_{clock}"]
            experts_s = startup + max(0.0, mode[f"experts_{clock}"] - startup) * FULL_LAYERS / args.layers
            total = analysis + experts_s
            line.append(f"{clock:>4}: analyze {analysis / 60:5.1f} + experts {experts_s / 60:4.1f} = {total / 60:5.1f} min "
                        f"({PUBLISHED_MIN * 60 / total:4.1f}x faster than published)")
        print(f"{mode['name']:<10} " + "; ".join(line))
    print(f"published: ~{PUBLISHED_MIN} min on a 24-core M2 Ultra with 192 GB")

    print("\n== allocation, 20,000 units x 19 options ==")
    table = synthetic_units(20_000)
    for solver in ("exact", "greedy"):
        t0 = time.perf_counter()
        r = allocate(table, "4.5bpw", solver=solver)
        print(f"{solver:>6} @ 4.5bpw: solve {r['solve_seconds']:.3f} s, allocate() {time.perf_counter() - t0:.3f} s, "
              f"gap {r['gap_abs']:.2e}, {r['status']}")

    print("\n== export (mint quantize, sampled allocation at 4.5bpw) ==")
    alloc = workdir / "alloc.json"
    subprocess.run([sys.executable, "-m", "mint", "allocate", "--units", str(units["sampled"] / "units.parquet"),
                    "--budget", "4.5bpw", "--out", str(alloc)], check=True, stdout=subprocess.DEVNULL)
    mlx = workdir / "mlx"
    shutil.rmtree(mlx, ignore_errors=True)
    evict([ckpt.path / s for s in ckpt.shards])
    jobs, wall = run_jobs([["quantize", "--checkpoint", str(path), "--allocation",
                            str(alloc), "--mlx-out", str(mlx), "--workers", str(args.workers)]], 1,
                          workdir / "logs" / "export")
    written = sum(f.stat().st_size for f in mlx.glob("*.safetensors"))
    cpu = jobs[0][2]
    print(f"export: {written / GIB:.2f} GiB written from {size / GIB:.2f} GiB in {wall:.1f} s wall ({cpu:.1f} s CPU): "
          f"{written / wall / 1e6:.0f} MB/s written per wall-s ({written / cpu / 1e6:.0f} per CPU-s), "
          f"{size / wall / 1e6:.0f} MB/s read, {rate(ckpt.n_params(), wall)}; peak RSS {jobs[0][1]:.0f} MiB")
    print(f"export extrapolated to {FULL_PARAMS / 1e9:.1f}B parameters, {args.workers} worker processes: {wall * FULL_PARAMS / ckpt.n_params() / 60:.1f} min "
          f"wall, {cpu * FULL_PARAMS / ckpt.n_params() / 60:.1f} min CPU")

    peak = max(exact["peak_mib"], sampled["peak_mib"], clustered["peak_mib"], jobs[0][1],
               *(m["experts_peak"] for m in (exact, sampled, clustered)))
    print(f"\npeak RSS of any process: {peak:.0f} MiB, for a checkpoint of {size / GIB:.2f} GiB "
          f"(largest tensor {max(r.numel for r in ckpt.refs) * 2 / GIB:.2f} GiB); load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.keep:
        for name in ("mlx", "alloc.json", "logs", *(f"analysis-{m}" for m in units), *(f"units-{m}" for m in units)):
            target = workdir / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        if not args.checkpoint:
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()

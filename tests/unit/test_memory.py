"""The stages stream: peak memory stays near one tensor's working set, not the model's size.

`mint analyze` on two model sizes; and analyze (exact and sampled), experts, allocate and export of a
Qwen3-MoE-layout model several times larger than a memory limit set on the process (RLIMIT_DATA),
which a stage that held the model, or a shard, could not stay under.
"""

import subprocess
import sys

import pytest
import torch

from mint.testing import make_tiny_checkpoint

PROBE = r"""
import sys
from pathlib import Path
from mint import analyze
from mint.checkpoint import Checkpoint

def rss_mib(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024

# Warm up on the small model first (imports, pyarrow, the allocator's arenas), so that the peak
# measured next is the analysis's own working set.
warm, target, out = sys.argv[1:4]
analyze.analyze(warm, out + "-warm", spectral=False)
ckpt = Checkpoint(target)
base = rss_mib("VmHWM:")
analyze.analyze(target, out, spectral=False)
print(rss_mib("VmHWM:") - base)
"""


def checkpoint(tmp_path, num_experts):
    """Experts of 512 x 1024 in float32 (2 MiB each, the largest tensors), in 20 MB shards."""
    ckpt = make_tiny_checkpoint("mixtral", tmp_path / f"m{num_experts}", num_experts=num_experts, hidden=512,
                                intermediate=1024, dtype=torch.float32, max_shard_size="20MB")
    return ckpt, sum(p.stat().st_size for p in ckpt.glob("*.safetensors")) / 2**20


def peak_growth_mib(warm, target, out):
    """How far the peak resident memory rises while `mint analyze` reads `target` (MiB)."""
    run = subprocess.run([sys.executable, "-c", PROBE, str(warm), str(target), str(out)],
                         capture_output=True, text=True, check=True)
    return float(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_analyze_peak_memory_does_not_grow_with_the_model(tmp_path):
    small, small_mib = checkpoint(tmp_path, 4)     # about 55 MiB of weights
    large, large_mib = checkpoint(tmp_path, 16)    # about 200 MiB of weights
    assert large_mib > 3 * small_mib
    small_growth = peak_growth_mib(small, small, tmp_path / "a-small")
    large_growth = peak_growth_mib(small, large, tmp_path / "a-large")
    # A reader that held the model (or a shard per tensor) would add at least the 145 MiB of extra
    # weights; a streaming one adds only noise (measured here: tens of MiB either way).
    assert large_growth < small_growth + 0.25 * (large_mib - small_mib), (small_growth, large_growth)
    assert large_growth < 0.5 * large_mib


PIPELINE = r"""
import resource, sys
from pathlib import Path
from mint import analyze, experts, export
from mint.allocate import allocate_files

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024

def pipeline(ckpt, out):
    analyze.analyze(ckpt, out / "a-exact", spectral=False, cluster_threshold=1000)
    analyze.analyze(ckpt, out / "a-sampled", spectral=False, cluster_threshold=1000, sample_rows=64)
    analyze.analyze(ckpt, out / "a", spectral=False)
    experts.build_units(ckpt, out / "a", out / "u", spectral=False)
    allocate_files([str(out / "u" / "units.parquet")], "4.5bpw", str(out / "alloc.json"))
    export.quantize_files(ckpt, str(out / "alloc.json"), str(out / "mlx"))

warm, target, out, budget = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
# Warm up on the small model (imports, thread pools, allocator arenas), then allow `budget` bytes
# more of data segment than that, reset the peak and run the large one.
pipeline(warm, out / "warm-run")
resource.setrlimit(resource.RLIMIT_DATA, (status("VmData:") + budget, resource.RLIM_INFINITY))
Path("/proc/self/clear_refs").write_text("5")
base = status("VmRSS:")
pipeline(target, out / "large-run")
print(status("VmHWM:") - base)
"""


@pytest.mark.slow
def test_pipeline_runs_in_a_fraction_of_the_model_size(tmp_path):
    from mint.synth import synth

    shape = dict(num_experts=64, hidden_size=512, moe_intermediate_size=512, vocab_size=8192,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=128)
    synth(tmp_path / "small", num_layers=1, shard_gib=0.05, progress=False, **shape)
    large = synth(tmp_path / "large", num_layers=6, shard_gib=0.25, progress=False, **shape)
    budget = 160 * 2**20
    assert large["bytes"] > 3.5 * budget   # 601 MiB of bf16 weights (3.8x the budget) in shards of 250 MB
    run = subprocess.run([sys.executable, "-c", PIPELINE, str(tmp_path / "small"), large["path"],
                          str(tmp_path / "work"), str(budget)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]   # a MemoryError here means a stage held too much
    growth = int(run.stdout.strip().splitlines()[-1])
    # The resident peak rises by far less than the model (and than one shard).
    assert growth < budget, growth / 2**20
    assert list((tmp_path / "work" / "large-run" / "mlx").glob("*.safetensors"))

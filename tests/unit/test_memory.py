"""`mint analyze` streams: its peak memory stays near one tensor's working set, not the model's size."""

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

ckpt = Checkpoint(sys.argv[1])          # imports done, headers read: the baseline
base = rss_mib("VmRSS:")
analyze.analyze(sys.argv[1], sys.argv[2], spectral=False)
print(rss_mib("VmHWM:") - base)
"""


def peak_growth_mib(tmp_path, num_experts):
    """(model size, peak memory growth of `mint analyze` over its baseline), both in MiB."""
    ckpt = make_tiny_checkpoint("mixtral", tmp_path / f"m{num_experts}", num_experts=num_experts, hidden=512,
                                intermediate=1024, dtype=torch.float32, max_shard_size="20MB")
    model_mib = sum(p.stat().st_size for p in ckpt.glob("*.safetensors")) / 2**20
    out = subprocess.run([sys.executable, "-c", PROBE, str(ckpt), str(tmp_path / f"a{num_experts}")],
                         capture_output=True, text=True, check=True)
    return model_mib, float(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_analyze_peak_memory_does_not_grow_with_the_model(tmp_path):
    # Experts of 512 x 1024 in float32 (2 MiB each, the largest tensors), in 20 MB shards.
    small_mib, small_growth = peak_growth_mib(tmp_path, 4)     # about 55 MiB of weights
    large_mib, large_growth = peak_growth_mib(tmp_path, 16)    # about 200 MiB of weights
    assert large_mib > 3 * small_mib
    # A fixed working set (one tensor's float32 copies, group min/max, codes, errors; pyarrow for the
    # tables) that does not follow the model: 145 MiB more weights may add at most 15 MiB of peak.
    assert large_growth < small_growth + 0.1 * (large_mib - small_mib), (small_growth, large_growth)
    assert large_growth < 0.5 * large_mib

"""Crash-safe output files: write beside the final name, then rename into place.

A stage killed at any moment leaves either the old file or the new one, never half of one, so a
rerun (or Snakemake, which trusts what exists) never reads a torn output.

    with replaced("results/tables/solver.csv") as tmp:
        df.to_csv(tmp)
"""

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def replaced(path):
    """Yield a temporary path in `path`'s folder (same suffix, so writers that infer the format from
    it still work); on success it replaces `path` atomically, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text):
    """`Path.write_text`, crash-safe."""
    with replaced(path) as tmp:
        tmp.write_text(text)

"""Text sources: the vendored corpora (checksummed), any local text file, or a hub dataset.

The repository vendors three files (see their READMEs under data/):

    wikitext2-test    data/wikitext-2-raw-v1/wiki.test.raw     evaluation only (METHOD.md §5)
    wikitext2-valid   data/wikitext-2-raw-v1/wiki.valid.raw    validation loss, tokenizer training
    gutenberg-train   data/train-corpus-gutenberg/train.txt    training text of the reference models

Each is verified against its published sha256 every time it is read, so a truncated or re-encoded
copy fails loudly instead of silently shifting every perplexity.
"""

import hashlib
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

# name -> (path relative to data/, sha256 of the bytes)
VENDORED = {
    "wikitext2-test": (
        "wikitext-2-raw-v1/wiki.test.raw",
        "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
    ),
    "wikitext2-valid": (
        "wikitext-2-raw-v1/wiki.valid.raw",
        "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
    ),
    "gutenberg-train": (
        "train-corpus-gutenberg/train.txt",
        "b8df5b3fa916ff14835993b6ac42dc6d26c8ef6f9655c3ad21c84850ca202778",
    ),
}

HUB_PREFIX = "hf:"


class DataError(ValueError):
    """A text source that is missing, corrupt or unknown (a user error)."""


def sha256_file(path):
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def vendored_path(name, verify=True):
    """Path of a vendored file, checked against its sha256 unless `verify` is False.

    >>> vendored_path("wikitext2-test").name
    'wiki.test.raw'
    """
    if name not in VENDORED:
        raise DataError(f"unknown vendored text {name!r}; known: {', '.join(VENDORED)}")
    rel, expected = VENDORED[name]
    path = DATA_DIR / rel
    if not path.is_file():
        raise DataError(f"vendored file {path} is missing (expected for {name!r})")
    if verify:
        actual = sha256_file(path)
        if actual != expected:
            raise DataError(f"checksum mismatch for {path}: sha256 {actual}, expected {expected}")
    return path


def _load_hub(spec):
    """`hf:dataset/config:split` (config optional) -> the rows' text joined with newlines.

    Needs `datasets` and network access; imported here so that offline use never touches it.
    """
    body = spec[len(HUB_PREFIX):]
    name, _, split = body.rpartition(":")
    if not name or not split:
        raise DataError(f"hub source must look like 'hf:dataset/config:split', got {spec!r}")
    parts = name.split("/")
    # "wikitext/wikitext-2-raw-v1" is dataset + config; "org/dataset/config" has three parts.
    dataset, config = ("/".join(parts[:-1]), parts[-1]) if len(parts) >= 2 else (name, None)
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"loading {spec!r} needs the `datasets` package") from e
    try:
        rows = datasets.load_dataset(dataset, config, split=split)
    except Exception as e:  # network errors come in many types
        raise DataError(f"could not load {spec!r} from the hub: {e}") from e
    # HF wikitext rows keep their trailing "\n"; joining with "" rebuilds the raw file's layout.
    return "".join(t if t.endswith("\n") else t + "\n" for t in rows["text"])


def load_text(source):
    """Text of a vendored name, a local file path, or a hub dataset `hf:dataset/config:split`.

    Args:
        source: "wikitext2-test", "wikitext2-valid", "gutenberg-train", a path, or "hf:...".
    Returns:
        The file's text (UTF-8), unchanged.
    """
    source = str(source)
    if source in VENDORED:
        return vendored_path(source).read_text(encoding="utf-8")
    if source.startswith(HUB_PREFIX):
        return _load_hub(source)
    path = Path(source)
    if not path.is_file():
        raise DataError(
            f"text source {source!r} is neither a vendored name ({', '.join(VENDORED)}), "
            f"an existing file, nor 'hf:dataset/config:split'"
        )
    return path.read_text(encoding="utf-8")


def join_nonempty_lines(text):
    """METHOD.md §5: the non-empty lines of `text` joined with "\\n\\n".

    A line is empty when it holds only whitespace (the raw WikiText files write blank rows as " ").
    Non-empty lines are kept as they are, including the raw format's one space of padding.
    """
    return "\n\n".join(line for line in text.split("\n") if line.strip())


def load_eval_text(source="wikitext2-test"):
    """Evaluation text: `load_text(source)` with non-empty lines joined by "\\n\\n"."""
    return join_nonempty_lines(load_text(source))

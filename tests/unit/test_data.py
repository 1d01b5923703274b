"""The vendored texts match their published checksums, and load_text resolves every kind of source."""

import pytest

from mint import data


@pytest.mark.parametrize("name", sorted(data.VENDORED))
def test_vendored_checksums(name):
    rel, expected = data.VENDORED[name]
    assert data.sha256_file(data.DATA_DIR / rel) == expected
    assert data.vendored_path(name).is_file()


def test_published_sizes_and_openings():
    # Sizes and first lines from data/*/README.md.
    sizes = {"wikitext2-test": 1_290_590, "wikitext2-valid": 1_146_846, "gutenberg-train": 8_752_885}
    for name, size in sizes.items():
        assert data.vendored_path(name, verify=False).stat().st_size == size
    assert data.load_text("wikitext2-test").startswith(" \n = Robert Boulter = \n")
    assert data.load_text("wikitext2-valid").startswith(" \n = Homarus gammarus = \n")


def test_checksum_mismatch_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "wikitext-2-raw-v1").mkdir()
    (tmp_path / "wikitext-2-raw-v1" / "wiki.test.raw").write_text("tampered\n")
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    with pytest.raises(data.DataError, match="checksum mismatch"):
        data.load_text("wikitext2-test")
    with pytest.raises(data.DataError, match="missing"):
        data.load_text("gutenberg-train")


def test_local_file_and_unknown_source(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("hello\n")
    assert data.load_text(p) == "hello\n"
    with pytest.raises(data.DataError, match="neither a vendored name"):
        data.load_text(tmp_path / "absent.txt")
    with pytest.raises(data.DataError, match="unknown vendored"):
        data.vendored_path("wikitext103")
    with pytest.raises(data.DataError, match="hf:dataset/config:split"):
        data.load_text("hf:wikitext")


def test_join_nonempty_lines():
    assert data.join_nonempty_lines(" \n = A = \n \n b c \n\n") == " = A = \n\n b c "
    text = data.load_eval_text("wikitext2-test")
    lines = [l for l in data.load_text("wikitext2-test").split("\n") if l.strip()]
    assert text.count("\n\n") == len(lines) - 1
    assert "\n\n\n" not in text
